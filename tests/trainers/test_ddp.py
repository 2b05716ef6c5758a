"""Multi-GPU (DDP) without GPUs: every semi-supervised trainer trains under ``torch.distributed`` with two CPU
processes (gloo), through nnU-Net's own DDP set-up and the shipped trainer code (ddp_worker.py; its only test code is
the CUDA-to-CPU device shim). Checked per trainer: no error; both ranks end with the same student, teacher and
auxiliary weights after steps that moved them; the logged curves are the ranks' gathered values (identical on both
ranks although each rank trains on its own batches); only rank 0 writes checkpoints; ``--c`` resumes under DDP.

The default suite runs the two cases a DDP step can break most (HCO's two gradient sets; a pseudo-label stage whose
labeled share is drawn per step), the slow suite every trainer with and without HCO (UniMatch's feature stream,
decoded outside DDP's forward, among them).
"""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, save_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess

DATASET = "Dataset976_Synthetic2D"
WORKER = join(os.path.dirname(os.path.abspath(__file__)), "ddp_worker.py")
DEFAULT = ["MeanTeacherTrainer_2epochs_2it_HCO", "SemiCervixTrainer_uniform_2epochs_2it_stage1"]
SLOW = ["MeanTeacherTrainer_2epochs_2it", "SemiCervixTrainer_2epochs_2it", "SemiCervixTrainer_2epochs_2it_HCO",
        "SemiCervixTrainer_2epochs_2it_stage1", "SemiCervixTrainer_2epochs_2it_HCO_stage1",
        "HermesTrainer_2epochs_2it", "HermesTrainer_2epochs_2it_HCO", "SynFoCTrainer_tinySAM_2epochs_2it",
        "SynFoCTrainer_tinySAM_2epochs_2it_HCO", "UniMatchTrainer_2epochs_2it", "UniMatchTrainer_2epochs_2it_HCO",
        "FixMatchTrainer_2epochs_2it"]
# pseudo-labels of the stage trainers' initial trainers (a stage trains on what the previous stage labeled)
INITIAL = ("SemiCervixTrainer_2epochs_2it", "SemiCervixTrainer_2epochs_2it_HCO",
           "SemiCervixTrainer_uniform_2epochs_2it")


@pytest.fixture(scope="module")
def planned(module_paths):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_n_proc_DA", "0")
        make_synthetic_dataset(module_paths["nnUNet_raw"], 976, dim=2, num_labeled=6, num_unlabeled=4,
                               shape=(48, 48), image_classes=True)  # Hermes's ResNet: 2 x 2 at its last stage
        plan_and_preprocess(976, ["2d"], num_processes=1, show_progress=False)
    cases = join(module_paths["nnUNet_preprocessed"], DATASET, "nnUNetPlans_2d")
    for initial in INITIAL:  # stand-in pseudo-labels: preprocessed cases with a segmentation, where a stage reads them
        # the layout of semi_nnunet.trainers.pseudo_label.pseudo_label_folder (stage 1, fold 0)
        target = join(module_paths["nnUNet_results"], DATASET, f"{initial}__nnUNetPlans__2d", "pseudo_labels",
                      "stage_1", "fold_0")
        os.makedirs(target)
        for f in sorted(os.listdir(cases))[:12]:
            shutil.copy(join(cases, f), target)
    return module_paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(paths, folder, trainers, continue_training=False, num_epochs=None, world_size=2):
    """Start the worker once per rank, wait, and return each trainer's per-rank results."""
    os.makedirs(folder, exist_ok=True)
    spec = join(folder, f"spec_{int(continue_training)}.json")
    save_json({"dataset": DATASET, "configuration": "2d", "fold": 0, "trainers": trainers,
               "continue": continue_training, "num_epochs": num_epochs, "out": folder}, spec)
    env = {**os.environ, **paths, "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1",
           "nnUNet_compile": "false"}
    procs = [subprocess.Popen([sys.executable, WORKER, spec], env={**env, "RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world_size)]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=1500)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for r, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {r} failed:\n{out[-6000:]}"
    return {t: [torch.load(join(folder, f"{t}.rank{r}.pt"), map_location="cpu", weights_only=False)
                for r in range(world_size)] for t in trainers}


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_ranks(results, epochs: int, iterations: int = 2):
    for name, (r0, r1) in results.items():
        assert r0["is_ddp"] and r0["world_size"] == 2, name
        assert r0["epoch"] == r1["epoch"] == epochs and r0["global_step"] == r1["global_step"] == epochs * iterations
        assert _same(r0["student"], r1["student"]), f"{name}: the ranks' students differ"
        assert _same(r0["teacher"], r1["teacher"]), f"{name}: the ranks' teachers differ"
        assert _same(r0["auxiliary"], r1["auxiliary"]), f"{name}: the ranks' auxiliary modules differ"
        for key, values in r0["logs"].items():
            assert len(values) == epochs, (name, key)
            same = [a == b or (a != a and b != b) for a, b in zip(values, r1["logs"][key])]
            assert all(same), f"{name}: curve {key} not gathered: {values} vs {r1['logs'][key]}"
        assert all(v == v for v in r0["logs"]["unsup_loss"]), f"{name}: NaN unlabeled loss"
        assert any("checkpoint_" in s for s in r0["saves"]), f"{name}: rank 0 wrote no checkpoint"
        assert not r1["saves"], f"{name}: rank 1 wrote {r1['saves']}"


def _moved(results, before):
    """Every trainer's student moved from its state ``before`` (the steps did something)."""
    for name, (r0, _) in results.items():
        assert not _same(r0["student"], before[name][0]["student"]), f"{name}: no step moved the weights"


def _run_and_resume(paths, folder, trainers):
    first = run_ranks(paths, folder, trainers)
    check_ranks(first, epochs=2)
    for t in trainers:
        fold = join(paths["nnUNet_results"], DATASET, f"{t}__nnUNetPlans__2d", "fold_0")
        assert os.path.isfile(join(fold, "checkpoint_final.pth")), t
    resumed = run_ranks(paths, folder, trainers, continue_training=True, num_epochs=3)
    check_ranks(resumed, epochs=3)
    _moved(resumed, first)


def test_ddp_two_ranks_agree_and_resume(planned, tmp_path):
    _run_and_resume(planned, str(tmp_path), DEFAULT)


@pytest.mark.slow
def test_ddp_every_trainer_with_and_without_hco(planned, tmp_path):
    _run_and_resume(planned, str(tmp_path), SLOW)
