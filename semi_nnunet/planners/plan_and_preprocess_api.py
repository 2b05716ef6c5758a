"""``semi_nnUNet_plan_and_preprocess`` as Python functions.

1. Check the raw dataset, unlabeled cases included (:func:`check_semi_dataset`), before anything is written; when
   bad input shows up only later (an image nnU-Net's reader cannot decode, NaN intensities), the error names the file
   and a first run removes what it wrote.
2. nnU-Net's fingerprint and plans from the **labeled cases only**, with nnU-Net's own extractor and planner (any
   planner class, ResEnc included), so the plans are identical to stock nnU-Net's and ``nnUNetv2_predict`` works.
3. Labeled cases preprocessed into nnU-Net's folder, unlabeled cases with the same plans into
   ``<data_identifier>_unlabeled`` next to it; each case skipped when already done and current.
4. ``gt_segmentations`` (as nnU-Net) and ``splits_final.json`` over labeled cases only.
"""
import os
import shutil
from typing import Dict, List, Optional, Sequence

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p

from semi_nnunet.planners.preprocessing import files_stamp, preprocess_cases, unlabeled_folder_name
from semi_nnunet.utilities.file_ops import copy_atomic, is_same_copy, save_json_atomic
from semi_nnunet.utilities.errors import InputError
from semi_nnunet.utilities.raw_dataset import DatasetError, check_label_values, check_semi_dataset

FINGERPRINT_STAMP = ".semi_nnunet_fingerprint_stamp.json"
# nnU-Net's standard configurations: one that a dataset's plans lack is skipped (e.g. 3d_fullres of a 2D dataset)
NNUNET_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def _default_num_processes() -> int:
    from nnunetv2.configuration import default_num_processes
    return default_num_processes


def find_dataset_name(dataset_id) -> str:
    """``3`` or ``"Dataset003_X"`` -> ``"Dataset003_X"``, with a clear error when it is not in nnUNet_raw."""
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    if not nnUNet_raw.is_set():
        raise DatasetError("The environment variable nnUNet_raw is not set.", "environment",
                           "export nnUNet_raw=/path/to/raw (and nnUNet_preprocessed, nnUNet_results).")
    try:
        return str(maybe_convert_to_dataset_name(dataset_id))
    except RuntimeError:
        raise DatasetError(f"No dataset with id {dataset_id} in nnUNet_raw.", str(nnUNet_raw),
                           "convert the dataset first (semi_nnUNet_convert_*) or check the id.") from None


def _fingerprint_stamp(labeled_files: List[str], dataset_json: dict,
                       label_free: Optional[Dict[str, List[str]]] = None) -> dict:
    if label_free:
        labeled_files = [f for k in sorted(label_free) for f in label_free[k]]
    return {"files": files_stamp(labeled_files), "dataset_json": {k: dataset_json[k] for k in sorted(dataset_json)
                                                                  if k not in ("numUnlabeled",)}}


def fingerprint_is_current(dataset_name: str, labeled_files: List[str], dataset_json: dict,
                           label_free: Optional[Dict[str, List[str]]] = None) -> bool:
    """True when the fingerprint exists and was extracted from these very files and dataset.json."""
    from nnunetv2.paths import nnUNet_preprocessed
    folder = join(str(nnUNet_preprocessed), dataset_name)
    stamp_file = join(folder, FINGERPRINT_STAMP)
    return isfile(join(folder, "dataset_fingerprint.json")) and isfile(stamp_file) and \
        load_json(stamp_file) == _fingerprint_stamp(labeled_files, dataset_json, label_free)


