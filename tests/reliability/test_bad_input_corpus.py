"""The bad-input corpus: malformed datasets, plans, checkpoints and arguments, each given to the user-facing command.

Every entry makes one bad input, runs the command's ``main([...])`` and asserts: exit status 2, an ``ERROR:`` message
in the problem / where / fix form whose problem, where (the file or argument) and fix say what the entry expects, and
no partial output (no file under nnU-Net's three folders created, changed or removed, and no output folder made).
documentation/reliability.md lists the entries.
"""
import os
import re
import shutil
from dataclasses import dataclass
from typing import Callable, List

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from PIL import Image
from reliability.reliability_support import TRAINER, tree_digest

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.run.plan_and_preprocess_entrypoint import main as plan_main
from semi_nnunet.run.predict_entrypoint import main as predict_main
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.utilities.checkpoints import TRUST_ENV, load_checkpoint_file
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER

COMMANDS = {"plan": plan_main, "train": train_main, "predict": predict_main}


@dataclass
class Ctx:
    """What an entry's ``make`` gets: the shared set-up, a scratch folder, and what to undo after (paths to remove,
    or functions to call)."""
    rel: dict
    scratch: str
    cleanup: list
    next_id: List[int]

    def raw(self, dim: int = 2, **kwargs) -> str:
        """A fresh, valid raw dataset (3 labeled, 2 unlabeled cases) with a new id."""
        self.next_id[0] += 1
        shape = (32, 32) if dim == 2 else (8, 16, 16)
        folder = make_synthetic_dataset(self.rel["nnUNet_raw"], self.next_id[0], dim=dim,
                                        **{"num_labeled": 3, "num_unlabeled": 2, "shape": shape, **kwargs})
        self.cleanup.append(folder)
        return folder

    @staticmethod
    def plan_argv(folder: str, *extra: str) -> List[str]:
        return ["-d", os.path.basename(folder), "-c", "2d", "3d_fullres", "-np", "1", "--no_progress", *extra]

    def fold_folder(self, trainer: str, fold) -> str:
        folder = join(self.rel["nnUNet_results"], self.rel["dataset_name"], f"{trainer}__nnUNetPlans__2d",
                      f"fold_{fold}")
        if not os.path.isdir(os.path.dirname(folder)):
            self.cleanup.append(os.path.dirname(folder))
        os.makedirs(folder, exist_ok=True)
        self.cleanup.append(folder)
        return folder

    def model_copy(self, name: str) -> str:
        """A copy of the trained model's folder (plans, dataset.json, fold 0) under another trainer name."""
        copy = self.rel["model"].replace(TRAINER, name)
        shutil.copytree(self.rel["model"], copy)
        self.cleanup.append(copy)
        return copy

    def predict_argv(self, *model: str) -> List[str]:
        return ["-i", join(self.rel["raw"], "imagesTs"), "-o", join(self.scratch, "out"), "-device", "cpu", *model]


# ---------------------------------------------------------------------------------------------------- helpers
def edit_json(folder: str, **changes) -> None:
    dj = load_json(join(folder, "dataset.json"))
    dj.update(changes)
    save_json(dj, join(folder, "dataset.json"))


def png(path: str, array: np.ndarray) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


def truncate(path: str, keep: float = 0.5) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def resave(source: str, target: str, **changes) -> str:
    """A copy of a checkpoint with some entries changed (``init_args_dataset``: the dataset it claims)."""
    ckpt = load_checkpoint_file(source)
    dataset = changes.pop("init_args_dataset", None)
    if dataset:
        ckpt["init_args"]["plans"]["dataset_name"] = dataset
    ckpt.update(changes)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    torch.save(ckpt, target)
    return target


