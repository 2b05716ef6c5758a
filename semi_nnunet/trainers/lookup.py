"""Finding a trainer by class name (ours first, then nnU-Net's) and making our trainers findable by stock nnU-Net.

Every layer above the trainers (inference, stages, benchmarking, the command line) looks trainers up here.
"""
import difflib
import os
from typing import List, Optional

from batchgenerators.utilities.file_and_folder_operations import join

import semi_nnunet.nnunet_ext as _ext
from semi_nnunet.utilities.errors import InputError


class TrainingError(InputError):
    """A bad training request (unknown trainer, fold, missing preprocessing, a checkpoint that cannot be continued).

    Raised as ``TrainingError(problem, where, fix)``; trainers that check their own set-up may give one message
    that says all three."""

    def __init__(self, problem: str, where: str = "", fix: str = ""):
        if where or fix:
            super().__init__(problem, where, fix)
        else:
            self.problem, self.where, self.fix = problem, where, fix
            ValueError.__init__(self, problem)


def ext_trainer_path() -> str:
    """The folder to put on ``nnUNet_extTrainer`` so stock nnU-Net finds our trainers."""
    return os.path.dirname(os.path.abspath(_ext.__file__))


def register_with_nnunet() -> None:
    """Prepend our shim folder to ``nnUNet_extTrainer`` (this process and the processes it starts)."""
    path = ext_trainer_path()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if path not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([path] + current)


def _nnunet_trainer_names() -> List[str]:
    import nnunetv2
    import pkgutil
    names = []
    folder = join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
    for info in pkgutil.walk_packages([folder], prefix="nnunetv2.training.nnUNetTrainer."):
        names.append(info.name.rsplit(".", 1)[-1])  # module names mirror class names in nnU-Net
    return names


ABSTRACT_TRAINERS = ("SemiSupervisedTrainer", "PseudoLabelTrainer")  # bases that methods build on, not trainable


def method_names() -> List[str]:
    """The semi_nnunet methods a user trains by name (no abstract bases, no size or optimizer variants)."""
    from semi_nnunet.trainers import all_trainer_classes
    return sorted(n for n in all_trainer_classes() if "_" not in n and n not in ABSTRACT_TRAINERS)


def find_trainer_class(name: str) -> type:
    """Our trainers first, then nnU-Net's (so ``nnUNetTrainer`` is the supervised baseline on the same data)."""
    from semi_nnunet.trainers import all_trainer_classes, find_trainer
    found = find_trainer(name)
    if found is not None:
        return found
    ours = all_trainer_classes()
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    try:
        return recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        concrete = [n for n in ours if n not in ABSTRACT_TRAINERS]
        close = difflib.get_close_matches(name, concrete + _nnunet_trainer_names(), n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else \
            f"semi_nnunet methods: {', '.join(method_names())}; nnUNetTrainer is the supervised baseline"
        if name.isdigit() or name == "all":
            hint = f"'{name}' is a fold: the trainer name goes first, e.g. MeanTeacherTrainer {name}"
        raise TrainingError(f"Unknown trainer '{name}' ({hint}).", "trainer argument",
                            "give a trainer class name of semi_nnunet or nnU-Net (documentation/training.md lists "
                            "ours and their variants).") from None


def check_trainer_settings(name: str) -> type:
    """The trainer class of ``name``, refused now (before any training) when its settings, or those of the stages
    a staged trainer makes, cannot train: e.g. HCO on Semi-CervixSeg's uniform stage sampling, which would otherwise
    fail only when stage 1 starts, after the whole initial training."""
    cls = find_trainer_class(name)
    classes = [cls]
    if getattr(cls, "num_stages", 0) and getattr(cls, "stage_trainer", None):
        from semi_nnunet.trainers.generated import stage_variant
        classes.append(stage_variant(cls, 1))  # every later stage carries the same settings
    for c in classes:
        problem = getattr(c, "settings_problem", lambda: None)()
        if problem:
            raise TrainingError(problem, f"trainer {name}", "choose a variant whose settings go together (see "
                                "documentation/training.md), or set the attributes in a subclass of your own.")
    return cls


def with_optimizer(trainer: str, optimizer: Optional[str]) -> str:
    """``--optimizer``: the trainer's optimizer variant name (``MeanTeacherTrainer`` + ``hco_adamw`` ->
    ``MeanTeacherTrainer_hco_adamw``), checked to be a semi-supervised trainer. HCO on the trainer's own optimizer is
    always ``<Trainer>_HCO`` (``--optimizer hco_sgd`` on an SGD trainer), and its own optimizer the trainer itself,
    so one run never lands in two folders."""
    if not optimizer:
        return trainer
    from semi_nnunet.trainers.base import SemiSupervisedTrainer
    from semi_nnunet.trainers.optimizers import OPTIMIZERS
    if optimizer not in OPTIMIZERS:
        raise TrainingError(f"Unknown optimizer '{optimizer}'.", "--optimizer",
                            f"choose one of {', '.join(OPTIMIZERS)}.")
    base = find_trainer_class(trainer)
    if not issubclass(base, SemiSupervisedTrainer):
        raise TrainingError(f"--optimizer applies to semi-supervised trainers; {trainer} is not one.", "--optimizer",
                            "drop --optimizer (for nnU-Net's own optimizer variants use e.g. nnUNetTrainerAdam).")
    from semi_nnunet.trainers.generated import hco_counterpart
    if optimizer == (base.optimizer_name or "sgd"):
        return trainer  # the trainer's own optimizer: the same run, one folder
    if optimizer == hco_counterpart(base.optimizer_name):
        return f"{trainer}_HCO"  # one name for HCO on the trainer's own optimizer, however it was asked for
    return f"{trainer}_{optimizer}"