def _find_unreadable_or_nan(cases: Dict[str, List[str]], dataset_json: dict) -> None:
    """Raise the :class:`DatasetError` of the first case whose pixels cannot be read or are not finite (the diagnosis
    when nnU-Net's fingerprint extraction fails or gives NaN intensities; reads the images only on that path)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from semi_nnunet.utilities.raw_dataset import read_full_check
    rw = determine_reader_writer_from_dataset_json(dataset_json, next(iter(cases.values()))[0], verbose=False)
    for case in sorted(cases):
        try:
            read_full_check(case, cases[case], rw)
        except DatasetError as e:
            if "constant" not in e.problem:  # a blank image does not break the fingerprint
                raise


def extract_fingerprint_if_needed(dataset_name: str, labeled_files: List[str], dataset_json: dict,
                                  num_processes: int, force: bool = False,
                                  label_free: Optional[Dict[str, List[str]]] = None,
                                  labeled_cases: Optional[Dict[str, List[str]]] = None) -> bool:
    """Run nnU-Net's fingerprint extractor unless the labeled files and dataset.json are unchanged. True if run.
    ``label_free`` (case -> image files): a dataset without labeled cases, fingerprinted from these images
    (:mod:`semi_nnunet.planners.label_free`). ``labeled_cases`` (case -> image files): when the extraction fails or
    gives non-finite intensities, the case to blame is found among these and named in a :class:`DatasetError`."""
    import math
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.paths import nnUNet_preprocessed
    folder = join(str(nnUNet_preprocessed), dataset_name)
    stamp_file = join(folder, FINGERPRINT_STAMP)
    fingerprint_file = join(folder, "dataset_fingerprint.json")
    if fingerprint_is_current(dataset_name, labeled_files, dataset_json, label_free) and not force:
        print(f"Fingerprint of {dataset_name} is current; skipping its extraction.")
        return False
    maybe_mkdir_p(folder)
    if isfile(stamp_file):
        os.remove(stamp_file)  # the stamp is written after a complete fingerprint only
    suspects = label_free or labeled_cases or {}
    try:
        if label_free:
            from semi_nnunet.planners.label_free import label_free_fingerprint
            save_json_atomic(label_free_fingerprint(dataset_json, label_free, num_processes), fingerprint_file)
        else:
            DatasetFingerprintExtractor(dataset_name, max(1, num_processes), verbose=False).run(overwrite_existing=True)
    except Exception:
        if suspects:
            _find_unreadable_or_nan(suspects, dataset_json)
        raise
    intensities = load_json(fingerprint_file).get("foreground_intensity_properties_per_channel", {})
    if any(isinstance(v, float) and not math.isfinite(v) for ch in intensities.values() for v in ch.values()):
        os.remove(fingerprint_file)
        if suspects:
            _find_unreadable_or_nan(suspects, dataset_json)
        raise DatasetError("The dataset fingerprint has non-finite intensities: an image holds NaN or infinite "
                           "values.", fingerprint_file,
                           "run again with --verify_dataset_integrity to find the image, and replace its non-finite "
                           "values.")
    save_json_atomic(_fingerprint_stamp(labeled_files, dataset_json, label_free), stamp_file)
    return True


def find_planner_class(planner: str) -> type:
    """nnU-Net's planner class of that name, or a :class:`DatasetError` naming ``-pl``."""
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    planner_class = recursive_find_python_class(join(nnunetv2.__path__[0], "experiment_planning"), planner,
                                                current_module="nnunetv2.experiment_planning")
    if planner_class is None:
        raise DatasetError(f"Unknown planner '{planner}'.", "-pl",
                           "use an nnU-Net planner class name, e.g. ExperimentPlanner, nnUNetPlannerResEncM, "
                           "nnUNetPlannerResEncL.")
    return planner_class


