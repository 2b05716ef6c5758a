"""USL-Net's uncertainty module (UM) and the foreground clean-up (connectivity + centrality).

Pseudo-label values: ``0`` background, ``1`` foreground (lesion), ``UNCERTAIN = 2`` (not trained on: nnU-Net's ignore
label in :class:`~semi_nnunet.trainers.uslnet.USLNetTrainer`), ``-1`` outside nnU-Net's nonzero region (kept as
nnU-Net keeps it; its augmentation turns it into background).

* :func:`three_way_split` [paper, seed summary]: ``l = 1 if S > 0.65; 0 if S < 0.35; uncertain otherwise``, on a map
  in [0, 1] (the normalised saliency in cycle 1; the network's foreground probability in later cycles, with no
  re-normalisation [rec]). The thresholds are strict: 0.65 and 0.35 themselves are uncertain.
* :func:`clean_foreground` [rec] (the paper names connectivity and centrality detection; its rules were not
  available): 8-connected foreground components; components smaller than ``min_component_fraction`` (10 %) of the
  largest are dropped; of the rest, the one whose centroid is nearest the image centre is kept. Dropped pixels
  become *uncertain*, not background. No foreground left: the image trains on its background only.
* :func:`combine_with_initial` [rec], ``cycle_combine = "agree_with_l0"``: a pixel stays certain only where the
  cycle's label and the initial (saliency) label ``l_0`` agree.
"""
from typing import Dict, Optional, Tuple

import numpy as np

BACKGROUND, FOREGROUND, UNCERTAIN, OUTSIDE = 0, 1, 2, -1
CYCLE_COMBINE = ("replace", "agree_with_l0")


def three_way_split(saliency: np.ndarray, bg_threshold: float = 0.35, fg_threshold: float = 0.65) -> np.ndarray:
    """The uncertainty module: int8 map, 1 where ``saliency > fg_threshold``, 0 where ``< bg_threshold``, else 2."""
    if not 0.0 <= bg_threshold <= fg_threshold <= 1.0:
        raise ValueError(f"need 0 <= bg_threshold <= fg_threshold <= 1, got {bg_threshold}, {fg_threshold}")
    s = np.asarray(saliency, dtype=np.float32)
    if not np.all(np.isfinite(s)):
        raise ValueError("the saliency / probability map holds NaN or infinite values")
    out = np.full(s.shape, UNCERTAIN, dtype=np.int8)
    out[s > fg_threshold] = FOREGROUND
    out[s < bg_threshold] = BACKGROUND
    return out


def _components(mask: np.ndarray) -> Tuple[np.ndarray, int]:
    from scipy import ndimage
    structure = np.ones((3,) * mask.ndim, dtype=bool)  # 8-connectivity in 2D (26 in 3D)
    return ndimage.label(mask, structure=structure)


def clean_foreground(label: np.ndarray, min_component_fraction: float = 0.1, keep_central: bool = True,
                     ) -> Tuple[np.ndarray, Dict[str, object]]:
    """Connectivity and centrality rules on a pseudo-label map (2D, or 2D with leading singleton axes).

    Returns the cleaned map and ``{"components", "kept", "dropped_pixels", "has_foreground"}``. The image centre
    is ``((H - 1) / 2, (W - 1) / 2)`` in pixel coordinates; ties in distance go to the larger component."""
    label = np.asarray(label)
    plane = label.reshape(label.shape[-2:]) if label.ndim > 2 else label
    if plane.size != label.size:
        raise ValueError(f"clean_foreground works on 2D maps; got shape {label.shape}")
    out = plane.copy()
    components, n = _components(plane == FOREGROUND)
    info: Dict[str, object] = {"components": int(n), "kept": int(n > 0), "dropped_pixels": 0, "has_foreground": n > 0}
    if n <= 1:
        return out.reshape(label.shape), info
    ids = np.arange(1, n + 1)
    areas = np.bincount(components.ravel(), minlength=n + 1)[1:]
    survivors = ids[areas >= min_component_fraction * areas.max()]
    if keep_central and len(survivors) > 1:
        from scipy import ndimage
        centre = (np.array(plane.shape, dtype=np.float64) - 1) / 2
        centroids = np.array(ndimage.center_of_mass(np.ones_like(plane), components, survivors))
        distance = np.linalg.norm(centroids - centre, axis=1)
        order = np.lexsort((-areas[survivors - 1], distance))  # nearest first; then larger
        survivors = survivors[order[:1]]
    drop = (components > 0) & ~np.isin(components, survivors)
    out[drop] = UNCERTAIN
    info.update(kept=int(len(survivors)), dropped_pixels=int(drop.sum()))
    return out.reshape(label.shape), info


def combine_with_initial(label: np.ndarray, initial: Optional[np.ndarray], mode: str = "replace") -> np.ndarray:
    """Cycle labels ``l_n`` from ``UM(q)`` (``label``) and the initial labels ``l_0``: ``replace`` keeps ``label``;
    ``agree_with_l0`` makes every certain pixel where the two disagree (or ``l_0`` is uncertain) uncertain."""
    if mode not in CYCLE_COMBINE:
        raise ValueError(f"cycle_combine must be one of {CYCLE_COMBINE}, not {mode!r}")
    if mode == "replace" or initial is None:
        return label
    out = label.copy()
    out[(label != initial) & (label != OUTSIDE)] = UNCERTAIN
    return out


def make_pseudo_label(probability: np.ndarray, nonzero: Optional[np.ndarray] = None, bg_threshold: float = 0.35,
                      fg_threshold: float = 0.65, min_component_fraction: float = 0.1, keep_central: bool = True,
                      initial: Optional[np.ndarray] = None, cycle_combine: str = "replace"
                      ) -> Tuple[np.ndarray, Dict[str, object]]:
    """UM, then the clean-up, then the cycle combination; ``nonzero`` (bool, same shape) marks nnU-Net's nonzero
    region (pixels outside become ``OUTSIDE``)."""
    label = three_way_split(probability, bg_threshold, fg_threshold)
    label, info = clean_foreground(label, min_component_fraction, keep_central)
    label = combine_with_initial(label, initial, cycle_combine)
    if nonzero is not None:
        label[~np.asarray(nonzero, dtype=bool)] = OUTSIDE
    info["has_foreground"] = bool((label == FOREGROUND).any())
    return label, info


def label_fractions(label: np.ndarray) -> Dict[str, float]:
    """Foreground / uncertain / background fractions of a pseudo-label map (over pixels inside the nonzero region)."""
    inside = label != OUTSIDE
    n = max(int(inside.sum()), 1)
    return {"foreground": float((label == FOREGROUND).sum()) / n, "uncertain": float((label == UNCERTAIN).sum()) / n,
            "background": float((label == BACKGROUND).sum()) / n}
