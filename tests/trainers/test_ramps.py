"""Ramp-up schedules: exact values at the hand-computable points."""
import math

import pytest

from semi_nnunet.trainers.ramps import RAMPS, linear_rampup, linear_schedule, sigmoid_rampup


@pytest.mark.parametrize("step, length, expected", [
    (0, 100, math.exp(-5.0)),            # t = 0: exp(-5 * 1^2)
    (50, 100, math.exp(-1.25)),          # t = 1/2: exp(-5 * (1/2)^2)
    (25, 100, math.exp(-5.0 * 0.5625)),  # t = 1/4: exp(-5 * (3/4)^2)
    (100, 100, 1.0),                     # t = 1
    (250, 100, 1.0),                     # beyond the ramp: clipped to 1
    (-10, 100, math.exp(-5.0)),          # negative step: clipped to t = 0
    (0, 0, 1.0),                         # no ramp
    (7, 0, 1.0),
    (3, -5, 1.0),                        # negative length treated like no ramp
])
def test_sigmoid_rampup(step, length, expected):
    value = sigmoid_rampup(step, length)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-15, abs=0)


def test_sigmoid_rampup_is_monotone_from_exp_minus_5_to_1():
    values = [sigmoid_rampup(s, 40) for s in range(-5, 50)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert values[0] == math.exp(-5.0) and values[-1] == 1.0


@pytest.mark.parametrize("step, length, expected", [
    (0, 100, 0.0),
    (25, 100, 0.25),
    (50, 100, 0.5),
    (100, 100, 1.0),
    (101, 100, 1.0),    # clipped above
    (-3, 100, 0.0),     # clipped below
    (0, 0, 1.0),        # no ramp
    (5, -1, 1.0),
])
def test_linear_rampup(step, length, expected):
    value = linear_rampup(step, length)
    assert isinstance(value, float)
    assert value == expected


@pytest.mark.parametrize("step, length, start, end, expected", [
    (0, 10, 0.95, 0.75, 0.95),     # start
    (10, 10, 0.95, 0.75, 0.75),    # end
    (20, 10, 0.95, 0.75, 0.75),    # stays at end
    (-4, 10, 0.95, 0.75, 0.95),    # stays at start before the schedule
    (5, 10, 0.0, 1.0, 0.5),        # midpoint, increasing
    (5, 10, 1.0, 0.0, 0.5),        # midpoint, decreasing
    (5, 10, 2.0, 4.0, 3.0),
    (2, 8, 0.0, 8.0, 2.0),         # a quarter of the way
    (3, 0, 0.2, 0.7, 0.7),         # no schedule: end at once
])
def test_linear_schedule(step, length, start, end, expected):
    assert linear_schedule(step, length, start, end) == pytest.approx(expected, rel=1e-15, abs=1e-15)


def test_ramps_registry():
    assert RAMPS["sigmoid"] is sigmoid_rampup
    assert RAMPS["linear"] is linear_rampup
