"""Cautious Optimizer baselines (the HCO paper's "CO baseline", C-Optim's ``AdamW.step``):
the code against the formula, implemented here independently with plain tensor ops."""
import math

import pytest
import torch

from semi_nnunet.optim import CautiousAdamW, CautiousSGD

F64 = torch.float64


def randn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=F64)


def ref_cautious_adamw(w, state, g, lr, betas=(0.9, 0.999), eps=1e-8, wd=0.0, mask_eps=1e-3):
    """C-Optim AdamW: moments as AdamW; phi = 1[m_t g_t > 0]; phi_bar = phi / max(mean(phi), mask_eps) per tensor;
    w <- w (1 - lr wd); w <- w - lr (m phi_bar) / (sqrt(v) + eps) * sqrt(1 - b2^t) / (1 - b1^t)."""
    b1, b2 = betas
    if not state:
        state.update(m=torch.zeros_like(w), v=torch.zeros_like(w), t=0)
    state["t"] += 1
    t = state["t"]
    state["m"] = b1 * state["m"] + (1 - b1) * g
    state["v"] = b2 * state["v"] + (1 - b2) * g * g
    phi = (state["m"] * g > 0).to(w.dtype)
    phi_bar = phi / max(phi.mean().item(), mask_eps)
    w = w * (1 - lr * wd)
    return w - lr * (state["m"] * phi_bar) / (torch.sqrt(state["v"]) + eps) * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)


def ref_cautious_sgd(w, state, g, lr, momentum, wd=0.0, nesterov=False, mask_eps=1e-3):
    """buf = mu buf + g (+ wd w); d = buf (Nesterov: g + mu buf, as the module documents); phi = 1[d g > 0];
    w -= lr d phi_bar."""
    g = g + wd * w
    state["buf"] = momentum * state.get("buf", torch.zeros_like(w)) + g
    d = g + momentum * state["buf"] if nesterov else state["buf"]
    phi = (d * g > 0).to(w.dtype)
    phi_bar = phi / max(phi.mean().item(), mask_eps)
    return w - lr * d * phi_bar


SHAPES = [(11,), (4, 5), (2, 3, 3)]


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01, weight_decay=0.0),
    dict(lr=0.01, weight_decay=0.05),
    dict(lr=0.03, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    dict(lr=0.01, weight_decay=0.01, mask_eps=0.3),
])
def test_cautious_adamw_matches_formula(kwargs):
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(randn(*s, gen=gen)) for s in SHAPES]
    ws = [p.detach().clone() for p in params]
    states = [{} for _ in params]
    opt = CautiousAdamW(params, **kwargs)
    ref_kw = dict(lr=kwargs["lr"], betas=kwargs.get("betas", (0.9, 0.999)), eps=kwargs.get("eps", 1e-8),
                  wd=kwargs["weight_decay"], mask_eps=kwargs.get("mask_eps", 1e-3))
    for _ in range(3):
        for i, p in enumerate(params):
            p.grad = randn(*p.shape, gen=gen)
            ws[i] = ref_cautious_adamw(ws[i], states[i], p.grad.clone(), **ref_kw)
        opt.step()
        for p, w in zip(params, ws):
            torch.testing.assert_close(p.detach(), w)
        # the state is never touched by the mask: it is AdamW's
        for p, st in zip(params, states):
            torch.testing.assert_close(opt.state[p]["exp_avg"], st["m"])
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], st["v"])


def test_cautious_adamw_state_equals_torch_adamw_state():
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(randn(13, gen=gen))
    q = torch.nn.Parameter(p.detach().clone())
    opt, ref = CautiousAdamW([p], lr=0.01), torch.optim.AdamW([q], lr=0.01)
    for _ in range(4):
        g = randn(13, gen=gen)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"])


def test_cautious_adamw_one_agreeing_coordinate_is_clamped():
    """Step 1: g = +1 (all agree). Step 2: g = -0.1 except +1 at coordinate 0 -> m = 0.08 > 0 opposes g everywhere
    but at coordinate 0: one of 10_000 agrees, phi_bar = 1/1e-3 = 1000 (not 10_000)."""
    n, lr = 10_000, 1e-3
    p = torch.nn.Parameter(torch.zeros(n, dtype=F64))
    opt = CautiousAdamW([p], lr=lr, weight_decay=0.0)
    p.grad = torch.ones(n, dtype=F64)
    opt.step()
    w1 = p.detach().clone()
    g2 = torch.full((n,), -0.1, dtype=F64)
    g2[0] = 1.0
    p.grad = g2
    opt.step()
    # coordinate 0 by hand: m = 0.19, v = 0.999e-3 + 1e-3, t = 2
    m0, v0 = 0.9 * 0.1 + 0.1 * 1.0, 0.999 * 1e-3 + 1e-3
    step0 = lr * 1000.0 * m0 / (math.sqrt(v0) + 1e-8) * math.sqrt(1 - 0.999 ** 2) / (1 - 0.9 ** 2)
    assert p[0].item() == pytest.approx(w1[0].item() - step0, rel=1e-12)
    assert torch.equal(p.detach()[1:], w1[1:])  # masked coordinates do not move


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01, momentum=0.9, weight_decay=0.0),
    dict(lr=0.01, momentum=0.9, weight_decay=0.05),
    dict(lr=0.01, momentum=0.99, weight_decay=3e-5),                 # nnU-Net's momentum / decay
    dict(lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True),  # as nnU-Net (Nesterov per the module docstring)
    dict(lr=0.02, momentum=0.5, weight_decay=0.0, mask_eps=0.25),
])
def test_cautious_sgd_matches_formula(kwargs):
    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(randn(*s, gen=gen)) for s in SHAPES]
    ws = [p.detach().clone() for p in params]
    states = [{} for _ in params]
    opt = CautiousSGD(params, **kwargs)
    ref_kw = dict(lr=kwargs["lr"], momentum=kwargs["momentum"], wd=kwargs["weight_decay"],
                  nesterov=kwargs.get("nesterov", False), mask_eps=kwargs.get("mask_eps", 1e-3))
    for _ in range(3):
        for i, p in enumerate(params):
            p.grad = randn(*p.shape, gen=gen)
            ws[i] = ref_cautious_sgd(ws[i], states[i], p.grad.clone(), **ref_kw)
        opt.step()
        for p, w in zip(params, ws):
            torch.testing.assert_close(p.detach(), w)
        for p, st in zip(params, states):  # the momentum is SGD's, unmasked
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], st["buf"])


