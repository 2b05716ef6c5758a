"""The label-efficiency benchmark's outputs: results.json, results.md and the plots, from the finished jobs.

:func:`aggregate` turns the job results (one per subset x trainer x training seed) into per-subset rows with the
statistics of :mod:`semi_nnunet.benchmarking.statistics`; :func:`write_report` writes them. Both run after every job,
so a long benchmark always shows what it has measured so far (a row says how many of its seeds are done).
"""
import math
import os
from collections import defaultdict
from typing import Dict, List

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join

from semi_nnunet.benchmarking.statistics import (convergence, gap_recovery, over_seeds, paired_difference,
                                                 seed_averaged)
from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic

METRICS = ("Dice", "HD95", "ASD")


def _case_stats(values: Dict[str, float]) -> dict:
    """Mean and std over the test cases with a finite value (what semi_nnUNet_evaluate's summary.json reports)."""
    v = np.array([x for x in values.values() if np.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) else float("nan")}


def _seed_row(r: dict) -> dict:
    row = {m: _case_stats(r["per_case"][m]) for m in METRICS}
    row.update({k: r[k] for k in ("evaluated_model", "n_test", "epochs_trained", "seconds_per_iteration",
                                  "train_time_s", "prediction_folder")})
    row["code"] = (r.get("code") or {}).get("commit") or "not recorded"  # results from before it was recorded
    if r.get("half_budget"):
        row["half_budget_dice"] = _case_stats(r["half_budget"]["Dice"])["mean"]
        row["half_budget_epoch"] = r["half_budget"]["epoch"]
    return row


def _row(name: str, runs: Dict[int, dict], base_runs: Dict[int, dict], ceiling: Dict[int, dict],
         is_baseline: bool, label: str) -> dict:
    from semi_nnunet.evaluation.evaluate_api import paired_wilcoxon
    seeds = sorted(runs)
    per_seed = {s: _seed_row(runs[s]) for s in seeds}
    dice = {s: runs[s]["per_case"]["Dice"] for s in seeds}
    base_dice = {s: base_runs[s]["per_case"]["Dice"] for s in base_runs}
    row = {"trainer": name, "evaluated_model": runs[seeds[0]]["evaluated_model"], "seeds": seeds,
           "per_seed": {str(s): v for s, v in per_seed.items()},
           "n_test": runs[seeds[0]]["n_test"], "train_time_s": float(sum(v["train_time_s"] for v in per_seed.values())),
           "per_case_dice_seed_mean": seed_averaged(dice)}
    for m in METRICS:
        row[m] = over_seeds([per_seed[s][m]["mean"] for s in seeds])
    common = sorted(set(seeds) & set(base_runs))
    row["time_per_iteration_ratio"] = float(np.median([per_seed[s]["seconds_per_iteration"]
                                                       / base_runs[s]["seconds_per_iteration"] for s in common])) \
        if common else float("nan")
    if is_baseline:
        row["difference_vs_baseline"] = row["gap_recovery"] = row["wilcoxon_first_seed"] = None
        halves = [per_seed[s].get("half_budget_dice", float("nan")) for s in seeds]
        row["convergence"] = convergence(halves, [per_seed[s]["Dice"]["mean"] for s in seeds])
        row["convergence"]["half_epoch"] = per_seed[seeds[0]].get("half_budget_epoch")
        return row
    row["difference_vs_baseline"] = paired_difference(dice, base_dice)
    row["gap_recovery"] = gap_recovery(dice, base_dice, {s: r["per_case"]["Dice"] for s, r in ceiling.items()}) \
        if ceiling and label != "all" else None
    row["wilcoxon_first_seed"] = {"seed": common[0], **{m: paired_wilcoxon(base_runs[common[0]]["per_case"][m],
                                                                         runs[common[0]]["per_case"][m])
                                                        for m in METRICS}} if common else None
    return row


