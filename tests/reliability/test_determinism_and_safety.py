"""Determinism (same seed, same weights), loading safety (restricted unpickler), nothing overwritten that matters."""
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from reliability.reliability_support import DATASET_ID, SEED, TRAINER, tree_digest

from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.utilities.checkpoints import TRUST_ENV, CheckpointError, load_checkpoint_file


def _weights(results_root, dataset_name):
    path = join(results_root, dataset_name, f"{TRAINER}__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth")
    ckpt = load_checkpoint_file(path)
    return {**{"net." + k: v for k, v in ckpt["network_weights"].items()},
            **{"teacher." + k: v for k, v in ckpt["teacher_weights"].items()}}


def test_same_seed_gives_identical_weights_and_another_seed_does_not(rel, tmp_path, monkeypatch):
    """The package's training (train(..., seed=0), in this process) against semi_nnUNet_train --seed 0 and --seed 1
    into other results folders; -device cpu, nnUNet_n_proc_DA=0."""
    first = _weights(rel["nnUNet_results"], rel["dataset_name"])
    runs = {}
    for seed in (SEED, SEED + 1):
        results = str(tmp_path / f"results_seed{seed}")
        os.makedirs(results)
        monkeypatch.setenv("nnUNet_results", results)
        train_main([str(DATASET_ID), "2d", TRAINER, "0", "-device", "cpu", "--seed", str(seed)])
        runs[seed] = _weights(results, rel["dataset_name"])
    same, other = runs[SEED], runs[SEED + 1]
    assert same.keys() == first.keys() == other.keys()
    unequal = [k for k in first if not torch.equal(first[k], same[k])]
    assert not unequal, f"same seed, different tensors: {unequal[:5]}"
    assert any(not torch.equal(first[k], other[k]) for k in first), "another seed gave the very same weights"


def test_checkpoints_load_with_the_restricted_unpickler(rel, tmp_path, monkeypatch):
    """nnU-Net's checkpoint format plus ours loads with torch.load(weights_only=True) and the numpy allowlist;
    without the allowlist it would not (nnU-Net logs numpy scalars); a file naming other globals is refused unless
    the user declares it trusted."""
    import pickle
    path = join(rel["model"], "fold_0", "checkpoint_final.pth")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    for name in ("checkpoint_final.pth", "checkpoint_best.pth"):
        ckpt = load_checkpoint_file(join(rel["model"], "fold_0", name))
        assert ckpt["trainer_name"] == TRAINER and ckpt["init_args"]["plans"]["dataset_name"] == rel["dataset_name"]

    unsafe, marker = str(tmp_path / "unsafe.pth"), str(tmp_path / "code_ran")

    class Payload:
        def __reduce__(self):
            return open, (marker, "w")
    torch.save({"network_weights": {}, "payload": Payload()}, unsafe)
    with pytest.raises(CheckpointError, match=TRUST_ENV):
        load_checkpoint_file(unsafe)
    assert not os.path.exists(marker), "the restricted unpickler ran code"
    monkeypatch.setenv(TRUST_ENV, "1")
    load_checkpoint_file(unsafe)  # the user's explicit choice: a full unpickle, which runs the payload
    assert os.path.exists(marker)


