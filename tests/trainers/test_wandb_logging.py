"""nnU-Net's W&B logging (``nnUNet_wandb_enabled=1``) receives our trainers' curves, in W&B's offline mode."""
import glob
import os

import pytest
from batchgenerators.utilities.file_and_folder_operations import join

pytestmark = pytest.mark.slow  # W&B starts a service process; a 2-epoch training


def test_our_curves_reach_nnunets_wandb_logger(nnunet_paths, monkeypatch):
    import wandb  # noqa: F401 (in the [test] extra)
    from nnunetv2.training.logging.nnunet_logger import WandbLogger
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.train_api import train
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_wandb_enabled", "1")
    monkeypatch.setenv("nnUNet_wandb_mode", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_log = WandbLogger.log

    def spy(self, key, value, step):
        logged.append((key, step))
        return real_log(self, key, value, step)  # and on into the offline W&B run
    monkeypatch.setattr(WandbLogger, "log", spy)
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 985, dim=2, num_labeled=5, num_unlabeled=2, shape=(32, 32))
    plan_and_preprocess(985, ["2d"], num_processes=1, show_progress=False)
    trainer = "MeanTeacherTrainer_2epochs_2it"
    train(985, "2d", trainer, [0], device="cpu", final_validation=False)
    keys = {k for k, _ in logged}
    assert {"train_losses", "val_losses", "sup_loss", "unsup_loss", "unsup_weight"} <= keys, sorted(keys)
    assert {s for k, s in logged if k == "unsup_loss"} == {0, 1}  # one value per epoch
    fold = join(nnunet_paths["nnUNet_results"], "Dataset985_Synthetic2D", f"{trainer}__nnUNetPlans__2d", "fold_0")
    assert glob.glob(join(fold, "wandb", "offline-run-*", "run-*.wandb"))  # the offline run W&B can sync later
    assert os.path.isfile(join(fold, "checkpoint_final.pth"))