def _variants(methods: Dict[str, dict], runs: Dict[str, Dict[int, dict]], budget: dict, baseline: str) -> List[dict]:
    """Each variant row against the trainer it modifies, when both are in the subset: ``X_HCO`` against ``X``,
    ``SemiCervixTrainer_uniform`` against ``SemiCervixTrainer`` (the longest other method name, budget removed, that
    the variant's name extends with ``_``), paired by training seed like the difference to the baseline. The baseline
    is never the base here: every row already has its difference to it."""
    free = {name: _budget_free(name, budget) for name in methods if name != baseline}
    out = []
    for name, short in free.items():
        bases = [b for b, b_short in free.items() if b != name and short.startswith(b_short + "_")]
        if not bases:
            continue
        base = max(bases, key=lambda b: len(free[b]))
        d = paired_difference({s: r["per_case"]["Dice"] for s, r in runs[name].items()},
                              {s: r["per_case"]["Dice"] for s, r in runs[base].items()})
        if d:
            out.append({"variant": name, "base": base, "difference": d})
    return out


def aggregate(meta: dict, results: List[dict]) -> dict:
    """The report's content: ``meta`` (command, budget, ...) plus one entry per subset with a row per trainer."""
    by: Dict[tuple, Dict[int, dict]] = defaultdict(dict)
    for r in results:
        by[(r["label"], r["trainer"])][int(r["train_seed"])] = r
    baseline = meta["baseline"]
    ceiling = by.get(("all", baseline), {})
    # what earlier calls measured in the same folder comes after this call's subsets and trainers
    labels = list(dict.fromkeys(list(meta["labeled"]) + sorted({r["label"] for r in results} - set(meta["labeled"]),
                                                                key=lambda x: (x == "all", int(x) if x.isdigit()
                                                                               else 0))))
    trainers = list(dict.fromkeys(list(meta["trainers"]) + [r["trainer"] for r in results]))
    out = {**meta, "labeled": labels, "trainers": trainers, "subsets": []}
    for label in labels:
        base_runs = by.get((label, baseline), {})
        methods = {}
        for name in trainers:
            runs = by.get((label, name), {})
            if runs:
                methods[name] = _row(name, runs, base_runs, ceiling, name == baseline, label)
        if methods:
            any_run = next(iter(by[(label, next(iter(methods)))].values()))
            out["subsets"].append({"label": label, "n_labeled": int(any_run["n_labeled"]), "methods": methods,
                                   "n_test": any_run["n_test"],
                                   "variants": _variants(methods, {n: by[(label, n)] for n in methods},
                                                         meta["budget"], baseline)})
    flags = [s["methods"][baseline]["convergence"] for s in out["subsets"] if baseline in s["methods"]]
    out["converged"] = None if not flags or any(f["converged"] is None for f in flags) else \
        all(f["converged"] for f in flags)
    out["total_train_time_s"] = float(sum(r["train_time_s"] for r in results))
    # jobs of this call's grid (results of earlier calls in the same folder are reported too, but not counted here)
    seeds = {int(x) for x in meta.get("training_seeds", [])}
    mine = [r for r in results if r["label"] in meta["labeled"] and r["trainer"] in meta["trainers"]
            and int(r["train_seed"]) in seeds]
    out["jobs_done"], out["jobs_total"] = len(mine), meta.get("jobs_total", len(mine))
    out["results_in_folder"] = len(results)
    return out


def portable(text: str) -> str:
    """``text`` (a command, a dataset path) without this machine's folders: an absolute path becomes its last
    component (``-o /data/runs/hc18`` -> ``-o hc18``), so a committed report names what a reader types."""
    return " ".join(os.path.basename(os.path.normpath(t)) if os.path.isabs(t) else t for t in text.split(" "))


