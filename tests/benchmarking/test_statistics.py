"""The benchmark's statistics on hand-made per-case scores: values worked out by hand, table-driven."""
import math

import pytest

from semi_nnunet.benchmarking.statistics import (common_cases, convergence, gap_recovery, over_seeds,
                                                 paired_difference, seed_averaged)


@pytest.mark.parametrize("values, mean, std, n", [
    ([0.8, 0.9], 0.85, math.sqrt(0.005), 2),  # sample std: sqrt(((-.05)^2 + .05^2) / 1)
    ([0.7], 0.7, 0.0, 1),
    ([0.6, float("nan"), 0.8], 0.7, math.sqrt(0.02), 2),
    ([], float("nan"), float("nan"), 0),
])
def test_over_seeds(values, mean, std, n):
    d = over_seeds(values)
    assert d["mean"] == pytest.approx(mean, nan_ok=True) and d["std"] == pytest.approx(std, nan_ok=True)
    assert d["n"] == n


def test_paired_difference_by_hand():
    method = {0: {"a": 0.9, "b": 0.8}, 1: {"a": 0.7, "b": 0.9}}
    base = {0: {"a": 0.8, "b": 0.8}, 1: {"a": 0.8, "b": 0.8}, 2: {"a": 0.1, "b": 0.1}}  # seed 2: not in the method
    d = paired_difference(method, base)
    assert d["seeds"] == [0, 1]
    assert d["per_seed"] == {"0": pytest.approx(0.05), "1": pytest.approx(0.0)}
    assert d["mean"] == pytest.approx(0.025) and d["ahead"] == 1 and d["n_cases"] == 2
    # seed-averaged per-case differences are a: 0.0, b: 0.05, so every resample's mean lies in [0, 0.05]
    low, high = d["ci95"]
    assert 0.0 - 1e-12 <= low <= 0.025 <= high <= 0.05 + 1e-12
    assert paired_difference(method, {5: {"a": 0.5}}) is None


@pytest.mark.parametrize("offset", [0.02, -0.03])
def test_constant_difference_has_a_degenerate_interval(offset):
    base = {s: {f"c{i}": 0.5 + 0.01 * i + 0.1 * s for i in range(20)} for s in range(3)}
    method = {s: {c: v + offset for c, v in run.items()} for s, run in base.items()}
    d = paired_difference(method, base)
    assert d["mean"] == pytest.approx(offset)
    assert d["ci95"] == [pytest.approx(offset), pytest.approx(offset)]
    assert d["ahead"] == (3 if offset > 0 else 0)


@pytest.mark.parametrize("share", [0.5, 1.0, -0.25])
def test_gap_recovery_of_a_method_closing_a_share_of_every_case_gap(share):
    cases = [f"c{i}" for i in range(15)]
    base = {s: {c: 0.6 + 0.01 * i for i, c in enumerate(cases)} for s in range(2)}
    ceiling = {s: {c: 0.9 - 0.005 * i for i, c in enumerate(cases)} for s in range(3)}
    method = {s: {c: base[s][c] + share * (ceiling[0][c] - base[s][c]) for c in cases} for s in range(2)}
    g = gap_recovery(method, base, ceiling)
    gap = sum(ceiling[0][c] - base[0][c] for c in cases) / len(cases)
    assert g["value"] == pytest.approx(share) and g["gap"] == pytest.approx(gap)
    assert g["ci95"] == [pytest.approx(share), pytest.approx(share)]  # the same share in every resample
    assert g["seeds"] == [0, 1] and g["n_cases"] == 15
    assert gap_recovery(method, base, {}) is None


def test_cases_with_nan_are_left_out_of_paired_statistics():
    base = {0: {"a": 0.5, "b": 0.5, "c": float("nan")}}
    method = {0: {"a": 0.7, "b": 0.6, "c": 0.9}}
    assert common_cases([base[0]], [method[0]]) == ["a", "b"]
    d = paired_difference(method, base)
    assert d["n_cases"] == 2 and d["ci95"][0] >= 0.1 - 1e-12 and d["ci95"][1] <= 0.2 + 1e-12
    assert seed_averaged({0: {"a": 0.2, "b": float("nan")}, 1: {"a": 0.4, "b": 0.6}}) == \
        {"a": pytest.approx(0.3), "b": pytest.approx(0.6)}


@pytest.mark.parametrize("half, full, converged", [
    ([0.900, 0.910], [0.903, 0.912], True),  # +0.0025
    ([0.890], [0.900], False),  # +0.01
    ([0.910], [0.900], False),  # a drop counts too
    ([float("nan")], [0.9], None),  # no half-way model
])
def test_convergence_flag(half, full, converged):
    c = convergence(half, full)
    assert c["converged"] is converged and c["tolerance"] == 0.005
