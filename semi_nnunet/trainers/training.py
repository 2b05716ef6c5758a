"""Training one fold, and the checks a training request passes before any fold starts.

:class:`TrainRequest` is what ``semi_nnUNet_train`` asks for (one object instead of a long signature; the stage runner
and the benchmark build on it). :func:`check_request` checks all of it up front; :func:`train_fold` trains one fold of
one trainer (it is the function a training task of :mod:`semi_nnunet.tasks` runs, in this process, on a Ray worker or
in a Slurm job). The work is done by nnU-Net's own ``run_training`` (single device and DDP).
"""
import contextlib
import os
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple, Union

from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from semi_nnunet.trainers.lookup import TrainingError, check_trainer_settings, register_with_nnunet

Fold = Union[int, str]


@dataclass(frozen=True)
class TrainRequest:
    """A training request: ``trainer`` on ``folds`` (None: every fold of the splits) of ``dataset`` ``configuration``.

    ``continue_training``: nnU-Net's ``--c``; ``resume``: continue whenever a latest checkpoint exists (the stage
    runner, retried Ray tasks and requeued Slurm jobs: a fold's second attempt never starts again from scratch).
    ``stages``: a staged trainer's pseudo-label stages after stage 0 (None: the trainer's own count).
    ``final_validation=False`` leaves out nnU-Net's prediction of the validation cases after training (one process;
    the label-efficiency benchmark trains fold ``all``, whose "validation" cases are its training cases)."""
    dataset: Union[int, str]
    configuration: str
    trainer: str = "nnUNetTrainer"
    folds: Optional[Tuple[Fold, ...]] = None
    plans_identifier: str = "nnUNetPlans"
    device: str = "cuda"
    continue_training: bool = False
    resume: bool = False
    only_run_validation: bool = False
    export_validation_probabilities: bool = False
    num_gpus: int = 1
    pretrained_weights: Optional[str] = None
    val_with_best: bool = False
    stages: Optional[int] = None
    stop_agreement: Optional[float] = None
    finetune: bool = False
    seed: Optional[int] = None
    final_validation: bool = True
    checkpoint_name: str = "checkpoint_final.pth"  # the checkpoint that makes the pseudo-labels
    use_mirroring: bool = False  # test-time mirroring when making pseudo-labels
    disable_checkpointing: bool = False  # nnU-Net's --disable_checkpointing

    def but(self, **changes) -> "TrainRequest":
        return replace(self, **changes)

    @property
    def gpus_per_task(self) -> int:
        return self.num_gpus if self.device == "cuda" else 0


def folds_from_splits(dataset_name: str) -> List[int]:
    from nnunetv2.paths import nnUNet_preprocessed
    splits_file = join(str(nnUNet_preprocessed), dataset_name, "splits_final.json")
    if not isfile(splits_file):
        raise TrainingError("There is no splits file, so the folds are not known.", splits_file,
                            f"run semi_nnUNet_plan_and_preprocess -d {dataset_name} first, or give a fold.")
    return list(range(len(load_json(splits_file))))


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



