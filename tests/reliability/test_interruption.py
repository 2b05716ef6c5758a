"""SIGKILL at random points, then the same command again: it completes, nothing truncated is ever read.

Each test runs the user-facing command in a subprocess through a small wrapper that logs progress events (and
stretches the step being interrupted, so that a kill lands inside it), picks a kill point with a seeded RNG among the
events of the window where work is in progress, waits for it, kills the process group with SIGKILL, checks what is on
disk, and reruns. The seed and the chosen point are printed (pytest -s shows them); set RELIABILITY_KILL_SEED to draw
other points. Prediction and the stage runner have their own kill tests (tests/inference/test_predict.py,
tests/stages/test_stage_runner.py).
"""
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from reliability.reliability_support import DATASET_ID

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.utilities.checkpoints import load_checkpoint_file

KILL_SEED = int(os.environ.get("RELIABILITY_KILL_SEED", "11"))
PREPROCESS_ID = 961
DELAY = 0.4  # seconds each stretched step lasts

WRAPPER = """
import os, sys, time


def log(event):
    with open(sys.argv[1], "a") as f:
        f.write(event + "\\n")


if __name__ == "__main__":  # nnU-Net's spawned workers import this file too: they must not run it
    DELAY, COMMAND = float(sys.argv[2]), sys.argv[3]
    from nnunetv2.training.logging.nnunet_logger import LocalLogger
    LocalLogger.plot_progress_png = lambda self, output_folder: None  # seconds per epoch on a CPU, not under test
    if COMMAND == "plan":
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        run_case_save = DefaultPreprocessor.run_case_save

        def stretched(self, output_filename_truncated, *args, **kwargs):
            case = os.path.basename(output_filename_truncated)
            log("case " + case)
            run_case_save(self, output_filename_truncated, *args, **kwargs)
            time.sleep(DELAY)  # the case's files are staged and not yet moved into place
        DefaultPreprocessor.run_case_save = stretched
        from semi_nnunet.run.plan_and_preprocess_entrypoint import main
    else:
        import torch
        from semi_nnunet.trainers.lookup import find_trainer_class
        from semi_nnunet.trainers.base import SemiSupervisedTrainer
        trainer = find_trainer_class(sys.argv[6])
        trainer.schedule = {**trainer.schedule, "save_every": 1}  # checkpoint_latest after every epoch
        save, train_step = torch.save, SemiSupervisedTrainer.train_step

        def stretched_save(obj, f, *args, **kwargs):
            save(obj, f, *args, **kwargs)
            if isinstance(obj, dict) and "network_weights" in obj:
                log(f"save {obj['current_epoch'] - 1}")
                time.sleep(DELAY)  # written to the temporary file, not yet renamed onto the checkpoint

        def logged_step(self, batch):
            log(f"iteration {self.current_epoch}")
            return train_step(self, batch)
        torch.save, SemiSupervisedTrainer.train_step = stretched_save, logged_step
        from semi_nnunet.run.train_entrypoint import main
    main(sys.argv[4:])
"""


def _start(tmp_path, command, argv):
    script, log = tmp_path / "wrapper.py", tmp_path / f"events_{len(list(tmp_path.glob('events_*.log')))}.log"
    script.write_text(WRAPPER)
    with open(tmp_path / f"{log.stem}.out", "w") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(log), str(DELAY), command, *argv],
                                env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _events(log):
    return log.read_text().splitlines() if log.exists() else []


def _kill_at(proc, log, event, index, rng):
    """Wait until the ``index``-th (1-based) log line equal to ``event`` appears, then SIGKILL after a random part
    of the stretched step."""
    deadline = time.time() + 300
    while _events(log).count(event) < index:
        assert proc.poll() is None, f"the command ended before '{event}' #{index}: {_events(log)}"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(rng.uniform(0, DELAY * 1.25))  # inside the step, or just past it
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _case_files(folder):
    return sorted(f for f in os.listdir(folder) if not f.startswith("."))


def _load_case(folder, case):
    import blosc2
    data = np.asarray(blosc2.open(join(folder, case + ".b2nd"), mode="r")[:])
    seg = np.asarray(blosc2.open(join(folder, case + "_seg.b2nd"), mode="r")[:])
    with open(join(folder, case + ".pkl"), "rb") as f:
        return data, seg, pickle.load(f)


