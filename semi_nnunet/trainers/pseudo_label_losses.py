"""Confidence-masked hard pseudo-labels, CutMix boxes and masked CE / Dice: the pieces that weak-to-strong methods
share (UniMatch, FixMatch, SynFoC), in 2D and 3D.

Shapes: probabilities and logits ``(B, C, *spatial)`` with ``C`` classes (background first); hard labels
``(B, *spatial)`` or ``(B, 1, *spatial)``, integer-valued; masks ``(B, 1, *spatial)`` of 0/1.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

EPS_DICE = 1e-10


def confident_labels(probs: torch.Tensor, threshold: float, inclusive: bool = False
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard labels ``argmax P`` ``(B, *spatial)`` and the confidence mask ``(B, 1, *spatial)``: ``max P > threshold``
    (SynFoC's code), or ``>=`` with ``inclusive`` (UniMatch's)."""
    top, labels = probs.max(1)
    keep = top >= threshold if inclusive else top > threshold
    return labels, keep.unsqueeze(1).to(probs.dtype)


def cutmix_boxes(batch_size: int, shape: Sequence[int], area: Tuple[float, float] = (0.02, 0.4),
                 aspect: Tuple[float, float] = (0.3, 1 / 0.3), generator: Optional[torch.Generator] = None,
                 device=None, p: float = 1.0) -> torch.Tensor:
    """One box per sample (``obtain_cutmix_box`` of UniMatch's and SynFoC's code), kept with probability ``p`` (else
    the sample's mask is empty): volume ``U(area)`` of the patch; in 2D the sides are ``sqrt(size * r)`` (first
    axis) and ``sqrt(size / r)`` for an aspect ratio ``r ~ U(aspect)``; in nD the first ``d - 1`` axes get a ratio
    each and the last one what keeps the volume. The corner is uniform, redrawn until the box fits (clipped after
    100 draws). Returns ``(B, 1, *shape)``; a box in 3D is a cuboid."""
    shape = [int(s) for s in shape]
    d = len(shape)
    mask = torch.zeros((batch_size, 1, *shape), device=device)

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand(1, generator=generator))

    for i in range(batch_size):
        if p < 1 and float(torch.rand(1, generator=generator)) >= p:
            continue
        size = uniform(*area) * math.prod(shape)
        for _ in range(100):
            ratios = [uniform(*aspect) for _ in range(d - 1)]
            factors = [math.sqrt(r) for r in ratios] + [1 / math.sqrt(math.prod(ratios))]
            sides = [int(size ** (1 / d) * f) for f in factors]
            starts = [int(torch.randint(0, s, (1,), generator=generator)) for s in reversed(shape)][::-1]
            if all(a + n <= s for a, n, s in zip(starts, sides, shape)):
                break
        else:
            sides = [min(n, s) for n, s in zip(sides, shape)]
            starts = [s - n for n, s in zip(sides, shape)]
        mask[(i, 0, *[slice(a, a + n) for a, n in zip(starts, sides)])] = 1
    return mask


def _labels(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return target.long().reshape(logits.shape[0], *logits.shape[2:])


def masked_ce(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Pixel CE times the mask, averaged over **all** pixels (masked-out pixels count as zeros, as in the codes)."""
    ce = F.cross_entropy(logits.float(), _labels(target, logits), reduction="none")
    return (ce * mask[:, 0]).mean() if mask is not None else ce.mean()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Dice loss of UniMatch's medical code and SynFoC's: softmax, one-hot over all C classes, per class over the
    whole batch with squared denominators ``1 - (2 sum(p y m) + eps) / (sum(p^2 m) + sum(y^2 m) + eps)``, mean over
    classes. The mask restricts every class's sums (SynFoC's code leaves the background term unmasked, a quirk we do
    not copy)."""
    probs = torch.softmax(logits.float(), 1)
    onehot = F.one_hot(_labels(target, logits), logits.shape[1]).movedim(-1, 1).to(probs.dtype)
    m = torch.ones_like(probs[:, :1]) if mask is None else mask.to(probs.dtype)
    dims = [0] + list(range(2, probs.ndim))
    inter = (probs * onehot * m).sum(dims)
    denom = (probs * probs * m).sum(dims) + (onehot * m).sum(dims)
    return (1 - (2 * inter + EPS_DICE) / (denom + EPS_DICE)).mean()
