"""The contract every registered semi-supervised trainer keeps (new methods are covered the day they register).

On a random batch: ``compute_losses`` gives finite supervised and unlabeled losses, the unlabeled loss sends a
nonzero gradient to the student (and to the auxiliary modules a trainer lists in ``unlabeled_trained_auxiliary``),
and the teacher and frozen modules (if any) get none. A trainer that needs large pretrained weights names a stand-in
with the same losses in ``contract_test_variant`` (e.g. SynFoC: a random tiny SAM instead of MedSAM ViT-B).
"""
import math

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers import all_trainer_classes
from semi_nnunet.trainers.base import SemiSupervisedTrainer



def _schedule_only(cls: type) -> bool:
    """A variant that only shortens or lengthens the schedule computes its parent's losses: its parent covers it."""
    return {k for k in vars(cls) if not k.startswith("__")} == {"schedule"}


METHOD_TRAINERS = sorted(name for name, cls in all_trainer_classes().items()
                         if issubclass(cls, SemiSupervisedTrainer) and cls is not SemiSupervisedTrainer
                         and not _schedule_only(cls))


def contract_name(name: str) -> str:
    return getattr(all_trainer_classes()[name], "contract_test_variant", None) or name


def contract_class(name: str) -> type:
    """The class the contract runs on: the trainer, or the variant it names (which may be generated, e.g. a stage)."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    return find_trainer_class(contract_name(name))


def test_every_method_is_registered():
    assert "MeanTeacherTrainer" in METHOD_TRAINERS


@pytest.fixture(scope="module")
def planned(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], 951, dim=2, num_labeled=5, num_unlabeled=3,
                           image_classes=True)
    plan_and_preprocess(951, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset951_Synthetic2D")
    return load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))


def random_batch(trainer, generator):
    """A labeled batch (with deep-supervision targets) and an unlabeled batch of stacked views, on the CPU."""
    patch = [int(s) for s in trainer.configuration_manager.patch_size]
    b, c = trainer.batch_size, trainer.num_input_channels
    num_classes = len(trainer.label_manager.all_labels)

    def targets():
        out = []
        for scale in trainer._get_deep_supervision_scales():
            shape = [max(1, round(p * s)) for p, s in zip(patch, scale)]
            out.append(torch.randint(0, num_classes, (b, 1, *shape), generator=generator).float())
        return out

    labeled = {"data": torch.randn((b, c, *patch), generator=generator), "target": targets(),
               "keys": [f"lab{i:03d}" for i in range(b)]}
    views = 1 + trainer.num_strong_views
    # "target" is what a pseudo-label stage gets for its pseudo-labeled cases; other methods never read it
    unlabeled = {"data": torch.randn((b, c * views, *patch), generator=generator), "target": targets(),
                 "keys": [f"unl{i:03d}" for i in range(b)]}
    return labeled, trainer.prepare_unlabeled(unlabeled)


@pytest.mark.parametrize("name", METHOD_TRAINERS)
def test_trainer_contract(planned, name):
    plans, dataset_json = planned
    cls = contract_class(name)
    trainer = cls({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.global_step = trainer.num_epochs * trainer.num_iterations_per_epoch // 2  # mid-training weights
    torch.manual_seed(0)  # methods draw their own randomness (e.g. two transforms that may coincide by chance)
    labeled, unlabeled = random_batch(trainer, torch.Generator().manual_seed(0))

    sup, unsup, logs = trainer.compute_losses({"labeled": labeled, "unlabeled": unlabeled})
    assert math.isfinite(sup.item()) and math.isfinite(unsup.item())
    assert all(math.isfinite(float(v)) for v in logs.values())

    trainer.network.zero_grad(set_to_none=True)
    unsup.backward()
    grads = [p.grad for p in trainer.network.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads), "the unlabeled loss must train the student"
    if trainer.teacher is not None:
        assert all(p.grad is None for p in trainer.teacher.parameters()), "the teacher must get no gradient"
        assert all(not p.requires_grad for p in trainer.teacher.parameters())
    for key in getattr(trainer, "unlabeled_trained_auxiliary", ()):
        aux = [p.grad for p in trainer.auxiliary[key].parameters() if p.requires_grad and p.grad is not None]
        assert aux and any(float(g.abs().sum()) > 0 for g in aux), f"the unlabeled loss must train {key}"
    if trainer.auxiliary:
        assert all(p.grad is None for p in trainer.auxiliary.parameters() if not p.requires_grad)


@pytest.mark.parametrize("name", METHOD_TRAINERS)
def test_hco_update_step_for_every_method(planned, name):
    """Every method runs with HCO by name (<Trainer>_HCO): the two-gradient step moves the student and keeps a
    fraction of the unlabeled coordinates."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.optim.hco import _TwoGradientOptimizer
    plans, dataset_json = planned
    cls = find_trainer_class(f"{contract_name(name)}_HCO")
    trainer = cls({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    assert isinstance(trainer.optimizer, _TwoGradientOptimizer)
    trainer.global_step = trainer.num_epochs * trainer.num_iterations_per_epoch // 2
    torch.manual_seed(0)
    labeled, unlabeled = random_batch(trainer, torch.Generator().manual_seed(1))
    before = [p.detach().clone() for p in trainer.network.parameters()]
    sup, unsup, logs = trainer.update_step(labeled, unlabeled)
    assert math.isfinite(sup.item()) and math.isfinite(unsup.item())
    assert 0.0 < logs["hco_mask_ratio"] < 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters()))


