"""Case-by-case preprocessing with nnU-Net's own preprocessor, for labeled and unlabeled cases alike.

nnU-Net's ``DefaultPreprocessor.run`` deletes its output folder and redoes every case. We call the same
``run_case_save`` per case instead, which lets us

* write unlabeled cases into their own folder (``<data_identifier>_unlabeled``), so nnU-Net's splits and loaders
  never see them as all-background cases,
* skip cases that are already done and current (a manifest records a stamp of the plans and source files per case),
* write each case atomically (into a staging folder, then renamed), so an interrupted run never leaves a truncated
  case that a loader would read.

The preprocessed arrays are bit-identical to stock nnU-Net's, because the same preprocessor class does the work.
An unlabeled case is preprocessed with ``seg_file=None``; its ``_seg.b2nd`` then holds only nnU-Net's nonzero mask
(-1 outside the nonzero region, 0 inside), never a label.
"""
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from typing import Dict, List, Optional, Tuple

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p
from tqdm import tqdm

from semi_nnunet.utilities.file_ops import save_json_atomic
from semi_nnunet.utilities.raw_dataset import DatasetError

# next to the preprocessed folders: nnU-Net infers a folder's format from every file in it
STATE_FOLDER = ".semi_nnunet"
_CASE_SUFFIXES = (".b2nd", "_seg.b2nd", ".pkl")


def unlabeled_folder_name(data_identifier: str) -> str:
    """Folder (next to nnU-Net's ``<data_identifier>``) that holds the preprocessed unlabeled cases."""
    return data_identifier + "_unlabeled"


# the entries of a configuration that change its preprocessed cases (not patch or batch size, not the architecture:
# nnU-Net's ResEnc plans share the default plans' preprocessed data)
PREPROCESSING_KEYS = ("preprocessor_name", "spacing", "normalization_schemes", "use_mask_for_norm",
                      "resampling_fn_data", "resampling_fn_seg", "resampling_fn_data_kwargs",
                      "resampling_fn_seg_kwargs")


def configuration_stamp(plans: dict, configuration: str, dataset_json: dict) -> str:
    """Hash of everything in the plans that changes a preprocessed case of ``configuration``."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    cm = PlansManager(plans).get_configuration(configuration)
    relevant = {
        "configuration": {k: cm.configuration.get(k) for k in PREPROCESSING_KEYS},
        "transpose_forward": plans.get("transpose_forward"),
        "intensity": plans.get("foreground_intensity_properties_per_channel"),
        "labels": dataset_json.get("labels"),
        "regions_class_order": dataset_json.get("regions_class_order"),
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def files_stamp(files: List[str]) -> str:
    """Hash of the source files' names, sizes and modification times (cheap; no pixel data read)."""
    h = hashlib.sha1()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns};".encode())
    return h.hexdigest()


def case_is_complete(folder: str, case: str) -> bool:
    return all(isfile(join(folder, case + s)) for s in _CASE_SUFFIXES)


def _state_paths(output_folder: str) -> Tuple[str, str]:
    """(manifest file, staging folder) of ``output_folder``, kept outside it."""
    parent, name = os.path.split(os.path.abspath(output_folder))
    return join(parent, STATE_FOLDER, name + ".manifest.json"), join(parent, STATE_FOLDER, "staging_" + name)


def _preprocess_one(preprocessor, output_folder: str, case: str, images: List[str], label: Optional[str],
                    plans_manager, configuration_manager, dataset_json: dict) -> str:
    staging = _state_paths(output_folder)[1]
    maybe_mkdir_p(staging)
    truncated = join(staging, case)
    try:
        try:
            preprocessor.run_case_save(truncated, images, label, plans_manager, configuration_manager, dataset_json)
        except Exception as e:  # nnU-Net's readers raise anything from AssertionError to OSError
            raise DatasetError(f"Case '{case}' cannot be preprocessed ({type(e).__name__}: {e}).",
                               _unreadable_file(images, label, plans_manager),
                               "replace the file with an intact copy, or remove the case "
                               "(--verify_dataset_integrity reads every file before preprocessing).") from None
        # the data file goes last: nnU-Net lists a folder's cases by their '.b2nd' data files
        for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):
            os.replace(truncated + suffix, join(output_folder, case + suffix))
    except BaseException:
        for suffix in _CASE_SUFFIXES:
            if os.path.exists(truncated + suffix):
                os.remove(truncated + suffix)
        raise
    return case


def _unreadable_file(images: List[str], label: Optional[str], plans_manager) -> str:
    """The first of a case's files that nnU-Net's reader cannot read (the first image when all can)."""
    rw = plans_manager.image_reader_writer_class()
    for f in images + ([label] if label else []):
        try:
            rw.read_seg(f) if f == label else rw.read_images([f])
        except Exception:
            return f
    return images[0]


def _preprocess_one_star(args) -> str:
    return _preprocess_one(*args)


def preprocess_cases(cases: Dict[str, Tuple[List[str], Optional[str]]], output_folder: str, plans: dict,
                     configuration: str, dataset_json: dict, num_processes: int = 1, desc: str = "cases",
                     show_progress: bool = True) -> Dict[str, int]:
    """Preprocess ``cases`` (id -> (image files, label file or None)) into ``output_folder``.

    Skips cases whose outputs exist and whose stamp (plans + source files) is unchanged; removes outputs of cases
    that are no longer in ``cases``. Returns counts: ``{"done": n_processed, "skipped": n, "removed": n}``.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    maybe_mkdir_p(output_folder)
    manifest_file, staging = _state_paths(output_folder)
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted run
    manifest = load_json(manifest_file) if isfile(manifest_file) else {}
    cfg = configuration_stamp(plans, configuration, dataset_json)
    wanted = {k: cfg + ":" + files_stamp(imgs + ([lab] if lab else [])) for k, (imgs, lab) in cases.items()}

    removed = 0
    files = os.listdir(output_folder)
    present = {f[:-len(".pkl")] for f in files if f.endswith(".pkl")} | \
        {f[:-len(".b2nd")] for f in files if f.endswith(".b2nd") and not f.endswith("_seg.b2nd")}
    for stale in sorted(present - set(cases)):
        for suffix in _CASE_SUFFIXES:
            if isfile(join(output_folder, stale + suffix)):
                os.remove(join(output_folder, stale + suffix))
        manifest.pop(stale, None)
        removed += 1

    todo = [k for k in sorted(cases) if manifest.get(k) != wanted[k] or not case_is_complete(output_folder, k)]
    skipped = len(cases) - len(todo)
    if todo:
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        jobs = [(preprocessor, output_folder, k, cases[k][0], cases[k][1], plans_manager, configuration_manager,
                 dataset_json) for k in todo]
        with tqdm(total=len(todo), desc=f"Preprocessing {desc} ({configuration})",
                  disable=not show_progress) as bar:
            done, last_save = [], [time.time()]

            def finished(k):
                manifest[k] = wanted[k]
                done.append(k)
                bar.update()
                if len(done) % 50 == 0 or time.time() - last_save[0] > 10:  # what a killed run need not redo
                    save_json_atomic(manifest, manifest_file)
                    last_save[0] = time.time()

            try:
                if num_processes <= 1:
                    for job in jobs:
                        finished(_preprocess_one_star(job))
                else:
                    with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
                        for k in pool.imap_unordered(_preprocess_one_star, jobs):
                            finished(k)
            finally:
                if done or removed:  # a run that finished no case leaves the manifest as it was
                    save_json_atomic(manifest, manifest_file)
    shutil.rmtree(staging, ignore_errors=True)
    return {"done": len(todo), "skipped": skipped, "removed": removed}
