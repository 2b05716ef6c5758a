"""The USL-Net pipeline: saliency stage, pseudo-labels, refining cycles, report. Resumable.

    MoCo v2 (or a user checkpoint) -> CCAM -> saliency S -> l_0 = clean(UM(S))
    cycle k = 1..N: train USLNetTrainer on l_{k-1} (certain pixels only) -> predict q_k on the training images
                    -> l_k = clean(UM(q_k)) [combined with l_0 if cycle_combine = "agree_with_l0"]

Everything lives in the trainer's nnU-Net results folder ``<Trainer>__<plans>__<configuration>/``::

    fold_all/                 the latest finished cycle's model (nnUNetv2_predict -tr <Trainer> -f all uses it)
    uslnet/state.json         settings of this run (a rerun with other saliency settings is refused)
    uslnet/moco/              moco_encoder.pth (in-domain MoCo v2; absent with a user checkpoint)
    uslnet/ccam/              ccam.pth
    uslnet/cycle_<k>/pseudo_labels/   l_{k-1} in nnU-Net's preprocessed format (+ pseudo_labels.json: per-case stats)
    uslnet/cycle_<k>/model/           the cycle's nnU-Net results folder (plans.json, fold_all/checkpoint_final.pth)
    uslnet/cycle_<k>/predictions.json the cycle's prediction on the training images (per-case statistics)
    uslnet/cycle_<k>/overlays.png     image | saliency or probability | pseudo-label | prediction, for a sample
    uslnet/report.json, report.png    per-cycle statistics (semi_nnunet.uslnet.report)

Every step is skipped when its result exists (MoCo and CCAM resume from their latest epoch, a cycle's training from
nnU-Net's ``checkpoint_latest.pth``, a pseudo-label folder from its last written case), so rerunning the command
continues where it stopped; ``--cycles`` larger than before adds cycles.
"""
import json
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from semi_nnunet.utilities.file_ops import copy_atomic, save_json_atomic
from semi_nnunet.uslnet import report as rep
from semi_nnunet.uslnet.pseudo_labels import (PseudoLabelWriter, is_complete, load_pseudo_label, load_unlabeled_case,
                                              provenance)
from semi_nnunet.uslnet.uncertainty import label_fractions, make_pseudo_label

SALIENCY_KEYS = ("backbone", "moco_checkpoint", "saliency_image_size", "moco_epochs", "moco_batch_size", "moco_queue",
                 "moco_momentum", "moco_temperature", "ccam_epochs", "ccam_batch_size", "ccam_lr", "ccam_alpha",
                 "ccam_scales", "seed")
LABEL_KEYS = ("fg_threshold", "bg_threshold", "min_component_fraction", "keep_central_component", "cycle_combine")
MOCO_ENV = "SEMI_NNUNET_USLNET_MOCO"


class Pipeline:
    """Paths, settings and cases of one USL-Net run (see :func:`run_uslnet`)."""

    def __init__(self, dataset_name: str, configuration: str, trainer_class: type, plans_identifier: str,
                 device: torch.device, settings: dict, log: Callable[[str], None]):
        from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from semi_nnunet.planners.plan_and_preprocess_api import get_unlabeled_folder
        from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers
        from semi_nnunet.trainers.uslnet import with_uncertain_label
        self.dataset_name, self.configuration, self.trainer_class = dataset_name, configuration, trainer_class
        self.plans_identifier, self.device, self.settings, self.log = plans_identifier, device, settings, log
        pre = join(str(nnUNet_preprocessed), dataset_name)
        self.plans = load_json(join(pre, plans_identifier + ".json"))
        self.dataset_json = load_json(join(pre, "dataset.json"))
        self.raw_folder = join(str(nnUNet_raw), dataset_name)
        internal, _ = with_uncertain_label(self.dataset_json)
        self.label_manager = PlansManager(self.plans).get_label_manager(internal)
        self.patch_size = PlansManager(self.plans).get_configuration(configuration).patch_size
        self.unlabeled_folder = get_unlabeled_folder(dataset_name, plans_identifier, configuration)
        self.cases = sorted(unlabeled_identifiers(self.unlabeled_folder))
        self.results = get_output_folder(dataset_name, trainer_class.__name__, plans_identifier, configuration)
        self.work = join(self.results, "uslnet")
        self.sample = self.cases[:max(0, int(settings["overlay_cases"]))]
        self.eval_labels: Dict[str, str] = {}

    def cycle_dir(self, k: int) -> str:
        return join(self.work, f"cycle_{k}")

    def labels_dir(self, k: int) -> str:
        return join(self.cycle_dir(k), "pseudo_labels")

    def model_dir(self, k: int) -> str:
        return join(self.cycle_dir(k), "model")

    def trained(self, k: int) -> bool:
        return isfile(join(self.model_dir(k), "fold_all", "checkpoint_final.pth"))

    def label_settings(self) -> dict:
        s = self.settings
        return dict(bg_threshold=s["bg_threshold"], fg_threshold=s["fg_threshold"],
                    min_component_fraction=s["min_component_fraction"], keep_central=s["keep_central_component"])


