"""Training as Python functions: find a trainer by class name, train one fold or all folds.

The work is done by nnU-Net's own ``run_training`` (single device and DDP); we only make our trainers findable by
putting :mod:`semi_nnunet.nnunet_ext` on ``nnUNet_extTrainer`` and choose the folds.
"""
import difflib
import os
from typing import List, Optional, Sequence, Union

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

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
        raise TrainingError(f"Unknown trainer '{name}' ({hint}).", "trainer argument",
                            "give a trainer class name of semi_nnunet or nnU-Net (documentation/training.md lists "
                            "ours).") from None


def folds_from_splits(dataset_name: str) -> List[int]:
    from nnunetv2.paths import nnUNet_preprocessed
    splits_file = join(str(nnUNet_preprocessed), dataset_name, "splits_final.json")
    if not isfile(splits_file):
        raise TrainingError("There is no splits file, so the folds are not known.", splits_file,
                            f"run semi_nnUNet_plan_and_preprocess -d {dataset_name} first, or give a fold.")
    return list(range(len(load_json(splits_file))))


def with_optimizer(trainer: str, optimizer: Optional[str]) -> str:
    """``--optimizer``: the trainer's optimizer variant name (``MeanTeacherTrainer`` + ``hco_adamw`` ->
    ``MeanTeacherTrainer_hco_adamw``), checked to be a semi-supervised trainer."""
    if not optimizer:
        return trainer
    from semi_nnunet.trainers.base import SemiSupervisedTrainer
    from semi_nnunet.trainers.optimizers import OPTIMIZERS
    if optimizer not in OPTIMIZERS:
        raise TrainingError(f"Unknown optimizer '{optimizer}'.", "--optimizer",
                            f"choose one of {', '.join(OPTIMIZERS)}.")
    if not issubclass(find_trainer_class(trainer), SemiSupervisedTrainer):
        raise TrainingError(f"--optimizer applies to semi-supervised trainers; {trainer} is not one.", "--optimizer",
                            "drop --optimizer (for nnU-Net's own optimizer variants use e.g. nnUNetTrainerAdam).")
    return f"{trainer}_{optimizer}"


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (what nnU-Net's network initialisation, case sampling and
    augmentation draw from). Identical runs also need nnUNet_n_proc_DA=0 (augmentation in the main process) and one
    process (no DDP); see documentation/reliability.md."""
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def remove_stale_temporaries(folder: str) -> None:
    """Temporary files an interrupted atomic write left behind (``.tmp-*``, see semi_nnunet.utilities.file_ops)."""
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(".tmp-") and os.path.isfile(join(folder, name)):
                os.remove(join(folder, name))


CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")  # nnU-Net's order for --c


def check_checkpoint_to_continue(output_folder: str, trainer: str, dataset_name: str, configuration: str,
                                 plans_file: str) -> None:
    """The checkpoint ``--c`` would continue from (nnU-Net: final, else latest, else best) is intact, safe to load,
    was written by this trainer for this dataset and configuration, and with the plans the training would use now."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from semi_nnunet.utilities.checkpoints import checkpoint_dataset, load_checkpoint_file
    present = [n for n in CHECKPOINTS if isfile(join(output_folder, n))]
    if not present:
        return
    path = join(output_folder, present[0])
    fix = f"delete it to restart from {present[1]}" if len(present) > 1 else \
        "delete it to restart the training from the beginning"
    checkpoint = load_checkpoint_file(path, mmap=True, fix=fix + " (with the same command).")
    written_by = checkpoint.get("trainer_name")
    if written_by != trainer:
        raise TrainingError(f"The checkpoint was written by trainer {written_by}, not {trainer}.", path,
                            f"continue with the trainer that wrote it, or move the fold folder away to train "
                            f"{trainer} from the beginning.")
    trained_on = checkpoint_dataset(checkpoint)
    config = (checkpoint.get("init_args") or {}).get("configuration")
    if (trained_on, config) != (dataset_name, configuration):
        raise TrainingError(f"The checkpoint belongs to {trained_on} {config}, not to {dataset_name} "
                            f"{configuration}.", path,
                            "move the fold folder away (it was copied from another model) and train again.")
    started_with = (checkpoint.get("init_args") or {}).get("plans")
    then, now = (PlansManager(p).get_configuration(configuration).configuration if p else {}
                 for p in (started_with, plans_file))
    changed = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k)) if started_with else []
    if changed:
        raise TrainingError(f"The plans changed since this training started ({configuration}: {', '.join(changed)}).",
                            plans_file, f"put back the plans the training started with (they are in "
                                        f"{os.path.dirname(output_folder)}/plans.json), or move the fold folder away "
                                        f"and train again.")


