"""SynFoC's loss pieces as plain functions (SynFoC, Ma et al., CVPR 2025; formulas from the authors'
code): self-mutual confidence (SMC), the fused pseudo-label and CDCR; the confidence mask, CutMix boxes and masked
CE / Dice it shares with UniMatch are in :mod:`semi_nnunet.trainers.pseudo_label_losses`.

Shapes: probabilities and logits ``(B, C, H, W)`` with ``C`` classes (background first); hard labels ``(B, H, W)``
or ``(B, 1, H, W)`` integer-valued; masks ``(B, 1, H, W)`` of 0/1. The SAM maps live at SAM's low resolution, the
U-Net maps at the patch size; :func:`resize_labels` (nearest) and :func:`resize_probs` (bilinear) move between them.
"""
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

EPS_ENTROPY = 1e-10  # probabilities are clamped to [1e-10, 1] before the entropy (code)


def resize_labels(labels: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Nearest resize of hard labels or masks, ``(B, H, W)`` or ``(B, 1, H, W)``, keeping the layout."""
    squeeze = labels.dim() == 3
    x = labels[:, None] if squeeze else labels
    out = F.interpolate(x.float(), size=tuple(size), mode="nearest").to(labels.dtype)
    return out[:, 0] if squeeze else out


def resize_probs(probs: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(probs, size=tuple(size), mode="bilinear", align_corners=False)


def dice_per_sample(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-sample agreement of two hard label maps ``(B, H, W)``: for each foreground class
    ``(2|A∩B| + 1) / (|A| + |B| + 1.001)``, 1 when both are empty, averaged over the foreground classes. ``(B,)``."""
    a, b = a.flatten(1), b.flatten(1)
    scores = []
    for c in range(1, num_classes):
        in_a, in_b = (a == c).float(), (b == c).float()
        inter, size = (in_a * in_b).sum(1), in_a.sum(1) + in_b.sum(1)
        scores.append(torch.where(size == 0, torch.ones_like(size), (2 * inter + 1) / (size + 1.001)))
    return torch.stack(scores).mean(0)


def smc_weight(student_unet: torch.Tensor, teacher_unet: torch.Tensor, teacher_sam: torch.Tensor,
               num_classes: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-mutual confidence ``lambda_i = s_i * m_i`` of hard labels: ``s = DSC(Y_S, Y_U)`` (U-Net student vs its
    teacher, at the U-Net's resolution), ``m = DSC(nearest(Y_U -> SAM resolution), Y_F)`` (U-Net teacher vs SAM
    teacher). Returns ``(lambda, s, m)``, each ``(B,)``. Small lambda: trust SAM; lambda near 1: trust the U-Net."""
    s = dice_per_sample(student_unet, teacher_unet, num_classes)
    m = dice_per_sample(resize_labels(teacher_unet, teacher_sam.shape[-2:]), teacher_sam, num_classes)
    return s * m, s, m


def fuse(prob_sam: torch.Tensor, prob_unet: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``P_i = (1 - lambda_i) * bilinear(P_F,i -> U-Net size) + lambda_i * P_U,i``."""
    lam = lam.view(-1, *[1] * (prob_unet.dim() - 1)).to(prob_unet.dtype)
    return (1 - lam) * resize_probs(prob_sam, prob_unet.shape[2:]) + lam * prob_unet


def cdcr(sam_logits: torch.Tensor, unet_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Consensus-divergence consistency of the two students on the mixed images. ``Q_F`` (SAM, low resolution) is
    nearest-resized to the U-Net's size; ``C = 1[argmax Q_F == argmax Q_U]`` there and nearest back at SAM's size.

        L_cons = (mean(-Q_F log Q_F * C_lr) + mean(-Q_U log Q_U * C)) / 2      (entropy where they agree)
        L_div  = mean((Q_Fu - Q_U)^2 * (1 - C))                                 (MSE where they disagree, both ways)

    Means over all B*C*H*W elements. Returns ``(L_cons, L_div, C)``."""
    q_f, q_u = torch.softmax(sam_logits.float(), 1), torch.softmax(unet_logits.float(), 1)
    q_fu = F.interpolate(q_f, size=q_u.shape[2:], mode="nearest")
    consensus = (q_fu.argmax(1) == q_u.argmax(1)).unsqueeze(1).to(q_u.dtype)
    consensus_lr = F.interpolate(consensus, size=q_f.shape[2:], mode="nearest")
    q_fc, q_uc = q_f.clamp(EPS_ENTROPY, 1), q_u.clamp(EPS_ENTROPY, 1)
    cons = ((-q_fc * q_fc.log() * consensus_lr).mean() + (-q_uc * q_uc.log() * consensus).mean()) / 2
    div = ((q_fu - q_u) ** 2 * (1 - consensus)).mean()
    return cons, div, consensus