class Exploit:
    """Unpickling this object would create the marker file; the restricted unpickler must refuse it instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


# ---------------------------------------------------------------------------------------------------- the corpus
# raw format (semi_nnUNet_plan_and_preprocess) ------------------------------------------------------------------
def missing_channel(c):
    d = c.raw()
    edit_json(d, channel_names={"0": "T1", "1": "T2"})
    return "plan", c.plan_argv(d)


def extra_channel(c):
    d = c.raw()
    png(join(d, "imagesTr", "lab001_0001.png"), np.zeros((32, 32)))
    return "plan", c.plan_argv(d)


def id_collision(c):
    d = c.raw()
    shutil.copy(join(d, "imagesTr", "lab000_0000.png"), join(d, UNLABELED_FOLDER, "lab000_0000.png"))
    edit_json(d, numUnlabeled=3)
    return "plan", c.plan_argv(d)


def wrong_num_training(c):
    d = c.raw()
    edit_json(d, numTraining=5)
    return "plan", c.plan_argv(d)


def wrong_num_unlabeled(c):
    d = c.raw()
    edit_json(d, numUnlabeled=4)
    return "plan", c.plan_argv(d)


def label_value_not_in_json(c):
    d = c.raw()
    label = np.asarray(Image.open(join(d, "labelsTr", "lab001.png"))).copy()
    label[:3, :3] = 7
    png(join(d, "labelsTr", "lab001.png"), label)
    return "plan", c.plan_argv(d)


def labels_not_consecutive(c):
    d = c.raw()
    edit_json(d, labels={"background": 0, "blob": 2})
    return "plan", c.plan_argv(d)


def label_size_mismatch(c):
    d = c.raw()
    png(join(d, "labelsTr", "lab002.png"), np.zeros((30, 32)))
    return "plan", c.plan_argv(d)


def label_in_colour(c):
    d = c.raw()
    png(join(d, "labelsTr", "lab000.png"), np.zeros((32, 32, 3)))
    return "plan", c.plan_argv(d)


def nan_in_image(c):
    """NaN survives in .mha (not in PNG); found when nnU-Net's fingerprint comes out non-finite, which is then
    removed with everything else the run wrote."""
    import SimpleITK as sitk
    c.next_id[0] += 1
    d = join(c.rel["nnUNet_raw"], f"Dataset{c.next_id[0]}_NaN")
    c.cleanup.append(d)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(join(d, sub))
    rng = np.random.default_rng(0)
    for i in range(3):
        image = rng.normal(100, 10, (8, 16, 16)).astype(np.float32)
        label = np.zeros(image.shape, np.uint8)
        label[2:6, 4:12, 4:12] = 1
        if i == 1:
            image[3, 5, 5] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(image), join(d, "imagesTr", f"c{i}_0000.mha"))
        sitk.WriteImage(sitk.GetImageFromArray(label), join(d, "labelsTr", f"c{i}.mha"))
    from semi_nnunet.utilities.raw_dataset import write_dataset_json
    write_dataset_json(d, {0: "MRI"}, {"background": 0, "fg": 1}, 3, ".mha", 0)
    return "plan", c.plan_argv(d)


def constant_image(c):
    d = c.raw()
    png(join(d, UNLABELED_FOLDER, "unl001_0000.png"), np.full((32, 32), 17))
    return "plan", c.plan_argv(d, "--verify_dataset_integrity")


def corrupt_png(c):
    d = c.raw()
    with open(join(d, "imagesTr", "lab001_0000.png"), "wb") as f:
        f.write(b"\x89PNG but not really")
    return "plan", c.plan_argv(d)


def truncated_png(c):
    """The header is intact, the pixel data cut: found only when the case is preprocessed, after fingerprint and
    plans were written; the first run of a dataset removes all it wrote."""
    d = c.raw()
    path = join(d, UNLABELED_FOLDER, "unl001_0000.png")
    png(path, np.random.default_rng(1).integers(0, 255, (32, 32)))  # noise: enough compressed data to cut
    truncate(path, 0.6)
    return "plan", c.plan_argv(d)


def truncated_nifti_label(c):
    d = c.raw(dim=3)
    truncate(join(d, "labelsTr", "lab001.nii.gz"))
    return "plan", c.plan_argv(d)


def unsupported_file_ending(c):
    d = c.raw()
    edit_json(d, file_ending=".jpg")
    return "plan", c.plan_argv(d)


def stray_file(c):
    d = c.raw()
    with open(join(d, UNLABELED_FOLDER, "notes.txt"), "w") as f:
        f.write("not an image")
    return "plan", c.plan_argv(d)


def class_for_unknown_case(c):
    d = c.raw()
    edit_json(d, class_names={"0": "small", "1": "large"}, image_classes={"lab000": 0, "ghost042": 1})
    return "plan", c.plan_argv(d)


def missing_label(c):
    d = c.raw()
    os.remove(join(d, "labelsTr", "lab002.png"))
    return "plan", c.plan_argv(d)


def broken_dataset_json(c):
    d = c.raw()
    with open(join(d, "dataset.json"), "w") as f:
        f.write('{"labels": ')
    return "plan", c.plan_argv(d)


def unknown_planner(c):
    d = c.raw()
    return "plan", c.plan_argv(d, "-pl", "ExperimentPlaner")


def unknown_configuration(c):
    return "plan", ["-d", str(c.rel["dataset_name"]), "-c", "2D", "-np", "1", "--no_progress"]


# plans and checkpoints ------------------------------------------------------------------------------------------
def edit_plans(c, **changes):
    """The 2d configuration of the package's plans changed (as if planned with other settings); undone after."""
    path = join(c.rel["preprocessed"], "nnUNetPlans.json")
    with open(path, "rb") as f:
        original = f.read()

    def restore():
        with open(path, "wb") as f:
            f.write(original)
    c.cleanup.append(restore)
    plans = load_json(path)
    plans["configurations"]["2d"].update(changes)
    save_json(plans, path, sort_keys=False)


