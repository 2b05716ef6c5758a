"""SIGUSR1 (Slurm's ``--signal=USR1@120``, submitit's preempt signal) during a real training, in this process.

The signal is sent to this process from inside a training step of epoch 1 (of 2, two iterations each): the step in
progress finishes, ``checkpoint_latest.pth`` is written so that ``--c`` redoes epoch 1, no ``checkpoint_final.pth``,
the previous handler is back, and then :class:`TrainingInterrupted` (exit code 75) or the previous Python handler
(submitit's requeue) ends the run. Continuing from the checkpoint finishes the budget. Checked for a semi-supervised
trainer (Mean Teacher) and for nnU-Net's own trainer through our budget variant; also: a training in a thread
installs nothing, a signal after the last iteration lets the training finish, and the augmentation workers keep
SIGUSR1 blocked.
"""
import os
import pickle
import shutil
import signal
import threading

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.generated import budget_variant
from semi_nnunet.trainers.mean_teacher import MeanTeacherTrainer
from semi_nnunet.trainers.schedule import INTERRUPTED_EXIT_CODE, TrainingInterrupted
from semi_nnunet.utilities.checkpoints import load_checkpoint_file

DATASET_ID = 958
EPOCHS, ITERATIONS = 2, 2
SIGNAL_AT = (1, 0)  # (epoch, 0-based iteration) whose step sends SIGUSR1: the first of the last epoch
TRAINERS = {"semi-supervised": lambda: budget_variant(MeanTeacherTrainer, EPOCHS, ITERATIONS),
            "nnU-Net baseline": lambda: budget_variant(_nnunet_trainer(), EPOCHS, ITERATIONS)}


def _nnunet_trainer():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    return nnUNetTrainer


