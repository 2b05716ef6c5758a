"""Hierarchical Cautious Optimization (HCO): optimizers whose step takes a labeled and an unlabeled gradient.

Algorithms 1 and 2 of "Hierarchical Cautious Optimization" (ICLR 2026 submission; documentation/hco.md). The labeled
gradient ``g^L`` updates the moments first (the trusted direction ``u^L``); only the coordinates of the unlabeled
gradient ``g^U`` whose
sign agrees with it (mask ``phi``) are folded into the moments and applied, rescaled per tensor by
``phi_bar = phi / max(mean(phi), eps_mask)``. Conflicting unlabeled components never move a weight.

HCO-AdamW, step t (Alg. 1)::

    m <- b1 m + (1-b1) gL ;  v <- b2 v + (1-b2) gL^2 ;  uL = m_hat / (sqrt(v_hat) + eps)
    phi = 1[uL * gU > 0] ;  m <- m + (1-b1) gU*phi ;  v <- v + (1-b2) (gU*phi)^2      (refined state persists)
    u = m_hat / (sqrt(v_hat) + eps) ;  w <- w - lr uL - lr phi_bar * u ;  w <- w - lr wd w

HCO-SGD (Alg. 2)::

    m <- b1 m + gL ;  mL = m ;  phi = 1[mL * gU > 0] ;  m <- b1 m + gU * phi_bar
    w <- w - lr mL - lr phi_bar * m ;  w <- w - lr wd w

Where the paper is ambiguous: per-tensor mask mean, ``eps_mask = 1e-3`` (not the Adam eps), one mask as
printed in Alg. 1 (``second_mask=True`` adds Remark 1's ``1[u * gU > 0]``), refined moments persist, decoupled weight
decay after the update, and phi_bar (not phi) enters the SGD momentum as Alg. 2 prints it.

Parameters the labeled loss does not reach (``gL is None``, pitfall P3: e.g. a projection head only unlabeled
losses use) would never move under HCO (``uL = 0`` masks everything), so they take a plain base-optimizer step on
``gU``. Parameters with no unlabeled gradient (``gU is None``) take a plain base step on ``gL``. A zero unlabeled
gradient tensor follows the algorithm (HCO-AdamW then equals AdamW; HCO-SGD decays its momentum twice).

``step()`` without arguments is the base optimizer on ``p.grad`` (AdamW / SGD as torch defines them; the warm-up
before ``hco_start_epoch``); ``step_hco(gL, gU)`` is HCO, with the gradients listed in parameter order.
"""
from typing import List, Optional, Sequence

import torch
from torch.optim import Optimizer

Grads = Sequence[Optional[torch.Tensor]]


def _check(lr, betas=None, eps=None, weight_decay=0.0, mask_eps=1e-3, momentum=None):
    if lr < 0:
        raise ValueError(f"Invalid learning rate {lr}: must be >= 0")
    if betas is not None and not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"Invalid betas {betas}: each must be in [0, 1)")
    if eps is not None and eps <= 0:
        raise ValueError(f"Invalid eps {eps}: must be > 0")
    if weight_decay < 0:
        raise ValueError(f"Invalid weight_decay {weight_decay}: must be >= 0")
    if not 0 < mask_eps <= 1:
        raise ValueError(f"Invalid mask_eps {mask_eps}: must be in (0, 1] (the clamp of the mask mean; default 1e-3)")
    if momentum is not None and not 0.0 <= momentum < 1.0:
        raise ValueError(f"Invalid momentum {momentum}: must be in [0, 1)")


def mask_scales(masks: List[torch.Tensor], mask_eps: float,
                dtype: torch.dtype = torch.float32) -> List[torch.Tensor]:
    """``1 / max(mean(mask), mask_eps)`` per tensor, as 0-dim tensors on the device (no host synchronisation).
    Counting is done in at least float32: a half-precision count overflows (float16) or rounds (bfloat16) past 65504
    elements."""
    sums = count_ones(masks, dtype)
    numels = torch.tensor([max(m.numel(), 1) for m in masks], dtype=sums.dtype, device=sums.device)
    return list((sums / numels).clamp_min(mask_eps).reciprocal().unbind())


def mask_scale(phis: List[torch.Tensor], mask_eps: float) -> List[torch.Tensor]:
    """``phi_bar = phi / max(mean(phi), mask_eps)`` per tensor."""
    return [p * s.to(p.dtype) for p, s in zip(phis, mask_scales(phis, mask_eps, phis[0].dtype))]