def plans_exist_with_other_settings(c):
    edit_plans(c, batch_size=3)
    return "plan", ["-d", c.rel["dataset_name"], "-c", "2d", "-np", "1", "--no_progress"]


def continue_after_plans_changed(c):
    fold = c.fold_folder(TRAINER, 1)
    shutil.copy(join(c.rel["model"], "fold_0", "checkpoint_final.pth"), join(fold, "checkpoint_latest.pth"))
    edit_plans(c, patch_size=[16, 16])
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "1", "-device", "cpu", "--c"]


def missing_plans(c):
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "0", "-p", "ResEncPlans", "-device", "cpu"]


def truncated_plans(c):
    plans = join(c.rel["preprocessed"], "CutPlans.json")
    shutil.copy(join(c.rel["preprocessed"], "nnUNetPlans.json"), plans)
    truncate(plans)
    c.cleanup.append(plans)
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "0", "-p", "CutPlans", "-device", "cpu"]


def empty_unlabeled_semi_trainer(c):
    """The preprocessed unlabeled folder as plan_and_preprocess leaves it for a dataset without unlabeled cases."""
    folder = join(c.rel["preprocessed"], "nnUNetPlans_2d_unlabeled")
    aside = join(c.scratch, "unlabeled_aside")
    shutil.move(folder, aside)
    os.makedirs(folder)
    c.cleanup += [lambda: shutil.move(aside, folder), folder]  # undone in reverse: the empty folder goes first
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "0", "-device", "cpu"]


def truncated_checkpoint_latest(c):
    fold = c.fold_folder(TRAINER, 1)
    shutil.copy(join(c.rel["model"], "fold_0", "checkpoint_best.pth"), join(fold, "checkpoint_best.pth"))
    shutil.copy(join(c.rel["model"], "fold_0", "checkpoint_final.pth"), join(fold, "checkpoint_latest.pth"))
    truncate(join(fold, "checkpoint_latest.pth"))
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "1", "-device", "cpu", "--c"]


def checkpoint_of_another_trainer(c):
    other = "MeanTeacherTrainer_2epochs_2it"
    fold = c.fold_folder(other, 0)
    shutil.copy(join(c.rel["model"], "fold_0", "checkpoint_final.pth"), join(fold, "checkpoint_latest.pth"))
    return "train", [c.rel["dataset_name"], "2d", other, "0", "-device", "cpu", "--c"]


def checkpoint_of_another_dataset(c):
    fold = c.fold_folder(TRAINER, 2)
    resave(join(c.rel["model"], "fold_0", "checkpoint_final.pth"), join(fold, "checkpoint_latest.pth"),
           init_args_dataset="Dataset999_Elsewhere")
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "2", "-device", "cpu", "--c"]


def validation_without_final_checkpoint(c):
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "1", "-device", "cpu", "--val"]


def truncated_pretrained_weights(c):
    weights = join(c.scratch, "pretrained.pth")
    shutil.copy(join(c.rel["model"], "fold_0", "checkpoint_final.pth"), weights)
    truncate(weights, 0.3)
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "1", "-device", "cpu", "-pretrained_weights", weights]


def predict_truncated_checkpoint(c):
    model = c.model_copy("Cut")
    truncate(join(model, "fold_0", "checkpoint_final.pth"))
    return "predict", c.predict_argv("-m", model, "-f", "0")


def predict_checkpoint_of_another_dataset(c):
    model = c.model_copy("Moved")
    path = join(model, "fold_0", "checkpoint_final.pth")
    resave(path, path, init_args_dataset="Dataset999_Elsewhere")
    return "predict", c.predict_argv("-m", model, "-f", "0")


def predict_folds_of_two_trainers(c):
    model = c.model_copy("Mixed")
    resave(join(model, "fold_0", "checkpoint_final.pth"), join(model, "fold_1", "checkpoint_final.pth"),
           trainer_name="nnUNetTrainer_2epochs_2it")
    return "predict", c.predict_argv("-m", model, "-f", "0", "1")


