"""Several optimizers stepped as one (e.g. nnU-Net's SGD for the U-Net and AdamW for a foundation model).

The base trainer's update step, GradScaler, clipping, checkpointing and lr schedule all see one optimizer:
``param_groups`` are the inner optimizers' own group dicts, ``step()`` steps each inner optimizer, the state dict
holds each inner state dict. When every inner optimizer is a two-gradient (HCO) optimizer,
:func:`grouped_optimizer` returns a :class:`GroupedTwoGradientOptimizer`, whose ``step_hco`` hands each inner
optimizer its slice of the labeled and unlabeled gradients (the base's HCO step needs nothing else).
"""
from typing import List, Sequence

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch.optim import Optimizer

from semi_nnunet.optim.hco import Grads, _TwoGradientOptimizer


class GroupedOptimizer(Optimizer):
    def __init__(self, optimizers: Sequence[Optimizer]):
        self.optimizers = list(optimizers)
        super().__init__([g for o in self.optimizers for g in o.param_groups], {})

    def _relink(self) -> None:
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for o in self.optimizers:
            o.step()
        return loss

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        inner = state_dict.get("optimizers") if isinstance(state_dict, dict) else None
        if inner is None or len(inner) != len(self.optimizers):
            raise ValueError(f"{type(self).__name__} holds {len(self.optimizers)} optimizers; the saved state does "
                             f"not (a checkpoint of another trainer?)")
        for o, s in zip(self.optimizers, inner):
            o.load_state_dict(s)
        self._relink()  # torch's load_state_dict replaces the group dicts


class GroupedTwoGradientOptimizer(GroupedOptimizer, _TwoGradientOptimizer):
    """Grouped HCO optimizers: ``step()`` is each one's base step, ``step_hco`` each one's HCO step."""

    def step_hco(self, labeled_grads: Grads, unlabeled_grads: Grads) -> None:
        start = 0
        for o in self.optimizers:
            n = len(o._params())
            o.step_hco(labeled_grads[start:start + n], unlabeled_grads[start:start + n])
            start += n
        if start != len(labeled_grads) or start != len(unlabeled_grads):
            raise ValueError(f"step_hco needs one gradient per parameter ({start}), got {len(labeled_grads)} and "
                             f"{len(unlabeled_grads)}")

    @property
    def last_mask_ratio(self) -> float:
        ones = [o._mask_ones for o in self.optimizers if o._mask_ones is not None and o._mask_total]
        total = sum(o._mask_total for o in self.optimizers if o._mask_ones is not None and o._mask_total)
        return float(sum(float(x) for x in ones)) / total if total else float("nan")


def grouped_optimizer(optimizers: Sequence[Optimizer]) -> GroupedOptimizer:
    """:class:`GroupedTwoGradientOptimizer` when every optimizer is an HCO one, else :class:`GroupedOptimizer`;
    mixing the two kinds is refused (the base would take one kind's step for both)."""
    two = [isinstance(o, _TwoGradientOptimizer) for o in optimizers]
    if any(two) and not all(two):
        raise ValueError("cannot group HCO and plain optimizers: use HCO for every part or for none")
    return GroupedTwoGradientOptimizer(optimizers) if all(two) else GroupedOptimizer(optimizers)


class GroupedPolyLR(PolyLRScheduler):
    """nnU-Net's poly schedule applied to each group's own initial lr; a group with ``"poly": False`` keeps its lr."""

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * (factor if group.get("poly", True) else 1.0)
        self._last_lr: List[float] = [group["lr"] for group in self.optimizer.param_groups]