# ---------------------------------------------------------------------------------------------------- set-up
def _settings(trainer_class: type, moco_checkpoint: Optional[str]) -> dict:
    from semi_nnunet.trainers.uslnet import USLNET_SETTINGS
    settings = {k: getattr(trainer_class, k) for k in USLNET_SETTINGS}
    settings["ccam_scales"] = [float(s) for s in settings["ccam_scales"]]
    chosen = moco_checkpoint or os.environ.get(MOCO_ENV) or settings["moco_checkpoint"]
    settings["moco_checkpoint"] = os.path.abspath(chosen) if chosen else None
    return settings


def _check_state(work: str, settings: dict, cases: List[str]) -> None:
    from semi_nnunet.trainers.uslnet import USLNetError
    path = join(work, "state.json")
    if isfile(path):
        old = load_json(path)
        changed = [k for k in SALIENCY_KEYS + LABEL_KEYS
                   if json.dumps(old["settings"].get(k)) != json.dumps(settings.get(k))]
        if changed:
            raise USLNetError(f"{work} holds a USL-Net run with other settings ({', '.join(changed)}: "
                              f"{[old['settings'].get(k) for k in changed]} then, {[settings.get(k) for k in changed]} "
                              f"now). Rerun with the same settings to continue it, use another trainer variant, or "
                              f"delete {work} to start over.")
        if sorted(old.get("cases", [])) != sorted(cases):
            raise USLNetError(f"The unlabeled cases changed since {work} was made (preprocessing was rerun on "
                              f"other images). Delete {work} to start over.")
    save_json_atomic({"settings": settings, "cases": cases}, path)


def _ensure_preprocessed(dataset_name: str, configuration: str, plans_identifier: str, num_processes: int,
                         log) -> None:
    from nnunetv2.paths import nnUNet_preprocessed

    from semi_nnunet.planners.plan_and_preprocess_api import get_unlabeled_folder, plan_and_preprocess
    from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers
    from semi_nnunet.trainers.uslnet import USLNetError
    plans_file = join(str(nnUNet_preprocessed), dataset_name, plans_identifier + ".json")
    if isfile(plans_file):
        configurations = load_json(plans_file)["configurations"]
        if configuration not in configurations:
            raise USLNetError(f"Configuration '{configuration}' is not in {plans_file} (available: "
                              f"{list(configurations)}).")
        if unlabeled_identifiers(get_unlabeled_folder(dataset_name, plans_identifier, configuration)):
            return
    if plans_identifier != "nnUNetPlans":
        raise USLNetError(f"{plans_file} or its preprocessed unlabeled cases are missing: run "
                          f"semi_nnUNet_plan_and_preprocess -d {dataset_name} -c {configuration} with your planner.")
    log(f"Planning and preprocessing {dataset_name} ({configuration}) ...")
    plan_and_preprocess(dataset_name, [configuration], num_processes=num_processes, show_progress=False)


def _backbone_images(p: Pipeline):
    from semi_nnunet.uslnet.backbone import images_for_backbone
    images, shapes = [], []
    for case in p.cases:
        data, _, _ = load_unlabeled_case(p.unlabeled_folder, case)
        images.append(images_for_backbone([data], int(p.settings["saliency_image_size"]))[0])
        shapes.append(tuple(data.shape[-2:]))
    return torch.stack(images), shapes


