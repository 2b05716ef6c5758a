"""Which trained models a prediction ensembles, and loading them onto nnU-Net's predictor.

A member is one results folder (``<nnUNet_results>/<Dataset>/<Trainer>__<Plans>__<Configuration>``) with the folds
to use and the checkpoint name. Members come from the command line (``-d -c -tr -p [--stage K]`` or ``-m DIR``) or
from a JSON spec (a list of such entries), and are checked before anything is predicted: the folder and every fold's
checkpoint exist, the members predict the same labels from the same channels, and they belong to the dataset asked for.
"""
import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, subdirs

from semi_nnunet.utilities.errors import InputError

Fold = Union[int, str]
DEFAULT_FOLDS = (0, 1, 2, 3, 4)  # nnUNetv2_predict's default -f


class PredictionError(InputError):
    """Bad input to prediction or evaluation. The message names the file or argument and the fix."""


@dataclass
class Member:
    """One model of an ensemble: a results folder, its folds and the checkpoint to load."""
    folder: str
    folds: List[Fold] = field(default_factory=list)  # empty: nnU-Net's default, folds 0-4
    checkpoint: str = "checkpoint_final.pth"

    def describe(self) -> dict:
        return {"folder": os.path.abspath(self.folder), "folds": [str(f) for f in self.folds],
                "checkpoint": self.checkpoint}


def stage_trainer_name(trainer: str, stage: Optional[int]) -> str:
    """The trainer that trained stage ``stage`` of ``trainer``'s staged pipeline (stage 0 is the trainer itself)."""
    return trainer if not stage else f"{trainer}_stage{stage}"


def member_from_names(dataset, configuration: str, trainer: str, plans: str = "nnUNetPlans",
                      folds: Sequence[Fold] = (), stage: Optional[int] = None,
                      checkpoint: str = "checkpoint_final.pth") -> Member:
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    try:
        folder = get_output_folder(dataset, stage_trainer_name(trainer, stage), plans, configuration)
    except (RuntimeError, AssertionError) as e:
        raise PredictionError(f"Dataset '{dataset}' is not known to nnU-Net ({e}).", f"-d {dataset}",
                              "give the dataset id or name of a trained dataset (check nnUNet_raw / nnUNet_results)."
                              ) from None
    if stage and not isdir(folder):
        parent, tail = os.path.dirname(folder), f"__{plans}__{configuration}"
        trained = sorted(int(d[len(trainer) + 6:-len(tail)]) for d in (os.listdir(parent) if isdir(parent) else [])
                         if d.startswith(trainer + "_stage") and d.endswith(tail)
                         and d[len(trainer) + 6:-len(tail)].isdigit())
        raise PredictionError(f"Stage {stage} of {trainer} ({configuration}) was not trained.", f"--stage {stage}",
                              f"use a trained stage (0{''.join(f', {k}' for k in trained)}), or train it with "
                              f"semi_nnUNet_train {dataset} {configuration} {trainer} --stages {stage}.")
    return Member(folder, list(folds), checkpoint)


def members_from_spec(path: str) -> List[Member]:
    """A JSON list of members: ``{"model": DIR}`` or ``{"dataset", "configuration", "trainer"[, "plans", "stage"]}``,
    each with optional ``"folds"`` and ``"checkpoint"``."""
    try:
        entries = load_json(path)
    except (OSError, ValueError) as e:
        raise PredictionError(f"The ensemble spec cannot be read ({e}).", path,
                              'write a JSON list, e.g. [{"model": "RESULTS/Dataset001_X/T__nnUNetPlans__2d", '
                              '"folds": [0, 1]}].') from None
    if not isinstance(entries, list) or not entries:
        raise PredictionError("The ensemble spec must be a non-empty JSON list of models.", path,
                              'write e.g. [{"model": "DIR", "folds": [0, 1]}, {"dataset": 1, "configuration": "2d", '
                              '"trainer": "MeanTeacherTrainer"}].')
    members = []
    for i, e in enumerate(entries):
        folds, checkpoint = e.get("folds", []), e.get("checkpoint", "checkpoint_final.pth")
        if "model" in e:
            members.append(Member(e["model"], list(folds), checkpoint))
        elif {"dataset", "configuration", "trainer"} <= set(e):
            members.append(member_from_names(e["dataset"], e["configuration"], e["trainer"],
                                             e.get("plans", "nnUNetPlans"), folds, e.get("stage"), checkpoint))
        else:
            raise PredictionError(f"Entry {i} of the ensemble spec names no model: {json.dumps(e)}.", path,
                                  'give "model": DIR, or "dataset", "configuration" and "trainer".')
    return members


def available_folds(folder: str, checkpoint: str) -> List[Fold]:
    folds = []
    for d in subdirs(folder, prefix="fold_", join=False) if isdir(folder) else []:
        if isfile(join(folder, d, checkpoint)):
            f = d[len("fold_"):]
            folds.append(int(f) if f.isdigit() else f)
    return sorted(folds, key=str)


