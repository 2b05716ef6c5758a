"""Optimizer choice for every semi-supervised trainer, and the HCO update step (two gradient sets).

``optimizer_name`` (a class attribute of the trainer; ``--optimizer`` on ``semi_nnUNet_train``):

=========== ==========================================================================================
None / sgd  nnU-Net's SGD (lr ``initial_lr`` 1e-2, momentum 0.99, Nesterov, weight decay 3e-5)
adamw       AdamW (lr ``adamw_initial_lr`` 1e-3, weight decay 3e-5)
hco_sgd     HCO-SGD (Alg. 2) with nnU-Net's SGD hyperparameters; the warm-up is nnU-Net's SGD exactly
hco_adamw   HCO-AdamW (Alg. 1) with the AdamW hyperparameters
co_sgd      Cautious SGD on the summed gradient (baseline of the HCO paper)
co_adamw    Cautious AdamW on the summed gradient
=========== ==========================================================================================

``adamw`` is torch's fused AdamW (one kernel per step on CPU and CUDA; torch's default on CPU is a per-tensor loop
about 6x slower on a 2D nnU-Net). HCO-AdamW compiles its step (``fused``, :mod:`semi_nnunet.optim.hco`) when the
trainer's ``hco_fused`` says so; ``None`` (default) does on CPU for runs of at least ``FUSED_MIN_ITERATIONS``
iterations, where the one-time compilation (about a minute on a 2-core CPU, cached on disk) pays for itself.

HCO keeps the host's learning rate (as the paper does); ``hco_lr_scale`` multiplies it (pitfall P1).
``lr_scale`` multiplies the rate of the other optimizers: ``<Trainer>_lrx<F>`` is the control that tells HCO's gating
from its step size (HCO moves the weights farther per step than its base optimizer; ``update_norm`` in the log and
``benchmarks/hco_step_size.py`` measure by how much), i.e. the base optimizer at HCO's effective step.

A trainer may give some auxiliary modules their own learning rate (``auxiliary_learning_rates()``, e.g. Hermes's
classifier at the paper's 1e-4): they become separate parameter groups of the same optimizer, and the poly schedule
(:class:`~semi_nnunet.optim.grouped.GroupedPolyLR`) decays every group from its own initial rate.
"""
import math
from typing import List, Optional, Sequence

import torch

from semi_nnunet.optim import (CautiousAdamW, CautiousSGD, HierarchicalCautiousAdamW, HierarchicalCautiousSGD)
from semi_nnunet.optim.grouped import GroupedPolyLR
from semi_nnunet.optim.hco import _TwoGradientOptimizer

OPTIMIZERS = ("sgd", "adamw", "hco_sgd", "hco_adamw", "co_sgd", "co_adamw")


FUSED_MIN_ITERATIONS = 1000


class HCONotApplicableError(ValueError):
    pass


def hco_fused(trainer) -> bool:
    """Whether HCO-AdamW compiles its step: ``trainer.hco_fused``, or when None, CPU and a run of at least
    ``FUSED_MIN_ITERATIONS`` iterations."""
    choice = getattr(trainer, "hco_fused", None)
    if choice is not None:
        return bool(choice)
    return trainer.device.type == "cpu" and trainer.num_epochs * trainer.num_iterations_per_epoch >= \
        FUSED_MIN_ITERATIONS


def build_optimizer(trainer) -> tuple:
    """``(optimizer, lr_scheduler)`` for ``trainer.optimizer_name`` (nnU-Net's poly schedule in every case)."""
    name = trainer.optimizer_name or "sgd"
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer '{name}' on {type(trainer).__name__}; choose one of {OPTIMIZERS}")
    if name.startswith("hco") and not trainer.requires_labels:
        raise HCONotApplicableError(
            f"{type(trainer).__name__} learns without labels, so there is no labeled gradient for HCO to trust. "
            f"Use --optimizer sgd or adamw.")
    params = trainer.parameter_groups() if hasattr(trainer, "parameter_groups") \
        else list(trainer.network.parameters())
    if not hasattr(trainer, "_base_initial_lr"):  # idempotent: the scale is applied to the base rate once
        trainer._base_initial_lr = trainer.adamw_initial_lr if name.endswith("adamw") else trainer.initial_lr
    trainer.initial_lr = trainer._base_initial_lr * (trainer.hco_lr_scale if name.startswith("hco")
                                                     else getattr(trainer, "lr_scale", 1.0))
    lr, wd = trainer.initial_lr, trainer.weight_decay
    sgd = dict(lr=lr, momentum=0.99, weight_decay=wd, nesterov=True)
    adamw = dict(lr=lr, weight_decay=wd)
    optimizer = {
        "sgd": lambda: torch.optim.SGD(params, **sgd),
        "adamw": lambda: torch.optim.AdamW(params, **adamw, fused=trainer.device.type in ("cpu", "cuda")),
        "hco_sgd": lambda: HierarchicalCautiousSGD(params, **sgd),
        "hco_adamw": lambda: HierarchicalCautiousAdamW(params, **adamw, fused=hco_fused(trainer)),
        "co_sgd": lambda: CautiousSGD(params, **sgd),
        "co_adamw": lambda: CautiousAdamW(params, **adamw),
    }[name]()
    return optimizer, GroupedPolyLR(optimizer, trainer.initial_lr, trainer.num_epochs)