def predict_unsafe_checkpoint(c):
    model = c.model_copy("Unsafe")
    path = join(model, "fold_0", "checkpoint_final.pth")
    marker = join(c.scratch, "code_ran")
    ckpt = load_checkpoint_file(path)
    torch.save({**ckpt, "payload": Exploit(marker)}, path)
    c.cleanup.append(marker)  # must never exist: checked by the no-partial-output assertion
    return "predict", c.predict_argv("-m", model, "-f", "0")


# arguments --------------------------------------------------------------------------------------------------------
def unknown_trainer(c):
    return "train", [c.rel["dataset_name"], "2d", "MeanTeecherTrainer", "0", "-device", "cpu"]


def fold_out_of_range(c):
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "7", "-device", "cpu"]


def stages_of_unstaged_trainer(c):
    return "train", [c.rel["dataset_name"], "2d", TRAINER, "0", "-device", "cpu", "--stages", "2"]


def predict_stage_not_trained(c):
    return "predict", c.predict_argv("-d", c.rel["dataset_name"], "-c", "2d", "-tr", TRAINER, "--stage", "3")


@dataclass
class Entry:
    make: Callable[[Ctx], tuple]
    problem: str  # a fragment of the problem line
    where: str  # a fragment of the where line: the file or argument
    fix: str  # a fragment of the fix line


CORPUS = [
    Entry(missing_channel, "has 1 channel(s); dataset.json's channel_names lists 2", "lab000_0000.png",
          "give the case the channels listed in channel_names"),
    Entry(extra_channel, "Case 'lab001' has channel files [0, 1]", "lab001_0001.png", "exactly the channels"),
    Entry(id_collision, "'lab000' is used by a labeled and an unlabeled case", f"{UNLABELED_FOLDER}/lab000_0000.png",
          "rename the unlabeled case"),
    Entry(wrong_num_training, "numTraining is 5 but 3 labeled cases", "dataset.json", '"numTraining": 3'),
    Entry(wrong_num_unlabeled, "numUnlabeled is 4", "dataset.json", '"numUnlabeled": 2'),
    Entry(label_value_not_in_json, "holds value(s) [7]", "labelsTr/lab001.png", "add the missing label(s)"),
    Entry(labels_not_consecutive, "label values in dataset.json are [0, 2]", "dataset.json", "renumber the labels"),
    Entry(label_size_mismatch, "label of case 'lab002' has size (32, 30), its image (32, 32)", "labelsTr/lab002.png",
          "same grid"),
    Entry(label_in_colour, "has 3 components", "labelsTr/lab000.png", "single-channel image"),
    Entry(nan_in_image, "contains NaN or infinite values", "imagesTr/c1_0000.mha", "replace non-finite values"),
    Entry(constant_image, "is constant (channel 0: every pixel is 17", f"{UNLABELED_FOLDER}/unl001_0000.png",
          "remove the case"),
    Entry(corrupt_png, "Image of case 'lab001' cannot be read", "imagesTr/lab001_0000.png", "intact copy"),
    Entry(truncated_png, "'unl001' cannot be preprocessed", f"{UNLABELED_FOLDER}/unl001_0000.png", "intact copy"),
    Entry(truncated_nifti_label, "label of case 'lab001' cannot be read", "labelsTr/lab001.nii.gz", "intact copy"),
    Entry(unsupported_file_ending, "file_ending '.jpg' is not one nnU-Net can read", "dataset.json",
          "convert it to PNG"),
    Entry(stray_file, "unexpected ending", f"{UNLABELED_FOLDER}/notes.txt", "convert it to .png or remove it"),
    Entry(class_for_unknown_case, "image_classes names case 'ghost042'", "dataset.json", "remove the entry"),
    Entry(missing_label, "'lab002' has no label file", "labelsTr/lab002.png", "add the label"),
    Entry(broken_dataset_json, "dataset.json is not valid JSON", "dataset.json", "fix the JSON syntax"),
    Entry(unknown_planner, "Unknown planner 'ExperimentPlaner'", "-pl", "ExperimentPlanner"),
    Entry(unknown_configuration, "Configuration(s) ['2D'] are neither in nnUNetPlans.json", "-c", "-c 2d"),
    Entry(plans_exist_with_other_settings, "nnUNetPlans.json exists, and this run would plan differently (2d "
          "(batch_size))", "nnUNetPlans.json", "-overwrite_plans_name NAME, or replace them with --replace_plans"),
    Entry(missing_plans, "plans are missing", "ResEncPlans.json", "run semi_nnUNet_plan_and_preprocess"),
    Entry(truncated_plans, "plans file cannot be read", "CutPlans.json", "delete it and run semi_nnUNet_plan_and"),
    Entry(empty_unlabeled_semi_trainer, "needs unlabeled cases, but none are preprocessed", "Dataset970",
          "put unlabeled images into imagesUnlabeled/"),
    Entry(truncated_checkpoint_latest, "checkpoint cannot be read: it is truncated", "fold_1/checkpoint_latest.pth",
          "delete it to restart from checkpoint_best.pth"),
    Entry(checkpoint_of_another_trainer, f"written by trainer {TRAINER}, not MeanTeacherTrainer_2epochs_2it",
          "fold_0/checkpoint_latest.pth", "continue with the trainer that wrote it"),
    Entry(checkpoint_of_another_dataset, "belongs to Dataset999_Elsewhere 2d", "fold_2/checkpoint_latest.pth",
          "move the fold folder away"),
    Entry(continue_after_plans_changed, "plans changed since this training started (2d: patch_size)",
          "nnUNetPlans.json", "put back the plans the training started with"),
    Entry(validation_without_final_checkpoint, "fold 1 has no checkpoint_final.pth", "fold_1/checkpoint_final.pth",
          "train the fold first"),
    Entry(truncated_pretrained_weights, "checkpoint cannot be read", "pretrained.pth",
          "give an intact checkpoint to -pretrained_weights"),
    Entry(predict_truncated_checkpoint, "checkpoint cannot be read: it is truncated", "fold_0/checkpoint_final.pth",
          "retrain fold 0"),
    Entry(predict_checkpoint_of_another_dataset, "trained on Dataset999_Elsewhere", "fold_0/checkpoint_final.pth",
          "put only folds of this model into its folder"),
    Entry(predict_folds_of_two_trainers, f"Fold 1 was trained by nnUNetTrainer_2epochs_2it (2d), fold 0 by {TRAINER}",
          "Mixed__nnUNetPlans__2d/fold_1/checkpoint_final.pth", "ensemble different models as separate members"),
    Entry(predict_unsafe_checkpoint, "holds Python objects other than tensors and plain values (io.open)",
          "Unsafe__nnUNetPlans__2d/fold_0/checkpoint_final.pth", f"set {TRUST_ENV}=1"),
    Entry(unknown_trainer, "Unknown trainer 'MeanTeecherTrainer' (close matches: MeanTeacherTrainer",
          "trainer argument", "give a trainer class name"),
    Entry(fold_out_of_range, "Fold 7 is out of range", "fold argument", "give folds 0..2"),
    Entry(stages_of_unstaged_trainer, "is not a staged trainer", "--stages", "drop --stages"),
    Entry(predict_stage_not_trained, f"Stage 3 of {TRAINER} (2d) was not trained", "--stage 3",
          "use a trained stage (0)"),
]


