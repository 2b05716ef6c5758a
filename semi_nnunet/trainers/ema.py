"""EMA teacher: a frozen copy of the student whose weights follow the student's exponential moving average."""
import copy

import torch


def ema_decay(step: int, decay: float) -> float:
    """Mean Teacher's warm-up: ``min(1 - 1 / (step + 1), decay)``; step 0 copies the student (alpha 0)."""
    return min(1.0 - 1.0 / (step + 1), decay)


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