@pytest.mark.parametrize("name, schedule, steps", [
    ("MeanTeacherTrainer", dict(num_epochs=1000, num_iterations_per_epoch=250), {1000: 0.99, 10: 1 - 1 / 11}),
    ("MeanTeacherTrainer", dict(num_epochs=80, num_iterations_per_epoch=50), {1000: 1 - 1 / 80, 10: 1 - 1 / 11}),
    ("MeanTeacherTrainer", dict(num_epochs=8, num_iterations_per_epoch=20), {100: 1 - 1 / 3.2, 1: 0.5}),
])
def test_teacher_decay_and_ramp_follow_the_budget(planned, name, schedule, steps):
    """The EMA horizon and the ramp-up are fractions of the run: the paper's values on nnU-Net's schedule, scaled
    down on a short budget (budget_decay); the ramp ends at the same fraction of any run."""
    plans, dataset_json = planned
    trainer = all_trainer_classes()[name]({**plans, "continue_training": False}, "2d", 0, dataset_json,
                                          torch.device("cpu"))
    for key, value in schedule.items():
        setattr(trainer, key, value)
    for step, decay in steps.items():
        trainer.global_step = step
        assert trainer.teacher_decay() == pytest.approx(decay, rel=1e-15, abs=0)
    total = schedule["num_epochs"] * schedule["num_iterations_per_epoch"]
    trainer.global_step = int(0.4 * total)  # rampup_fraction 0.4: the weight is at its maximum from here
    assert trainer.unlabeled_weight(0.1) == pytest.approx(0.1, rel=1e-12)
    trainer.global_step = int(0.2 * total)  # half way up the sigmoid ramp: exp(-5 * 0.25)
    assert trainer.unlabeled_weight(0.1) == pytest.approx(0.1 * math.exp(-1.25), rel=1e-3)


def test_step_size_control_and_update_norm(planned):
    """``<Trainer>_lrx<F>``: the base optimizer at F times its rate (HCO untouched); every trainer logs the norm of
    its weight update (measured every ``update_norm_every`` steps), which tells HCO's step from its base's."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    plans, dataset_json = planned
    control = find_trainer_class("MeanTeacherTrainer_lrx2p2")
    assert control.lr_scale == 2.2 and control.optimizer_name is None
    t = control({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    t.initialize()
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(2.2e-2)  # nnU-Net's SGD 1e-2, times 2.2
    t.update_norm_every = 1
    labeled, unlabeled = random_batch(t, torch.Generator().manual_seed(2))
    before = [p.detach().clone() for p in t.network.parameters()]
    _, _, logs = t.update_step(labeled, unlabeled)
    moved = torch.linalg.vector_norm(torch.stack([(a - b).norm() for a, b in
                                                  zip(before, t.network.parameters())]))
    assert logs["update_norm"] == pytest.approx(float(moved), rel=1e-5) and logs["update_norm"] > 0
    hco = find_trainer_class("MeanTeacherTrainer_HCO")({**plans, "continue_training": False}, "2d", 0,
                                                         dataset_json, torch.device("cpu"))
    hco.initialize()
    hco.update_norm_every = 1
    assert hco.update_step(labeled, unlabeled)[2]["update_norm"] > 0
    hco.global_step, hco.update_norm_every = 3, 2  # not a measured step: nothing logged, nothing copied
    assert "update_norm" not in hco.update_step(labeled, unlabeled)[2]