# ---------------------------------------------------------------------------------------------------- stages
def saliency_stage(p: Pipeline) -> None:
    """MoCo v2 (unless a checkpoint is given), CCAM, then l_0 from the saliency maps (cycle 1's pseudo-labels)."""
    from semi_nnunet.uslnet.ccam import CCAMSettings, load_ccam, saliency_maps, train_ccam
    from semi_nnunet.uslnet.moco import MoCoSettings, train_moco
    if is_complete(p.labels_dir(1), p.cases):
        p.log("[done] saliency stage (MoCo v2, CCAM, cycle-1 pseudo-labels)")
        return
    s = p.settings
    images, shapes = _backbone_images(p)
    if s["moco_checkpoint"]:
        if not isfile(s["moco_checkpoint"]):
            raise FileNotFoundError(f"MoCo checkpoint not found: {s['moco_checkpoint']}")
        backbone = s["moco_checkpoint"]
        p.log(f"Backbone weights: {backbone}")
    else:
        t = time.time()
        backbone = train_moco(images, MoCoSettings(
            arch=s["backbone"], epochs=s["moco_epochs"], batch_size=s["moco_batch_size"], queue=s["moco_queue"],
            momentum=s["moco_momentum"], temperature=s["moco_temperature"], seed=s["seed"]),
            join(p.work, "moco"), p.device, p.log)
        p.log(f"MoCo v2 pre-training: {backbone} ({time.time() - t:.0f} s)")
    t = time.time()
    ccam_file = train_ccam(images, CCAMSettings(
        arch=s["backbone"], epochs=s["ccam_epochs"], batch_size=s["ccam_batch_size"], lr=s["ccam_lr"],
        alpha=s["ccam_alpha"], scales=tuple(s["ccam_scales"]), seed=s["seed"]),
        join(p.work, "ccam"), p.device, backbone, p.log)
    p.log(f"CCAM: {ccam_file} ({time.time() - t:.0f} s)")
    model = load_ccam(ccam_file, p.device)
    writer = PseudoLabelWriter(p.labels_dir(1), p.unlabeled_folder, p.label_manager, p.patch_size)
    chunk = 64
    for start in range(0, len(p.cases), chunk):
        names = p.cases[start:start + chunk]
        todo = [i for i, c in enumerate(names) if not writer.done(c)]
        maps = saliency_maps(model, images[start:start + chunk][todo], [shapes[start + i] for i in todo], p.device,
                             tuple(s["ccam_scales"]))
        for i, saliency in zip(todo, maps):
            _write_case(p, writer, names[i], saliency, 1, initial=None)
    _finish_labels(p, writer, 1, {"cycle": 1, "source": "CCAM saliency", "ccam": ccam_file, "backbone": backbone})


def _write_case(p: Pipeline, writer: PseudoLabelWriter, case: str, probability: np.ndarray, cycle: int,
                initial: Optional[np.ndarray]) -> None:
    _, nonzero, properties = load_unlabeled_case(p.unlabeled_folder, case)
    label, info = make_pseudo_label(probability, nonzero, initial=initial, cycle_combine=p.settings["cycle_combine"],
                                    **p.label_settings())
    writer.write(case, label, properties, {**label_fractions(label), **info})
    if case in p.sample:
        os.makedirs(join(p.cycle_dir(cycle), "maps"), exist_ok=True)
        np.save(join(p.cycle_dir(cycle), "maps", case + ".npy"), probability.astype(np.float16))


def _finish_labels(p: Pipeline, writer: PseudoLabelWriter, cycle: int, record: dict) -> None:
    for case in p.cases:  # cases written before an interruption: statistics from the saved label
        if case not in writer.stats:
            label = load_pseudo_label(writer.folder, case)
            writer.stats[case] = {**label_fractions(label), "has_foreground": bool((label == 1).any())}
    writer.finish(p.cases, {**record, "settings": {k: p.settings[k] for k in LABEL_KEYS}})
    p.log(f"Cycle-{cycle} pseudo-labels: {writer.folder}")


