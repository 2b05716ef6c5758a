"""Shared by the reliability tests: one tiny 2D dataset (32x32 PNG), preprocessed, and one short seeded training."""
import os

import pytest
from batchgenerators.utilities.file_and_folder_operations import join
from reliability.reliability_support import DATASET_ID, SEED, TRAINER, tree_digest


@pytest.fixture(scope="package")
def rel(tmp_path_factory):
    """nnU-Net's folders for the whole package, augmentation in the main process, no progress.png or final
    validation in this process; dataset 970
    (3 labeled, 2 unlabeled, 1 test case) preprocessed and fold 0 of ``TRAINER`` trained with ``--seed 0``."""
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.train_api import train
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("reliability")
        paths = {}
        for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            paths[key] = str(root / key)
            os.makedirs(paths[key])
            mp.setenv(key, paths[key])
        mp.setenv("nnUNet_n_proc_DA", "0")
        from nnunetv2.training.logging.nnunet_logger import LocalLogger
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        mp.setattr(LocalLogger, "plot_progress_png", lambda self, output_folder: None)
        # nnU-Net's final validation (a spawned export process) is not under test here; the kill test runs it
        mp.setattr(nnUNetTrainer, "perform_actual_validation", lambda self, save_probabilities=False: None)
        raw = make_synthetic_dataset(paths["nnUNet_raw"], DATASET_ID, dim=2, num_labeled=3, num_unlabeled=2,
                                     num_test=1, shape=(32, 32))
        raw_digest = tree_digest(raw)
        name = os.path.basename(raw)
        plan_and_preprocess(DATASET_ID, ["2d"], num_processes=1, show_progress=False)
        train(DATASET_ID, "2d", TRAINER, [0], device="cpu", seed=SEED)
        yield {**paths, "root": str(root), "raw": raw, "raw_digest": raw_digest, "dataset_name": name,
               "preprocessed": join(paths["nnUNet_preprocessed"], name),
               "model": join(paths["nnUNet_results"], name, f"{TRAINER}__nnUNetPlans__2d")}
