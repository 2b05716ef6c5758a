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
    report = load_json(join(initial, "stages.json"))["rows"]
    assert [(r["stage"], r["fold"]) for r in report] == [(0, "0"), (1, "0")]
    assert all(0.0 <= r["validation_dice"] <= 1.0 for r in report) and os.path.isfile(join(initial, "stages.png"))
    assert not any("pseudo" in d for d in os.listdir(raw))

    capsys.readouterr()
    mtime = os.path.getmtime(stage1)
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "1"])
    out = capsys.readouterr().out
    assert out.count("[done]") == 3 and "[to do]" not in out and os.path.getmtime(stage1) == mtime

    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "2", "--dry-run"])
    plan = capsys.readouterr().out.splitlines()
    assert any(f"[done] stage 1: pseudo-labels for fold 0 from {TRAINER} fold(s) 0" in line for line in plan)
    assert any(f"[to do] stage 2: pseudo-labels for fold 0 from {TRAINER}_stage1 fold(s) 0" in line for line in plan)
    assert any(f"[to do] stage 2: train {TRAINER}_stage2 fold 0" in line for line in plan)
    assert not os.path.exists(join(initial, "pseudo_labels", "stage_2"))  # a dry run writes nothing

    # early stop: stage-2 pseudo-labels are made, agree with stage 1's at >= 0, so stage 2 is not trained
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "2", "--stop-agreement", "0.0"])
    assert "Stopping before stage 2" in capsys.readouterr().out
    assert os.path.isfile(join(initial, "pseudo_labels", "stage_2", "fold_0", "provenance.json"))
    assert not os.path.exists(join(results, f"{TRAINER}_stage2__nnUNetPlans__2d"))
    assert [r["stage"] for r in load_json(join(initial, "stages.json"))["rows"]] == [0, 1]
    # a rerun finds the stopped stage done (no task to submit again); another threshold decides again
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "2", "--stop-agreement", "0.0", "--dry-run"])
    plan = capsys.readouterr().out.splitlines()
    assert any(f"[done] stage 2: train {TRAINER}_stage2 fold 0" in line for line in plan), plan
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "2", "--stop-agreement", "1.5", "--dry-run"])
    plan = capsys.readouterr().out.splitlines()
    assert any(f"[to do] stage 2: train {TRAINER}_stage2 fold 0" in line for line in plan), plan

    # fine-tuning: stage 2 starts from fold 0's final stage-1 model
    train_main(["991", "2d", TRAINER, "0", "-device", "cpu", "--stages", "2", "--finetune"])
    out = capsys.readouterr().out
    assert "Loading pretrained weights" in out and stage1 in out
    assert os.path.isfile(join(results, f"{TRAINER}_stage2__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth"))


def test_stage_without_pseudo_labels_says_how_to_make_them(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 992, dim=2, num_labeled=5, num_unlabeled=2)
    plan_and_preprocess(992, ["2d"], num_processes=1, show_progress=False)
    from semi_nnunet.trainers.lookup import find_trainer_class
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
    assert "Note: no numbered fold models" in capsys.readouterr().out


def test_label_agreement_between_pseudo_label_folders(tmp_path):
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from semi_nnunet.stages.report import label_agreement
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    os.makedirs(a), os.makedirs(b)
    data = np.zeros((1, 1, 4, 4), np.float32)
    s1 = np.zeros((1, 1, 4, 4), np.int8)
    s1[..., :2, :] = 1  # 8 foreground pixels
    s2 = np.zeros_like(s1)
    s2[..., :1, :] = 1  # 4 of them: Dice = 2*4 / (8 + 4) = 2/3
    empty = np.zeros_like(s1)
    for folder, seg_x, seg_y in ((a, s1, empty), (b, s2, empty)):
        nnUNetDatasetBlosc2.save_case(data, seg_x, {}, join(folder, "x"), chunks=(1, 1, 4, 4), blocks=(1, 1, 4, 4))
        nnUNetDatasetBlosc2.save_case(data, seg_y, {}, join(folder, "y"), chunks=(1, 1, 4, 4), blocks=(1, 1, 4, 4))
    assert label_agreement(a, b) == pytest.approx((2 / 3 + 1.0) / 2)  # y: both empty counts as agreement 1
    assert label_agreement(a, str(tmp_path / "missing")) is None


