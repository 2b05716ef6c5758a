"""Training as Python functions: find a trainer by class name, train one fold or all folds.

The work is done by nnU-Net's own ``run_training`` (single device and DDP); we only make our trainers findable by
putting :mod:`semi_nnunet.nnunet_ext` on ``nnUNet_extTrainer`` and choose the folds.
"""
import difflib
import os
from typing import List, Optional, Sequence, Union

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

import semi_nnunet.nnunet_ext as _ext


class TrainingError(ValueError):
    """A bad training request (unknown trainer, fold, missing preprocessing); the message says how to fix it."""


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
        close = difflib.get_close_matches(name, list(ours) + _nnunet_trainer_names(), n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else \
            f"semi_nnunet trainers: {', '.join(sorted(ours))}"
        raise TrainingError(f"Unknown trainer '{name}' ({hint}).") from None


def folds_from_splits(dataset_name: str) -> List[int]:
    from nnunetv2.paths import nnUNet_preprocessed
    splits_file = join(str(nnUNet_preprocessed), dataset_name, "splits_final.json")
    if not isfile(splits_file):
        raise TrainingError(f"No splits file {splits_file}: run semi_nnUNet_plan_and_preprocess -d "
                            f"{dataset_name} first, or give a fold.")
    return list(range(len(load_json(splits_file))))


def with_optimizer(trainer: str, optimizer: Optional[str]) -> str:
    """``--optimizer``: the trainer's optimizer variant name (``MeanTeacherTrainer`` + ``hco_adamw`` ->
    ``MeanTeacherTrainer_hco_adamw``), checked to be a semi-supervised trainer."""
    if not optimizer:
        return trainer
    from semi_nnunet.trainers.base import SemiSupervisedTrainer
    from semi_nnunet.trainers.optimizers import OPTIMIZERS
    if optimizer not in OPTIMIZERS:
        raise TrainingError(f"Unknown optimizer '{optimizer}'; choose one of {', '.join(OPTIMIZERS)}.")
    if not issubclass(find_trainer_class(trainer), SemiSupervisedTrainer):
        raise TrainingError(f"--optimizer applies to semi-supervised trainers; {trainer} is not one (for nnU-Net's "
                            f"own optimizer variants use e.g. nnUNetTrainerAdam).")
    return f"{trainer}_{optimizer}"


def train(dataset: Union[int, str], configuration: str, trainer: str = "nnUNetTrainer",
          folds: Optional[Sequence[Union[int, str]]] = None, plans_identifier: str = "nnUNetPlans",
          device: str = "cuda", continue_training: bool = False, only_run_validation: bool = False,
          export_validation_probabilities: bool = False, num_gpus: int = 1,
          pretrained_weights: Optional[str] = None, val_with_best: bool = False,
          stages: Optional[int] = None, dry_run: bool = False, parallel: int = 1,
          stop_agreement: Optional[float] = None, finetune: bool = False) -> List[str]:
    """Train ``trainer`` on the given folds (``None``: every fold of the splits). Returns the output folders.

    A staged trainer (``num_stages > 0``, e.g. SemiCervixTrainer) runs its whole pipeline: stage 0, pseudo-labels from
    each fold's own model, stage 1, ... (``stages`` overrides the count; 0 trains stage 0 only)."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import run_training
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name
    trainer_class = find_trainer_class(trainer)  # fails early, with close matches, before any fold starts
    if not getattr(trainer_class, "requires_labels", True) and (trainer_class.optimizer_name or "").startswith("hco"):
        raise TrainingError(f"{trainer} learns without labels, so HCO has no labeled gradient to trust; use "
                            f"--optimizer sgd or adamw.")
    dataset_name = find_dataset_name(dataset)
    plans_file = join(str(nnUNet_preprocessed), dataset_name, plans_identifier + ".json")
    if not isfile(plans_file):
        raise TrainingError(f"Plans {plans_file} not found: run semi_nnUNet_plan_and_preprocess -d {dataset} "
                            f"(with -pl for other planners) first.")
    available = list(load_json(plans_file)["configurations"])
    if configuration not in available:
        raise TrainingError(f"Configuration '{configuration}' is not in {plans_file} (available: {available}).")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from semi_nnunet.trainers.base import unlabeled_preprocessed
    data_identifier = PlansManager(plans_file).get_configuration(configuration).data_identifier
    if not unlabeled_preprocessed(trainer_class, join(str(nnUNet_preprocessed), dataset_name), data_identifier):
        raise TrainingError(f"{trainer} needs unlabeled cases, but none are preprocessed for {configuration}: put "
                            f"unlabeled images into imagesUnlabeled/ of the raw dataset (with \"numUnlabeled\" in "
                            f"dataset.json) and run semi_nnUNet_plan_and_preprocess -d {dataset} -c {configuration}.")
    folds = folds_from_splits(dataset_name) if not folds else [f if f == "all" else int(f) for f in folds]
    n_splits = None
    for f in folds:
        if f != "all":
            n_splits = n_splits or len(folds_from_splits(dataset_name))
            if not 0 <= f < n_splits:
                raise TrainingError(f"Fold {f} is out of range: the splits file has folds 0..{n_splits - 1} "
                                    f"(or use 'all').")
    if device == "cuda" and not torch.cuda.is_available() and not dry_run:
        raise TrainingError("-device cuda was requested but no CUDA GPU is available; use -device cpu.")

    n_stages = getattr(trainer_class, "num_stages", 0) if stages is None else stages
    if n_stages > 0 and not only_run_validation:
        from semi_nnunet.stages.runner import run_stages

        def train_one(*args, **kwargs):
            return train(*args, stages=0, **kwargs)
        return run_stages(dataset_name, configuration, trainer, folds, n_stages, plans_identifier, device,
                          num_gpus=num_gpus, train_fn=train_one, dry_run=dry_run, parallel=parallel,
                          stop_agreement=stop_agreement, finetune=finetune)

    register_with_nnunet()
    outputs = []
    for f in folds:
        run_training(dataset_name, configuration, f, trainer, plans_identifier, pretrained_weights, num_gpus,
                     export_validation_probabilities, continue_training, only_run_validation, False,
                     val_with_best, device=torch.device(device))
        outputs.append(get_output_folder(dataset_name, trainer, plans_identifier, configuration, f))
    return outputs
