"""Trainers of semi_nnunet, found by class name.

Every module in this package is imported by :func:`all_trainer_classes`, so a new method file registers itself the
day it is added (no hand-kept list to forget). Modules use absolute imports.
"""
import importlib
import inspect
import pkgutil
from typing import Dict


def all_trainer_classes() -> Dict[str, type]:
    """Every ``nnUNetTrainer`` subclass defined in ``semi_nnunet.trainers``, by class name."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    found = {}
    for info in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, nnUNetTrainer) and obj.__module__ == module.__name__ \
                    and not module.__name__.endswith("generated"):  # those are made on demand
                found[name] = obj
    return found


def find_trainer(name: str):
    """A trainer of this package by class name, optimizer variants (``_HCO``, ``_hco_adamw``, ...) included; or None."""
    from semi_nnunet.trainers.generated import resolve
    classes = all_trainer_classes()
    return classes.get(name) or resolve(name, classes)