# ---------------------------------------------------------------------------------------------------- Markdown
def _f(x: float, digits: int, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ms(d: dict, digits: int) -> str:
    return "-" if d is None or math.isnan(d["mean"]) else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _difference(d: dict) -> str:
    """A paired difference (statistics.paired_difference) as ``mean [low, high]``."""
    if not d:
        return "-"
    return f"{_f(d['mean'], 4, True)} [{_f(d['ci95'][0], 4, True)}, {_f(d['ci95'][1], 4, True)}]"


def _ahead_of(d: dict) -> str:
    return "-" if not d else f"{d['ahead']} of {len(d['seeds'])}"


def _diff(row: dict) -> str:
    return _difference(row.get("difference_vs_baseline"))


def _ahead(row: dict) -> str:
    return _ahead_of(row.get("difference_vs_baseline"))


def _gap(row: dict) -> str:
    g = row.get("gap_recovery")
    if not g:
        return "-"
    if not g.get("measurable", True):
        return f"n/a (gap {_f(g['gap'], 4, True)})"
    return f"{_f(g['value'], 2, True)} [{_f(g['ci95'][0], 2, True)}, {_f(g['ci95'][1], 2, True)}]"


def _p(row: dict, metric: str) -> str:
    w = row.get("wilcoxon_first_seed")
    return "-" if not w or math.isnan(w[metric]["p_value"]) else f"{w[metric]['p_value']:.3g}"


def _seeds(row: dict, repeats: int) -> str:
    return f"{len(row['seeds'])}" + ("" if len(row["seeds"]) >= repeats else f" of {repeats}")


def _name(row: dict) -> str:
    return row["trainer"] + (f" (stage {row['evaluated_model'].rsplit('_stage', 1)[-1]})"
                             if row["evaluated_model"] != row["trainer"] else "")


def markdown(results: dict) -> str:
    budget, repeats, baseline = results["budget"], len(results["training_seeds"]), results["baseline"]
    lines = []
    flags = {s["label"]: s["methods"][baseline]["convergence"] for s in results["subsets"]
             if baseline in s["methods"]}
    not_converged = [k for k, f in flags.items() if f["converged"] is False]
    if not_converged:
        lines += [f"> **Not converged:** the supervised baseline's test Dice changed by more than "
                  f"{100 * next(iter(flags.values()))['tolerance']:.1f} Dice points between half and full budget at "
                  f"n = {', '.join(not_converged)}. Differences below are measured before convergence.", ""]
    elif flags and all(f["converged"] for f in flags.values()):
        lines += [f"The supervised baseline converged at this budget: its test Dice at half and at the full budget "
                  f"differ by at most {100 * next(iter(flags.values()))['tolerance']:.1f} Dice points at every n.", ""]
    lines += [f"Label efficiency on `{portable(results['source'])}` ({results['configuration']}); subset seed "
              f"{results['subset_seed']} (which cases are labeled), training seeds "
              f"{', '.join(map(str, results['training_seeds']))}; device {results['device']}; budget: "
              + (f"{budget['epochs']} epochs x {budget['iterations_per_epoch']} iterations"
                 if budget["epochs"] else "each trainer's own schedule")
              + (f", pseudo-label stages: {budget['stages']}" if budget["stages"] is not None else "")
              + f". Date {results['date']}. Jobs of this command done: {results['jobs_done']} of "
              f"{results['jobs_total']}"
              + (f" (the report also holds {results['results_in_folder'] - results['jobs_done']} results of earlier "
                 f"commands in the same folder)" if results.get("results_in_folder", 0) > results["jobs_done"]
                 else "")
              + f". Total training time {results['total_train_time_s'] / 3600:.2f} h.", "",
              f"Command: `{portable(results['command'])}`", ""]
    if results.get("estimate"):
        from semi_nnunet.benchmarking.timing import format_duration
        e = results["estimate"]
        lines += [f"Estimated before this call: {format_duration(e['seconds'])} for {e['jobs_to_run']} jobs "
                  f"({e['how']}).", ""]
    ceiling = next((s for s in results["subsets"] if s["label"] == "all"), None)
    lines += ["## Headline: gap recovery", "",
              "| labeled | method | seeds | Dice (mean ± std over seeds) | Δ Dice vs supervised [95 % CI] | ahead in "
              "| gap recovery [95 % CI] | time/it vs baseline |", "|---|---|---|---|---|---|---|---|"]
    for s in results["subsets"]:
        for row in s["methods"].values():
            lines.append(f"| {s['label']} | {_name(row)} | {_seeds(row, repeats)} | {_ms(row['Dice'], 4)} | "
                         f"{_diff(row)} | {_ahead(row)} | {_gap(row)} | {_f(row['time_per_iteration_ratio'], 2)} |")
    lines += ["", "Gap recovery = (Dice_method − Dice_supervised(n)) / (Dice_supervised(all) − Dice_supervised(n)): "
              "the share of the gap to labelling every case that the unlabeled images close"
              + ("" if ceiling else " (its `all` row has not finished yet)" if "all" in results["labeled"]
                 else " (needs `all` in --labeled)") + ". Δ: the paired difference to the "
              "baseline trained with the same seed, averaged over seeds; ahead in: seeds where the method's test "
              "Dice is higher. Intervals: bootstrap over test cases (10,000 resamples, seeds averaged per case).", ""]
    if ceiling or len(results["subsets"]) > 1:
        lines += ["![gap recovery](gap_recovery.png) ![Dice vs labeled cases](dice_vs_labeled.png)", ""]
    variants = [(s["label"], v) for s in results["subsets"] for v in s.get("variants", [])]
    if variants:
        lines += ["## Variants against the trainer they modify", "",
                  "Does the optimizer option (`_HCO`), the sampling (`_uniform`) or the threshold (`_conf90`) help? "
                  "Each variant minus the trainer it modifies, paired by training seed, intervals as above.", "",
                  "| labeled | variant | against | seeds | Δ Dice [95 % CI] | ahead in | per seed |",
                  "|---|---|---|---|---|---|---|"]
        for label, v in variants:
            d = v["difference"]
            lines.append(f"| {label} | {v['variant']} | {v['base']} | {len(d['seeds'])} | {_difference(d)} | "
                         f"{_ahead_of(d)} | " + ", ".join(_f(x, 4, True) for x in d["per_seed"].values()) + " |")
        lines.append("")
    if flags:
        lines += ["## Convergence of the supervised baseline", "",
                  "| labeled | test Dice at half budget | at full budget | change | converged |",
                  "|---|---|---|---|---|"]
        for label, f in flags.items():
            state = "-" if f["converged"] is None else ("yes" if f["converged"] else "**no**")
            lines.append(f"| {label} | {_f(f['half'], 4)} (epoch {f.get('half_epoch') or '-'}) | "
                         f"{_f(f['full'], 4)} | {_f(f['change'], 4, True)} | {state} |")
        lines += ["", "Means over seeds; the half-way model is a snapshot of the same training (no second run), so "
                  "its learning rate had not decayed yet: a conservative check.", ""]
    for s in results["subsets"]:
        lines += [f"## {s['label']} labeled cases (n = {s['n_labeled']}, {s['n_test']} test cases)", "",
                  "| method | seeds | Dice | HD95 | ASD | Δ Dice [95 % CI] | gap recovery "
                  "| p Dice (Wilcoxon, one seed) | p HD95 | time/it vs baseline | training time (min, all seeds) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in s["methods"].values():
            lines.append(f"| {_name(row)} | {_seeds(row, repeats)} | {_ms(row['Dice'], 4)} | {_ms(row['HD95'], 2)} | "
                         f"{_ms(row['ASD'], 2)} | {_diff(row)} | {_gap(row)} | {_p(row, 'Dice')} | {_p(row, 'HD95')} | "
                         f"{_f(row['time_per_iteration_ratio'], 2)} | {row['train_time_s'] / 60:.1f} |")
        lines += ["", "Per training seed:", "", "| method | seed | Dice | Δ vs supervised (same seed) | HD95 | ASD | "
                  "s/it | training time (min) | code |", "|---|---|---|---|---|---|---|---|---|"]
        for row in s["methods"].values():
            d = row.get("difference_vs_baseline") or {"per_seed": {}}
            for seed, r in row["per_seed"].items():
                lines.append(f"| {_name(row)} | {seed} | {_ms(r['Dice'], 4)} | "
                             f"{_f(d['per_seed'].get(seed, float('nan')), 4, True)} | {_ms(r['HD95'], 2)} | "
                             f"{_ms(r['ASD'], 2)} | {r['seconds_per_iteration']:.3f} | {r['train_time_s'] / 60:.1f} | "
                             f"{r.get('code', 'not recorded')} |")
        lines += ["", f"![per-case Dice, {s['label']} labeled](dice_n{s['label']}.png)", ""]
    lines += ["Dice/HD95/ASD: the test-set mean of the per-case foreground mean (classes averaged per case) per "
              "training seed, then mean ± std (ddof 1) over seeds; per seed, mean ± std over the test cases (the "
              "numbers semi_nnUNet_evaluate writes for that prediction folder). HD95/ASD in the images' spacing units. "
              "p: secondary, a paired two-sided Wilcoxon signed-rank test over the test cases of one training seed "
              "(the first one both have), not a test across seeds. time/it: median epoch time per training "
              "iteration, ratio to the baseline trained with the same seed (each worker runs its jobs one after the "
              "other; jobs that shared the machine with other work, or ran on other days, carry those conditions "
              "too: a step-time comparison measured side by side is the speed number to quote); staged trainers "
              "are evaluated at their last stage and their time sums every stage.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- plots
def _save_figure(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def plots(results: dict, folder: str) -> List[str]:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    # nnU-Net's logger sets a seaborn style with very large fonts when it is imported; draw with matplotlib's defaults
    with plt.style.context("default"):
        return _plots(results, folder, plt)


def _plots(results: dict, folder: str, plt) -> List[str]:
    from matplotlib.ticker import NullFormatter
    written = []
    for subset in results["subsets"]:
        methods = subset["methods"]
        fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 4))
        data = [[v for v in row["per_case_dice_seed_mean"].values() if np.isfinite(v)] for row in methods.values()]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), list(methods), rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("per-case Dice (test set, mean over seeds)")
        ax.set_title(f"{subset['label']} labeled cases")
        path = join(folder, f"dice_n{subset['label']}.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    baseline = results["baseline"]
    ceiling = next((s for s in results["subsets"] if s["label"] == "all" and baseline in s["methods"]), None)
    numbered = [s for s in results["subsets"] if s["label"] != "all"]
    if len(results["subsets"]) > 1 or ceiling:
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [s["n_labeled"] for s in numbered]
        for name in results["trainers"]:
            points = [(s["n_labeled"], s["methods"][name]["Dice"]) for s in numbered if name in s["methods"]]
            if points:
                ax.errorbar([p[0] for p in points], [p[1]["mean"] for p in points],
                            yerr=[p[1]["std"] for p in points], marker="o", capsize=3, label=name)
        if ceiling:
            d = ceiling["methods"][baseline]["Dice"]
            ax.axhline(d["mean"], color="k", ls="--", lw=1, label=f"supervised, all {ceiling['n_labeled']} labels")
            ns = ns + [ceiling["n_labeled"]]
        if ns:
            ax.set_xscale("log")
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("labeled cases")
        ax.set_ylabel("test Dice (mean ± std over seeds)")
        ax.legend(fontsize=7)
        path = join(folder, "dice_vs_labeled.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    if ceiling:
        rows = [(s["label"], name, row["gap_recovery"]) for s in numbered for name, row in s["methods"].items()
                if row.get("gap_recovery") and row["gap_recovery"].get("measurable", True)]
        fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 4))
        for i, (label, name, g) in enumerate(rows):
            low, high = g["ci95"]
            err = [[g["value"] - low if np.isfinite(low) else 0], [high - g["value"] if np.isfinite(high) else 0]]
            ax.bar(i, g["value"], color=f"C{list(results['trainers']).index(name) % 10}")
            ax.errorbar(i, g["value"], yerr=err, color="k", capsize=4)
        ax.axhline(0, color="k", lw=0.8)
        ax.axhline(1, color="k", ls="--", lw=0.8)
        ax.set_xticks(range(len(rows)), [f"{name}\n(n={label})" for label, name, _ in rows], rotation=25,
                      ha="right", fontsize=7)
        ax.set_ylabel("gap recovery (95 % CI)")
        ax.set_title("share of the gap to all labels closed")
        path = join(folder, "gap_recovery.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------- summary
def _budget_free(name: str, budget: dict) -> str:
    """``HermesTrainer_80epochs_50it`` -> ``HermesTrainer`` (the benchmark's budget variant, back to the method)."""
    suffix = f"_{budget['epochs']}epochs_{budget['iterations_per_epoch']}it" if budget.get("epochs") else ""
    return name[:-len(suffix)] if suffix and name.endswith(suffix) else name


def summary(results: dict) -> dict:
    """The headline of a benchmark in a few numbers per row (no per-case values): what the demo prints and what a
    README can quote. Every number is taken from ``results`` (results.json), none is rounded here."""
    baseline = results["baseline"]
    rows = []
    for s in results["subsets"]:
        for name, row in s["methods"].items():
            d, g = row.get("difference_vs_baseline"), row.get("gap_recovery")
            rows.append({"labeled": s["label"], "method": _budget_free(name, results["budget"]),
                         "evaluated_model": _budget_free(row["evaluated_model"], results["budget"]),
                         "baseline": name == baseline, "seeds": len(row["seeds"]), "dice": row["Dice"]["mean"],
                         "dice_std": row["Dice"]["std"],
                         "delta": d["mean"] if d else None, "delta_ci95": d["ci95"] if d else None,
                         "ahead": d["ahead"] if d else None,
                         "gap_recovery": g["value"] if g and g.get("measurable", True) else None,
                         "gap_recovery_ci95": g["ci95"] if g and g.get("measurable", True) else None,
                         "time_per_iteration_ratio": row.get("time_per_iteration_ratio")})
    return {"dataset": os.path.basename(os.path.normpath(results["source"])), "date": results.get("date"),
            "command": portable(results["command"]) if results.get("command") else None, "budget": results["budget"],
            "configuration": results["configuration"], "training_seeds": results["training_seeds"],
            "converged": results.get("converged"), "jobs_done": results.get("jobs_done"),
            "jobs_total": results.get("jobs_total"), "trainings": results.get("results_in_folder"),
            "baseline": _budget_free(baseline, results["budget"]),
            "rows": rows}


def reliably_ahead(summ: dict, row: dict) -> bool:
    """Whether a summary row was trained with every training seed of the benchmark and is ahead of the baseline in
    each, with an interval above zero (a row whose other seeds are still running does not count yet)."""
    seeds = len(summ.get("training_seeds") or []) or 1
    return not row["baseline"] and row["delta"] is not None and row["seeds"] >= seeds \
        and row["ahead"] == row["seeds"] and row["delta_ci95"][0] > 0


def best_method(summ: dict, label: str) -> "str | None":
    """The method with the largest mean paired difference at ``label`` among those :func:`reliably_ahead`; None when
    no method is."""
    ahead = [r for r in summ["rows"] if r["labeled"] == label and reliably_ahead(summ, r)]
    return max(ahead, key=lambda r: r["delta"])["method"] if ahead else None


def summary_text(summ: dict) -> str:
    """The summary as a terminal table."""
    b = summ["budget"]
    budget = f"{b['epochs']} epochs x {b['iterations_per_epoch']} iterations" if b.get("epochs") else "default budget"
    state = {True: "the supervised baseline converged at this budget", None: "convergence not measured",
             False: "NOT converged: the baseline still changed by more than 0.5 Dice points in its second half"}
    lines = [f"Multi-seed benchmark on {summ['dataset']} ({summ['date']}, {summ['configuration']}, {budget}, "
             f"training seeds {', '.join(map(str, summ['training_seeds']))}, "
             + (f"{summ['trainings']} trainings; " if summ.get("trainings") else
                f"{summ['jobs_done']} of {summ['jobs_total']} jobs; ")
             + f"{state[summ['converged']]}):",
             f"  {'labeled':<8s}{'method':<34s}{'seeds':>6s}{'Dice':>9s}{'delta [95% CI]':>28s}{'ahead':>8s}"
             f"{'gap rec.':>10s}"]
    for r in summ["rows"]:
        name = r["method"] + (f" ({r['evaluated_model'].rsplit('_', 1)[-1]})"
                              if r["evaluated_model"] != r["method"] else "")
        delta = "-" if r["delta"] is None else \
            f"{r['delta']:+.4f} [{r['delta_ci95'][0]:+.4f}, {r['delta_ci95'][1]:+.4f}]"
        ahead = "-" if r["ahead"] is None else f"{r['ahead']}/{r['seeds']}"
        gap = "-" if r["gap_recovery"] is None else f"{r['gap_recovery']:+.2f}"
        lines.append(f"  {r['labeled']:<8s}{name:<34s}{r['seeds']:>6d}{r['dice']:>9.4f}{delta:>28s}{ahead:>8s}"
                     f"{gap:>10s}")
    return "\n".join(lines)


def write_summary(results_json: str, output: str, source: str) -> dict:
    """The summary of ``results_json`` into ``output``, naming where it came from (``source``, a path relative to the
    repository, e.g. documentation/benchmarks/hc18_grid/results.json): how the demo's copy is refreshed."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    summ = {"source": source, **summary(load_json(results_json))}
    save_json_atomic(summ, output)
    return summ


def write_report(results: dict, folder: str, quiet: bool = False) -> None:
    save_json_atomic(results, join(folder, "results.json"))
    save_json_atomic(summary(results), join(folder, "summary.json"))
    with atomic_path(join(folder, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown(results))
    plots(results, folder)
    if not quiet:
        print(f"\n{markdown(results)}\nWritten: {os.path.join(folder, 'results.md')}, results.json and the plots.")
