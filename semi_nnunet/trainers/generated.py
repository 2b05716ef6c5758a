"""Variants made on demand from a trainer name: optimizer variants and the stages of staged trainers.

* ``<Trainer>_HCO``: HCO on that trainer's base optimizer (nnU-Net's SGD -> HCO-SGD, AdamW -> HCO-AdamW);
  ``<Trainer>_<optimizer>`` with one of ``OPTIMIZERS`` (sgd, adamw, hco_sgd, hco_adamw, co_sgd, co_adamw).
* ``<Trainer>_stage<k>``: stage k of a staged trainer (one with ``num_stages > 0`` and a ``stage_trainer`` class,
  e.g. Semi-CervixSeg): a fresh network on ground truth + the pseudo-labels of stage k, with the trainer's schedule
  and optimizer.
* ``<Trainer>_lrx<F>``: the trainer's optimizer at F times its learning rate (``_lrx2p2`` = 2.2): the control that
  runs the base optimizer at HCO's effective step.
* ``<Trainer>_<E>epochs[_<I>it]``: a training budget (E epochs of I iterations, one validation iteration per five
  training iterations; a snapshot ``checkpoint_epoch<E/2>.pth`` at half the budget, nnU-Net's ``checkpoint_latest``
  every tenth of it, at least every 5 epochs, so an interrupted long budget loses little), for any of our trainers
  and, in the ``_<I>it`` form (nnU-Net has its own ``nnUNetTrainer_<E>epochs``), for nnU-Net's ``nnUNetTrainer``
  (the label-efficiency benchmark's baseline), e.g. ``nnUNetTrainer_40epochs_25it``,
  ``MeanTeacherTrainer_40epochs_25it_HCO``.

Each is a subclass that sets attributes and nothing else, created once and kept in this module, so nnU-Net (through
``nnUNet_extTrainer``), pickling and checkpoints find it by name like any other trainer. Suffixes compose:
``SemiCervixTrainer_HCO_stage2``, ``MeanTeacherTrainer_5epochs_hco_adamw``.
"""
import re
import sys
from typing import Dict, Optional

from semi_nnunet.trainers.optimizers import OPTIMIZERS

_STAGE = re.compile(r"^(?P<base>.+)_stage(?P<k>[1-9]\d*)$")
_LR = re.compile(r"^(?P<base>.+)_lrx(?P<f>\d+(?:p\d+)?)$")  # _lrx2, _lrx2p2 (2.2)
_BUDGET = re.compile(r"^(?P<base>.+)_(?P<epochs>[1-9]\d*)epochs(?:_(?P<its>[1-9]\d*)it)?$")


def hco_counterpart(base_optimizer: Optional[str]) -> str:
    return "hco_adamw" if (base_optimizer or "sgd").endswith("adamw") else "hco_sgd"


def _make(name: str, bases: tuple, attributes: dict, doc: str) -> type:
    module = sys.modules[__name__]
    existing = vars(module).get(name)
    if existing is not None:
        return existing
    cls = type(name, bases, {**attributes, "__module__": __name__, "__doc__": doc})
    setattr(module, name, cls)
    return cls


def optimizer_variant(base: type, suffix: str) -> type:
    """The subclass ``<base>_<suffix>`` (suffix ``HCO`` or an optimizer name)."""
    optimizer = hco_counterpart(base.optimizer_name) if suffix == "HCO" else suffix
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{suffix}'; choose one of {OPTIMIZERS} or HCO")
    return _make(f"{base.__name__}_{suffix}", (base,), {"optimizer_name": optimizer},
                 f"{base.__name__} with optimizer {optimizer}.")


# what every stage takes from its initial trainer, wherever in its classes it is set (the shared base's training
# hyperparameters)
STAGE_CARRIED = ("schedule", "optimizer_name", "adamw_initial_lr", "hco_start_epoch", "hco_lr_scale", "lr_scale",
                 "unlabeled_batch_size")


