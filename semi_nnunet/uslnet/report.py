"""USL-Net's per-cycle report and overlay sheets.

``report.json`` (one row per cycle) and ``report.png`` (the curves) live in the pipeline's work folder; every cycle
folder has ``overlays.png``. Per cycle:

* ``pseudo_labels``: what the cycle trained on: mean foreground / uncertain / background fractions over cases (inside
  nnU-Net's nonzero region), cases left without foreground, and, from cycle 2 on, the change from the previous
  cycle's labels (``foreground_dice``: Dice of the two certain-foreground masks, 1 = unchanged; ``changed_fraction``:
  pixels whose state background / foreground / uncertain changed).
* ``prediction``: the cycle's network on the (un-augmented) training images: foreground fraction of its argmax.
* With evaluation labels (``--eval_labels``, never shown to training): ``dice`` of the certain foreground of the
  pseudo-labels (uncertain counted as background) and of the prediction, per case averaged, in nnU-Net's
  preprocessed space; ``certain_accuracy``: agreement of the certain pixels with the labels. With ``imagesTs`` +
  ``labelsTs`` in the raw dataset: ``test_dice`` of the cycle's model on the test images (nnU-Net's predictor).
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic
from semi_nnunet.uslnet.uncertainty import BACKGROUND, FOREGROUND, OUTSIDE, UNCERTAIN


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def label_change(previous: np.ndarray, current: np.ndarray) -> Dict[str, float]:
    inside = (previous != OUTSIDE) | (current != OUTSIDE)
    return {"foreground_dice": dice(previous == FOREGROUND, current == FOREGROUND),
            "changed_fraction": float((previous != current)[inside].mean()) if inside.any() else 0.0}


def against_labels(label: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    """Dice of the certain foreground against ``truth`` (foreground > 0) and accuracy on certain pixels."""
    fg = truth > 0
    certain = (label == FOREGROUND) | (label == BACKGROUND)
    accuracy = float(((label == FOREGROUND) == fg)[certain].mean()) if certain.any() else float("nan")
    return {"dice": dice(label == FOREGROUND, fg), "certain_accuracy": accuracy}


def mean_of(rows: Sequence[dict], key: str) -> Optional[float]:
    values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else None


def _rescale(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, (0.5, 99.5))
    return np.clip((image - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(image)


def _overlay(ax, image, label=None, truth=None, prediction=None):
    ax.imshow(image, cmap="gray", interpolation="nearest")
    if label is not None:
        rgba = np.zeros(label.shape + (4,))
        rgba[label == FOREGROUND] = (1, 0, 0, 0.45)
        rgba[label == UNCERTAIN] = (1, 0.85, 0, 0.45)
        ax.imshow(rgba, interpolation="nearest")
    if truth is not None and truth.any():
        ax.contour(truth > 0, levels=[0.5], colors="lime", linewidths=0.8)
    if prediction is not None and prediction.any():
        ax.contour(prediction > 0, levels=[0.5], colors="cyan", linewidths=0.8)


def overlay_sheet(path: str, title: str, rows: List[dict]) -> None:
    """One row per case: image | map (saliency or probability) | pseudo-label | prediction (if any).

    ``rows``: dicts with ``case``, ``image`` (H, W), ``map`` (H, W) in [0, 1], ``label`` (H, W) and optionally
    ``truth`` and ``prediction`` (H, W). Red = foreground, yellow = uncertain, green contour = evaluation label,
    cyan contour = the cycle's prediction."""
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    with_prediction = any(r.get("prediction") is not None for r in rows)
    cols = 4 if with_prediction else 3
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.6 * len(rows) + 0.6), squeeze=False)
    for i, r in enumerate(rows):
        image = _rescale(r["image"])
        _overlay(axes[i, 0], image, truth=r.get("truth"))
        axes[i, 0].set_title(r["case"], fontsize=8)
        axes[i, 1].imshow(r["map"], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        axes[i, 1].set_title(r.get("map_name", "map"), fontsize=8)
        _overlay(axes[i, 2], image, r["label"], r.get("truth"))
        axes[i, 2].set_title("pseudo-label (red fg, yellow uncertain)", fontsize=7)
        if with_prediction:
            _overlay(axes[i, 3], image, truth=r.get("truth"), prediction=r.get("prediction"))
            axes[i, 3].set_title("prediction (cyan)", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(title + ("  (green: evaluation label)" if any(r.get("truth") is not None for r in rows) else ""),
                 fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def write_report(rows: List[dict], json_path: str, png_path: str) -> None:
    """``report.json`` and the per-cycle curves in ``report.png``."""
    save_json_atomic({"cycles": rows}, json_path)
    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    cycles = [r["cycle"] for r in rows]

    def series(part, key):
        return [np.nan if (r.get(part) or {}).get(key) is None else r[part][key] for r in rows]

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(cycles, series("pseudo_labels", "foreground_fraction"), "o-", label="foreground")
    axes[0].plot(cycles, series("pseudo_labels", "uncertain_fraction"), "o-", label="uncertain")
    axes[0].plot(cycles, series("prediction", "foreground_fraction"), "o--", label="prediction foreground")
    axes[0].set(title="Pseudo-label fractions", xlabel="cycle")
    axes[1].plot(cycles, series("pseudo_labels", "change_foreground_dice"), "o-", label="fg Dice with previous")
    axes[1].plot(cycles, series("pseudo_labels", "change_fraction"), "o-", label="pixels changed")
    axes[1].set(title="Change between cycles", xlabel="cycle")
    for part, key, name in (("pseudo_labels", "dice", "pseudo-labels"), ("prediction", "dice", "prediction"),
                            ("prediction", "test_dice", "test images")):
        values = series(part, key)
        if not all(np.isnan(values)):
            axes[2].plot(cycles, values, "o-", label=name)
    axes[2].set(title="Dice against evaluation labels", xlabel="cycle", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