def train_cycle(p: Pipeline, k: int) -> None:
    """nnU-Net training of cycle ``k`` on its pseudo-labels (fold ``all``); resumes from checkpoint_latest."""
    if p.trained(k):
        p.log(f"[done] cycle {k}: training ({p.model_dir(k)})")
        return
    latest = join(p.model_dir(k), "fold_all", "checkpoint_latest.pth")
    resume = isfile(latest)
    p.log(f"Cycle {k}: training {p.trainer_class.__name__} on {p.labels_dir(k)}" + (" (resuming)" if resume else ""))
    trainer = p.trainer_class({**p.plans, "continue_training": resume}, p.configuration, "all", p.dataset_json,
                              p.device)
    trainer.use_cycle(k, p.labels_dir(k), p.model_dir(k))
    if resume:
        trainer.load_checkpoint(latest)
    trainer.run_training()
    publish(p, k)


def publish(p: Pipeline, k: int) -> None:
    """Copy cycle ``k``'s model into the trainer's own results folder (fold_all), nnU-Net's place for it."""
    source = p.model_dir(k)
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        if isfile(join(source, name)):
            copy_atomic(join(source, name), join(p.results, name))
    fold = join(source, "fold_all")
    for name in sorted(os.listdir(fold)):
        if name in ("checkpoint_final.pth", "debug.json", "progress.png") or name.startswith("training_log"):
            copy_atomic(join(fold, name), join(p.results, "fold_all", name))
    save_json_atomic({"cycle": k, "model": source}, join(p.results, "fold_all", "uslnet_cycle.json"))


def predict_cycle(p: Pipeline, k: int, num_cycles: int) -> dict:
    """Cycle ``k``'s network on the training images: its statistics, and cycle k+1's pseudo-labels when needed."""
    from semi_nnunet.inference.models import Member
    from semi_nnunet.inference.predict_api import fold_average, load_predictor
    stats_file = join(p.cycle_dir(k), "predictions.json")
    need_labels = k < num_cycles and not is_complete(p.labels_dir(k + 1), p.cases)
    if isfile(stats_file) and not need_labels:
        return load_json(stats_file)
    p.log(f"Cycle {k}: predicting the {len(p.cases)} training images" +
          (f" -> cycle-{k + 1} pseudo-labels" if need_labels else ""))
    predictor = load_predictor(Member(p.model_dir(k), ["all"], "checkpoint_final.pth"), p.device,
                               bool(p.settings.get("use_mirroring", False)))
    writer = PseudoLabelWriter(p.labels_dir(k + 1), p.unlabeled_folder, p.label_manager, p.patch_size) \
        if need_labels else None
    combine = p.settings["cycle_combine"] != "replace"
    per_case = {}
    for case in p.cases:
        data, nonzero, _ = load_unlabeled_case(p.unlabeled_folder, case)
        probabilities = fold_average(predictor, torch.from_numpy(data))
        q = probabilities[1].reshape(data.shape[-2:]).numpy().astype(np.float32)
        prediction = (q > 0.5) & nonzero  # argmax of two classes
        row = {"foreground_fraction": float(prediction.sum()) / max(int(nonzero.sum()), 1)}
        if case in p.eval_labels:
            row["dice"] = rep.dice(prediction, np.load(p.eval_labels[case]) > 0)
        per_case[case] = row
        if case in p.sample:
            os.makedirs(join(p.cycle_dir(k), "predictions_sample"), exist_ok=True)
            np.save(join(p.cycle_dir(k), "predictions_sample", case + ".npy"), q.astype(np.float16))
        if writer is not None and not writer.done(case):
            initial = load_pseudo_label(p.labels_dir(1), case) if combine else None
            _write_case(p, writer, case, q, k + 1, initial)
    if writer is not None:
        _finish_labels(p, writer, k + 1, {"cycle": k + 1, "source": f"cycle {k} prediction",
                                          "model": p.model_dir(k)})
    summary = {"cases": per_case, "foreground_fraction": rep.mean_of(list(per_case.values()), "foreground_fraction"),
               "dice": rep.mean_of(list(per_case.values()), "dice")}
    save_json_atomic(summary, stats_file)
    return summary


