"""Image-level classes from models with a classification head (trainers with ``classify``, e.g. Hermes).

nnU-Net's predictor loads the U-Net alone; a classification head lives in the checkpoint's ``auxiliary_weights``
and may read U-Net features, so the trainer itself is rebuilt from the checkpoint (``init_args``) once per fold, in
a throw-away results folder (nnU-Net's constructor creates its output folder and log file), and asked to
``classify`` each preprocessed image. Folds and members are averaged (class probabilities).
"""
import csv
import os
import tempfile
from typing import List, Optional
from unittest import mock

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from semi_nnunet.inference.models import Member
from semi_nnunet.utilities.checkpoints import load_checkpoint_file
from semi_nnunet.utilities.file_ops import atomic_path

CLASSES_CSV = "classes.csv"


def load_classifiers(member: Member, device: torch.device) -> List:
    """One initialised trainer per fold of ``member`` when its trainer classifies; [] otherwise."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    trainers = []
    for fold in member.folds:
        path = join(member.folder, f"fold_{fold}", member.checkpoint)
        # memory-mapped: reading the trainer name and init_args does not read the weights (the predictor loads them);
        # restricted unpickler (semi_nnunet.utilities.checkpoints)
        checkpoint = load_checkpoint_file(path, mmap=True)
        cls = find_trainer_class(checkpoint["trainer_name"])
        if not callable(getattr(cls, "classify", None)):
            return []
        init = checkpoint["init_args"]
        with tempfile.TemporaryDirectory() as scratch, \
                mock.patch.dict(os.environ, {"nnUNet_results": scratch}):
            trainer = cls({**init["plans"], "continue_training": False}, init["configuration"], init["fold"],
                          init["dataset_json"], device)
            trainer.log_file = os.devnull
            trainer.initialize()
        if not getattr(trainer, "has_classifier", True):
            return []
        trainer.load_checkpoint(path)
        trainers.append(trainer)
    return trainers


def class_names(trainer) -> List[str]:
    names = trainer.dataset_json.get("class_names", {})
    return [names[k] for k in sorted(names, key=int)]


@torch.no_grad()
def classify(trainers: List, data: torch.Tensor) -> torch.Tensor:
    return torch.stack([t.classify(data) for t in trainers]).mean(0)


def write_classes_csv(folder: str, rows: dict, names: Optional[List[str]]) -> None:
    """``classes.csv``: case, predicted_class (index), predicted_name, p_<name>... (atomically)."""
    k = len(next(iter(rows.values())))
    names = names if names and len(names) == k else [str(i) for i in range(k)]
    with atomic_path(join(folder, CLASSES_CSV)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "predicted_class", "predicted_name"] + [f"p_{n}" for n in names])
        for case in sorted(rows):
            p = rows[case]
            best = max(range(k), key=lambda i: p[i])
            writer.writerow([case, best, names[best]] + [f"{v:.6f}" for v in p])