def check_pretrained_weights(path: str) -> None:
    from semi_nnunet.utilities.checkpoints import load_checkpoint_file
    checkpoint = load_checkpoint_file(path, mmap=True, fix="give an intact checkpoint to -pretrained_weights.")
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise TrainingError("The file is not an nnU-Net checkpoint (it has no 'network_weights').", path,
                            "give -pretrained_weights a checkpoint_final.pth of an nnU-Net or semi_nnunet training.")


def train(dataset: Union[int, str], configuration: str, trainer: str = "nnUNetTrainer",
          folds: Optional[Sequence[Union[int, str]]] = None, plans_identifier: str = "nnUNetPlans",
          device: str = "cuda", continue_training: bool = False, only_run_validation: bool = False,
          export_validation_probabilities: bool = False, num_gpus: int = 1,
          pretrained_weights: Optional[str] = None, val_with_best: bool = False,
          stages: Optional[int] = None, dry_run: bool = False, parallel: int = 1,
          stop_agreement: Optional[float] = None, finetune: bool = False, seed: Optional[int] = None,
          final_validation: bool = True) -> List[str]:
    """Train ``trainer`` on the given folds (``None``: every fold of the splits). Returns the output folders.

    A staged trainer (``num_stages > 0``, e.g. SemiCervixTrainer) runs its whole pipeline: stage 0, pseudo-labels from
    each fold's own model, stage 1, ... (``stages`` overrides the count; 0 trains stage 0 only).

    ``seed``: seed Python, numpy and torch before each fold's trainer is built (:func:`seed_everything`).

    ``final_validation=False`` leaves out nnU-Net's prediction of the validation cases after training (one process;
    the label-efficiency benchmark trains fold ``all``, whose "validation" cases are its training cases).

    Every request is checked before any fold starts: trainer, plans, configuration, folds, unlabeled data, and with
    ``continue_training`` the checkpoint each fold would continue from."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import run_training
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name
    trainer_class = find_trainer_class(trainer)  # fails early, with close matches, before any fold starts
    if not getattr(trainer_class, "requires_labels", True) and (trainer_class.optimizer_name or "").startswith("hco"):
        raise TrainingError(f"{trainer} learns without labels, so HCO has no labeled gradient to trust.",
                            "--optimizer", "use --optimizer sgd or adamw.")
    if stages is not None and stages < 0:
        raise TrainingError(f"--stages {stages} is negative.", "--stages",
                            "give the number of pseudo-label stages after the initial one (0, 1, 2, ...).")
    if stages and not getattr(trainer_class, "stage_trainer", None):
        raise TrainingError(f"{trainer} is not a staged trainer, so it has no stage {stages}.", "--stages",
                            "drop --stages, or train a staged trainer (e.g. SemiCervixTrainer).")
    dataset_name = find_dataset_name(dataset)
    plans_file = join(str(nnUNet_preprocessed), dataset_name, plans_identifier + ".json")
    if not isfile(plans_file):
        raise TrainingError("The plans are missing: the dataset was not planned and preprocessed (with these plans).",
                            plans_file, f"run semi_nnUNet_plan_and_preprocess -d {dataset} (with -pl for other "
                                        f"planners) first, or give the plans identifier with -p.")
    try:
        plans = load_json(plans_file)
        available = list(plans["configurations"])
    except (ValueError, KeyError, TypeError) as e:
        raise TrainingError(f"The plans file cannot be read ({type(e).__name__}: {e}).", plans_file,
                            f"delete it and run semi_nnUNet_plan_and_preprocess -d {dataset} again.") from None
    if plans.get("dataset_name", dataset_name) != dataset_name:
        raise TrainingError(f"The plans belong to {plans['dataset_name']}, not to {dataset_name}.", plans_file,
                            f"delete the file and run semi_nnUNet_plan_and_preprocess -d {dataset} again.")
    if configuration not in available:
        raise TrainingError(f"Configuration '{configuration}' is not in the plans (available: {available}).",
                            plans_file, f"use one of {available} as the configuration argument.")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from semi_nnunet.trainers.base import unlabeled_preprocessed
    data_identifier = PlansManager(plans_file).get_configuration(configuration).data_identifier
    if not unlabeled_preprocessed(trainer_class, join(str(nnUNet_preprocessed), dataset_name), data_identifier):
        raise TrainingError(f"{trainer} needs unlabeled cases, but none are preprocessed for {configuration}.",
                            join(str(nnUNet_preprocessed), dataset_name),
                            f"put unlabeled images into imagesUnlabeled/ of the raw dataset (with \"numUnlabeled\" "
                            f"in dataset.json) and run semi_nnUNet_plan_and_preprocess -d {dataset} -c "
                            f"{configuration}; or train the supervised nnUNetTrainer.")
    folds = folds_from_splits(dataset_name) if not folds else [f if f == "all" else int(f) for f in folds]
    n_splits = None
    for f in folds:
        if f != "all":
            n_splits = n_splits or len(folds_from_splits(dataset_name))
            if not 0 <= f < n_splits:
                raise TrainingError(f"Fold {f} is out of range: the splits file has folds 0..{n_splits - 1}.",
                                    "fold argument", f"give folds 0..{n_splits - 1}, or 'all'.")
    if device == "cuda" and not torch.cuda.is_available() and not dry_run:
        raise TrainingError("-device cuda was requested but no CUDA GPU is available.", "-device",
                            "use -device cpu.")
    if pretrained_weights:
        if continue_training:
            raise TrainingError("--c continues a training, -pretrained_weights starts one: they exclude each other.",
                                "--c / -pretrained_weights", "drop one of them.")
        check_pretrained_weights(pretrained_weights)

    n_stages = getattr(trainer_class, "num_stages", 0) if stages is None else stages
    if n_stages > 0 and not only_run_validation:
        from semi_nnunet.stages.runner import run_stages

        def train_one(*args, **kwargs):
            return train(*args, stages=0, seed=seed, final_validation=final_validation, **kwargs)
        return run_stages(dataset_name, configuration, trainer, folds, n_stages, plans_identifier, device,
                          num_gpus=num_gpus, train_fn=train_one, dry_run=dry_run, parallel=parallel,
                          stop_agreement=stop_agreement, finetune=finetune, seed=seed)

    output_folders = {f: get_output_folder(dataset_name, trainer, plans_identifier, configuration, f) for f in folds}
    for f, folder in output_folders.items():
        if continue_training:
            check_checkpoint_to_continue(folder, trainer, dataset_name, configuration, plans_file)
        if only_run_validation:
            name = "checkpoint_best.pth" if val_with_best else "checkpoint_final.pth"
            if not isfile(join(folder, name)):
                raise TrainingError(f"--val needs a finished training, but fold {f} has no {name}.",
                                    join(folder, name), "train the fold first (semi_nnUNet_train ... --c continues "
                                                        "an interrupted one).")
    register_with_nnunet()
    outputs = []
    for f in folds:
        remove_stale_temporaries(output_folders[f])
        if seed is not None:
            seed_everything(seed)
        if not final_validation and num_gpus == 1 and not only_run_validation:
            from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
            nnunet_trainer = get_trainer_from_args(dataset_name, configuration, f, trainer, plans_identifier,
                                                   continue_training, device=torch.device(device))
            maybe_load_checkpoint(nnunet_trainer, continue_training, False, pretrained_weights)
            nnunet_trainer.run_training()
        else:
            run_training(dataset_name, configuration, f, trainer, plans_identifier, pretrained_weights, num_gpus,
                         export_validation_probabilities, continue_training, only_run_validation, False,
                         val_with_best, device=torch.device(device))
        outputs.append(output_folders[f])
    return outputs
