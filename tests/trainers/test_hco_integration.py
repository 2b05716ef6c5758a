"""HCO as a trainer option: a Mean Teacher with HCO trains on CPU, logs its mask ratio, and resumes its state."""
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.optim import HierarchicalCautiousAdamW, HierarchicalCautiousSGD
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import TrainingError, find_trainer_class, with_optimizer
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.trainers.base import SemiSupervisedTrainer
from semi_nnunet.trainers.optimizers import HCONotApplicableError, build_optimizer, hco_fused


@pytest.fixture
def planned(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 971, dim=2, num_labeled=5, num_unlabeled=3)
    plan_and_preprocess(971, ["2d"], num_processes=1, show_progress=False)
    return nnunet_paths


def test_hco_variants_are_found_by_name():
    assert find_trainer_class("MeanTeacherTrainer_HCO").optimizer_name == "hco_sgd"  # nnU-Net's SGD -> HCO-SGD
    assert find_trainer_class(with_optimizer("MeanTeacherTrainer", "hco_adamw")).optimizer_name == "hco_adamw"
    assert issubclass(find_trainer_class("MeanTeacherTrainer_5epochs_HCO"), SemiSupervisedTrainer)
    with pytest.raises(TrainingError, match="applies to semi-supervised trainers"):
        with_optimizer("nnUNetTrainer", "hco_sgd")
    # one name per run: HCO on the trainer's own optimizer is <Trainer>_HCO, its own optimizer the trainer itself
    assert with_optimizer("MeanTeacherTrainer", "hco_sgd") == "MeanTeacherTrainer_HCO"
    assert with_optimizer("MeanTeacherTrainer", "sgd") == "MeanTeacherTrainer"
    assert with_optimizer("MeanTeacherTrainer", "adamw") == "MeanTeacherTrainer_adamw"


@pytest.mark.progress_png
def test_mean_teacher_hco_trains_logs_and_resumes(planned):
    from nnunetv2.run.run_training import maybe_load_checkpoint
    train_main(["971", "2d", "MeanTeacherTrainer_2epochs_2it", "0", "-device", "cpu", "--optimizer", "hco_sgd"])
    name = "MeanTeacherTrainer_2epochs_2it_HCO"  # --optimizer hco_sgd on an SGD trainer: the _HCO run
    fold = join(planned["nnUNet_results"], "Dataset971_Synthetic2D", f"{name}__nnUNetPlans__2d", "fold_0")
    ckpt = torch.load(join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    ratios = ckpt["logging"]["hco_mask_ratio"]
    assert len(ratios) == 2 and all(0.0 < r < 1.0 for r in ratios)  # some, not all, unlabeled coordinates agree
    assert len(ckpt["logging"]["unsup_sup_ratio"]) == 2
    buffers = [s["momentum_buffer"] for s in ckpt["optimizer_state"]["state"].values()]
    assert buffers and any(float(b.abs().sum()) > 0 for b in buffers)

    pre = join(planned["nnUNet_preprocessed"], "Dataset971_Synthetic2D")
    longer = type("Longer", (find_trainer_class(name),), {"schedule": {"num_epochs": 3, "num_iterations_per_epoch": 2,
                                                                       "num_val_iterations_per_epoch": 1}})
    trainer = longer({**load_json(join(pre, "nnUNetPlans.json")), "continue_training": True}, "2d", 0,
                     load_json(join(pre, "dataset.json")), torch.device("cpu"))
    trainer.output_folder = fold
    maybe_load_checkpoint(trainer, True, False, None)
    assert isinstance(trainer.optimizer, HierarchicalCautiousSGD)
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    saved = ckpt["optimizer_state"]["state"]  # by parameter index; the lowest deep-supervision head gets no
    assert len(saved) == len(buffers) and len(saved) >= len(params) - 2  # gradient (nnU-Net weights it 0)
    assert all(torch.equal(trainer.optimizer.state[params[i]]["momentum_buffer"], s["momentum_buffer"])
               for i, s in saved.items())
    trainer.run_training()
    resumed = torch.load(join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 3 and len(resumed["logging"]["hco_mask_ratio"]) == 3
    assert os.path.isfile(join(fold, "progress.png"))


def test_hco_adamw_and_warmup(planned):
    """hco_start_epoch: epoch 0 runs the base AdamW step (no mask logged), epoch 1 runs HCO."""
    base = find_trainer_class("MeanTeacherTrainer_2epochs_2it_hco_adamw")
    warm = type("Warm", (base,), {"hco_start_epoch": 1})
    pre = join(planned["nnUNet_preprocessed"], "Dataset971_Synthetic2D")
    trainer = warm({**load_json(join(pre, "nnUNetPlans.json")), "continue_training": False}, "2d", 0,
                   load_json(join(pre, "dataset.json")), torch.device("cpu"))
    trainer.run_training()
    assert isinstance(trainer.optimizer, HierarchicalCautiousAdamW)
    assert not trainer.optimizer.fused  # 4 iterations: compiling the fused step would not pay (hco_fused None)
    ratios = trainer.logger.get_value("hco_mask_ratio", step=None)
    assert ratios[0] != ratios[0] and 0.0 < ratios[1] < 1.0  # NaN during the warm-up, a fraction after


@pytest.mark.parametrize("device, epochs, iterations, choice, expected", [
    ("cpu", 4, 250, None, True),      # the run pays for the one-time compilation
    ("cpu", 1000, 250, None, True),   # nnU-Net's schedule
    ("cpu", 3, 333, None, False),     # 999 iterations
    ("cpu", 2, 2, None, False),       # a test's handful
    ("cuda", 1000, 250, None, False),  # auto is CPU only (untested on a GPU)
    ("cuda", 2, 2, True, True),       # hco_fused forces it either way
    ("cpu", 1000, 250, False, False),
])
def test_hco_fused_rule(device, epochs, iterations, choice, expected):
    from types import SimpleNamespace
    trainer = SimpleNamespace(device=torch.device(device), num_epochs=epochs, num_iterations_per_epoch=iterations,
                              hco_fused=choice)
    assert hco_fused(trainer) is expected


def test_trainer_without_labels_refuses_hco(planned):
    class Unsupervised(find_trainer_class("MeanTeacherTrainer_HCO")):
        requires_labels = False
    pre = join(planned["nnUNet_preprocessed"], "Dataset971_Synthetic2D")
    trainer = Unsupervised({**load_json(join(pre, "nnUNetPlans.json")), "continue_training": False}, "2d", 0,
                           load_json(join(pre, "dataset.json")), torch.device("cpu"))
    trainer.network = torch.nn.Linear(2, 2)
    with pytest.raises(HCONotApplicableError, match="learns without labels.*--optimizer sgd or adamw"):
        build_optimizer(trainer)