def plan(dataset_name: str, planner: str = "ExperimentPlanner", plans_name: Optional[str] = None,
         gpu_memory_target_in_gb: Optional[float] = None, preprocessor_name: str = "DefaultPreprocessor",
         label_free: Optional[Dict[str, List[str]]] = None) -> str:
    """nnU-Net's planner on the fingerprint (labeled cases; ``label_free``: these unlabeled cases when the dataset
    has no labeled one). Returns the plans identifier."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiment_dataset
    from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
    planner_class = find_planner_class(planner)
    if label_free:
        from semi_nnunet.planners.label_free import label_free_planner
        planner_class = label_free_planner(planner_class, label_free)
    # nnU-Net's VRAM estimate calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for the value 0 that we
    # recommend for CPU runs (augmentation in the main process); planning does not use it otherwise.
    n_proc_da = os.environ.get("nnUNet_n_proc_DA")
    if n_proc_da is not None and int(n_proc_da) < 1:
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        _, plans_identifier = plan_experiment_dataset(convert_dataset_name_to_id(dataset_name), planner_class,
                                                      gpu_memory_target_in_gb, preprocessor_name,
                                                      overwrite_plans_name=plans_name)
    finally:
        if n_proc_da is not None:
            os.environ["nnUNet_n_proc_DA"] = n_proc_da
    return plans_identifier


def write_splits(preprocessed_folder: str, labeled_ids: Sequence[str], unlabeled_ids: Sequence[str]) -> str:
    """``splits_final.json`` over labeled cases only: nnU-Net's own seeded 5-fold split, created if missing.

    An existing file is kept (as nnU-Net does) but must not name unlabeled or unknown cases.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    splits_file = join(preprocessed_folder, "splits_final.json")
    labeled, unlabeled = set(labeled_ids), set(unlabeled_ids)
    if isfile(splits_file):
        for i, split in enumerate(load_json(splits_file)):
            for part in ("train", "val"):
                bad = sorted(set(split[part]) - labeled)
                if bad:
                    kind = "unlabeled" if set(bad) & unlabeled else "unknown"
                    raise DatasetError(f"Fold {i} '{part}' of the splits file names {kind} case(s) {bad[:5]}.",
                                       splits_file, "delete the file to regenerate it from the labeled cases, or "
                                                    "remove those ids.")
        return splits_file
    if len(labeled) >= 2:
        splits = generate_crossval_split(sorted(labeled), seed=12345, n_splits=min(5, len(labeled)))
        save_json_atomic(splits, splits_file)
    return splits_file


def copy_gt_segmentations(preprocessed_folder: str, labels: Dict[str, str], file_ending: str) -> None:
    """nnU-Net keeps a copy of the labeled ground truth for validation; same, but atomic and only when changed."""
    out = join(preprocessed_folder, "gt_segmentations")
    maybe_mkdir_p(out)
    for case, label in labels.items():
        target = join(out, case + file_ending)
        if not is_same_copy(label, target):
            copy_atomic(label, target)


def plan_and_preprocess(dataset_id, configurations: Sequence[str] = ("2d", "3d_fullres"),
                        planner: str = "ExperimentPlanner", plans_name: Optional[str] = None,
                        verify_dataset_integrity: bool = False, num_processes: Optional[int] = None,
                        gpu_memory_target_in_gb: Optional[float] = None, preprocess: bool = True,
                        show_progress: bool = True, replace_plans: bool = False,
                        fingerprint_processes: Optional[int] = None, clean: bool = False) -> dict:
    """The whole of ``semi_nnUNet_plan_and_preprocess``. Returns a summary (plans identifier, counts, folders).
    ``fingerprint_processes``: nnU-Net's ``-npfp`` (default: ``num_processes``); ``clean``: nnU-Net's ``--clean``,
    the fingerprint is extracted again even when current.

    Plans that exist under the same identifier and come out different (other settings, or changed labeled data) are
    kept and the run refused, unless ``replace_plans``: they are what the trainings from them use."""
    from nnunetv2.paths import nnUNet_preprocessed
    if not nnUNet_preprocessed.is_set():
        raise DatasetError("The environment variable nnUNet_preprocessed is not set.", "environment",
                           "export nnUNet_preprocessed=/path/to/preprocessed.")
    num_processes = _default_num_processes() if num_processes is None else num_processes
    dataset_name = find_dataset_name(dataset_id)
    preprocessed_folder = join(str(nnUNet_preprocessed), dataset_name)
    created = not os.path.isdir(preprocessed_folder)
    try:
        return _plan_and_preprocess(dataset_name, configurations, planner, plans_name, verify_dataset_integrity,
                                    num_processes, gpu_memory_target_in_gb, preprocess, show_progress,
                                    replace_plans, fingerprint_processes or num_processes, clean)
    except InputError:
        if created:  # bad input found part-way (by nnU-Net's extractor or the preprocessor): no partial output
            shutil.rmtree(preprocessed_folder, ignore_errors=True)
        raise


