"""Evaluation: nnU-Net's overlap metrics plus surface distances in mm, per case and class; paired comparisons.

* Dice, IoU (Jaccard), TP/FP/FN/TN: nnU-Net's ``compute_metrics`` (ignore label honoured).
* HD95, ASD, ASSD: MedPy (``medpy.metric.binary.hd95 / asd / assd``, the implementation the semi-supervised
  segmentation papers report with), on the image spacing from the reference file's header (array-axis order, as
  nnU-Net's readers return it). Singleton axes (a 2D image stored as a 1-slice volume) are dropped first: MedPy's
  surface erosion would otherwise count every object pixel as surface. ASD is MedPy's ``asd`` (prediction surface
  to reference surface, the papers' "ASD"); ASSD is the symmetric version (mean over the surface voxels of both).
  Ignore-label voxels are removed from both
  masks before the distances.
* Empty masks: Dice/IoU follow nnU-Net (NaN when reference and prediction are both empty; NaN is left out of the
  means). HD95/ASD/ASSD: both empty -> NaN (left out, as Dice); only one empty -> the image diagonal in mm, the worst
  distance possible (the BraTS convention of a maximal penalty), so a model that misses or hallucinates a structure
  is not rewarded. ``summary.json`` counts both kinds of cases per class.

``summary.json`` keeps nnU-Net's layout (``metric_per_case``, ``mean``, ``foreground_mean``) and adds ``std``,
``empty_cases`` and, with ``ref_classes``, ``classification`` (accuracy of a classification head's ``classes.csv``).
``metrics.csv`` has one row per case and class. :func:`compare` runs a paired Wilcoxon signed-rank test between two
evaluated prediction folders.
"""
import csv
import multiprocessing
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from semi_nnunet.inference.models import PredictionError
from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic

SURFACE_METRICS = ("HD95", "ASD", "ASSD")
METRICS = ("Dice", "IoU") + SURFACE_METRICS
COUNTS = ("TP", "FP", "FN", "TN", "n_ref", "n_pred")
CLASSES_CSV = "classes.csv"


def surface_distances(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> Dict[str, float]:
    """HD95, ASD and ASSD (MedPy) of two boolean masks with voxel ``spacing`` (same order as the array axes)."""
    from medpy.metric import binary
    keep = [i for i, s in enumerate(reference.shape) if s > 1]
    prediction, reference = prediction.squeeze(), reference.squeeze()
    spacing = [float(spacing[i]) for i in keep]
    has_pred, has_ref = bool(prediction.any()), bool(reference.any())
    if not has_pred and not has_ref:
        return {m: float("nan") for m in SURFACE_METRICS}
    if not (has_pred and has_ref):
        diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip(reference.shape, spacing))))
        return {m: diagonal for m in SURFACE_METRICS}
    return {"HD95": float(binary.hd95(prediction, reference, voxelspacing=spacing)),
            "ASD": float(binary.asd(prediction, reference, voxelspacing=spacing)),
            "ASSD": float(binary.assd(prediction, reference, voxelspacing=spacing))}


def evaluate_case(reference_file: str, prediction_file: str, reader_writer_class, labels_or_regions: list,
                  ignore_label: Optional[int] = None) -> dict:
    """nnU-Net's metrics of one case plus the surface distances, keyed by ``str(label_or_region)``."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask
    rw = reader_writer_class()
    ref, properties = rw.read_seg(reference_file)
    pred, _ = rw.read_seg(prediction_file)
    if ref.shape != pred.shape:
        raise PredictionError(f"Prediction shape {pred.shape[1:]} differs from the reference's {ref.shape[1:]}.",
                              prediction_file, "predict the reference's image (same case, original resolution).")
    result = compute_metrics(reference_file, prediction_file, rw, labels_or_regions, ignore_label)
    spacing = properties["spacing"]
    keep = ~(ref[0] == ignore_label) if ignore_label is not None else np.ones(ref.shape[1:], bool)
    metrics = {}
    for r in labels_or_regions:
        m = {k: (float(v) if k in ("Dice", "IoU") else int(v)) for k, v in result["metrics"][r].items()}
        m.update(surface_distances(region_or_label_to_mask(pred[0], r) & keep,
                                   region_or_label_to_mask(ref[0], r) & keep, spacing))
        metrics[str(r)] = m
    return {"reference_file": reference_file, "prediction_file": prediction_file, "metrics": metrics}


def _labels_or_regions(dataset_json: dict) -> tuple:
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    lm = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
    return (lm.foreground_regions if lm.has_regions else lm.foreground_labels), lm.ignore_label


def dataset_json_for(prediction_folder: str, dataset=None, dataset_json_file: Optional[str] = None) -> dict:
    """The dataset.json that names the labels: given, from ``-d``, or from the prediction's ``ensemble.json``."""
    if dataset_json_file:
        return load_json(dataset_json_file)
    if dataset is not None:
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        try:
            return load_json(join(nnUNet_raw, maybe_convert_to_dataset_name(dataset), "dataset.json"))
        except (RuntimeError, FileNotFoundError, TypeError):
            raise PredictionError(f"Dataset '{dataset}' has no dataset.json under nnUNet_raw.", f"-d {dataset}",
                                  "check nnUNet_raw and the id, or pass --dataset_json FILE.") from None
    record = join(prediction_folder, "ensemble.json")
    if isfile(record):
        return load_json(join(load_json(record)["members"][0]["folder"], "dataset.json"))
    raise PredictionError("Cannot tell which labels to evaluate.", prediction_folder,
                          "pass -d DATASET or --dataset_json FILE.")


