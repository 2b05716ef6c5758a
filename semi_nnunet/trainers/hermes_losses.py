"""Hermes' selection rules and losses as plain functions (Zhang, Lai, Kong, ECAI 2025; trainer in ``hermes.py``).

* :func:`dual_threshold_mask` — a pseudo-label is kept when its confidence is high **and** its entropy low (paper
  Eq. 7), or with ``combine="or"`` when either holds (the authors' code for the segmentation loss).
  :func:`paper_thresholds` gives the paper's schedules (supp. Eq. 16-17), :func:`code_entropy_threshold` and
  :func:`classwise_confidence_thresholds` the code's.
* :func:`masked_dice_loss` — soft Dice of the strong-view prediction against the kept pseudo-labels (Eq. 9).
* :func:`sample_anchors` + :func:`pixel_info_nce` — supervised pixel InfoNCE (Eq. 11) with ContrastiveSeg's
  hard/easy anchor sampling; :class:`MemoryBank` adds a per-class queue of extra negatives.
* :func:`supcon_loss` — the image-level supervised contrastive loss over weak+strong embeddings (Eq. 12-13).
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from semi_nnunet.trainers.ramps import sigmoid_rampup

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------- dual threshold
def entropy(probs: torch.Tensor, dim: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """``-sum_k p_k log(p_k + eps)`` (paper Eq. 8), in nats."""
    return -(probs * torch.log(probs + eps)).sum(dim)


def paper_thresholds(step: float, total: float, kappa_max: float = 0.75, kappa_min: float = 0.25
                     ) -> Tuple[float, float]:
    """``(kappa, tau)`` at iteration ``step`` of ``total`` (supp. Eq. 16-17): the entropy bound falls on a cosine
    from 0.75 to 0.25 nats, the confidence bound rises from 0.75 + 0.25 e^-0.5 ln2 (0.855) to 0.75 + 0.25 ln2
    (0.923)."""
    r = min(max(step / total, 0.0), 1.0) if total > 0 else 1.0
    kappa = kappa_min + 0.5 * (kappa_max - kappa_min) * (1.0 + math.cos(math.pi * r))
    tau = 0.75 + 0.25 * math.exp(-0.5 * (1.0 - r) ** 2) * LN2
    return kappa, tau


def code_entropy_threshold(step: float, total: float) -> float:
    """The authors' code: ``(0.75 + 0.25 exp(-5 (1 - t/T)^2)) ln 2`` (rises from 0.52 to 0.69 nats)."""
    return (0.75 + 0.25 * sigmoid_rampup(step, total)) * LN2


def classwise_confidence_thresholds(pseudo: torch.Tensor, num_classes: int, base: float = 0.95,
                                    minimum: float = 0.5) -> torch.Tensor:
    """The code's class-adaptive confidence bound ``base - (base - minimum)(1 - pi_c)``, ``pi_c`` = share of the
    batch's pseudo-labels equal to ``c`` (a frequent class gets a stricter bound). Shape ``(num_classes,)``."""
    counts = torch.bincount(pseudo.flatten(), minlength=num_classes).float()
    share = counts / counts.sum().clamp_min(1.0)
    return base - (base - minimum) * (1.0 - share)


