"""Staged pseudo-label regeneration: semi_nnUNet_train DATASET CONFIG SemiCervixTrainer runs the stages per fold."""
import hashlib
import os

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.stages.runner import pseudo_label_source_folds
from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers

TRAINER = "SemiCervixTrainer_2epochs_2it"


def _digest(folder):
    h = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        with open(join(folder, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()


def test_two_stages_on_one_fold_then_rerun_is_a_no_op(nnunet_paths, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    raw = make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 991, dim=2, num_labeled=5, num_unlabeled=3)
    labels_before = _digest(join(raw, "labelsTr"))
    plan_and_preprocess(991, ["2d"], num_processes=1, show_progress=False)
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "1"])

    results = join(nnunet_paths["nnUNet_results"], "Dataset991_Synthetic2D")
    initial = join(results, f"{TRAINER}__nnUNetPlans__2d")
    pseudo = join(initial, "pseudo_labels", "stage_1", "fold_0")
    provenance = load_json(join(pseudo, "provenance.json"))
    assert provenance["stage"] == 1 and provenance["fold"] == "0" and provenance["folds"] == ["0"]
    assert provenance["model_folder"] == initial and provenance["checkpoint"] == "checkpoint_final.pth"
    assert sorted(provenance["cases"]) == ["unl000", "unl001", "unl002"] == sorted(unlabeled_identifiers(pseudo))
    import blosc2
    seg = np.asarray(blosc2.open(join(pseudo, "unl000_seg.b2nd"), mode="r")[:])
    assert set(np.unique(seg)) <= {0, 1}
    stage1 = join(results, f"{TRAINER}_stage1__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth")
    ckpt = torch.load(stage1, map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == f"{TRAINER}_stage1" and len(ckpt["logging"]["pseudo_loss"]) == 2
    assert _digest(join(raw, "labelsTr")) == labels_before  # ground truth never written
    assert not any("pseudo" in d for d in os.listdir(raw))

    capsys.readouterr()
    mtime = os.path.getmtime(stage1)
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "1"])
    out = capsys.readouterr().out
    assert out.count("already trained") == 2 and os.path.getmtime(stage1) == mtime


def test_stage_without_pseudo_labels_says_how_to_make_them(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 992, dim=2, num_labeled=5, num_unlabeled=2)
    plan_and_preprocess(992, ["2d"], num_processes=1, show_progress=False)
    from semi_nnunet.run.train_api import find_trainer_class
    from semi_nnunet.trainers.base import NoUnlabeledDataError
    pre = join(nnunet_paths["nnUNet_preprocessed"], "Dataset992_Synthetic2D")
    trainer = find_trainer_class(f"{TRAINER}_stage2")(
        {**load_json(join(pre, "nnUNetPlans.json")), "continue_training": False}, "2d", 1,
        load_json(join(pre, "dataset.json")), torch.device("cpu"))
    with pytest.raises(NoUnlabeledDataError, match=f"stage-2 pseudo-labels of fold 1.*{TRAINER} 1 --stages 2"):
        trainer.check_unlabeled_data()


def test_fold_all_is_labelled_by_the_numbered_fold_models(tmp_path, capsys):
    model = str(tmp_path)
    for f in (0, 2):
        os.makedirs(join(model, f"fold_{f}"))
        open(join(model, f"fold_{f}", "checkpoint_final.pth"), "w").close()
    assert pseudo_label_source_folds(model, 3, [0, 1, 2, 3, "all"]) == [3]  # a fold: only its own model
    assert pseudo_label_source_folds(model, "all", [0, 1, 2, 3, "all"]) == [0, 2]
    assert pseudo_label_source_folds(str(tmp_path / "none"), "all", ["all"]) == ["all"]
    assert "WARNING" in capsys.readouterr().out
