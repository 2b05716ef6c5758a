"""Optimizer variants of every semi-supervised trainer, made on demand from the name.

``<Trainer>_HCO`` is HCO on that trainer's base optimizer (nnU-Net's SGD -> HCO-SGD, AdamW -> HCO-AdamW);
``<Trainer>_<optimizer>`` uses one of ``OPTIMIZERS`` (sgd, adamw, hco_sgd, hco_adamw, co_sgd, co_adamw). Each is a
subclass that sets ``optimizer_name`` and nothing else, created once and kept in this module, so nnU-Net (through
``nnUNet_extTrainer``), pickling and checkpoints find it by name like any other trainer.
"""
import sys
from typing import Dict, Optional

from semi_nnunet.trainers.optimizers import OPTIMIZERS

HCO_SUFFIX = "_HCO"


def hco_counterpart(base_optimizer: Optional[str]) -> str:
    return "hco_adamw" if (base_optimizer or "sgd").endswith("adamw") else "hco_sgd"


def optimizer_variant(base: type, suffix: str) -> type:
    """The subclass ``<base>_<suffix>`` (suffix ``HCO`` or an optimizer name), created once."""
    module = sys.modules[__name__]
    name = f"{base.__name__}_{suffix}"
    existing = vars(module).get(name)
    if existing is not None:
        return existing
    optimizer = hco_counterpart(base.optimizer_name) if suffix == "HCO" else suffix
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{suffix}'; choose one of {OPTIMIZERS} or HCO")
    cls = type(name, (base,), {"optimizer_name": optimizer, "__module__": __name__,
                               "__doc__": f"{base.__name__} with optimizer {optimizer}."})
    setattr(module, name, cls)
    return cls


def resolve(name: str, classes: Dict[str, type]) -> Optional[type]:
    """``MeanTeacherTrainer_HCO`` or ``MeanTeacherTrainer_5epochs_co_adamw`` -> its class, if the prefix is a
    semi-supervised trainer; else None."""
    from semi_nnunet.trainers.base import SemiSupervisedTrainer
    for suffix in ("HCO",) + OPTIMIZERS:
        if name.endswith("_" + suffix):
            base = classes.get(name[:-len(suffix) - 1])
            if base is not None and issubclass(base, SemiSupervisedTrainer) and base is not SemiSupervisedTrainer:
                return optimizer_variant(base, suffix)
    return None
