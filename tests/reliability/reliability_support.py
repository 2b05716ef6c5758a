"""Constants and helpers of the reliability tests (imported by their conftest and modules)."""
import hashlib
import os

from batchgenerators.utilities.file_and_folder_operations import join

DATASET_ID = 970
TRAINER = "MeanTeacherTrainer_1epochs_2it"  # a generated budget: one epoch of two iterations
SEED = 0


def tree_digest(*folders: str) -> dict:
    """``{path: sha1 of the file's bytes}`` of every file under ``folders``."""
    digest = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = join(root, name)
                with open(path, "rb") as f:
                    digest[path] = hashlib.sha1(f.read()).hexdigest()
    return digest