def test_cautious_sgd_by_hand():
    """buf = g = [1, -1, 2, 0.5] on step 1 (all agree, phi_bar = 1); step 2 g = [-1, -1, 0.1, -3]:
    buf = 0.9 buf + g = [-0.1, -1.9, 1.9, -2.55], agree at 0, 1, 2, 3 -> all; step 3 g = [1, 1, 1, 1]:
    buf = [0.91, -0.71, 2.71, -1.295] agree at 0 and 2 -> phi_bar = 2 there."""
    w = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    opt = CautiousSGD([w], lr=0.1, momentum=0.9)
    expected = torch.zeros(4, dtype=F64)
    for g, delta in [([1.0, -1.0, 2.0, 0.5], [1.0, -1.0, 2.0, 0.5]),
                     ([-1.0, -1.0, 0.1, -3.0], [-0.1, -1.9, 1.9, -2.55]),
                     ([1.0, 1.0, 1.0, 1.0], [2 * 0.91, 0.0, 2 * 2.71, 0.0])]:
        w.grad = torch.tensor(g, dtype=F64)
        opt.step()
        expected -= 0.1 * torch.tensor(delta, dtype=F64)
        torch.testing.assert_close(w.detach(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("momentum, weight_decay, nesterov", [
    (0.9, 0.0, False),
    (0.99, 3e-5, False),
    (0.99, 3e-5, True),
    (0.0, 0.0, False),
])
def test_cautious_sgd_all_agreeing_is_plain_sgd(momentum, weight_decay, nesterov):
    """Positive weights, positive gradients: every coordinate agrees, phi_bar = 1, the update is SGD's."""
    gen = torch.Generator().manual_seed(3)
    p = torch.nn.Parameter(randn(4, 6, gen=gen).abs() + 1.0)
    q = torch.nn.Parameter(p.detach().clone())
    opt = CautiousSGD([p], lr=0.01, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ref = torch.optim.SGD([q], lr=0.01, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    for _ in range(5):
        g = randn(4, 6, gen=gen).abs() + 0.1
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach(), q.detach())


def test_cautious_adamw_all_agreeing_is_adamw():
    """All gradients positive: phi_bar = 1 and CautiousAdamW is AdamW (eps placement aside; eps tiny here)."""
    gen = torch.Generator().manual_seed(4)
    p = torch.nn.Parameter(randn(4, 6, gen=gen))
    q = torch.nn.Parameter(p.detach().clone())
    opt = CautiousAdamW([p], lr=0.01, weight_decay=0.1, eps=1e-14)
    ref = torch.optim.AdamW([q], lr=0.01, weight_decay=0.1, eps=1e-14)
    for _ in range(5):
        g = randn(4, 6, gen=gen).abs() + 0.1
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [CautiousAdamW, CautiousSGD])
def test_parameters_without_gradient_are_skipped(cls):
    a, b = torch.nn.Parameter(torch.ones(3, dtype=F64)), torch.nn.Parameter(torch.ones(2, dtype=F64))
    opt = cls([a, b], lr=0.1, weight_decay=0.1)
    a.grad = torch.ones(3, dtype=F64)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2, dtype=F64))
    assert len(opt.state[b]) == 0
    assert not torch.equal(a.detach(), torch.ones(3, dtype=F64))


@pytest.mark.parametrize("cls", [CautiousAdamW, CautiousSGD])
def test_toy_regression_goes_down(cls):
    gen = torch.Generator().manual_seed(5)
    x = randn(60, 10, gen=gen)
    y = x @ randn(10, gen=gen)
    w = torch.nn.Parameter(torch.zeros(10, dtype=F64))
    opt = cls([w], lr=0.05 if cls is CautiousAdamW else 0.005, weight_decay=0.0)

    def loss():
        return ((x @ w - y) ** 2).mean()

    start = loss().item()
    for _ in range(200):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < start / 10
