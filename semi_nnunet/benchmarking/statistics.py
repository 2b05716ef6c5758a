"""Statistics of the label-efficiency benchmark: seeds, paired differences, bootstrap intervals, gap recovery.

Every quantity is computed from per-case scores of each training seed (``{case: value}``, one dict per seed), so the
same code serves one seed or many:

* **mean ± std over seeds** of the test-set mean (``std`` with ``ddof=1``; 0 for one seed);
* the **paired difference** to the baseline trained with the same seed, and in how many seeds the method is ahead;
* a **bootstrap 95 % interval** of the difference: test cases resampled with replacement (the same cases for every
  seed and every model), the per-case values averaged over seeds first, so the interval covers case sampling with the
  seed noise averaged out (percentile interval, ``B`` resamples, fixed generator seed so a rerun reports the same
  interval);
* **gap recovery** ``(Dice_method - Dice_sup(n)) / (Dice_sup(all) - Dice_sup(n))``: the share of the gap between the
  supervised baseline on ``n`` labels and on every label that the unlabeled images close (1 = as good as labelling
  everything, 0 = no gain, negative = worse than not using them), with its interval from the same resamples.
"""
import math
from typing import Dict, List, Optional, Sequence

import numpy as np

PerCase = Dict[str, float]
BOOTSTRAP_RESAMPLES = 10000
CONVERGENCE_TOLERANCE = 0.005  # 0.5 Dice points between the half-way and the final model
MIN_GAP = 0.005  # a gap between the baseline on n and on every label below 0.5 Dice points has no share to recover


def _matrix(runs: Sequence[PerCase], cases: Sequence[str]) -> np.ndarray:
    return np.array([[run[c] for c in cases] for run in runs], dtype=float)


def common_cases(*groups: Sequence[PerCase]) -> List[str]:
    """The cases every run of every group has a finite value for (sorted)."""
    runs = [r for g in groups for r in g]
    if not runs:
        return []
    cases = set(runs[0])
    for r in runs[1:]:
        cases &= set(r)
    return sorted(c for c in cases if all(np.isfinite(r[c]) for r in runs))


def over_seeds(values: Sequence[float]) -> dict:
    """Mean and sample std (ddof=1; 0 for one value) of per-seed values, NaN when there are none."""
    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()) if len(v) else float("nan"),
            "std": float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else float("nan")), "n": int(len(v))}


def _resamples(n_cases: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_cases, size=(resamples, n_cases))


def _interval(values: np.ndarray) -> List[float]:
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def paired_difference(method: Dict[int, PerCase], baseline: Dict[int, PerCase],
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Optional[dict]:
    """The method minus the baseline trained with the same seed, over the seeds both have.

    Returns ``{"seeds", "per_seed", "mean", "ci95", "ahead", "n_cases"}``: the per-seed differences of the test-set
    means (each over that seed's own finite cases, as the evaluation summary reports them), their mean, the bootstrap
    interval of the seed-averaged difference, and in how many seeds the method is ahead. None without a common seed."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return None
    per_seed = {s: float(np.nanmean(list(method[s].values())) - np.nanmean(list(baseline[s].values())))
                for s in seeds}
    cases = common_cases([method[s] for s in seeds], [baseline[s] for s in seeds])
    diff = (_matrix([method[s] for s in seeds], cases) - _matrix([baseline[s] for s in seeds], cases)).mean(0)
    boots = diff[_resamples(len(cases), resamples, seed)].mean(1) if cases else np.array([])
    return {"seeds": seeds, "per_seed": {str(s): d for s, d in per_seed.items()},
            "mean": float(np.mean(list(per_seed.values()))), "ci95": _interval(boots),
            "ahead": int(sum(d > 0 for d in per_seed.values())), "n_cases": len(cases)}


def gap_recovery(method: Dict[int, PerCase], baseline: Dict[int, PerCase], ceiling: Dict[int, PerCase],
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Optional[dict]:
    """``(method - baseline) / (ceiling - baseline)`` on seed-averaged test means, with a bootstrap interval (the
    same resampled cases for all three models). Method and baseline use their common seeds, the ceiling (the
    baseline on every label) all of its seeds. None when a model is missing; ``gap`` is the denominator, and
    ``measurable`` is False when it is below ``MIN_GAP`` (labelling everything barely helps: no gap to close)."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds or not ceiling:
        return None
    m_runs, b_runs, c_runs = [method[s] for s in seeds], [baseline[s] for s in seeds], list(ceiling.values())
    cases = common_cases(m_runs, b_runs, c_runs)
    if not cases:
        return None
    m, b, c = (_matrix(runs, cases).mean(0) for runs in (m_runs, b_runs, c_runs))
    gap = float(c.mean() - b.mean())
    value = float((m.mean() - b.mean()) / gap) if gap != 0 else float("nan")
    idx = _resamples(len(cases), resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = (m[idx].mean(1) - b[idx].mean(1)) / (c[idx].mean(1) - b[idx].mean(1))
    return {"value": value, "ci95": _interval(boots), "gap": gap, "measurable": bool(gap >= MIN_GAP),
            "seeds": seeds, "n_cases": len(cases)}


def convergence(half: Sequence[float], full: Sequence[float], tolerance: float = CONVERGENCE_TOLERANCE) -> dict:
    """Whether the test Dice at half the budget and at the full budget (means over seeds) differ by at most
    ``tolerance``; ``converged`` is None when the half-way value is missing."""
    h, f = over_seeds(half)["mean"], over_seeds(full)["mean"]
    change = f - h if np.isfinite(h) and np.isfinite(f) else float("nan")
    return {"half": h, "full": f, "change": change, "tolerance": tolerance,
            "converged": None if math.isnan(change) else bool(abs(change) <= tolerance)}


def seed_averaged(runs: Dict[int, PerCase]) -> PerCase:
    """Per case, the mean over seeds (cases missing or NaN in a seed are averaged over the others)."""
    cases = sorted({c for r in runs.values() for c in r})
    out = {}
    for c in cases:
        values = [r[c] for r in runs.values() if c in r and np.isfinite(r[c])]
        out[c] = float(np.mean(values)) if values else float("nan")
    return out

