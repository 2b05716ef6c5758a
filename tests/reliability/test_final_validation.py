"""A fold trained but stopped before nnU-Net's final validation (a requeue signal after the last iteration, a crash
in the validation) is finished by validating only: never skipped as done, never trained again."""
import os

import pytest
from batchgenerators.utilities.file_and_folder_operations import join
from reliability.reliability_support import DATASET_ID, TRAINER


@pytest.mark.parametrize("final_validation, validated, expect", [
    (True, False, "validate"),   # trained, summary missing: --val
    (True, True, "skip"),        # trained and validated: done
    (False, False, "skip"),      # the request turned the final validation off: the checkpoint is enough
])
def test_a_trained_fold_without_its_validation_is_validated_only(rel, monkeypatch, final_validation, validated,
                                                                 expect):
    import nnunetv2.run.run_training as rt

    from semi_nnunet.train_api import fold_graph
    from semi_nnunet.trainers.training import TrainRequest, train_fold
    calls = []
    monkeypatch.setattr(rt, "run_training", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(rt, "get_trainer_from_args", lambda *a, **k: pytest.fail("nothing may train"))
    fold = join(rel["model"], "fold_0")
    assert os.path.isfile(join(fold, "checkpoint_final.pth"))
    summary = join(fold, "validation", "summary.json")
    assert not os.path.exists(summary)  # the package's training ran with its validation patched out
    request = TrainRequest(DATASET_ID, "2d", TRAINER, (0,), device="cpu", final_validation=final_validation,
                           resume=True)
    task = fold_graph(request, rel["dataset_name"], [0])["train/fold_0"]
    try:
        if validated:
            os.makedirs(os.path.dirname(summary))
            open(summary, "w").close()
        assert task.done() is (expect == "skip")  # the graph does not even call the task when it is done
        train_fold(request, 0)
    finally:
        if validated:
            os.remove(summary)
            os.rmdir(os.path.dirname(summary))
    if expect == "skip":
        assert calls == []
    else:
        (args, kwargs), = calls
        # nnU-Net's run_training(dataset, configuration, fold, trainer, plans, pretrained, num_gpus, npz,
        # continue_training, only_run_validation, ...): validation only, not a continued training (nnU-Net refuses both)
        assert args[8] is False and args[9] is True


def test_cuda_is_checked_where_the_training_runs(rel, monkeypatch):
    """A login node without a GPU submits -device cuda jobs to Slurm or a Ray cluster: the request passes there, and a
    job that lands on a node without CUDA fails with a message naming that node."""
    import socket

    import torch

    from semi_nnunet.trainers.lookup import TrainingError
    from semi_nnunet.trainers.training import TrainRequest, check_request, train_fold
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    request = TrainRequest(DATASET_ID, "2d", TRAINER, (0,), device="cuda", continue_training=True)
    with pytest.raises(TrainingError, match="-device cuda was requested"):
        check_request(request)
    check_request(request, elsewhere=True)
    with pytest.raises(TrainingError, match=f"{socket.gethostname()} has no CUDA GPU"):
        train_fold(request, 0)
