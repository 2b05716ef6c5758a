"""The stage report: per stage and fold, the validation Dice and how much the pseudo-labels changed.

``stages.json`` and ``stages.png`` are written into the initial trainer's results folder. The change between stage
k-1 and stage k pseudo-labels is the mean over unlabeled cases of the foreground Dice between the two label maps
(1.0: nothing changed); it exists from stage 2 on.
"""
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json

from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic


def label_agreement(folder_a: str, folder_b: str) -> Optional[float]:
    """Mean foreground Dice between the pseudo-labels of the cases two pseudo-label folders share (None if none).
    A case where both maps are empty counts as 1."""
    import blosc2
    if not (os.path.isdir(folder_a) and os.path.isdir(folder_b)):
        return None
    cases = sorted({f[:-len("_seg.b2nd")] for f in os.listdir(folder_a) if f.endswith("_seg.b2nd")} &
                   {f[:-len("_seg.b2nd")] for f in os.listdir(folder_b) if f.endswith("_seg.b2nd")})
    scores = []
    for case in cases:
        a = np.asarray(blosc2.open(join(folder_a, case + "_seg.b2nd"), mode="r")[:])
        b = np.asarray(blosc2.open(join(folder_b, case + "_seg.b2nd"), mode="r")[:])
        labels = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
        if not labels:
            scores.append(1.0)
            continue
        dice = [2 * np.sum((a == c) & (b == c)) / (np.sum(a == c) + np.sum(b == c)) for c in labels]
        scores.append(float(np.mean(dice)))
    return float(np.mean(scores)) if scores else None


def validation_dice(model_folder: str, fold) -> Optional[float]:
    summary = join(model_folder, f"fold_{fold}", "validation", "summary.json")
    return float(load_json(summary)["foreground_mean"]["Dice"]) if isfile(summary) else None


def write_stage_report(initial_folder: str, model_folders: Sequence[str], folds: Sequence,
                       pseudo_folders: Dict[int, Dict[str, str]]) -> dict:
    """``model_folders[k]`` is stage k's model folder; ``pseudo_folders[k][str(fold)]`` stage k's pseudo-labels."""
    rows: List[dict] = []
    for k, model in enumerate(model_folders):
        for f in folds:
            change = None
            if k >= 2:
                change = label_agreement(pseudo_folders[k - 1][str(f)], pseudo_folders[k][str(f)])
            rows.append({"stage": k, "fold": str(f), "model": model, "validation_dice": validation_dice(model, f),
                         "pseudo_label_agreement_with_previous_stage": change})
    report = {"rows": rows}
    save_json_atomic(report, join(initial_folder, "stages.json"))
    _plot(rows, join(initial_folder, "stages.png"))
    return report


def _plot(rows: List[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for fold in sorted({r["fold"] for r in rows}):
        mine = [r for r in rows if r["fold"] == fold]
        axes[0].plot([r["stage"] for r in mine], [np.nan if r["validation_dice"] is None else r["validation_dice"]
                                                  for r in mine], marker="o", label=f"fold {fold}")
        axes[1].plot([r["stage"] for r in mine],
                     [np.nan if r["pseudo_label_agreement_with_previous_stage"] is None
                      else r["pseudo_label_agreement_with_previous_stage"] for r in mine], marker="o",
                     label=f"fold {fold}")
    axes[0].set(xlabel="stage", ylabel="validation Dice", title="Validation Dice per stage")
    axes[1].set(xlabel="stage", ylabel="Dice(stage k-1, stage k)", title="Pseudo-label agreement with previous stage")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
