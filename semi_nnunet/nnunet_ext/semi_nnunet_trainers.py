"""Shim for nnU-Net's ``nnUNet_extTrainer`` lookup.

Point ``nnUNet_extTrainer`` at this folder (``semi_nnUNet_ext_path`` prints it) and stock nnU-Net commands
(``nnUNetv2_train``, ``nnUNetv2_predict``, ``nnUNetv2_find_best_configuration``) find every semi_nnunet trainer by
class name. nnU-Net imports this file as a top-level module; the classes it exposes are the package's own objects,
so no trainer module is imported twice.
"""
from semi_nnunet.trainers import all_trainer_classes, find_trainer

globals().update(all_trainer_classes())


def __getattr__(name):  # optimizer variants such as MeanTeacherTrainer_HCO are made on demand (PEP 562)
    cls = find_trainer(name)
    if cls is None:
        raise AttributeError(name)
    return cls
