"""Our curves added to nnU-Net's ``progress.png``: nnU-Net draws its panels, we append one below."""
import os
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from semi_nnunet.utilities.file_ops import atomic_path  # noqa: E402


def append_curves_to_progress_png(output_folder: str, logs: Dict[str, List[float]], keys: Sequence[str]) -> None:
    """Stack a panel with ``keys`` (losses left axis, weights/ratios right axis) under nnU-Net's progress.png.

    Runs after nnU-Net's own plot at every epoch end, so it works on 8-bit pixels throughout (PIL decodes and encodes;
    fast zlib level) instead of float images: nnU-Net's figure is 3000 x 5400 pixels, and a float round trip through
    matplotlib took several seconds per epoch on a CPU."""
    from PIL import Image
    path = os.path.join(output_folder, "progress.png")
    if not os.path.isfile(path):
        return
    n = min(len(logs[k]) for k in keys)
    if n == 0:
        return
    with Image.open(path) as im:
        base = np.asarray(im.convert("RGB"))
    width_px = base.shape[1]
    fig, ax = plt.subplots(1, 1, figsize=(width_px / 100, 18), dpi=100)
    ax2 = ax.twinx()
    x = list(range(n))
    for i, key in enumerate(keys):
        values = np.asarray(logs[key][:n], dtype=float)
        right = "weight" in key or "ratio" in key or "mask" in key or "fraction" in key
        (ax2 if right else ax).plot(x, values, ls="--" if right else "-", linewidth=4, label=key,
                                    color=plt.cm.tab10(i % 10))
    ax.set_xlabel("epoch", fontsize=30)
    ax.set_ylabel("semi-supervised losses", fontsize=30)
    ax2.set_ylabel("weights / ratios", fontsize=30)
    ax.tick_params(labelsize=24)
    ax2.tick_params(labelsize=24)
    ax.legend(loc=(0, 1), fontsize=26)
    ax2.legend(loc=(0.4, 1), fontsize=26)
    fig.tight_layout()
    fig.canvas.draw()
    panel = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    if panel.shape[1] != width_px:  # rounding of the figure size
        panel = panel[:, :width_px] if panel.shape[1] > width_px else \
            np.pad(panel, ((0, 0), (0, width_px - panel.shape[1]), (0, 0)), constant_values=255)
    combined = np.concatenate([base, panel], axis=0)
    with atomic_path(path) as tmp:
        Image.fromarray(combined).save(tmp, format="png", compress_level=1)
