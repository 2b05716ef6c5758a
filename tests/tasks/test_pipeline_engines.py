"""The staged pipeline (Semi-CervixSeg, 2 folds x 1 stage, synthetic 2D data) through Ray and through a real
single-node Slurm: it completes; a training killed (SIGKILL) or cancelled (scancel) mid-training resumes from its
checkpoint instead of starting again; every task starts after its dependencies ended."""
import os
import signal
import subprocess
import threading
import time

import pytest
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from semi_nnunet.tasks.executors import ExecutorOptions, TaskFailed
from semi_nnunet.tasks.locks import read_owner
from semi_nnunet.utilities.checkpoints import load_checkpoint_file

pytestmark = pytest.mark.slow
TRAINER = "SemiCervixTrainer_12epochs_4it"  # budget variant: checkpoint_latest.pth after epochs 5 and 10
DATASET = "Dataset994_Synthetic2D"


@pytest.fixture
def dataset(nnunet_paths, monkeypatch):
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two trainings side by side on two cores
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 994, dim=2, num_labeled=5, num_unlabeled=3, shape=(32, 32))
    plan_and_preprocess(994, ["2d"], num_processes=1, show_progress=False)
    return join(nnunet_paths["nnUNet_results"], DATASET)


def _folder(results, stage, fold):
    name = TRAINER if stage == 0 else f"{TRAINER}_stage{stage}"
    return join(results, f"{name}__nnUNetPlans__2d", f"fold_{fold}")


class Interrupter(threading.Thread):
    """Waits until ``folder`` has a latest checkpoint (mid-training), then ``act(lock owner)`` once."""

    def __init__(self, folder, act):
        super().__init__(daemon=True)
        self.folder, self.act, self.when, self.stop = folder, act, None, threading.Event()

    def run(self):
        while not self.stop.is_set():
            if isfile(join(self.folder, "checkpoint_latest.pth")) and not isfile(join(self.folder,
                                                                                      "checkpoint_final.pth")):
                owner = read_owner(join(self.folder, "training.lock"))
                if owner:
                    self.when = time.time()
                    self.act(owner)
                    return
            time.sleep(0.05)


def _epoch_starts(folder):
    return load_checkpoint_file(join(folder, "checkpoint_final.pth"), mmap=True)["logging"]["epoch_start_timestamps"]


def _check_pipeline(results, interrupted_at):
    """Everything trained; each task after its dependencies; the interrupted fold continued (not restarted)."""
    for f in (0, 1):
        stage0, stage1 = _folder(results, 0, f), _folder(results, 1, f)
        provenance = join(os.path.dirname(stage0), "pseudo_labels", "stage_1", f"fold_{f}", "provenance.json")
        assert load_json(provenance)["folds"] == [str(f)]  # its own fold's stage-0 model
        # dependencies: stage 0 ended before its pseudo-labels were written, which were written before stage 1 began
        assert os.path.getmtime(join(stage0, "checkpoint_final.pth")) <= os.path.getmtime(provenance)
        assert os.path.getmtime(provenance) <= _epoch_starts(stage1)[0]
        assert len(_epoch_starts(stage0)) == len(_epoch_starts(stage1)) == 12
        assert not os.path.exists(join(stage0, "training.lock"))
    starts = _epoch_starts(_folder(results, 0, 0))
    before = sum(t < interrupted_at for t in starts)
    assert before in (5, 10), starts  # the epochs up to the latest checkpoint were not trained again
    assert all(t > interrupted_at for t in starts[before:])


def test_ray_pipeline_completes_and_a_killed_training_resumes(dataset):
    from semi_nnunet.train_api import train
    killer = Interrupter(_folder(dataset, 0, 0), lambda owner: os.kill(owner["pid"], signal.SIGKILL))
    killer.start()
    outputs = train(994, "2d", TRAINER, [0, 1], device="cpu", stages=1, executor=ExecutorOptions("ray"))
    killer.stop.set()
    assert killer.when is not None, "the training ended before it could be killed"
    assert outputs == [_folder(dataset, 1, f) for f in (0, 1)]
    _check_pipeline(dataset, killer.when)


def test_slurm_pipeline_a_cancelled_job_resumes_when_resubmitted(dataset, slurm_cluster, tmp_path):
    from semi_nnunet.train_api import train
    options = ExecutorOptions("slurm", slurm_partition=slurm_cluster.partition, slurm_time="20",
                              slurm_folder=str(tmp_path / "slurm"), poll_s=1)
    cancelled = []

    def cancel(owner):
        cancelled.append(owner["slurm_job_id"])
        subprocess.run(["scancel", owner["slurm_job_id"]], check=True)
    canceller = Interrupter(_folder(dataset, 0, 0), cancel)
    canceller.start()
    with pytest.raises(TaskFailed, match="ended without a result"):
        train(994, "2d", TRAINER, [0, 1], device="cpu", stages=1, executor=options)
    assert cancelled and not isfile(join(_folder(dataset, 0, 0), "checkpoint_final.pth"))
    assert not os.path.exists(_folder(dataset, 1, 0))  # its dependents never started (kill-on-invalid-dep)
    train(994, "2d", TRAINER, [0, 1], device="cpu", stages=1, executor=options)  # the same command again
    _check_pipeline(dataset, canceller.when)


def test_slurm_preemption_signal_checkpoints_requeues_and_the_job_finishes(dataset, slurm_cluster, tmp_path):
    """``scancel --signal=USR1`` (what Slurm sends before the time limit or on preemption): the training saves its
    latest checkpoint after the current iteration, submitit requeues the job, the requeued job continues from it."""
    import glob
    from semi_nnunet.train_api import train
    options = ExecutorOptions("slurm", slurm_partition=slurm_cluster.partition, slurm_time="20",
                              slurm_folder=str(tmp_path / "slurm"), poll_s=1)
    signalled = []

    def preempt(owner):
        signalled.append(owner["slurm_job_id"])
        subprocess.run(["scancel", "--signal=USR1", owner["slurm_job_id"]], check=True)
    preempter = Interrupter(_folder(dataset, 0, 0), preempt)
    preempter.start()
    train(994, "2d", TRAINER, [0], device="cpu", stages=0, executor=options)  # returns once the requeued job ends
    assert signalled, "the training ended before it could be signalled"
    fold = _folder(dataset, 0, 0)
    starts = _epoch_starts(fold)
    assert len(starts) == 12 and starts[0] < preempter.when < starts[-1]
    logs = "".join(open(f).read() for f in glob.glob(join(fold, "training_log_*.txt")))
    assert "SIGUSR1" in logs and "checkpoint_latest.pth" in logs
    submitit_log = "".join(open(f).read() for f in glob.glob(str(tmp_path / "slurm" / "*" / "*.err")))
    assert "requeu" in submitit_log.lower()