def test_preprocessing_killed_then_rerun_equals_an_uninterrupted_run(rel, tmp_path, monkeypatch):
    raw = make_synthetic_dataset(rel["nnUNet_raw"], PREPROCESS_ID, dim=2, num_labeled=3, num_unlabeled=6,
                                 shape=(32, 32))
    name = os.path.basename(raw)
    cases = ["lab000", "lab001", "lab002"] + [f"unl{i:03d}" for i in range(6)]
    rng = random.Random(KILL_SEED)
    k = rng.randint(2, len(cases) - 1)  # the case being preprocessed when the kill comes
    print(f"kill seed {KILL_SEED}: SIGKILL while preprocessing case {k} of {len(cases)} ({cases[k - 1]})")
    proc, log = _start(tmp_path, "plan", ["-d", str(PREPROCESS_ID), "-c", "2d", "-np", "1", "--no_progress"])
    _kill_at(proc, log, f"case {cases[k - 1]}", 1, rng)

    # what a reader finds after the kill: only complete cases (nnU-Net lists a case by its .b2nd data file, which
    # is moved into place last), no temporary file outside the state folder
    pre = join(rel["nnUNet_preprocessed"], name)
    folders = {"labeled": join(pre, "nnUNetPlans_2d"), "unlabeled": join(pre, "nnUNetPlans_2d_unlabeled")}
    listed = []
    for folder in folders.values():
        if os.path.isdir(folder):
            for f in _case_files(folder):
                assert not f.startswith(".tmp"), f
                if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"):
                    case = f[:-len(".b2nd")]
                    listed.append(case)
                    assert os.path.isfile(join(folder, case + "_seg.b2nd")) and os.path.isfile(
                        join(folder, case + ".pkl")), f"{case} is listed but incomplete"
                    _load_case(folder, case)  # and it reads
    assert 1 <= len(listed) < len(cases), listed

    summary = plan_and_preprocess(PREPROCESS_ID, ["2d"], num_processes=1, show_progress=False)
    counts = summary["configurations"]["2d"]
    redone = counts["labeled"]["done"] + counts["unlabeled"]["done"]
    # the unfinished cases, and the finished ones the manifest had not recorded yet (it is saved every 50 cases or
    # 10 s, and when a folder is done)
    assert len(cases) - len(listed) <= redone <= len(cases)

    reference_root = tmp_path / "reference"
    os.makedirs(reference_root)
    monkeypatch.setenv("nnUNet_preprocessed", str(reference_root))
    plan_and_preprocess(PREPROCESS_ID, ["2d"], num_processes=1, show_progress=False)
    reference = join(str(reference_root), name)
    for key in ("nnUNetPlans.json", "splits_final.json", "dataset_fingerprint.json"):
        assert load_json(join(pre, key)) == load_json(join(reference, key)), key
    for folder in folders.values():
        other = folder.replace(pre, reference)
        assert _case_files(folder) == _case_files(other)
        for case in (f[:-len(".pkl")] for f in _case_files(folder) if f.endswith(".pkl")):
            (d1, s1, p1), (d2, s2, p2) = _load_case(folder, case), _load_case(other, case)
            assert np.array_equal(d1, d2) and d1.dtype == d2.dtype and np.array_equal(s1, s2), case
            np.testing.assert_equal(p1, p2)
    assert not [d for d in os.listdir(join(pre, ".semi_nnunet")) if d.startswith("staging_")]


def test_training_killed_twice_then_continued(rel, tmp_path):
    """Killed mid-iteration, continued with --c and killed again while a checkpoint is being written, continued
    again: it finishes, every checkpoint on disk loads at every point, and each rerun resumes from the last saved
    epoch."""
    trainer = "MeanTeacherTrainer_3epochs_2it"
    argv = [str(DATASET_ID), "2d", trainer, "0", "-device", "cpu"]
    fold = join(rel["nnUNet_results"], rel["dataset_name"], f"{trainer}__nnUNetPlans__2d", "fold_0")
    rng = random.Random(KILL_SEED)
    iteration = rng.randint(1, 2)  # of epoch 1: a checkpoint of epoch 0 exists by then
    print(f"kill seed {KILL_SEED}: SIGKILL in iteration {iteration} of epoch 1 of 3, then while a checkpoint is "
          f"being written")

    def check_on_disk():
        """Every checkpoint present loads (restricted unpickler); returns the epoch --c continues at (nnU-Net takes
        checkpoint_final, else checkpoint_latest)."""
        ckpts = {f: load_checkpoint_file(join(fold, f), mmap=True)["current_epoch"] for f in os.listdir(fold)
                 if f.endswith(".pth") and not f.startswith(".tmp")}
        return ckpts["checkpoint_final.pth"] if "checkpoint_final.pth" in ckpts else ckpts["checkpoint_latest.pth"]

    proc, log = _start(tmp_path, "train", argv)
    _kill_at(proc, log, "iteration 1", iteration, rng)
    saved = check_on_disk()
    assert saved in (1, 2)

    proc, log = _start(tmp_path, "train", argv + ["--c"])
    save_epoch = rng.randint(saved, 2)  # epoch 2's is checkpoint_final
    print(f"  first kill left checkpoint_latest at epoch {saved}; second kill while saving epoch {save_epoch}")
    _kill_at(proc, log, f"save {save_epoch}", 1, rng)
    assert _events(log)[0] == f"iteration {saved}", "the rerun resumed at the saved epoch"
    saved_again = check_on_disk()
    assert saved <= saved_again <= 3

    proc, log = _start(tmp_path, "train", argv + ["--c"])
    assert proc.wait(timeout=600) == 0, (tmp_path / f"{log.stem}.out").read_text()[-3000:]
    assert _events(log)[:1] == ([f"iteration {saved_again}"] if saved_again < 3 else [])
    final = load_checkpoint_file(join(fold, "checkpoint_final.pth"))
    assert final["current_epoch"] == 3 and len(final["logging"]["train_losses"]) == 3
    assert not [f for f in os.listdir(fold) if f.startswith(".tmp")], "leftovers of the killed write are removed"
    assert os.path.isfile(join(fold, "validation", "summary.json"))


@pytest.fixture(autouse=True)
def _cleanup_preprocess_dataset(rel):
    yield
    import shutil
    for root in (rel["nnUNet_raw"], rel["nnUNet_preprocessed"]):
        for d in os.listdir(root):
            if d.startswith(f"Dataset{PREPROCESS_ID}_"):
                shutil.rmtree(join(root, d))
