"""Ramp-up schedules for unlabeled loss weights: plain functions of the step, tested to the exact value."""
import math


def sigmoid_rampup(step: float, length: float) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = clip(step / length, 0, 1)`` (Laine & Aila 2017); 1 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def linear_rampup(step: float, length: float) -> float:
    """``clip(step / length, 0, 1)``; 1 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    return float(min(max(step / length, 0.0), 1.0))


def linear_schedule(step: float, length: float, start: float, end: float) -> float:
    """``start`` moving linearly to ``end`` over ``length`` steps, then ``end`` (threshold schedules)."""
    return start + (end - start) * linear_rampup(step, length)


RAMPS = {"sigmoid": sigmoid_rampup, "linear": linear_rampup}