def _plan_and_preprocess(dataset_name: str, configurations: Sequence[str], planner: str, plans_name: Optional[str],
                         verify_dataset_integrity: bool, num_processes: int,
                         gpu_memory_target_in_gb: Optional[float], preprocess: bool, show_progress: bool,
                         replace_plans: bool, fingerprint_processes: Optional[int] = None,
                         clean: bool = False) -> dict:
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    raw_folder = join(str(nnUNet_raw), dataset_name)
    find_planner_class(planner)

    # 1. every check before anything is written (label values whenever the labeled cases are new or changed)
    ds = check_semi_dataset(raw_folder, read_headers=True, read_pixels=verify_dataset_integrity)
    if verify_dataset_integrity:
        from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity as nnunet_verify
        nnunet_verify(raw_folder, max(1, num_processes))
    print(f"{dataset_name}: {len(ds.labeled)} labeled, {len(ds.unlabeled)} unlabeled cases.")
    if not ds.labeled and not ds.unlabeled:
        raise DatasetError("The dataset has no cases.", raw_folder, "put images into imagesTr/ (with labelsTr/) or "
                                                                    "imagesUnlabeled/.")
    label_free = None if ds.labeled else ds.unlabeled
    labeled_files = [f for k in sorted(ds.labeled) for f in ds.labeled[k] + [ds.labels[k]]]
    if not verify_dataset_integrity and not fingerprint_is_current(dataset_name, labeled_files, ds.dataset_json,
                                                                   label_free):
        check_label_values(ds, num_processes)

    # 2. fingerprint + plans from labeled cases only (nnU-Net never looks at imagesUnlabeled/); a dataset without any
    #    labeled case (e.g. for USL-Net) is planned from its unlabeled images (semi_nnunet.planners.label_free)
    preprocessed_folder = join(str(nnUNet_preprocessed), dataset_name)
    before = _json_files(preprocessed_folder)
    extract_fingerprint_if_needed(dataset_name, labeled_files, ds.dataset_json, fingerprint_processes or num_processes,
                                  force=clean, label_free=label_free, labeled_cases=ds.labeled)
    plans_identifier = plan(dataset_name, planner, plans_name, gpu_memory_target_in_gb, label_free=label_free)
    if not replace_plans:
        _refuse_changed_plans(preprocessed_folder, plans_identifier, before)
    summary = {"dataset_name": dataset_name, "plans_identifier": plans_identifier, "configurations": {},
               "num_labeled": len(ds.labeled), "num_unlabeled": len(ds.unlabeled)}
    if not preprocess:
        return summary

    # 3. preprocessing, labeled and unlabeled, with the same plans
    plans = load_json(join(preprocessed_folder, plans_identifier + ".json"))
    dataset_json = load_json(join(preprocessed_folder, "dataset.json"))
    plans_manager = PlansManager(plans)
    available = plans_manager.available_configurations
    unknown = [c for c in configurations if c not in available and c not in NNUNET_CONFIGURATIONS]
    if unknown:
        raise DatasetError(f"Configuration(s) {unknown} are neither in {plans_identifier}.json (available: "
                           f"{available}) nor nnU-Net configurations.", "-c",
                           f"use configurations of the plans, e.g. -c {' '.join(available)}.")
    for c in configurations:
        if c not in available:
            print(f"INFO: configuration {c} is not in {plans_identifier}.json of {dataset_name} "
                  f"(available: {available}). Skipping.")
            continue
        data_identifier = plans_manager.get_configuration(c).data_identifier
        labeled_out = join(preprocessed_folder, data_identifier)
        unlabeled_out = join(preprocessed_folder, unlabeled_folder_name(data_identifier))
        lab = preprocess_cases({k: (ds.labeled[k], ds.labels[k]) for k in ds.labeled}, labeled_out, plans, c,
                               dataset_json, num_processes, "labeled cases", show_progress)
        unl = preprocess_cases({k: (v, None) for k, v in ds.unlabeled.items()}, unlabeled_out, plans, c,
                               dataset_json, num_processes, "unlabeled cases", show_progress)
        summary["configurations"][c] = {"labeled": lab, "unlabeled": unl, "labeled_folder": labeled_out,
                                        "unlabeled_folder": unlabeled_out}
        print(f"{c}: labeled {lab['done']} done / {lab['skipped']} current; "
              f"unlabeled {unl['done']} done / {unl['skipped']} current -> {unlabeled_out}")

    # 4. ground truth copy and labeled-only splits
    copy_gt_segmentations(preprocessed_folder, ds.labels, ds.dataset_json["file_ending"])
    summary["splits_file"] = write_splits(preprocessed_folder, list(ds.labeled), list(ds.unlabeled))
    return summary