@pytest.fixture(scope="module")
def corpus_base(rel):
    return {"next_id": [980]}  # ids of the datasets the entries make


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 20 and len({e.make.__name__ for e in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("entry", CORPUS, ids=[e.make.__name__ for e in CORPUS])
def test_bad_input(rel, corpus_base, tmp_path, capsys, entry: Entry):
    ctx = Ctx(rel, str(tmp_path), [], corpus_base["next_id"])
    try:
        command, argv = entry.make(ctx)
        watched = [rel["nnUNet_raw"], rel["nnUNet_preprocessed"], rel["nnUNet_results"]]
        before = tree_digest(*watched)
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            COMMANDS[command](argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        starts = [m.start() for m in re.finditer(r"(?m)^ERROR: ", err)]
        assert len(starts) == 1, err
        err = err[starts[0]:]  # after nnU-Net's progress bars, if any
        assert "\n  where: " in err and "\n  fix: " in err, err
        problem, rest = err[len("ERROR: "):].split("\n  where: ", 1)
        where, fix = rest.split("\n  fix: ", 1)
        assert entry.problem in problem, err
        assert entry.where in where, err
        assert entry.fix in fix, err
        assert tree_digest(*watched) == before, "the failed command wrote, changed or removed a file"
        assert not os.path.exists(join(str(tmp_path), "out")) and not os.path.exists(join(str(tmp_path), "code_ran"))
    finally:
        for path in reversed(ctx.cleanup):
            if callable(path):
                path()
            elif os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        assert tree_digest(rel["raw"]) == rel["raw_digest"]

