"""The label-efficiency benchmark's outputs: results.json, results.md, a Dice box plot per subset, Dice vs labels."""
import math
import os
from typing import List

from batchgenerators.utilities.file_and_folder_operations import join

from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic


def _ms(d: dict, digits: int) -> str:
    return "-" if math.isnan(d["mean"]) else f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def _p(row: dict, metric: str) -> str:
    w = row["wilcoxon_vs_baseline"]
    return "-" if w is None or math.isnan(w[metric]["p_value"]) else f"{w[metric]['p_value']:.3g}"


def markdown(results: dict) -> str:
    budget = results["budget"]
    lines = [f"Label efficiency on `{results['source']}` ({results['configuration']}), seed {results['seed']}, "
             f"device {results['device']}, budget: "
             + (f"{budget['epochs']} epochs x {budget['iterations_per_epoch'] or 'default'} iterations"
                if budget["epochs"] else "each trainer's own schedule")
             + (f", {budget['stages']} pseudo-label stages" if budget["stages"] is not None else "")
             + f". Date {results['date']}.", "", f"Command: `{results['command']}`", ""]
    for subset in results["subsets"]:
        methods = subset["methods"]
        n_test = next(iter(methods.values()))["n_test"]
        lines += [f"### {subset['n_labeled']} labeled cases ({n_test} test cases)", "",
                  "| method | Dice | p (Dice) | HD95 (mm) | p (HD95) | ASD (mm) | p (ASD) | time/it vs baseline "
                  "| training time (min) |", "|---|---|---|---|---|---|---|---|---|"]
        for name, row in methods.items():
            lines.append(f"| {name} | {_ms(row['Dice'], 4)} | {_p(row, 'Dice')} | {_ms(row['HD95'], 2)} | "
                         f"{_p(row, 'HD95')} | {_ms(row['ASD'], 2)} | {_p(row, 'ASD')} | "
                         f"{row['time_per_iteration_ratio']:.2f} | {row['train_time_s'] / 60:.1f} |")
        lines += ["", f"![per-case Dice, {subset['n_labeled']} labeled](dice_n{subset['n_labeled']}.png)", ""]
    if len(results["subsets"]) > 1:
        lines += ["![Dice vs labeled cases](dice_vs_labeled.png)", ""]
    lines += ["Mean ± std over the test cases of the per-case foreground mean (classes averaged per case). p: paired "
              "two-sided Wilcoxon signed-rank test against the baseline (first row) over the same test cases. "
              "time/it: median epoch time per training iteration, ratio to the baseline. Staged trainers are "
              "evaluated at their last stage and their training time sums every stage.", ""]
    return "\n".join(lines)


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
    import numpy as np
    from matplotlib.ticker import NullFormatter
    written = []
    for subset in results["subsets"]:
        methods = subset["methods"]
        fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 4))
        data = [[v for v in row["per_case_dice"].values() if np.isfinite(v)] for row in methods.values()]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(methods) + 1), list(methods), rotation=25, ha="right", fontsize=8)
        ax.set_ylabel("per-case Dice (test set)")
        ax.set_title(f"{subset['n_labeled']} labeled cases")
        path = join(folder, f"dice_n{subset['n_labeled']}.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    if len(results["subsets"]) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        ns = [s["n_labeled"] for s in results["subsets"]]
        for name in results["trainers"]:
            means = [s["methods"][name]["Dice"]["mean"] for s in results["subsets"]]
            stds = [s["methods"][name]["Dice"]["std"] for s in results["subsets"]]
            ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("labeled cases")
        ax.set_ylabel("test Dice (mean ± std)")
        ax.legend(fontsize=7)
        path = join(folder, "dice_vs_labeled.png")
        _save_figure(fig, path)
        plt.close(fig)
        written.append(path)
    return written


def write_report(results: dict, folder: str) -> None:
    save_json_atomic(results, join(folder, "results.json"))
    with atomic_path(join(folder, "results.md")) as tmp, open(tmp, "w") as f:
        f.write(markdown(results))
    plots(results, folder)
    print(f"\n{markdown(results)}\nWritten: {os.path.join(folder, 'results.md')}, results.json and the plots.")