def stage_attributes(base: type) -> Dict[str, object]:
    """The class attributes stage trainers of ``base`` inherit: :data:`STAGE_CARRIED`, and every attribute the stage
    trainer also has that a subclass of the method class sets (the method class is the one that names
    ``stage_trainer``; a variant of it, generated or written, may set e.g. ``pseudo_weight`` or
    ``pseudo_sampling`` for its stages). The method class's own choices for its first stage (``use_teacher``,
    ``num_strong_views``, its log keys) stay with it."""
    mro = base.__mro__
    owner = next(i for i, c in enumerate(mro) if "stage_trainer" in vars(c))
    out: Dict[str, object] = {}
    for cls in reversed(mro[:owner]):  # nearest to the method class first, so the most derived setting wins
        for key, value in vars(cls).items():
            if key.startswith("_") or key in ("stage_trainer", "num_stages") or callable(value) \
                    or isinstance(value, (property, classmethod, staticmethod)):
                continue
            if hasattr(base.stage_trainer, key):
                out[key] = value
    out.update({key: getattr(base, key) for key in STAGE_CARRIED})
    return out


def lr_variant(base: type, factor: str) -> type:
    """``<base>_lrx<F>``: ``base`` with its (non-HCO) optimizer's learning rate times F (``2p2`` = 2.2)."""
    value = float(factor.replace("p", "."))
    if value <= 0:
        raise ValueError(f"{base.__name__}_lrx{factor}: the learning-rate factor must be > 0")
    return _make(f"{base.__name__}_lrx{factor}", (base,), {"lr_scale": value},
                 f"{base.__name__} with its optimizer's learning rate times {value} (a step-size control for HCO).")


def stage_variant(base: type, stage: int) -> type:
    """Stage ``stage`` of the staged trainer ``base``: its ``stage_trainer`` with the attributes of
    :func:`stage_attributes` (schedule, optimizer, learning rate, batch sizes, a variant's stage settings)."""
    return _make(f"{base.__name__}_stage{stage}", (base.stage_trainer,),
                 {**stage_attributes(base), "stage": stage, "initial_trainer": base.__name__},
                 f"Stage {stage} of {base.__name__}: a fresh network on ground truth + stage-{stage} pseudo-labels.")


def budget_variant(base: type, epochs: int, iterations: Optional[int] = None) -> type:
    """``<base>_<epochs>epochs[_<iterations>it]``: ``base`` with that training length (attributes only)."""
    from semi_nnunet.trainers.schedule import ScheduleMixin
    budget = {"num_epochs": epochs, "snapshot_epochs": (epochs // 2,) if epochs >= 2 else (),
              "save_every": min(50, max(5, epochs // 10))}
    if iterations:
        budget.update(num_iterations_per_epoch=iterations, num_val_iterations_per_epoch=max(1, iterations // 5))
    name = f"{base.__name__}_{epochs}epochs" + (f"_{iterations}it" if iterations else "")
    bases = (base,) if issubclass(base, ScheduleMixin) else (ScheduleMixin, base)
    return _make(name, bases, {"schedule": {**getattr(base, "schedule", {}), **budget}},
                 f"{base.__name__} for {epochs} epochs" + (f" of {iterations} iterations." if iterations else "."))


def resolve(name: str, classes: Dict[str, type]) -> Optional[type]:
    """The class for a generated name whose prefix is a semi-supervised trainer (or itself generated); else None."""
    from semi_nnunet.trainers.base import SemiSupervisedTrainer

    def base_of(prefix: str) -> Optional[type]:
        cls = classes.get(prefix) or resolve(prefix, classes)
        return cls if cls is not None and issubclass(cls, SemiSupervisedTrainer) \
            and cls is not SemiSupervisedTrainer else None

    m = _BUDGET.match(name)
    if m:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        # nnU-Net ships nnUNetTrainer_<E>epochs classes itself: only the _<I>it form is made for it, so a name never
        # means two classes
        base = (nnUNetTrainer if m["its"] else None) if m["base"] == "nnUNetTrainer" else \
            classes.get(m["base"]) or resolve(m["base"], classes)
        if base is not None:
            return budget_variant(base, int(m["epochs"]), int(m["its"]) if m["its"] else None)
    m = _LR.match(name)
    if m:
        base = base_of(m["base"])
        if base is not None:
            return lr_variant(base, m["f"])
    m = _STAGE.match(name)
    if m:
        base = base_of(m["base"])
        if base is not None and getattr(base, "num_stages", 0) and getattr(base, "stage_trainer", None):
            return stage_variant(base, int(m["k"]))
    for suffix in ("HCO",) + OPTIMIZERS:
        if name.endswith("_" + suffix):
            base = base_of(name[:-len(suffix) - 1])
            if base is not None:
                return optimizer_variant(base, suffix)
    return None