def check_member(member: Member) -> Member:
    """The folder, plans, dataset.json and every fold's checkpoint exist. No folds given: folds 0-4, as nnU-Net's
    ``nnUNetv2_predict`` (a missing one is an error, never silently left out)."""
    folder = member.folder
    if not isdir(folder):
        parent = os.path.dirname(folder.rstrip(os.sep))
        near = sorted(os.listdir(parent)) if isdir(parent) else []
        raise PredictionError("The model folder does not exist.", folder,
                              f"train it first (semi_nnUNet_train), or pick one of {near}" if near else
                              "train it first (semi_nnUNet_train) or check nnUNet_results.")
    for name in ("plans.json", "dataset.json"):
        if not isfile(join(folder, name)):
            raise PredictionError(f"The model folder lacks {name}; it is not an nnU-Net results folder.",
                                  join(folder, name),
                                  "point to <nnUNet_results>/<Dataset>/<Trainer>__<Plans>__<Config>.")
    available = available_folds(folder, member.checkpoint)
    folds = member.folds or list(DEFAULT_FOLDS)
    if not available:
        raise PredictionError(f"No fold of this model has {member.checkpoint}.", folder,
                              "finish training (semi_nnUNet_train ... --c continues an interrupted run), or choose "
                              "another checkpoint with -chk checkpoint_best.pth / checkpoint_latest.pth.")
    for f in folds:
        path = join(folder, f"fold_{f}", member.checkpoint)
        if not isfile(path):
            default = "" if member.folds else " (no -f: nnU-Net's default folds 0-4)"
            raise PredictionError(f"Fold {f} has no {member.checkpoint}{default}.", path,
                                  f"train fold {f} to the end (semi_nnUNet_train ... {f}), choose folds that have it "
                                  f"with -f {' '.join(map(str, available))}, or choose another checkpoint with -chk.")
    check_checkpoints(folder, folds, member.checkpoint)
    return Member(folder, [int(f) if str(f).isdigit() else f for f in folds], member.checkpoint)


def check_checkpoints(folder: str, folds: Sequence[Fold], checkpoint_name: str) -> None:
    """Every fold's checkpoint reads with the restricted unpickler (memory-mapped: the weights are not read), comes
    from one trainer and configuration, and was trained on the dataset of the folder's plans.json; nnU-Net's
    predictor (which unpickles in full) is only given checkpoints that pass."""
    from semi_nnunet.trainers.lookup import TrainingError, find_trainer_class
    from semi_nnunet.utilities.checkpoints import checkpoint_dataset, load_checkpoint_file
    plans = load_json(join(folder, "plans.json"))
    first = None
    for f in folds:
        path = join(folder, f"fold_{f}", checkpoint_name)
        ckpt = load_checkpoint_file(path, mmap=True, fix=f"retrain fold {f} (semi_nnUNet_train ... --c continues an "
                                                         f"interrupted one), or leave it out with -f.")
        trainer, config = ckpt.get("trainer_name"), (ckpt.get("init_args") or {}).get("configuration")
        trained_on = checkpoint_dataset(ckpt)
        if trained_on is not None and trained_on != plans.get("dataset_name"):
            raise PredictionError(f"Fold {f} was trained on {trained_on}, but the model folder's plans.json is for "
                                  f"{plans.get('dataset_name')}.", path,
                                  "put only folds of this model into its folder (copied from another model?), or "
                                  "leave the fold out with -f.")
        if config is not None and config not in plans.get("configurations", {}):
            raise PredictionError(f"Fold {f} was trained with configuration '{config}', which the model folder's "
                                  f"plans.json lacks.", path, "leave the fold out with -f, or retrain it.")
        if first is None:
            first = (f, trainer, config)
            try:
                find_trainer_class(trainer)
            except TrainingError:
                raise PredictionError(f"Fold {f} names trainer '{trainer}', which is not installed.", path,
                                      "install the package that defines it (or put it on nnUNet_extTrainer).") from None
        elif (trainer, config) != first[1:]:
            raise PredictionError(f"Fold {f} was trained by {trainer} ({config}), fold {first[0]} by {first[1]} "
                                  f"({first[2]}).", path,
                                  "ensemble different models as separate members (-m A B or --spec), not as folds "
                                  "of one folder.")


def check_members(members: Sequence[Member], dataset=None) -> List[Member]:
    """Every member checked; all predict the same labels from the same channels (of ``dataset`` when given)."""
    members = [check_member(m) for m in members]
    first = load_json(join(members[0].folder, "dataset.json"))
    for m in members:
        dj = load_json(join(m.folder, "dataset.json"))
        if dj["labels"] != first["labels"] or dj["channel_names"] != first["channel_names"]:
            raise PredictionError(
                f"Models predict different labels or use different channels ({dj['labels']} from "
                f"{dj['channel_names']} vs {first['labels']} from {first['channel_names']}).",
                join(m.folder, "dataset.json"), "ensemble only models trained on the same dataset.")
    if dataset is not None:
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        try:
            name = maybe_convert_to_dataset_name(dataset)
        except RuntimeError:
            name = str(dataset)
        for m in members:
            trained_on = load_json(join(m.folder, "plans.json"))["dataset_name"]
            if trained_on != name:
                raise PredictionError(f"The model was trained on {trained_on}, not on {name}.", m.folder,
                                      f"use -d {trained_on}, or a model trained on {name}.")
    return members