def _json_files(folder: str) -> Dict[str, bytes]:
    """The bytes of the JSON files (plans, fingerprint and its stamp, dataset.json, splits) directly in ``folder``."""
    files = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".json") and isfile(join(folder, name)):
            with open(join(folder, name), "rb") as f:
                files[name] = f.read()
    return files


def _plans_differences(old: dict, new: dict) -> List[str]:
    changed = [k for k in sorted(set(old) | set(new)) if k != "configurations" and old.get(k) != new.get(k)]
    old_c, new_c = old.get("configurations", {}), new.get("configurations", {})
    for c in sorted(set(old_c) | set(new_c)):
        keys = sorted(k for k in set(old_c.get(c, {})) | set(new_c.get(c, {}))
                      if old_c.get(c, {}).get(k) != new_c.get(c, {}).get(k))
        if keys:
            changed.append(f"{c} ({', '.join(keys)})")
    return changed


def _refuse_changed_plans(folder: str, plans_identifier: str, before: Dict[str, bytes]) -> None:
    """Plans that existed before this run and came out different: put back every JSON file this run rewrote
    (plans, fingerprint, stamp, dataset.json) and refuse."""
    import json
    name = plans_identifier + ".json"
    if name not in before:
        return
    changes = _plans_differences(json.loads(before[name]), load_json(join(folder, name)))
    if not changes:
        return
    from semi_nnunet.utilities.file_ops import atomic_path
    for other, content in before.items():
        with atomic_path(join(folder, other)) as tmp, open(tmp, "wb") as f:
            f.write(content)
    raise DatasetError(f"{name} exists, and this run would plan differently ({'; '.join(changes)}): other settings, "
                       f"or changed labeled cases. The plans (and the trainings that use them) are kept.",
                       join(folder, name),
                       "plan beside them under a new name with -overwrite_plans_name NAME, or replace them with "
                       "--replace_plans (their preprocessed data is redone where it changes).")


def get_unlabeled_folder(dataset_name: str, plans_identifier: str, configuration: str) -> str:
    """Where the preprocessed unlabeled cases of a configuration live (used by the trainers)."""
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    folder = join(str(nnUNet_preprocessed), dataset_name)
    pm = PlansManager(join(folder, plans_identifier + ".json"))
    return join(folder, unlabeled_folder_name(pm.get_configuration(configuration).data_identifier))

