"""EMA teacher: a frozen copy of the student whose weights follow the student's exponential moving average."""
import copy
from typing import Optional

import torch


def ema_decay(step: int, decay: float) -> float:
    """Mean Teacher's warm-up: ``min(1 - 1 / (step + 1), decay)``; step 0 copies the student (alpha 0)."""
    return min(1.0 - 1.0 / (step + 1), decay)


def budget_decay(decay: float, horizon_fraction: Optional[float], total_iterations: int) -> float:
    """The EMA decay for a run of ``total_iterations``: ``min(decay, 1 - 1 / (horizon_fraction * total))``.

    An EMA of decay ``a`` averages over about ``1 / (1 - a)`` steps (its horizon). The paper's decay (0.99: 100 steps)
    was set for runs of thousands of iterations; in a short run the same decay averages most of the run, i.e. an
    early, worse student. Tying the horizon to a fraction of the run (capped at the paper's decay) gives the paper's
    value on nnU-Net's 250,000 iterations and on any run of at least ``1 / ((1 - decay) * horizon_fraction)``
    iterations (5,000 for 0.99 and 2 %), and a proportionally shorter horizon below. ``None``: the decay as given.
    A horizon of at most one step gives 0 (the teacher is the student)."""
    if horizon_fraction is None:
        return decay
    horizon = horizon_fraction * total_iterations
    return min(decay, max(0.0, 1.0 - 1.0 / horizon)) if horizon > 0 else 0.0


@torch.no_grad()
def ema_update_(teacher: torch.nn.Module, student: torch.nn.Module, alpha: float) -> None:
    """``teacher = alpha * teacher + (1 - alpha) * student`` for floating parameters and buffers; other buffers
    (counters) are copied. ``alpha = 0`` copies the student, ``alpha = 1`` leaves the teacher unchanged."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - alpha)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        if tb.dtype.is_floating_point:
            tb.lerp_(sb.detach(), 1.0 - alpha)
        else:
            tb.copy_(sb)


def make_teacher(student: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``student`` that takes no gradient and stays in eval mode for its forward passes."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()