def _pairs(reference_folder: str, prediction_folder: str, ending: str, chill: bool) -> List[tuple]:
    for folder, what in ((reference_folder, "reference"), (prediction_folder, "prediction")):
        if not isdir(folder):
            raise PredictionError(f"The {what} folder does not exist.", folder, f"give the folder of {what} masks.")
    refs = sorted(f for f in os.listdir(reference_folder) if f.endswith(ending) and not f.startswith("."))
    if not refs:
        raise PredictionError(f"No reference masks ending in {ending}.", reference_folder,
                              "give the labels folder (e.g. labelsTs) of the dataset the models were trained on.")
    missing = [f for f in refs if not isfile(join(prediction_folder, f))]
    if missing and (not chill or len(missing) == len(refs)):
        raise PredictionError(f"{len(missing)} reference case(s) have no prediction, e.g. {missing[0]}.",
                              join(prediction_folder, missing[0]),
                              "predict them (semi_nnUNet_predict resumes where it stopped), or pass --chill to "
                              "evaluate only the predicted cases.")
    return [(join(reference_folder, f), join(prediction_folder, f)) for f in refs if f not in missing]


EMPTY_RULES = ("nan", "one")


def apply_empty_rule(per_case: List[dict], keys: List[str], rule: str) -> None:
    """A case whose reference and prediction are both empty: ``nan`` (nnU-Net: left out of the means) or ``one``
    (Dice and IoU 1, distances 0, as several lesion challenges score normal images)."""
    if rule not in EMPTY_RULES:
        raise PredictionError(f"Unknown empty-case rule '{rule}'.", "--empty", f"choose one of {EMPTY_RULES}.")
    if rule == "one":
        for c in per_case:
            for k in keys:
                m = c["metrics"][k]
                if m["n_ref"] == 0 and m["n_pred"] == 0:
                    m.update({"Dice": 1.0, "IoU": 1.0, **{d: 0.0 for d in SURFACE_METRICS}})


def empty_reference_false_positives(per_case: List[dict], keys: List[str]) -> dict:
    """Per class: of the cases whose reference is empty (a normal image), how many got any predicted voxel."""
    out = {}
    for k in keys:
        empty = [c["metrics"][k] for c in per_case if c["metrics"][k]["n_ref"] == 0]
        wrong = sum(m["n_pred"] > 0 for m in empty)
        out[k] = {"cases": len(empty), "false_positive_images": wrong,
                  "false_positive_rate": wrong / len(empty) if empty else float("nan")}
    return out


def _aggregate(per_case: List[dict], keys: List[str]) -> dict:
    mean, std, empty = {}, {}, {}
    for k in keys:
        rows = [c["metrics"][k] for c in per_case]
        mean[k] = {m: float(np.nanmean([r[m] for r in rows])) if any(np.isfinite(r[m]) for r in rows) else
                   float("nan") for m in METRICS + COUNTS}
        std[k] = {m: float(np.nanstd([r[m] for r in rows])) if any(np.isfinite(r[m]) for r in rows) else
                  float("nan") for m in METRICS}
        empty[k] = {"both_empty": sum(r["n_ref"] == 0 and r["n_pred"] == 0 for r in rows),
                    "only_reference_empty": sum(r["n_ref"] == 0 < r["n_pred"] for r in rows),
                    "only_prediction_empty": sum(r["n_pred"] == 0 < r["n_ref"] for r in rows)}
    foreground = {m: float(np.nanmean([mean[k][m] for k in keys])) for m in METRICS}
    return {"mean": mean, "std": std, "foreground_mean": foreground, "empty_cases": empty}


def classification_accuracy(prediction_folder: str, ref_classes: str) -> dict:
    """Accuracy of ``classes.csv`` (case, predicted_class, ...) against a CSV of ``case,class``."""
    path = join(prediction_folder, CLASSES_CSV)
    if not isfile(path):
        raise PredictionError("No classes.csv in the prediction folder (the model has no classification head, or "
                              "the prediction predates it).", path, "predict with a model that classifies, or drop "
                              "--ref_classes.")
    with open(ref_classes, newline="") as f:
        truth = {row[0]: int(row[1]) for row in csv.reader(f) if row and row[0] != "case"}
    with open(path, newline="") as f:
        predicted = {row["case"]: int(row["predicted_class"]) for row in csv.DictReader(f)}
    cases = sorted(set(truth) & set(predicted))
    if not cases:
        raise PredictionError("No case of classes.csv is in the reference classes.", ref_classes,
                              "give a CSV with rows 'case,class' for the predicted cases.")
    correct = [predicted[c] == truth[c] for c in cases]
    per_class = {str(k): float(np.mean([predicted[c] == k for c in cases if truth[c] == k]))
                 for k in sorted(set(truth[c] for c in cases))}
    return {"accuracy": float(np.mean(correct)), "n": len(cases), "recall_per_class": per_class}