@pytest.fixture(scope="module")
def planned(module_paths):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_n_proc_DA", "0")
        make_synthetic_dataset(module_paths["nnUNet_raw"], DATASET_ID, dim=2, num_labeled=3, num_unlabeled=2,
                               shape=(32, 32))
        plan_and_preprocess(DATASET_ID, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], f"Dataset{DATASET_ID}_Synthetic2D")
    plans = load_json(join(pre, "nnUNetPlans.json"))
    # a narrow U-Net (nnU-Net's 32..256 features cost seconds a step on a busy 2-core CPU); same topology
    arch = plans["configurations"]["2d"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [4 * 2 ** i for i in range(arch["n_stages"])]
    return plans, load_json(join(pre, "dataset.json"))


@pytest.fixture
def env(planned, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    previous = signal.getsignal(signal.SIGUSR1)
    yield planned
    signal.signal(signal.SIGUSR1, previous)


def _trainer(cls, planned, continue_training=False):
    """A trainer of ``cls`` for fold 0 on the CPU; a fresh one starts from an empty output folder."""
    plans, dataset_json = planned
    if not continue_training:
        shutil.rmtree(join(os.environ["nnUNet_results"], plans["dataset_name"], f"{cls.__name__}__nnUNetPlans__2d"),
                      ignore_errors=True)
    return cls({**plans, "continue_training": continue_training}, "2d", 0, dataset_json, torch.device("cpu"))


def _signalling(trainer, calls):
    """Make ``trainer``'s step record ``(epoch, iteration)`` and send SIGUSR1 at the start of :data:`SIGNAL_AT`'s
    step, before the step's own work (which must still complete: the pair is recorded after it)."""
    original = trainer.train_step
    count = {}

    def step(batch):
        epoch = trainer.current_epoch
        i = count[epoch] = count.get(epoch, -1) + 1
        if (epoch, i) == SIGNAL_AT:
            os.kill(os.getpid(), signal.SIGUSR1)  # the handler runs right here, in this thread
        out = original(batch)
        calls.append((epoch, i))
        return out
    trainer.train_step = step
    return trainer


def _check_redo_checkpoint(folder, cls):
    assert not os.path.exists(join(folder, "checkpoint_final.pth"))
    ckpt = load_checkpoint_file(join(folder, "checkpoint_latest.pth"))
    assert ckpt["current_epoch"] == SIGNAL_AT[0], "--c must redo the interrupted epoch"
    assert ckpt["trainer_name"] == cls.__name__
    lengths = {k: len(v) for k, v in ckpt["logging"].items()}
    assert set(lengths.values()) == {SIGNAL_AT[0]}, lengths  # the finished epochs only, one value each
    if "semi_global_step" in ckpt:
        assert ckpt["semi_global_step"] == SIGNAL_AT[0] * ITERATIONS  # the epoch's start
    return ckpt


def _continue(cls, planned):
    from nnunetv2.run.run_training import maybe_load_checkpoint
    trainer = _trainer(cls, planned, continue_training=True)
    maybe_load_checkpoint(trainer, True, False, None)
    assert trainer.current_epoch == SIGNAL_AT[0]
    calls = []
    original = trainer.train_step
    trainer.train_step = lambda batch: (calls.append(trainer.current_epoch), original(batch))[1]
    trainer.run_training()
    assert calls == [SIGNAL_AT[0]] * ITERATIONS + [e for e in range(SIGNAL_AT[0] + 1, EPOCHS)
                                                     for _ in range(ITERATIONS)]
    final = load_checkpoint_file(join(trainer.output_folder, "checkpoint_final.pth"))
    assert final["current_epoch"] == EPOCHS
    assert {len(v) for v in final["logging"].values()} == {EPOCHS}
    assert not os.path.exists(join(trainer.output_folder, "checkpoint_latest.pth"))
    if "semi_global_step" in final:
        assert final["semi_global_step"] == EPOCHS * ITERATIONS  # as in an uninterrupted run
    return final


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_sigusr1_checkpoints_after_the_step_and_continue_redoes_the_epoch(env, kind):
    cls = TRAINERS[kind]()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # the "previous" handler; not a Python function
    trainer = _signalling(_trainer(cls, env), calls := [])
    with pytest.raises(TrainingInterrupted) as e:
        trainer.run_training()
    assert isinstance(e.value, SystemExit) and e.value.code == INTERRUPTED_EXIT_CODE == 75
    message = str(e.value)
    assert f"signal SIGUSR1 after iteration {SIGNAL_AT[1] + 1} of epoch {SIGNAL_AT[0]}" in message
    assert f"checkpoint_latest.pth written to {trainer.output_folder}" in message and "`--c`" in message
    copy = pickle.loads(pickle.dumps(e.value))  # e.g. re-raised from a worker process
    assert type(copy) is TrainingInterrupted and copy.code == 75 and str(copy) == message
    # the step the signal came in finished; none after it
    assert calls == [(0, i) for i in range(ITERATIONS)] + [(1, i) for i in range(SIGNAL_AT[1] + 1)]
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN, "the previous handler is restored"
    assert "train_step" not in vars(trainer) or vars(trainer)["train_step"].__name__ == "step"
    _check_redo_checkpoint(trainer.output_folder, cls)
    log = open(trainer.log_file).read()
    assert "Received SIGUSR1" in log and f"checkpoint_latest.pth written to {trainer.output_folder}" in log
    assert trainer.current_epoch == SIGNAL_AT[0]  # put back after the save

    _continue(cls, env)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_a_previous_python_handler_is_called_once_the_checkpoint_is_written(env, kind):
    """submitit's checkpoint_and_try_requeue is such a handler: it requeues the job and exits."""
    cls = TRAINERS[kind]()
    seen = []

    class Requeued(SystemExit):
        pass

    def previous(signum, frame):
        folder = trainer.output_folder
        seen.append((signum, frame, load_checkpoint_file(join(folder, "checkpoint_latest.pth"))["current_epoch"]
                     if os.path.exists(join(folder, "checkpoint_latest.pth")) else None,
                     signal.getsignal(signal.SIGUSR1) is previous))
        raise Requeued(-1)

    signal.signal(signal.SIGUSR1, previous)
    trainer = _signalling(_trainer(cls, env), calls := [])
    with pytest.raises(Requeued):
        trainer.run_training()
    assert seen == [(signal.SIGUSR1, None, SIGNAL_AT[0], True)], "once, with the checkpoint on disk, restored"
    assert calls[-1] == SIGNAL_AT
    assert signal.getsignal(signal.SIGUSR1) is previous
    _check_redo_checkpoint(trainer.output_folder, cls)


def test_outside_the_main_thread_nothing_is_installed(env):
    """A training in a thread (signal.signal would raise ValueError) runs through; signals stay as they were."""
    cls = budget_variant(MeanTeacherTrainer, 1, 1)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    trainer = _trainer(cls, env)
    seen, errors = [], []

    def step(batch, original=trainer.train_step):
        seen.append(signal.getsignal(signal.SIGUSR1))
        return original(batch)
    trainer.train_step = step

    def run():
        try:
            trainer.run_training()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert not errors, errors
    assert seen == [signal.SIG_IGN]
    assert os.path.exists(join(trainer.output_folder, "checkpoint_final.pth"))


def test_a_signal_after_the_last_iteration_lets_the_training_finish(env):
    """SIGUSR1 during the last epoch's validation: checkpoint_final.pth is written, then the previous Python
    handler gets the signal (nothing is redone)."""
    cls = budget_variant(_nnunet_trainer(), 1, 1)
    trainer = _trainer(cls, env)
    seen = []

    def previous(signum, frame):
        seen.append((signum, os.path.exists(join(trainer.output_folder, "checkpoint_final.pth"))))

    def validation_step(batch, original=trainer.validation_step):
        os.kill(os.getpid(), signal.SIGUSR1)
        return original(batch)
    trainer.validation_step = validation_step
    signal.signal(signal.SIGUSR1, previous)
    trainer.run_training()
    assert seen == [(signal.SIGUSR1, True)]
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert load_checkpoint_file(join(trainer.output_folder, "checkpoint_final.pth"))["current_epoch"] == 1
    assert "after the last training iteration" in open(trainer.log_file).read()


def _blocked_signals(pid):
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    return {s for s in range(1, 65) if mask & (1 << (s - 1))}


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads signal masks from /proc (Linux)")
def test_augmentation_workers_keep_sigusr1_blocked(env, monkeypatch):
    """Slurm signals every process of the job step: nnU-Net's augmentation workers (started in on_train_start) must
    neither die of SIGUSR1 (its default action) nor run the previous handler; the main process still gets it."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    cls = budget_variant(_nnunet_trainer(), 1, 2)
    trainer = _trainer(cls, env)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    workers, seen = [], {}

    def step(batch, original=trainer.train_step):
        if not workers:  # first step: the workers' masks, then SIGUSR1 to each of them
            workers.extend(trainer.dataloader_train._processes + trainer.dataloader_val._processes)
            seen["blocked"] = [signal.SIGUSR1 in _blocked_signals(p.pid) for p in workers]
            for p in workers:
                os.kill(p.pid, signal.SIGUSR1)
        else:  # second step: they are alive, and the main process (not blocking it) gets its own SIGUSR1
            seen["alive"] = [p.is_alive() for p in workers]
            seen["main_blocked"] = signal.SIGUSR1 in _blocked_signals(os.getpid())
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(batch)
    trainer.train_step = step
    with pytest.raises(TrainingInterrupted) as e:
        trainer.run_training()
    assert "after iteration 2 of epoch 0" in str(e.value)  # not after the first: the workers' signals stay theirs
    assert workers and seen["blocked"] == [True] * len(workers), seen
    assert seen["alive"] == [True] * len(workers), seen
    assert seen["main_blocked"] is False
    assert not any(p.is_alive() for p in workers), "the workers are shut down"


@pytest.mark.parametrize("previous", ["none", "submitit"])
def test_ddp_parent_passes_sigusr1_on_to_the_ranks_and_waits_for_them(tmp_path, previous):
    """Only the parent of the DDP ranks is signalled (``scancel --signal=USR1`` to the batch step, a scheduler that
    signals the main process): every rank gets it, and the parent exits 75 after them (or, with submitit's handler,
    requeues once the ranks are done) instead of dying of SIGUSR1 and orphaning the ranks."""
    import subprocess
    import sys
    import time
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preemption_ranks.py")
    proc = subprocess.Popen([sys.executable, script, str(tmp_path)] + ([previous] if previous != "none" else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in (0, 1)):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert all((tmp_path / f"got{i}").read_text() == f"[{int(signal.SIGUSR1)}]" for i in (0, 1)), (out, err)
    if previous == "none":
        assert proc.returncode == 75, (out, err)
        assert "DDP training interrupted by signal SIGUSR1" in err and "continue with `--c`" in err
    else:
        assert proc.returncode == 3, (out, err)  # submitit's handler ran, after both ranks had stopped
        assert (tmp_path / "requeued").read_text() == "got0 got1 ready0 ready1 requeued"
    assert "finished without a signal" not in out