def check_request(request: TrainRequest, dry_run: bool = False,
                  elsewhere: bool = False) -> Tuple[type, str, str, List[Fold]]:
    """Every check before any fold starts: trainer, plans, configuration, folds, unlabeled data, device, and with
    ``continue_training`` the checkpoint each fold would continue from. Returns the trainer class, the dataset name,
    the plans file and the folds."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name
    from semi_nnunet.trainers.base import unlabeled_preprocessed
    trainer, dataset = request.trainer, request.dataset
    trainer_class = check_trainer_settings(trainer)  # fails early, with close matches, before any fold starts
    if not getattr(trainer_class, "requires_labels", True) and (trainer_class.optimizer_name or "").startswith("hco"):
        raise TrainingError(f"{trainer} learns without labels, so HCO has no labeled gradient to trust.",
                            "--optimizer", "use --optimizer sgd or adamw.")
    if request.stages is not None and request.stages < 0:
        raise TrainingError(f"--stages {request.stages} is negative.", "--stages",
                            "give the number of pseudo-label stages after the initial one (0, 1, 2, ...).")
    if request.stages and not getattr(trainer_class, "stage_trainer", None):
        raise TrainingError(f"{trainer} is not a staged trainer, so it has no stage {request.stages}.", "--stages",
                            "drop --stages, or train a staged trainer (e.g. SemiCervixTrainer).")
    staged_only = [flag for flag, on in (("--stop-agreement", request.stop_agreement is not None),
                                          ("--finetune", request.finetune)) if on]
    if staged_only and not getattr(trainer_class, "num_stages", 0) and not request.stages:
        raise TrainingError(f"{trainer} is not a staged trainer, so {' and '.join(staged_only)} would do nothing.",
                            " / ".join(staged_only), "drop it, or train a staged trainer (e.g. SemiCervixTrainer).")
    dataset_name = find_dataset_name(dataset)
    plans_file = join(str(nnUNet_preprocessed), dataset_name, request.plans_identifier + ".json")
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
    configuration = request.configuration
    if configuration not in available:
        raise TrainingError(f"Configuration '{configuration}' is not in the plans (available: {available}).",
                            plans_file, f"use one of {available} as the configuration argument.")
    config_manager = PlansManager(plans_file).get_configuration(configuration)
    from semi_nnunet.trainers.base import SemiSupervisedTrainer
    if config_manager.previous_stage_name is not None and issubclass(trainer_class, SemiSupervisedTrainer):
        raise TrainingError(f"{configuration} is the second stage of nnU-Net's cascade (it reads the predictions of "
                            f"{config_manager.previous_stage_name} as extra channels); the semi-supervised trainers "
                            f"do not support cascades yet.", f"configuration {configuration}",
                            f"train {trainer} on 3d_fullres or {config_manager.previous_stage_name} (each stands "
                            f"alone), or the cascade with the supervised nnUNetTrainer.")
    data_identifier = config_manager.data_identifier
    if not unlabeled_preprocessed(trainer_class, join(str(nnUNet_preprocessed), dataset_name), data_identifier):
        raise TrainingError(f"{trainer} needs unlabeled cases, but none are preprocessed for {configuration}.",
                            join(str(nnUNet_preprocessed), dataset_name),
                            f"put unlabeled images into imagesUnlabeled/ of the raw dataset (with \"numUnlabeled\" "
                            f"in dataset.json) and run semi_nnUNet_plan_and_preprocess -d {dataset} -c "
                            f"{configuration}; or train the supervised nnUNetTrainer.")
    folds = folds_from_splits(dataset_name) if not request.folds else \
        [f if f == "all" else int(f) for f in request.folds]
    n_splits = None
    for f in folds:
        if f != "all":
            n_splits = n_splits or len(folds_from_splits(dataset_name))
            if not 0 <= f < n_splits:
                raise TrainingError(f"Fold {f} is out of range: the splits file has folds 0..{n_splits - 1}.",
                                    "fold argument", f"give folds 0..{n_splits - 1}, or 'all'.")
    # elsewhere: the trainings run on other machines (Slurm jobs, a Ray cluster), so this one (a login node) may
    # have no GPU; train_fold's own device then fails on a job's node that has none
    if request.device == "cuda" and not torch.cuda.is_available() and not dry_run and not elsewhere:
        raise TrainingError("-device cuda was requested but no CUDA GPU is available.", "-device",
                            "use -device cpu.")
    if request.pretrained_weights:
        if request.continue_training:
            raise TrainingError("--c continues a training, -pretrained_weights starts one: they exclude each other.",
                                "--c / -pretrained_weights", "drop one of them.")
        check_pretrained_weights(request.pretrained_weights)
    for f in folds:
        folder = get_output_folder(dataset_name, trainer, request.plans_identifier, configuration, f)
        if request.continue_training:
            check_checkpoint_to_continue(folder, trainer, dataset_name, configuration, plans_file)
        if request.only_run_validation:
            name = "checkpoint_best.pth" if request.val_with_best else "checkpoint_final.pth"
            if not isfile(join(folder, name)):
                raise TrainingError(f"--val needs a finished training, but fold {f} has no {name}.",
                                    join(folder, name), "train the fold first (semi_nnUNet_train ... --c continues "
                                                        "an interrupted one).")
    return trainer_class, dataset_name, plans_file, folds


def fold_folder(dataset_name: str, trainer: str, plans_identifier: str, configuration: str, fold: Fold) -> str:
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    return get_output_folder(dataset_name, trainer, plans_identifier, configuration, fold)


def fold_outputs(folder: str, request: "TrainRequest") -> List[str]:
    """What a trained fold leaves (a task is done when they exist): the final checkpoint and, unless the final
    validation is off, its summary (a training interrupted between the two is finished by validating only)."""
    return [join(folder, "checkpoint_final.pth")] + (
        [join(folder, "validation", "summary.json")] if request.final_validation else [])


def lock_file(folder: str) -> str:
    """The lock a fold's training holds (see :mod:`semi_nnunet.tasks.locks`)."""
    return join(folder, "training.lock")