def evaluate(reference_folder: str, prediction_folder: str, dataset=None, dataset_json_file: Optional[str] = None,
             output_folder: Optional[str] = None, num_processes: int = 2, chill: bool = False,
             ref_classes: Optional[str] = None, empty_rule: str = "nan") -> dict:
    """Evaluate every prediction against its reference; writes ``summary.json`` and ``metrics.csv`` into
    ``output_folder`` (default: the prediction folder) and returns the summary. ``empty_rule``: see
    :func:`apply_empty_rule`; the summary also gives the image-level false-positive rate on empty-reference cases and
    the unit of the distances (mm from the image header; pixels for PNG/JPG/TIFF images, which carry no spacing)."""
    if empty_rule not in EMPTY_RULES:
        raise PredictionError(f"Unknown empty-case rule '{empty_rule}'.", "--empty", f"choose one of {EMPTY_RULES}.")
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    dataset_json = dataset_json_for(prediction_folder, dataset, dataset_json_file)
    ending = dataset_json["file_ending"]
    pairs = _pairs(reference_folder, prediction_folder, ending, chill)
    rw_class = determine_reader_writer_from_dataset_json(dataset_json, pairs[0][0])
    labels, ignore = _labels_or_regions(dataset_json)
    args = [(r, p, rw_class, labels, ignore) for r, p in pairs]
    if num_processes > 1 and len(pairs) > 2 * num_processes:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            per_case = pool.starmap(evaluate_case, args)
    else:
        per_case = [evaluate_case(*a) for a in args]
    keys = [str(r) for r in labels]
    apply_empty_rule(per_case, keys, empty_rule)
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    unit = "px" if issubclass(rw_class, NaturalImage2DIO) else "mm"
    summary = {"metric_per_case": per_case, **_aggregate(per_case, keys), "n_cases": len(per_case),
               "empty_rule": empty_rule, "distance_unit": unit,
               "empty_reference": empty_reference_false_positives(per_case, keys),
               "reference_folder": os.path.abspath(reference_folder),
               "prediction_folder": os.path.abspath(prediction_folder)}
    if ref_classes:
        summary["classification"] = classification_accuracy(prediction_folder, ref_classes)
    out = output_folder or prediction_folder
    save_json_atomic(summary, join(out, "summary.json"))
    with atomic_path(join(out, "metrics.csv")) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "class"] + list(METRICS + COUNTS))
        for c in per_case:
            case = os.path.basename(c["prediction_file"])[:-len(ending)]
            for k in keys:
                writer.writerow([case, k] + [c["metrics"][k][m] for m in METRICS + COUNTS])
    return summary


def per_case_values(summary: dict, label: str, metric: str) -> Dict[str, float]:
    return {os.path.basename(c["prediction_file"]): c["metrics"][label][metric] for c in summary["metric_per_case"]}


def paired_wilcoxon(a: Dict[str, float], b: Dict[str, float]) -> dict:
    """Paired two-sided Wilcoxon signed-rank test of B vs A over the cases both have (pairs with a NaN dropped).
    ``mean_difference`` is mean(B - A)."""
    from scipy.stats import wilcoxon
    cases = sorted(c for c in set(a) & set(b) if np.isfinite(a[c]) and np.isfinite(b[c]))
    x, y = np.array([a[c] for c in cases]), np.array([b[c] for c in cases])
    if len(cases) == 0:
        stat, p = float("nan"), float("nan")
    elif np.all(x == y):
        stat, p = 0.0, 1.0
    else:
        res = wilcoxon(y, x)
        stat, p = float(res.statistic), float(res.pvalue)
    return {"n": len(cases), "mean_a": float(x.mean()) if len(x) else float("nan"),
            "mean_b": float(y.mean()) if len(y) else float("nan"),
            "mean_difference": float((y - x).mean()) if len(x) else float("nan"), "statistic": stat, "p_value": p}


def compare(summary_a: dict, summary_b: dict, metrics: Sequence[str] = ("Dice", "HD95", "ASD")) -> dict:
    """:func:`paired_wilcoxon` of B vs A per class and metric."""
    return {label: {metric: paired_wilcoxon(per_case_values(summary_a, label, metric),
                                            per_case_values(summary_b, label, metric)) for metric in metrics}
            for label in summary_a["mean"]}


def foreground_per_case(summary: dict, metric: str) -> Dict[str, float]:
    """Per case, the mean of ``metric`` over the foreground classes (NaN classes left out; NaN if all are)."""
    out = {}
    for c in summary["metric_per_case"]:
        values = [v[metric] for v in c["metrics"].values() if np.isfinite(v[metric])]
        out[os.path.basename(c["prediction_file"])] = float(np.mean(values)) if values else float("nan")
    return out