def dual_threshold_mask(probs: torch.Tensor, kappa: float, tau: Union[float, torch.Tensor], combine: str = "and",
                        strict_confidence: bool = False, eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(keep, pseudo)`` for class probabilities ``probs`` (classes on dim 1).

    ``keep = 1[H <= kappa] * 1[max p >= tau]`` (paper Eq. 7; ``combine="or"``: either suffices). With more than two
    classes the entropy is rescaled to the binary range, ``H ln2 / ln K``, so the binary schedule carries over.
    ``tau`` is a number or a per-class tensor indexed by the pseudo-label (the code's class-adaptive bound);
    ``strict_confidence`` uses ``>`` as the code does.
    """
    num_classes = probs.shape[1]
    conf, pseudo = probs.max(1)
    h = entropy(probs, 1, eps) * (LN2 / math.log(num_classes)) if num_classes > 2 else entropy(probs, 1, eps)
    bound = tau[pseudo] if isinstance(tau, torch.Tensor) else tau
    confident = conf > bound if strict_confidence else conf >= bound
    certain = h <= kappa
    if combine not in ("and", "or"):
        raise ValueError(f"combine must be 'and' or 'or', not {combine!r}")
    return (confident & certain) if combine == "and" else (confident | certain), pseudo


# ---------------------------------------------------------------------------------------------- segmentation
def masked_dice_loss(probs: torch.Tensor, pseudo: torch.Tensor, keep: torch.Tensor, smooth: float = 1e-5
                     ) -> torch.Tensor:
    """``1 - mean_fg Dice`` over the kept pixels of the whole batch (squared denominator, as the authors' Dice);
    0 when nothing is kept. ``probs`` (B, K, ...), ``pseudo`` and ``keep`` (B, ...)."""
    onehot = F.one_hot(pseudo.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    w = keep.unsqueeze(1).to(probs.dtype)
    dims = [0] + list(range(2, probs.ndim))
    inter = (probs * onehot * w).sum(dims)
    denom = (probs * probs * w).sum(dims) + (onehot * w).sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth)
    return 1.0 - dice[1:].mean()


def resize_labels(labels: torch.Tensor, size) -> torch.Tensor:
    """Nearest-neighbour resize of an integer map (B, ...) to ``size`` (ignore value -1 kept)."""
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def sample_anchors(embeddings: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor,
                   max_anchors: int = 1024, max_views: int = 100, min_pixels: Optional[int] = None,
                   generator: Optional[torch.Generator] = None) -> Tuple[Optional[torch.Tensor], ...]:
    """ContrastiveSeg's hard anchor sampling: ``(feats (A, n, D), classes (A,))`` or ``(None, None)``.

    ``embeddings`` (B, D, ...); ``labels`` (B, ...) with -1 for rejected pixels; ``predictions`` (B, ...) of the
    strong view. Every (image, class) pair with more than ``min_pixels`` (default ``max_views``) labeled pixels gives
    one row of ``n = min(max_anchors // #pairs, max_views)`` pixels, half **hard** (prediction != label) and half
    **easy**, the rest topped up from the other set.
    """
    min_pixels = max_views if min_pixels is None else min_pixels
    b = embeddings.shape[0]
    emb = embeddings.flatten(2).transpose(1, 2)  # B, P, D
    labels, predictions = labels.reshape(b, -1), predictions.reshape(b, -1)
    pairs = []
    for i in range(b):
        classes, counts = torch.unique(labels[i], return_counts=True)
        pairs += [(i, int(c), int(n)) for c, n in zip(classes.tolist(), counts.tolist()) if c >= 0 and n > min_pixels]
    if not pairs:
        return None, None
    n = min(max_anchors // len(pairs), max_views, min(count for _, _, count in pairs))
    if n < 1:
        return None, None
    rows = []
    for i, c, _ in pairs:
        is_c = labels[i] == c
        hard = torch.nonzero(is_c & (predictions[i] != c))[:, 0]
        easy = torch.nonzero(is_c & (predictions[i] == c))[:, 0]
        n_hard = min(len(hard), max(n // 2, n - len(easy)))
        n_easy = n - n_hard
        hard = hard[torch.randperm(len(hard), generator=generator)[:n_hard].to(hard.device)]
        easy = easy[torch.randperm(len(easy), generator=generator)[:n_easy].to(easy.device)]
        rows.append(emb[i, torch.cat([hard, easy])])
    return torch.stack(rows), torch.tensor([c for _, c, _ in pairs], device=embeddings.device)


def pixel_info_nce(feats: torch.Tensor, classes: torch.Tensor, temperature: float = 0.07,
                   bank: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """Supervised InfoNCE (Eq. 11) over the sampled pixels ``feats (A, n, D)`` of class ``classes (A,)``:

        l_a = -1/|P_a| sum_{p in P_a} log( e^{a.p/t} / (e^{a.p/t} + sum_{m in N_a} e^{a.m/t}) ),   loss = mean_a l_a

    P_a = the other samples of a's class, N_a = the samples of other classes plus, with ``bank = (feats (M, D),
    classes (M,))``, the bank's entries of other classes. Anchors without a positive are left out."""
    a, n, d = feats.shape
    f = feats.reshape(a * n, d)
    y = classes.repeat_interleave(n)
    logits = f @ f.t() / temperature
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=f.device)
    positive, negative = same & ~eye, ~same
    parts = [logits]
    if bank is not None and len(bank[1]):
        bank_logits = f @ bank[0].to(f.dtype).t() / temperature
        parts.append(bank_logits)
    shift = torch.cat(parts, 1).max(1, keepdim=True).values.detach()
    neg = (torch.exp(logits - shift) * negative).sum(1, keepdim=True)
    if len(parts) > 1:
        neg = neg + (torch.exp(bank_logits - shift) * (bank[1][None, :] != y[:, None])).sum(1, keepdim=True)
    log_prob = (logits - shift) - torch.log(torch.exp(logits - shift) + neg)
    num_pos = positive.sum(1)
    valid = num_pos > 0
    if not valid.any():
        return f.sum() * 0.0
    per_anchor = -(log_prob * positive).sum(1)[valid] / num_pos[valid]
    return per_anchor.mean()


def per_image_samples(embeddings: torch.Tensor, labels: torch.Tensor, per_image: int,
                      generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_image`` random labeled pixels of every (image, class): what enters the memory bank."""
    b, d = embeddings.shape[:2]
    emb = embeddings.flatten(2).transpose(1, 2)
    labels = labels.reshape(b, -1)
    feats, classes = [], []
    for i in range(b):
        for c in torch.unique(labels[i]).tolist():
            if c < 0:
                continue
            idx = torch.nonzero(labels[i] == c)[:, 0]
            idx = idx[torch.randperm(len(idx), generator=generator)[:per_image].to(idx.device)]
            feats.append(emb[i, idx])
            classes.append(torch.full((len(idx),), c, dtype=torch.long, device=emb.device))
    if not feats:
        return emb.new_zeros((0, d)), torch.zeros(0, dtype=torch.long, device=emb.device)
    return torch.cat(feats), torch.cat(classes)


class MemoryBank(nn.Module):
    """A fixed-size FIFO queue of (detached) pixel embeddings per class, used as extra negatives (paper §3.4
    "Memory bank"). Buffers, so it moves with the module and is saved in the checkpoint."""

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"memory bank size must be >= 1, not {size}")
        self.register_buffer("queue", torch.zeros(num_classes, size, dim))
        self.register_buffer("pointer", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("filled", torch.zeros(num_classes, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.queue.shape[1]

    @torch.no_grad()
    def push(self, feats: torch.Tensor, classes: torch.Tensor) -> None:
        """Enqueue ``feats (N, D)`` under ``classes (N,)``, overwriting each class's oldest entries."""
        feats = feats.detach().to(self.queue.dtype)
        for c in torch.unique(classes).tolist():
            new = feats[classes == c][-self.size:]
            slots = (int(self.pointer[c]) + torch.arange(len(new), device=self.queue.device)) % self.size
            self.queue[c, slots] = new
            self.pointer[c] = (int(self.pointer[c]) + len(new)) % self.size
            self.filled[c] = min(self.size, int(self.filled[c]) + len(new))

    def entries(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(feats (M, D), classes (M,))`` of every filled slot."""
        feats, classes = [], []
        for c in range(self.queue.shape[0]):
            k = int(self.filled[c])
            feats.append(self.queue[c, :k])
            classes.append(torch.full((k,), c, dtype=torch.long, device=self.queue.device))
        return torch.cat(feats), torch.cat(classes)


# ---------------------------------------------------------------------------------------------- image level
def supcon_loss(embeddings: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor,
                temperature: float = 0.07) -> torch.Tensor:
    """Image-level SupCon (Eq. 12-13) over ``embeddings (M, D)`` (weak and strong views stacked) with pseudo-classes
    ``classes (M,)``: ``l_i = -1/|P_i| sum_p log( e^{v_i.v_p/t} / sum_{j != i} e^{v_i.v_j/t} )``, P_i = the others
    of class ``c_i`` (the other view included); loss = ``mean_i w_i l_i`` (the code's reliability weighting; an
    unreliable image still serves as positive or negative for the others)."""
    m = embeddings.shape[0]
    logits = embeddings @ embeddings.t() / temperature
    eye = torch.eye(m, dtype=torch.bool, device=embeddings.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, 1, keepdim=True)
    positive = (classes[:, None] == classes[None, :]) & ~eye
    num_pos = positive.sum(1).clamp_min(1)
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(1) / num_pos
    return (weights.to(per_anchor.dtype) * per_anchor).mean()