def test_two_folds_killed_midway_then_resumed(nnunet_paths):
    """SIGKILL during stage-1 training, rerun (folds in parallel): finishes, never retrains stage 0, every pseudo-label
    comes from its own fold's model of the previous stage. (Two stages on one fold are covered above.)"""
    import signal
    import subprocess
    import sys
    import time
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 993, dim=2, num_labeled=5, num_unlabeled=3, shape=(32, 32))
    plan_and_preprocess(993, ["2d"], num_processes=1, show_progress=False)
    cmd = [sys.executable, "-c", "from semi_nnunet.run.train_entrypoint import main; main()",
           "993", "2d", TRAINER, "0", "1", "--stages", "1", "-device", "cpu"]
    env = {**os.environ, "nnUNet_n_proc_DA": "0"}
    results = join(nnunet_paths["nnUNet_results"], "Dataset993_Synthetic2D")
    stage1_fold0 = join(results, f"{TRAINER}_stage1__nnUNetPlans__2d", "fold_0")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not os.path.isdir(stage1_fold0) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the pipeline ended before stage 1 started"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    initial = join(results, f"{TRAINER}__nnUNetPlans__2d")
    stage0 = {f: os.path.getmtime(join(initial, f"fold_{f}", "checkpoint_final.pth")) for f in (0, 1)}

    # the rerun trains the two folds of each remaining stage side by side
    subprocess.run(cmd + ["--parallel", "2"], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    assert {f: os.path.getmtime(join(initial, f"fold_{f}", "checkpoint_final.pth")) for f in (0, 1)} == stage0
    for k in (1,):
        previous = initial
        for f in (0, 1):
            pseudo = join(initial, "pseudo_labels", f"stage_{k}", f"fold_{f}")
            prov = load_json(join(pseudo, "provenance.json"))
            assert prov["folds"] == [str(f)] and prov["model_folder"] == previous  # its own fold's model only
            assert sorted(unlabeled_identifiers(pseudo)) == ["unl000", "unl001", "unl002"]
            assert os.path.isfile(join(results, f"{TRAINER}_stage{k}__nnUNetPlans__2d", f"fold_{f}",
                                       "checkpoint_final.pth"))
    assert not any(name.startswith(".staging") for name in os.listdir(join(initial, "pseudo_labels", "stage_1")))


@pytest.mark.parametrize("parallel, device, visible, slots", [
    (2, "cuda", None, ["0", "1"]),            # nothing listed: GPUs 0..N-1
    (2, "cuda", "", ["0", "1"]),
    (2, "cuda", "3,5,6", ["3", "5"]),         # the scheduler's GPUs, never others
    (3, "cuda", " 4 , 7,2", ["4", "7", "2"]),
    (2, "cpu", "3,5", [None, None]),          # off CUDA the environment is left as it is
])
def test_parallel_uses_the_listed_gpus(parallel, device, visible, slots, monkeypatch):
    import torch

    from semi_nnunet.tasks.executors import device_slots
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # a machine with four GPUs
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    assert device_slots(parallel, device, environ) == slots


def test_parallel_with_more_folds_than_listed_gpus_fails_clearly():
    from semi_nnunet.tasks.executors import device_slots
    with pytest.raises(ValueError, match=r"CUDA_VISIBLE_DEVICES=1,2 lists 2 GPU\(s\)(.|\n)*use --parallel 2"):
        device_slots(3, "cuda", {"CUDA_VISIBLE_DEVICES": "1,2"})


def test_parallel_with_more_folds_than_the_machines_gpus_fails_clearly(monkeypatch):
    import torch

    from semi_nnunet.tasks.executors import device_slots
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"this machine has 1 GPU\(s\)(.|\n)*use --parallel 1"):
        device_slots(2, "cuda", {})


def test_ray_refuses_a_task_with_more_gpus_than_its_slots(monkeypatch):
    """--parallel 2 starts Ray with 2 GPU slots: a 4-GPU task could never be scheduled (a silent hang)."""
    import torch

    from semi_nnunet.tasks.executors import ExecutorOptions, run_graph
    from semi_nnunet.tasks.graph import Graph, Task
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    g = Graph()
    g.add(Task("train/fold_0", "os:getcwd", gpus=4, outputs=["/nonexistent/x"]))
    with pytest.raises(ValueError, match="A task needs 4 GPUs, but --parallel 2"):
        run_graph(g, ExecutorOptions("ray", parallel=2))


def _ancestors(graph, key):
    seen, todo = set(), list(graph[key].deps)
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo += graph[k].deps
    return seen


def test_the_pipeline_graph_has_dependencies_per_fold_not_a_barrier_per_stage(nnunet_paths):
    from semi_nnunet.stages.runner import stage_graph
    from semi_nnunet.trainers.training import TrainRequest
    request = TrainRequest("Dataset990_X", "2d", TRAINER, device="cpu")
    g = stage_graph(request, "Dataset990_X", [0, 1, "all"], 2, "/unlabeled")
    assert g["pseudo/stage2/fold_1"].deps == ["train/stage1/fold_1"]
    assert g["train/stage2/fold_1"].deps == ["pseudo/stage2/fold_1"]
    assert not any("fold_0" in k for k in _ancestors(g, "train/stage2/fold_1"))  # fold 1 never waits for fold 0
    assert g["pseudo/stage1/fold_all"].deps == ["train/stage0/fold_0", "train/stage0/fold_1"]  # the numbered folds
    assert g["report"].deps == [f"train/stage{k}/fold_{f}" for k in range(3) for f in (0, 1, "all")]
    assert g["train/stage1/fold_0"].outputs[0].endswith(f"{TRAINER}_stage1__nnUNetPlans__2d/fold_0/"
                                                         "checkpoint_final.pth")
    assert g["pseudo/stage1/fold_0"].label.startswith(f"stage 1: pseudo-labels for fold 0 from {TRAINER} fold(s) 0")
    assert g["train/stage1/fold_0"].kwargs["pretrained_weights"] is None
    # --stop-agreement: one check per stage from 2 on, waiting for that stage's pseudo-labels of every fold
    g = stage_graph(request.but(stop_agreement=0.9, finetune=True), "Dataset990_X", [0, 1], 2, "/unlabeled")
    assert g["agreement/stage2"].deps == ["pseudo/stage2/fold_0", "pseudo/stage2/fold_1"]
    assert g["train/stage2/fold_0"].deps == ["pseudo/stage2/fold_0", "agreement/stage2"]
    assert "agreement/stage1" not in g.tasks
    # --finetune: stage k starts from the same fold's final stage k-1 model
    assert g["train/stage2/fold_1"].kwargs["pretrained_weights"].endswith(
        f"{TRAINER}_stage1__nnUNetPlans__2d/fold_1/checkpoint_final.pth")
    cuda = stage_graph(request.but(device="cuda"), "Dataset990_X", [0], 1, "/unlabeled")
    assert cuda["train/stage0/fold_0"].gpus == 1 and cuda["pseudo/stage1/fold_0"].gpus == 1
    assert cuda["report"].gpus == 0