def train_fold(request: TrainRequest, fold: Fold, trainer: Optional[str] = None,
               pretrained_weights: Optional[str] = None) -> str:
    """Train one fold (``trainer`` overrides the request's, e.g. a stage trainer); returns its output folder.

    Holds the fold folder's lock for the training: a second worker asking for the same fold waits, then finds it
    trained. A fold with ``checkpoint_final.pth`` is done (nothing to do, unless ``--val`` or ``--c`` asked for it);
    with ``request.resume`` a fold that has a latest checkpoint continues from it (checked to belong to this
    training), otherwise ``pretrained_weights`` (or the request's) initialise the network."""
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint, run_training

    from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name
    from semi_nnunet.tasks.locks import claim
    from semi_nnunet.trainers.schedule import preemption_forwarded_to_ranks
    trainer = trainer or request.trainer
    if request.device == "cuda" and not torch.cuda.is_available():  # checked here for jobs on other machines
        import socket
        raise TrainingError(f"-device cuda was requested but {socket.gethostname()} has no CUDA GPU.", "-device",
                            "ask the scheduler for a GPU (--slurm-gpus 1, a GPU partition), or use -device cpu.")
    dataset_name = find_dataset_name(request.dataset)
    configuration, plans = request.configuration, request.plans_identifier
    folder = fold_folder(dataset_name, trainer, plans, configuration, fold)
    os.makedirs(folder, exist_ok=True)
    register_with_nnunet()
    with claim(lock_file(folder), wait=10,
               on_wait=lambda owner: print(f"{trainer} fold {fold} is being trained by {owner}; waiting.",
                                           flush=True)):
        finished = isfile(join(folder, "checkpoint_final.pth"))
        if finished and not (request.only_run_validation or request.continue_training):
            if not request.final_validation or isfile(join(folder, "validation", "summary.json")):
                return folder
            # trained, but stopped before (or during) nnU-Net's final validation: a requeue signal after the last
            # iteration, a crash in the validation. Run only the validation, as --val would.
            print(f"{trainer} fold {fold}: trained, but its final validation is missing; validating.", flush=True)
            request = replace(request, only_run_validation=True, continue_training=False, resume=False)
        remove_stale_temporaries(folder)
        continue_training = request.continue_training or (request.resume and any(
            isfile(join(folder, n)) for n in CHECKPOINTS))
        if continue_training and not request.continue_training:
            plans_file = join(str(nnUNet_preprocessed), dataset_name, plans + ".json")
            check_checkpoint_to_continue(folder, trainer, dataset_name, configuration, plans_file)
        pretrained = None if continue_training else (pretrained_weights or request.pretrained_weights)
        if request.seed is not None:
            seed_everything(request.seed)
        device = torch.device(request.device)
        if not request.final_validation and request.num_gpus == 1 and not request.only_run_validation:
            nnunet_trainer = get_trainer_from_args(dataset_name, configuration, fold, trainer, plans,
                                                   continue_training, device=device)
            nnunet_trainer.disable_checkpointing = request.disable_checkpointing
            maybe_load_checkpoint(nnunet_trainer, continue_training, False, pretrained)
            nnunet_trainer.run_training()
        else:
            with preemption_forwarded_to_ranks(folder) if request.num_gpus > 1 else contextlib.nullcontext():
                run_training(dataset_name, configuration, fold, trainer, plans, pretrained, request.num_gpus,
                             request.export_validation_probabilities, continue_training,
                             request.only_run_validation, request.disable_checkpointing, request.val_with_best,
                             device=device)
    return folder