def count_ones(masks: List[torch.Tensor], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Number of ones (True) in each mask, counted in ``dtype`` promoted to at least float32."""
    dtype = torch.promote_types(dtype, torch.float32)
    return torch.stack([m.sum(dtype=dtype) for m in masks])


def agree(a: List[torch.Tensor], b: List[torch.Tensor]) -> List[torch.Tensor]:
    """Boolean masks ``a * b > 0`` (same sign, both nonzero)."""
    return [torch.mul(x, y) > 0 for x, y in zip(a, b)]


def agree_into_(out: List[torch.Tensor], a: List[torch.Tensor], b: List[torch.Tensor]) -> List[torch.Tensor]:
    """``out = 1[a * b > 0]`` as 0/1 values of ``out``'s dtype, in fused passes over all tensors (no per-tensor
    kernels): ``a * b``, its sign, clamped at 0."""
    torch._foreach_copy_(out, a)
    torch._foreach_mul_(out, b)
    torch._foreach_sign_(out)
    torch._foreach_clamp_min_(out, 0.0)
    return out


def count_ones_fused(masks: List[torch.Tensor]) -> torch.Tensor:
    """Ones per 0/1 mask (float32 or float64) in one fused pass (their L1 norms; exact below 2^24 elements per
    tensor in float32). Other dtypes are counted per tensor in float32 (:func:`count_ones`)."""
    if masks[0].dtype not in (torch.float32, torch.float64):
        return count_ones(masks)
    return torch.stack(torch._foreach_norm(masks, 1))


class _GradOptimizer(Optimizer):
    """``step()`` over the parameters that have a gradient, group by group: subclasses implement ``_base_step``."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._base_step(group, params, [p.grad for p in params])
        return loss

    def _base_step(self, group, params, grads):
        raise NotImplementedError


class _TwoGradientOptimizer(_GradOptimizer):
    """Shared bookkeeping: split parameters by which gradients they got, record the mask ratio. ``step()`` is the
    base optimizer on ``p.grad`` (no HCO)."""

    def __init__(self, params, defaults):
        super().__init__(params, defaults)
        self._mask_ones, self._mask_total = None, 0
        self._scratch_buffers = {}  # reused between steps (not optimizer state: never saved)

    def _scratch(self, name: str, params: List[torch.Tensor]) -> List[torch.Tensor]:
        """One work buffer per parameter under ``name``, allocated at the first step and reused after."""
        store = self._scratch_buffers.setdefault(name, {})
        out = []
        for p in params:
            t = store.get(p)
            if t is None or t.shape != p.shape or t.dtype != p.dtype or t.device != p.device:
                t = store[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            out.append(t)
        return out

    @staticmethod
    def _phi_bar_(masks: List[torch.Tensor], mask_eps: float) -> torch.Tensor:
        """``masks`` (0/1) scaled in place to ``phi_bar = phi / max(mean(phi), mask_eps)``; returns the count of ones
        of every mask (one host synchronisation for the scales, which the logged mask ratio needs anyway)."""
        counts = count_ones_fused(masks)
        numels = torch.tensor([max(m.numel(), 1) for m in masks], dtype=counts.dtype, device=counts.device)
        torch._foreach_mul_(masks, (counts / numels).clamp_min(mask_eps).reciprocal().tolist())
        return counts

    @property
    def last_mask_ratio(self) -> float:
        """Fraction of unlabeled gradient coordinates the last HCO step kept (mean of phi over all tensors)."""
        if self._mask_ones is None or not self._mask_total:
            return float("nan")
        return float(self._mask_ones) / self._mask_total

    def _params(self) -> List[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def step_hco(self, labeled_grads: Grads, unlabeled_grads: Grads) -> None:
        """HCO step with the labeled and unlabeled gradients of every parameter, in parameter order."""
        params = self._params()
        if len(labeled_grads) != len(params) or len(unlabeled_grads) != len(params):
            raise ValueError(f"step_hco needs one labeled and one unlabeled gradient (or None) per parameter: "
                             f"{len(params)} parameters, got {len(labeled_grads)} and {len(unlabeled_grads)}")
        grads = dict(zip(map(id, params), zip(labeled_grads, unlabeled_grads)))
        ones, total = None, 0
        for group in self.param_groups:
            both, only_l, only_u = [], [], []
            for p in group["params"]:
                gl, gu = grads[id(p)]
                if gl is not None and gu is not None:
                    both.append((p, gl, gu))
                elif gl is not None:
                    only_l.append((p, gl))
                elif gu is not None:
                    only_u.append((p, gu))
            for subset in (only_l, only_u):
                if subset:
                    self._base_step(group, [p for p, _ in subset], [g for _, g in subset])
            if both:
                counts = self._hco_step(group, [b[0] for b in both], [b[1] for b in both], [b[2] for b in both])
                count = counts.sum()
                ones = count if ones is None else ones + count
                total += sum(b[0].numel() for b in both)
        self._mask_ones, self._mask_total = ones, total

    def _hco_step(self, group, params, grads_l, grads_u) -> torch.Tensor:
        """The HCO update of one group's parameters that have both gradients; returns each mask's count of ones."""
        raise NotImplementedError


class HierarchicalCautiousAdamW(_TwoGradientOptimizer):
    """HCO-AdamW (Alg. 1). ``decoupled=False`` gives HCO-Adam (L2 penalty added to the labeled gradient)."""
    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 mask_eps: float = 1e-3, second_mask: bool = False):
        _check(lr, betas, eps, weight_decay, mask_eps)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      mask_eps=mask_eps, second_mask=second_mask))

    def _state(self, params):
        for p in params:
            st = self.state[p]
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
        return ([self.state[p]["exp_avg"] for p in params], [self.state[p]["exp_avg_sq"] for p in params],
                [self.state[p]["step"] for p in params])

    @staticmethod
    def _denominators(v, steps, b2, eps):
        """``sqrt(v_hat) + eps`` per tensor, with each tensor's own step count."""
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, [(1 - b2 ** t) ** 0.5 for t in steps])
        torch._foreach_add_(denom, eps)
        return denom

    def _decay(self, group, params, grads):
        if group["weight_decay"] and not self.decoupled:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        return grads

    def _apply_decoupled_decay(self, group, params):
        if group["weight_decay"] and self.decoupled:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])

    def _base_step(self, group, params, grads):
        b1, b2 = group["betas"]
        grads = self._decay(group, params, grads)
        m, v, steps = self._state(params)
        if group["weight_decay"] and self.decoupled:  # torch's AdamW decays before the update
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, 1 - b2)
        torch._foreach_addcdiv_(params, m, self._denominators(v, steps, b2, group["eps"]),
                                [-group["lr"] / (1 - b1 ** t) for t in steps])

    def _hco_step(self, group, params, grads_l, grads_u):
        b1, b2, lr, eps = group["betas"][0], group["betas"][1], group["lr"], group["eps"]
        grads_l = self._decay(group, params, grads_l)
        m, v, steps = self._state(params)
        step_sizes = [-lr / (1 - b1 ** t) for t in steps]
        torch._foreach_lerp_(m, grads_l, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads_l, grads_l, 1 - b2)
        # u^L = m_hat / (sqrt(v_hat) + eps) has the sign of m, so the mask needs no u^L tensor
        masks = agree_into_(self._scratch("mask", params), m, grads_u)
        torch._foreach_addcdiv_(params, m, self._denominators(v, steps, b2, eps), step_sizes)  # w -= lr u^L
        gu_phi = self._scratch("work", params)
        torch._foreach_copy_(gu_phi, grads_u)
        torch._foreach_mul_(gu_phi, masks)
        torch._foreach_add_(m, gu_phi, alpha=1 - b1)
        torch._foreach_addcmul_(v, gu_phi, gu_phi, 1 - b2)
        if group["second_mask"]:  # Remark 1's variant: also require agreement with the refined direction u
            torch._foreach_mul_(masks, agree_into_(self._scratch("mask2", params), m, grads_u))
        counts = self._phi_bar_(masks, group["mask_eps"])
        torch._foreach_mul_(masks, m)  # the numerators phi_bar * m, in the mask's buffer
        torch._foreach_addcdiv_(params, masks, self._denominators(v, steps, b2, eps), step_sizes)
        self._apply_decoupled_decay(group, params)
        return counts