def is_two_gradient(optimizer) -> bool:
    return isinstance(optimizer, _TwoGradientOptimizer)


def clip_(grads: Sequence[Optional[torch.Tensor]], max_norm: float) -> None:
    """``clip_grad_norm_`` for a list of gradient tensors (one norm over the list)."""
    tensors = [g for g in grads if g is not None]
    if not tensors:
        return
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors, 2)), 2)
    torch._foreach_mul_(tensors, (max_norm / (total + 1e-6)).clamp(max=1.0))


def all_finite(grads: Sequence[Optional[torch.Tensor]]) -> bool:
    tensors = [g for g in grads if g is not None]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class HCOScaler:
    """GradScaler bookkeeping for two gradient sets: ``GradScaler.unscale_`` may run once per step and only sees
    ``p.grad``, so both sets are unscaled by hand with one finiteness check, and the scale follows GradScaler's own
    rule (halve on inf/NaN, double after ``growth_interval`` clean steps) through ``update(new_scale)``."""

    def __init__(self, scaler, growth_interval: Optional[int] = None):
        if scaler is not None and not scaler.is_enabled():  # e.g. nnU-Net's CUDA GradScaler where CUDA is missing
            scaler = None
        if growth_interval is None:  # the wrapped GradScaler's own setting (2000 by default)
            growth_interval = scaler.get_growth_interval() if scaler is not None else 2000
        self.scaler, self.growth_interval, self.clean_steps = scaler, growth_interval, 0

    def unscale_(self, grads: List[Optional[torch.Tensor]]) -> bool:
        """Unscale in place; True when every gradient is finite."""
        if self.scaler is None:
            return all_finite(grads)
        tensors = [g for g in grads if g is not None]
        if tensors:
            torch._foreach_mul_(tensors, 1.0 / float(self.scaler.get_scale()))
        return all_finite(tensors)

    def unscale_and_clip_(self, grad_sets: Sequence[Sequence[Optional[torch.Tensor]]], max_norm: float) -> bool:
        """HCO's per-step gradient work in fused passes: unscale every set (with a scaler), take each set's L2 norm
        (one ``_foreach_norm`` per set), read all norms with one host synchronisation, and, when they are finite,
        clip each set to ``max_norm`` (as :func:`clip_`; a set already within it is left untouched, the multiply by
        1 skipped). Returns False, touching nothing else, when a norm is not finite: an inf or NaN gradient, or one
        so large that its norm overflows (clipping would have zeroed it); the step is then skipped."""
        sets = [[g for g in grads if g is not None] for grads in grad_sets]
        if self.scaler is not None:
            every = [g for grads in sets for g in grads]
            if every:
                torch._foreach_mul_(every, 1.0 / float(self.scaler.get_scale()))
        sets = [grads for grads in sets if grads]
        if not sets:
            return True
        totals = torch.stack([torch.linalg.vector_norm(torch.stack(torch._foreach_norm(g, 2)), 2) for g in sets])
        # the clip coefficients as clip_ computes them (in the gradients' dtype), read with the norms in one sync
        values = torch.cat([totals, (max_norm / (totals + 1e-6)).clamp(max=1.0)]).tolist()
        if not all(math.isfinite(t) for t in values[:len(sets)]):
            return False
        for grads, coef in zip(sets, values[len(sets):]):
            if coef != 1.0:
                torch._foreach_mul_(grads, coef)
        return True

    def update(self, finite: bool) -> None:
        if self.scaler is None:
            return
        scale = float(self.scaler.get_scale())
        if not finite:
            self.clean_steps, scale = 0, scale * 0.5
        else:
            self.clean_steps += 1
            if self.clean_steps >= self.growth_interval:
                self.clean_steps, scale = 0, scale * 2.0
        self.scaler.update(scale)