def test_nothing_that_matters_is_overwritten(rel, tmp_path):
    """After preprocessing, training (package set-up) and pseudo-labels, the raw dataset is byte-identical and the
    pseudo-labels live under nnUNet_results; a second plan_and_preprocess with another planner writes its own plans
    and leaves every earlier file byte-identical; other training settings are other results folders."""
    from semi_nnunet.planners.plan_and_preprocess_api import get_unlabeled_folder, plan_and_preprocess
    from semi_nnunet.trainers.lookup import with_optimizer
    from semi_nnunet.stages.pseudo_labels import predict_pseudo_labels
    from semi_nnunet.trainers.pseudo_label import pseudo_label_folder
    from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers

    raw_and_preprocessed = tree_digest(rel["raw"], rel["preprocessed"])
    pseudo = pseudo_label_folder(rel["dataset_name"], TRAINER, "nnUNetPlans", "2d", 1, 0)
    predict_pseudo_labels(rel["model"], [0], get_unlabeled_folder(rel["dataset_name"], "nnUNetPlans", "2d"), pseudo,
                          {"stage": 1, "fold": "0"}, device="cpu")
    assert os.path.commonpath([pseudo, rel["nnUNet_results"]]) == rel["nnUNet_results"]
    assert sorted(unlabeled_identifiers(pseudo)) == ["unl000", "unl001"]
    assert tree_digest(rel["raw"], rel["preprocessed"]) == raw_and_preprocessed, "pseudo-labelling wrote outside " \
                                                                                  "the results folder"
    assert tree_digest(rel["raw"]) == rel["raw_digest"], "the raw dataset (images, ground truth) was written"

    # another planner: its own plans file; the preprocessed data it shares with the default plans (nnU-Net's ResEnc
    # presets preprocess alike) is found current, not rewritten
    before = tree_digest(rel["preprocessed"])
    summary = plan_and_preprocess(DATASET_ID, ["2d"], planner="nnUNetPlannerResEncM", num_processes=1,
                                  show_progress=False)
    assert summary["plans_identifier"] == "nnUNetResEncUNetMPlans"
    counts = summary["configurations"]["2d"]
    assert counts["labeled"]["done"] == counts["unlabeled"]["done"] == 0
    after = tree_digest(rel["preprocessed"])
    assert {k: after.get(k) for k in before} == before, "the second planner changed the first plans or their data"
    assert join(rel["preprocessed"], "nnUNetResEncUNetMPlans.json") in after

    # plans of the same name made with other settings are refused (tests/reliability/test_bad_input_corpus.py),
    # or replaced on request: then only what preprocessing depends on is redone (here: nothing)
    plans_file = join(rel["preprocessed"], "nnUNetPlans.json")
    with open(plans_file, "rb") as f:
        planned = f.read()
    plans = load_json(plans_file)
    plans["configurations"]["2d"]["batch_size"] += 1
    save_json(plans, plans_file)
    summary = plan_and_preprocess(DATASET_ID, ["2d"], num_processes=1, show_progress=False, replace_plans=True)
    assert summary["configurations"]["2d"]["labeled"]["done"] == 0
    with open(plans_file, "rb") as f:
        assert f.read() == planned

    from nnunetv2.utilities.file_path_utilities import get_output_folder
    folders = {get_output_folder(rel["dataset_name"], t, p, "2d", 0)
               for t in (TRAINER, with_optimizer(TRAINER, "adamw")) for p in ("nnUNetPlans", "nnUNetResEncUNetMPlans")}
    assert len(folders) == 4, "trainer, optimizer and plans each make their own results folder"


def test_checkpoints_of_nnunet_trainer_variants_are_written_atomically(rel, tmp_path, monkeypatch):
    """Our variants of nnU-Net's own trainers (ScheduleMixin) write nnU-Net's checkpoint through a temporary file: a
    write that dies half-way leaves the previous checkpoint intact and no temporary file."""
    from semi_nnunet.trainers.variants import nnUNetTrainer_2epochs_2it
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    plans = {**load_json(join(rel["preprocessed"], "nnUNetPlans.json")), "continue_training": False}
    trainer = nnUNetTrainer_2epochs_2it(plans, "2d", 0, load_json(join(rel["preprocessed"], "dataset.json")),
                                        torch.device("cpu"))
    trainer.initialize()
    path = join(trainer.output_folder, "checkpoint_latest.pth")
    trainer.save_checkpoint(path)
    with open(path, "rb") as f:
        intact = f.read()

    def dies_half_way(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(intact[:len(intact) // 2])
        raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(torch, "save", dies_half_way)
    trainer.current_epoch = 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint(path)
    with open(path, "rb") as f:
        assert f.read() == intact
    assert sorted(os.listdir(trainer.output_folder)) == ["checkpoint_latest.pth"] + \
        sorted(f for f in os.listdir(trainer.output_folder) if f.startswith("training_log"))
