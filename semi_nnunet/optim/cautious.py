"""Cautious Optimizers (Liang et al. 2024, C-Optim): the single-gradient baseline HCO is compared against.

One gradient ``g`` (in the HCO paper ``g = g^L + g^U``). The moments are the base optimizer's; the *update* is masked
where it disagrees in sign with the current gradient, rescaled per tensor, and the state is never touched::

    CautiousAdamW:  m, v as AdamW;  phi = 1[m * g > 0];  phi_bar = phi / max(mean(phi), eps_mask)
                    w <- w (1 - lr wd);  w <- w - lr (m * phi_bar) / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)
    CautiousSGD:    buf <- mu buf + g (+ wd w in g);  d = buf (Nesterov: g + mu buf);  phi = 1[d * g > 0]
                    w <- w - lr d * phi_bar
"""
import torch

from semi_nnunet.optim.hco import _check, _GradOptimizer, mask_scale


class CautiousAdamW(_GradOptimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 mask_eps: float = 1e-3):
        _check(lr, betas, eps, weight_decay, mask_eps)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      mask_eps=mask_eps))

    def _base_step(self, group, params, grads):
        b1, b2 = group["betas"]
        for p in params:
            st = self.state[p]
            if not st:
                st.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            st["step"] += 1
        m = [self.state[p]["exp_avg"] for p in params]
        v = [self.state[p]["exp_avg_sq"] for p in params]
        scale = [group["lr"] * (1 - b2 ** self.state[p]["step"]) ** 0.5 / (1 - b1 ** self.state[p]["step"])
                 for p in params]
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, 1 - b2)
        phis = [(a * g > 0).to(a.dtype) for a, g in zip(m, grads)]
        update = torch._foreach_mul(m, mask_scale(phis, group["mask_eps"]))
        denom = torch._foreach_add(torch._foreach_sqrt(v), group["eps"])
        torch._foreach_div_(update, denom)
        torch._foreach_mul_(update, scale)
        torch._foreach_sub_(params, update)


class CautiousSGD(_GradOptimizer):
    def __init__(self, params, lr: float = 1e-2, momentum: float = 0.9, weight_decay: float = 0.0,
                 nesterov: bool = False, mask_eps: float = 1e-3):
        _check(lr, weight_decay=weight_decay, mask_eps=mask_eps, momentum=momentum)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                                      mask_eps=mask_eps))

    def _base_step(self, group, params, grads):
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        for p in params:
            self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, group["momentum"])
        torch._foreach_add_(bufs, grads)
        d = torch._foreach_add(grads, bufs, alpha=group["momentum"]) if group["nesterov"] else bufs
        phis = [(a * g > 0).to(a.dtype) for a, g in zip(d, grads)]
        torch._foreach_add_(params, torch._foreach_mul(d, mask_scale(phis, group["mask_eps"])),
                            alpha=-group["lr"])
