"""Mixed precision on the CPU: the update step with a GradScaler and autocast, as it runs on CUDA.

nnU-Net builds a GradScaler and autocasts (float16) only on CUDA; PyTorch has both on the CPU too (a CPU GradScaler,
bfloat16 autocast), so these tests give a CPU trainer the two (the test's only shim: ``grad_scaler`` set after
``__init__``, ``_autocast`` returning CPU autocast) and run the shipped step: the base optimizer's path
(``GradScaler.unscale_/step/update``) and HCO's (both gradient sets unscaled by hand, one finiteness check, its own
scale rule). An overflow in either gradient set must skip the whole step (no weight and no momentum moves) and halve
the scale; the next clean step must move the weights, and ``growth_interval`` clean
steps double the scale again.
"""
import math

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from test_contract import random_batch

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import find_trainer_class
from semi_nnunet.trainers.optimizers import HCOScaler

INIT_SCALE, GROWTH = 1024.0, 2


@pytest.fixture(scope="module")
def planned(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], 953, dim=2, num_labeled=5, num_unlabeled=3)
    plan_and_preprocess(953, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset953_Synthetic2D")
    return load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))


def amp_trainer(planned, name):
    plans, dataset_json = planned
    trainer = find_trainer_class(name)({**plans, "continue_training": False}, "2d", 0, dataset_json,
                                       torch.device("cpu"))
    trainer.initialize()
    trainer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, growth_interval=GROWTH)
    trainer._hco_scaler = HCOScaler(trainer.grad_scaler)
    trainer._autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    trainer.global_step = trainer.num_epochs * trainer.num_iterations_per_epoch // 2
    return trainer


def scale(trainer) -> float:
    return float(trainer.grad_scaler.get_scale())


def weights(trainer):
    return [p.detach().clone() for p in trainer.network.parameters()]


def momenta(trainer):
    return {id(p): s["momentum_buffer"].clone() for p, s in trainer.optimizer.state.items() if "momentum_buffer" in s}


@pytest.mark.parametrize("name", ["MeanTeacherTrainer_2epochs_2it", "MeanTeacherTrainer_2epochs_2it_HCO"])
@pytest.mark.parametrize("overflow", ["labeled", "unlabeled"])
def test_an_overflow_skips_the_step_and_a_clean_step_follows(planned, name, overflow):
    trainer = amp_trainer(planned, name)
    dtypes = []
    hook = trainer.network.register_forward_hook(lambda m, i, out: dtypes.append(trainer.full_resolution(out).dtype))
    labeled, unlabeled = random_batch(trainer, torch.Generator().manual_seed(0))
    hco = name.endswith("_HCO")

    # a first clean step, so that optimizer state exists and "unchanged" below is a real check
    trainer.update_step(labeled, unlabeled)
    assert dtypes and all(d == torch.bfloat16 for d in dtypes), "the student's forward must run under autocast"
    assert scale(trainer) == INIT_SCALE
    before, momentum = weights(trainer), momenta(trainer)

    hook_name = "supervised_loss" if overflow == "labeled" else "unlabeled_loss"
    original = getattr(trainer, hook_name)

    def overflowing(*args):
        loss, logs = original(*args)
        return loss * float("inf"), logs
    setattr(trainer, hook_name, overflowing)
    sup, unsup, logs = trainer.update_step(labeled, unlabeled)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.network.parameters())), "an overflow must not step"
    assert all(torch.equal(momentum[k], v) for k, v in momenta(trainer).items())
    assert scale(trainer) == INIT_SCALE / 2
    if hco:
        assert math.isnan(logs["hco_mask_ratio"]) and trainer._hco_scaler.clean_steps == 0

    setattr(trainer, hook_name, original)
    sup, unsup, logs = trainer.update_step(labeled, unlabeled)
    assert math.isfinite(float(sup)) and math.isfinite(float(unsup))
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters())]
    assert any(moved), "the clean step after an overflow must move the weights"
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    assert scale(trainer) == INIT_SCALE / 2
    if hco:
        assert 0.0 < logs["hco_mask_ratio"] < 1.0
    for _ in range(GROWTH - 1):
        trainer.update_step(labeled, unlabeled)
    assert scale(trainer) == INIT_SCALE, "growth_interval clean steps double the scale"
    hook.remove()