class HierarchicalCautiousAdam(HierarchicalCautiousAdamW):
    """HCO-Adam: as HCO-AdamW, with weight decay as an L2 term in the labeled gradient (torch's Adam)."""
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 mask_eps: float = 1e-3, second_mask: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, mask_eps, second_mask)


class HierarchicalCautiousSGD(_TwoGradientOptimizer):
    """HCO-SGD (Alg. 2). ``step()`` (the warm-up) is torch's SGD with momentum, Nesterov and coupled weight decay as
    configured; the HCO step follows Alg. 2 (no Nesterov, decoupled decay after the update)."""

    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, mask_eps: float = 1e-3):
        _check(lr, weight_decay=weight_decay, mask_eps=mask_eps, momentum=momentum)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      mask_eps=mask_eps))

    def _buffers(self, params, first_grads):
        bufs = []
        for p, g in zip(params, first_grads):
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(st["momentum_buffer"])
        return bufs

    def _base_step(self, group, params, grads):
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        bufs = self._buffers(params, grads)
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads)
        direction = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
        torch._foreach_add_(params, direction, alpha=-group["lr"])

    def _hco_step(self, group, params, grads_l, grads_u):
        b1, lr = group["momentum"], group["lr"]
        bufs = self._buffers(params, grads_l)
        torch._foreach_mul_(bufs, b1)
        torch._foreach_add_(bufs, grads_l)  # m^L
        phi_bar = agree_into_(self._scratch("mask", params), bufs, grads_u)
        torch._foreach_add_(params, bufs, alpha=-lr)  # w -= lr m^L, before the buffer moves on
        counts = self._phi_bar_(phi_bar, group["mask_eps"])
        torch._foreach_mul_(bufs, b1)
        torch._foreach_addcmul_(bufs, grads_u, phi_bar)
        torch._foreach_addcmul_(params, bufs, phi_bar, -lr)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        return counts