def test_dice(p: Pipeline, k: int) -> Optional[float]:
    """Dice of cycle ``k``'s model on ``imagesTs`` against ``labelsTs`` of the raw dataset (None without them)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    from semi_nnunet.inference.models import Member
    from semi_nnunet.inference.predict_api import predict
    images, labels = join(p.raw_folder, "imagesTs"), join(p.raw_folder, "labelsTs")
    if not (isdir(images) and isdir(labels) and os.listdir(labels)):
        return None
    result = join(p.cycle_dir(k), "test_dice.json")
    if isfile(result):
        return load_json(result)["dice"]
    out = join(p.cycle_dir(k), "test_predictions")
    predict(images, out, [Member(p.model_dir(k), ["all"])], use_mirroring=bool(p.settings.get("use_mirroring")),
            device=p.device.type, show_progress=False)
    ending = p.dataset_json["file_ending"]
    rw = determine_reader_writer_from_dataset_json(p.dataset_json, verbose=False)()
    scores = {}
    for name in sorted(os.listdir(labels)):
        if name.endswith(ending) and isfile(join(out, name)):
            truth, _ = rw.read_seg(join(labels, name))
            pred, _ = rw.read_seg(join(out, name))
            scores[name[:-len(ending)]] = rep.dice(pred > 0, truth > 0)
    value = float(np.mean(list(scores.values()))) if scores else None
    save_json_atomic({"dice": value, "cases": scores}, result)
    return value


def cycle_report(p: Pipeline, k: int, prediction: dict, test: Optional[float]) -> dict:
    record = provenance(p.labels_dir(k))
    stats = list(record["stats"].values())
    labels = {
        "source": record.get("source"),
        "foreground_fraction": rep.mean_of(stats, "foreground"),
        "uncertain_fraction": rep.mean_of(stats, "uncertain"),
        "background_fraction": rep.mean_of(stats, "background"),
        "cases_without_foreground": int(sum(not s.get("has_foreground", True) for s in stats)),
    }
    change, against, rows = [], [], []
    for case in p.cases:
        label = load_pseudo_label(p.labels_dir(k), case)
        if k > 1:
            change.append(rep.label_change(load_pseudo_label(p.labels_dir(k - 1), case), label))
        truth = np.load(p.eval_labels[case]) if case in p.eval_labels else None
        if truth is not None:
            against.append(rep.against_labels(label, truth))
        if case in p.sample:
            data, _, _ = load_unlabeled_case(p.unlabeled_folder, case)
            source_map = join(p.cycle_dir(k), "maps", case + ".npy")
            q_file = join(p.cycle_dir(k), "predictions_sample", case + ".npy")
            rows.append({"case": case, "image": data[0].reshape(data.shape[-2:]), "label": label, "truth": truth,
                         "map": np.load(source_map).astype(np.float32) if isfile(source_map)
                         else np.zeros(label.shape, np.float32),
                         "map_name": "CCAM saliency" if k == 1 else f"cycle {k - 1} probability",
                         "prediction": (np.load(q_file) > 0.5) if isfile(q_file) else None})
    labels["change_foreground_dice"] = rep.mean_of(change, "foreground_dice")
    labels["change_fraction"] = rep.mean_of(change, "changed_fraction")
    labels["dice"] = rep.mean_of(against, "dice")
    labels["certain_accuracy"] = rep.mean_of(against, "certain_accuracy")
    overlay = join(p.cycle_dir(k), "overlays.png")
    if rows:
        rep.overlay_sheet(overlay, f"{p.dataset_name}, cycle {k}: trained on {labels['source']}", rows)
    return {"cycle": k, "pseudo_labels": labels,
            "prediction": {"foreground_fraction": prediction.get("foreground_fraction"),
                           "dice": prediction.get("dice"), "test_dice": test},
            "model": p.model_dir(k), "overlays": overlay if rows else None}


# ---------------------------------------------------------------------------------------------------- the command
def run_uslnet(dataset, configuration: str = "2d", trainer: str = "USLNetTrainer", num_cycles: Optional[int] = None,
               device: str = "cuda", moco_checkpoint: Optional[str] = None, eval_labels: Optional[str] = None,
               plans_identifier: str = "nnUNetPlans", use_mirroring: bool = False, evaluate_test: bool = True,
               num_processes: int = 2, log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the whole USL-Net pipeline; returns the report (``{"cycles": [...], ...}``)."""
    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.trainers.uslnet import USLNetError, USLNetTrainer, check_2d
    dataset_name = find_dataset_name(dataset)
    trainer_class = find_trainer_class(trainer) if isinstance(trainer, str) else trainer
    if not issubclass(trainer_class, USLNetTrainer):
        raise USLNetError(f"{trainer_class.__name__} is not a USL-Net trainer (USLNetTrainer or a variant of it).")
    if (trainer_class.optimizer_name or "").startswith("hco"):
        raise USLNetError(f"{trainer_class.__name__} learns without labels, so HCO has no labeled gradient to trust; "
                          f"use a USLNetTrainer variant with sgd or adamw.")
    num_cycles = int(trainer_class.num_cycles if num_cycles is None else num_cycles)
    if num_cycles < 1:
        raise USLNetError(f"--cycles must be at least 1, not {num_cycles}.")
    if device == "cuda" and not torch.cuda.is_available():
        raise USLNetError("-device cuda was requested but no CUDA GPU is available; use -device cpu.")
    _ensure_preprocessed(dataset_name, configuration, plans_identifier, num_processes, log)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = load_json(join(str(nnUNet_preprocessed), dataset_name, plans_identifier + ".json"))
    check_2d(PlansManager(plans).get_configuration(configuration).patch_size, configuration, dataset_name)

    settings = {**_settings(trainer_class, moco_checkpoint), "use_mirroring": use_mirroring}
    p = Pipeline(dataset_name, configuration, trainer_class, plans_identifier, torch.device(device), settings, log)
    if len(p.cases) < 2:
        raise USLNetError(f"USL-Net needs at least 2 unlabeled images; {p.unlabeled_folder} holds {len(p.cases)}.")
    _check_state(p.work, settings, p.cases)
    if eval_labels:
        from semi_nnunet.uslnet.data import preprocess_eval_labels
        p.eval_labels = preprocess_eval_labels(eval_labels, p.raw_folder, p.cases, p.plans, configuration,
                                               p.dataset_json, join(p.work, "eval_labels"))
        log(f"Evaluation labels for {len(p.eval_labels)} of {len(p.cases)} cases (report only, never trained on)")

    start = time.time()
    saliency_stage(p)
    rows = []
    for k in range(1, num_cycles + 1):
        train_cycle(p, k)
        prediction = predict_cycle(p, k, num_cycles)
        test = test_dice(p, k) if evaluate_test else None
        rows.append(cycle_report(p, k, prediction, test))
        rep.write_report(rows, join(p.work, "report.json"), join(p.work, "report.png"))
        _log_row(log, rows[-1])
    if not isfile(join(p.results, "fold_all", "uslnet_cycle.json")) or \
            load_json(join(p.results, "fold_all", "uslnet_cycle.json"))["cycle"] != num_cycles:
        publish(p, num_cycles)
    log(f"USL-Net done ({time.time() - start:.0f} s): final model = cycle {num_cycles}, "
        f"{join(p.results, 'fold_all')} (predict with -tr {trainer_class.__name__} -f all); report "
        f"{join(p.work, 'report.json')}, overlay sheets {join(p.work, 'cycle_<k>', 'overlays.png')}")
    return {"cycles": rows, "results_folder": p.results, "work_folder": p.work}


def _log_row(log, row: dict) -> None:
    def fmt(v):
        return "-" if v is None else f"{v:.3f}"
    pl, pr = row["pseudo_labels"], row["prediction"]
    log(f"Cycle {row['cycle']}: pseudo-labels fg {fmt(pl['foreground_fraction'])} uncertain "
        f"{fmt(pl['uncertain_fraction'])} change (fg Dice) {fmt(pl['change_foreground_dice'])} Dice "
        f"{fmt(pl['dice'])}; prediction fg {fmt(pr['foreground_fraction'])} Dice {fmt(pr['dice'])} test Dice "
        f"{fmt(pr['test_dice'])}")
