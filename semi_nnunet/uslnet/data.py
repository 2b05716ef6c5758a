"""Data helpers for USL-Net: an all-unlabeled dataset from a labeled one, and evaluation labels.

* :func:`withhold_labels` moves a raw dataset's ``imagesTr`` into ``imagesUnlabeled`` and its ``labelsTr`` into a
  folder outside the dataset (the benchmark and the tests: "no labels given", Dice computed afterwards).
* :func:`preprocess_eval_labels` puts evaluation labels (``<case><file_ending>`` for unlabeled cases) through
  nnU-Net's preprocessor with the case's image, so they share the grid of the preprocessed cases, pseudo-labels and
  predictions. They are written to the pipeline's ``eval_labels/`` folder, read by the report only.
"""
import os
import shutil
from typing import Dict, List, Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, list_cases


def withhold_labels(raw_folder: str, withheld_folder: str) -> List[str]:
    """Move every labeled case of ``raw_folder`` to ``imagesUnlabeled/`` and its label to ``withheld_folder``;
    dataset.json then says ``numTraining: 0``. Returns the moved case ids."""
    dataset_json = load_json(join(raw_folder, "dataset.json"))
    ending = dataset_json["file_ending"]
    cases = list_cases(join(raw_folder, "imagesTr"), ending, len(dataset_json["channel_names"]))
    os.makedirs(withheld_folder, exist_ok=True)
    os.makedirs(join(raw_folder, UNLABELED_FOLDER), exist_ok=True)
    for case, files in cases.items():
        for f in files:
            shutil.move(f, join(raw_folder, UNLABELED_FOLDER, os.path.basename(f)))
        shutil.move(join(raw_folder, "labelsTr", case + ending), join(withheld_folder, case + ending))
    dataset_json["numUnlabeled"] = int(dataset_json.get("numUnlabeled", 0)) + len(cases)
    dataset_json["numTraining"] = 0
    save_json_atomic(dataset_json, join(raw_folder, "dataset.json"))
    return sorted(cases)


def preprocess_eval_labels(eval_folder: str, raw_folder: str, cases: List[str], plans: dict, configuration: str,
                           dataset_json: dict, output_folder: str) -> Dict[str, str]:
    """``case -> .npy`` of the preprocessed evaluation label of every case in ``cases`` that has one in
    ``eval_folder`` (skipped when already there)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    if not os.path.isdir(eval_folder):
        raise FileNotFoundError(f"The evaluation label folder does not exist: {eval_folder}")
    ending = dataset_json["file_ending"]
    images = list_cases(join(raw_folder, UNLABELED_FOLDER), ending, len(dataset_json["channel_names"]))
    plans_manager = PlansManager(plans)
    cm = plans_manager.get_configuration(configuration)
    preprocessor = None
    out: Dict[str, str] = {}
    os.makedirs(output_folder, exist_ok=True)
    for case in cases:
        label = join(eval_folder, case + ending)
        target = join(output_folder, case + ".npy")
        if not isfile(label) or case not in images:
            continue
        if not isfile(target):
            preprocessor = preprocessor or cm.preprocessor_class(verbose=False)
            _, seg, _ = preprocessor.run_case(images[case], label, plans_manager, cm, dataset_json)
            with atomic_path(target) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, np.asarray(seg, dtype=np.int8).reshape(seg.shape[-2:]))
        out[case] = target
    return out


def load_eval_label(path: Optional[str]) -> Optional[np.ndarray]:
    return None if path is None else np.load(path)
