"""HCO optimizers (Algorithms 1 and 2 of the HCO paper): a hand-checked oracle, equivalences with torch's
AdamW / Adam / SGD, the masking properties, pitfall P3, the mask clamp (P2), a toy loss that goes down, state_dict
round trips and hyperparameter validation.

Every expected value is computed by hand (the spec's oracle) or by the plain-tensor reference implementations
``ref_hco_adamw`` / ``ref_hco_sgd`` below, written from the spec's Algorithms 1 and 2, or by torch's own optimizers.
"""
import io
import math

import pytest
import torch

from semi_nnunet.optim import (CautiousAdamW, CautiousSGD, HierarchicalCautiousAdam, HierarchicalCautiousAdamW,
                               HierarchicalCautiousSGD, mask_scale)

F64 = torch.float64
HCO_CLASSES = (HierarchicalCautiousAdamW, HierarchicalCautiousAdam, HierarchicalCautiousSGD)


def t64(values):
    return torch.tensor(values, dtype=F64)


def randn(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=F64)


# ----------------------------------------------------------------------------------------------------------------------
# Independent references (spec section (b)), one tensor at a time, plain tensor ops
# ----------------------------------------------------------------------------------------------------------------------
def ref_hco_adamw(w, state, gl, gu, lr, betas=(0.9, 0.999), eps=1e-8, wd=0.0, mask_eps=1e-3, decoupled=True,
                  second_mask=False):
    """One HCO-AdamW step (Alg. 1). ``state`` is a dict {m, v, t} updated in place. Returns (new w, uL, phi)."""
    b1, b2 = betas
    if wd and not decoupled:  # HCO-Adam: L2 penalty in the labeled gradient
        gl = gl + wd * w
    if not state:
        state.update(m=torch.zeros_like(w), v=torch.zeros_like(w), t=0)
    state["t"] += 1
    t = state["t"]
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    state["m"] = b1 * state["m"] + (1 - b1) * gl
    state["v"] = b2 * state["v"] + (1 - b2) * gl * gl
    u_l = (state["m"] / bc1) / (torch.sqrt(state["v"] / bc2) + eps)
    phi = (u_l * gu > 0).to(w.dtype)
    state["m"] = state["m"] + (1 - b1) * gu * phi
    state["v"] = state["v"] + (1 - b2) * (gu * phi) ** 2
    u = (state["m"] / bc1) / (torch.sqrt(state["v"] / bc2) + eps)
    if second_mask:
        phi = phi * (u * gu > 0).to(w.dtype)
    phi_bar = phi / max(phi.mean().item(), mask_eps)
    w = w - lr * u_l - lr * phi_bar * u
    if wd and decoupled:
        w = w - lr * wd * w
    return w, u_l, phi


def ref_hco_sgd(w, state, gl, gu, lr, momentum=0.9, wd=0.0, mask_eps=1e-3):
    """One HCO-SGD step (Alg. 2). ``state`` is a dict {buf}. Returns (new w, mL, phi)."""
    buf = state.get("buf", torch.zeros_like(w))
    m_l = momentum * buf + gl
    phi = (m_l * gu > 0).to(w.dtype)
    phi_bar = phi / max(phi.mean().item(), mask_eps)
    buf = momentum * m_l + gu * phi_bar
    state["buf"] = buf
    w = w - lr * m_l - lr * buf * phi_bar
    if wd:
        w = w - lr * wd * w
    return w, m_l, phi


def make_params(shapes, gen, requires_grad=True):
    return [torch.nn.Parameter(randn(*s, gen=gen), requires_grad=requires_grad) for s in shapes]


def clone_params(params):
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


def weights(params):
    return [p.detach().clone() for p in params]


# ----------------------------------------------------------------------------------------------------------------------
# 1. The spec's oracle (section e)
# ----------------------------------------------------------------------------------------------------------------------
W0 = [1.0, -2.0, 0.5, 3.0]
GL = [0.1, -0.2, 0.3, 0.0]
GU = [0.2, 0.1, -0.4, 0.5]


def _oracle_optimizer(kind, w):
    if kind == "adamw":
        return HierarchicalCautiousAdamW([w], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, mask_eps=1e-3)
    return HierarchicalCautiousSGD([w], lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False, mask_eps=1e-3)


@pytest.mark.parametrize("kind, steps, expected_w", [
    ("adamw", 1, [0.3633437, -1.9000000, 0.4000000, 3.0]),
    ("adamw", 2, [-0.2857627, -1.8000000, 0.3000000, 3.0]),
    ("sgd", 1, [0.634, -1.98, 0.47, 3.0]),
    ("sgd", 2, [-0.10046, -1.9438, 0.4157, 3.0]),
])
def test_spec_oracle_weights(kind, steps, expected_w):
    w = torch.nn.Parameter(t64(W0))
    opt = _oracle_optimizer(kind, w)
    for _ in range(steps):
        opt.step_hco([t64(GL)], [t64(GU)])
    torch.testing.assert_close(w.detach(), t64(expected_w), rtol=0, atol=1e-6)
    assert w.detach()[3].item() == 3.0  # gL == 0 there: never moves (P3)
    assert opt.last_mask_ratio == pytest.approx(0.25, abs=1e-12)  # phi = [1, 0, 0, 0] in both steps


@pytest.mark.parametrize("kind, key, expected", [
    ("adamw", "exp_avg", [0.03, -0.02, 0.03, 0.0]),      # m after the refined update of step 1
    ("adamw", "exp_avg_sq", [5e-5, 4e-5, 9e-5, 0.0]),    # v after the refined update of step 1
    ("sgd", "momentum_buffer", [0.89, -0.18, 0.27, 0.0]),
])
def test_spec_oracle_state_after_step1(kind, key, expected):
    w = torch.nn.Parameter(t64(W0))
    opt = _oracle_optimizer(kind, w)
    opt.step_hco([t64(GL)], [t64(GU)])
    torch.testing.assert_close(opt.state[w][key], t64(expected), rtol=0, atol=1e-12)


def test_spec_oracle_by_hand_first_coordinate():
    """Step 1, coordinate 0 written out: uL = 0.3/(sqrt(0.05)+eps)... phi_bar = 4; w = 1 - 0.1 uL - 0.4 u."""
    w = torch.nn.Parameter(t64(W0))
    _oracle_optimizer("adamw", w).step_hco([t64(GL)], [t64(GU)])
    u_l = 0.1 / (math.sqrt(1e-5 / 1e-3) + 1e-8)      # m_hat = 0.01/0.1 = 0.1, v_hat = 1e-5/1e-3 = 0.01
    u = 0.3 / (math.sqrt(5e-5 / 1e-3) + 1e-8)         # m_hat = 0.03/0.1, v_hat = 5e-5/1e-3
    assert w.detach()[0].item() == pytest.approx(1 - 0.1 * u_l - 0.1 * 4 * u, rel=1e-12)


@pytest.mark.parametrize("kind, expected_ref, hco_ratio", [
    ("adamw", [0.9, -1.9, 0.6, 2.9], 6.4),   # P1: the first coordinate moves 6.4x further than AdamW on gL+gU
    ("sgd", [0.97, -1.99, 0.51, 2.95], 12.0),
])
def test_spec_oracle_references_and_p1(kind, expected_ref, hco_ratio):
    ref = torch.nn.Parameter(t64(W0))
    opt = (torch.optim.AdamW([ref], lr=0.1, weight_decay=0.0) if kind == "adamw"
           else torch.optim.SGD([ref], lr=0.1, momentum=0.9))
    ref.grad = t64(GL) + t64(GU)
    opt.step()
    torch.testing.assert_close(ref.detach(), t64(expected_ref), rtol=0, atol=1e-6)
    w = torch.nn.Parameter(t64(W0))
    _oracle_optimizer(kind, w).step_hco([t64(GL)], [t64(GU)])
    ratio = (W0[0] - w[0].item()) / (W0[0] - ref[0].item())
    assert ratio == pytest.approx(hco_ratio, rel=0.02)


# ----------------------------------------------------------------------------------------------------------------------
# Code == the independent reference, several tensors, several steps, weight decay, second mask
# ----------------------------------------------------------------------------------------------------------------------
SHAPES = [(7,), (3, 5), (2, 3, 4)]


@pytest.mark.parametrize("cls, kwargs, ref_kwargs", [
    (HierarchicalCautiousAdamW, dict(lr=0.01, weight_decay=0.0), dict(lr=0.01)),
    (HierarchicalCautiousAdamW, dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, wd=0.1)),
    (HierarchicalCautiousAdamW, dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.05, mask_eps=0.1),
     dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, wd=0.05, mask_eps=0.1)),
    (HierarchicalCautiousAdamW, dict(lr=0.01, weight_decay=0.1, second_mask=True),
     dict(lr=0.01, wd=0.1, second_mask=True)),
    (HierarchicalCautiousAdam, dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, wd=0.1, decoupled=False)),
])
def test_hco_adamw_matches_reference(cls, kwargs, ref_kwargs):
    gen = torch.Generator().manual_seed(1)
    params = make_params(SHAPES, gen)
    ws = weights(params)
    states = [{} for _ in params]
    opt = cls(params, **kwargs)
    for _ in range(4):
        gl = [randn(*p.shape, gen=gen) for p in params]
        gu = [randn(*p.shape, gen=gen) for p in params]
        opt.step_hco(gl, gu)
        ones = total = 0
        for i in range(len(ws)):
            ws[i], _, phi = ref_hco_adamw(ws[i], states[i], gl[i], gu[i], **ref_kwargs)
            ones, total = ones + phi.sum().item(), total + phi.numel()
        for p, w in zip(params, ws):
            torch.testing.assert_close(p.detach(), w)
        assert opt.last_mask_ratio == pytest.approx(ones / total, abs=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(lr=0.01, momentum=0.9, weight_decay=0.0),
    dict(lr=0.01, momentum=0.99, weight_decay=3e-5),
    dict(lr=0.005, momentum=0.5, weight_decay=0.1, mask_eps=0.2),
])
def test_hco_sgd_matches_reference(kwargs):
    gen = torch.Generator().manual_seed(2)
    params = make_params(SHAPES, gen)
    ws = weights(params)
    states = [{} for _ in params]
    opt = HierarchicalCautiousSGD(params, nesterov=True, **kwargs)  # Alg. 2 ignores Nesterov in the HCO step
    ref_kwargs = dict(lr=kwargs["lr"], momentum=kwargs["momentum"], wd=kwargs["weight_decay"],
                      mask_eps=kwargs.get("mask_eps", 1e-3))
    for _ in range(4):
        gl = [randn(*p.shape, gen=gen) for p in params]
        gu = [randn(*p.shape, gen=gen) for p in params]
        opt.step_hco(gl, gu)
        for i in range(len(ws)):
            ws[i], _, _ = ref_hco_sgd(ws[i], states[i], gl[i], gu[i], **ref_kwargs)
        for p, w in zip(params, ws):
            torch.testing.assert_close(p.detach(), w)
        for p, st in zip(params, states):
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], st["buf"])


# ----------------------------------------------------------------------------------------------------------------------
# 2. Zero unlabeled gradient: HCO-AdamW == AdamW on gL; HCO-SGD == SGD with momentum beta1**2
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hco_factory, torch_factory", [
    (lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.0),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.0)),
    (lambda p: HierarchicalCautiousAdamW(p, lr=0.003, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0),
     lambda p: torch.optim.AdamW(p, lr=0.003, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.0)),
    # HCO-Adam: the L2 term enters the labeled gradient, exactly as torch's Adam
    (lambda p: HierarchicalCautiousAdam(p, lr=0.01, weight_decay=0.1),
     lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    (lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.9, weight_decay=0.0, nesterov=False),
     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.81, weight_decay=0.0, nesterov=False)),
    (lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.99, weight_decay=0.0, nesterov=False),
     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.99 ** 2, weight_decay=0.0, nesterov=False)),
], ids=["adamw", "adamw_betas_eps", "adam_l2", "sgd_0.9", "sgd_0.99"])
def test_zero_unlabeled_gradient_is_base_optimizer(hco_factory, torch_factory):
    gen = torch.Generator().manual_seed(3)
    params = make_params(SHAPES, gen)
    ref = clone_params(params)
    opt, ref_opt = hco_factory(params), torch_factory(ref)
    for _ in range(6):
        gl = [randn(*p.shape, gen=gen) for p in params]
        opt.step_hco(gl, [torch.zeros_like(g) for g in gl])
        for q, g in zip(ref, gl):
            q.grad = g.clone()
        ref_opt.step()
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.detach(), q.detach())
    assert opt.last_mask_ratio == 0.0


def test_warm_up_then_hco_shares_the_state():
    """Two base steps (warm-up), then HCO steps with a zero unlabeled gradient: still torch's AdamW (wd 0)."""
    gen = torch.Generator().manual_seed(4)
    params = make_params(SHAPES, gen)
    ref = clone_params(params)
    opt = HierarchicalCautiousAdamW(params, lr=0.01, weight_decay=0.0)
    ref_opt = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.0)
    for step in range(5):
        grads = [randn(*p.shape, gen=gen) for p in params]
        if step < 2:
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        else:
            opt.step_hco(grads, [torch.zeros_like(g) for g in grads])
        for q, g in zip(ref, grads):
            q.grad = g.clone()
        ref_opt.step()
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.detach(), q.detach())


# ----------------------------------------------------------------------------------------------------------------------
# 3. step() is the base optimizer exactly (the warm-up)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hco_factory, torch_factory", [
    (lambda p: HierarchicalCautiousAdamW(p, lr=1e-3, weight_decay=0.01),
     lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.01)),
    (lambda p: HierarchicalCautiousAdamW(p, lr=0.05, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.3),
     lambda p: torch.optim.AdamW(p, lr=0.05, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.3)),
    (lambda p: HierarchicalCautiousAdam(p, lr=1e-3, weight_decay=0.01),
     lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=0.01)),
    # nnU-Net's SGD settings
    (lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True)),
    (lambda p: HierarchicalCautiousSGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=False),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=False)),
], ids=["adamw", "adamw_betas_eps", "adam_l2", "sgd_nnunet", "sgd_plain"])
def test_step_is_base_optimizer(hco_factory, torch_factory):
    gen = torch.Generator().manual_seed(5)
    params = make_params(SHAPES + [(4,)], gen)
    ref = clone_params(params)
    opt, ref_opt = hco_factory(params), torch_factory(ref)
    for _ in range(6):
        for p, q in zip(params[:-1], ref[:-1]):  # the last parameter never gets a gradient
            g = randn(*p.shape, gen=gen)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        for p, q in zip(params, ref):
            torch.testing.assert_close(p.detach(), q.detach())
    assert len(opt.state[params[-1]]) == 0


def test_step_closure_returns_loss():
    w = torch.nn.Parameter(t64([1.0, 2.0]))
    opt = HierarchicalCautiousAdamW([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(5.0)
    assert w.grad is not None


# ----------------------------------------------------------------------------------------------------------------------
# 4. Opposed unlabeled components never move a weight; gL == 0 never moves
# ----------------------------------------------------------------------------------------------------------------------
HCO_CASES = [
    ("adamw", lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.0), dict(lr=0.01)),
    ("adamw_wd", lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.1), dict(lr=0.01, wd=0.1)),
    ("adamw_second_mask", lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.0, second_mask=True),
     dict(lr=0.01, second_mask=True)),
    ("adam_l2", lambda p: HierarchicalCautiousAdam(p, lr=0.01, weight_decay=0.1),
     dict(lr=0.01, wd=0.1, decoupled=False)),
    ("sgd", lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.9), dict(lr=0.01, momentum=0.9)),
    ("sgd_nnunet", lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True),
     dict(lr=0.01, momentum=0.99, wd=3e-5)),
]


def _labeled_direction(name, w, state, gl, gu, ref_kwargs):
    """The labeled direction (uL for Adam, mL for SGD) of this step, from the reference (state copied)."""
    state = dict(state)
    if name.startswith("sgd"):
        return ref_hco_sgd(w, state, gl, gu, **ref_kwargs)
    return ref_hco_adamw(w, state, gl, gu, **ref_kwargs)


@pytest.mark.parametrize("name, factory, ref_kwargs", HCO_CASES, ids=[c[0] for c in HCO_CASES])
def test_opposed_unlabeled_components_are_ignored(name, factory, ref_kwargs):
    """Run A gets gU, run B gets gU with the coordinates that oppose the labeled direction zeroed: identical."""
    gen = torch.Generator().manual_seed(6)
    params_a = make_params([(50,), (6, 7)], gen)
    params_b = clone_params(params_a)
    opt_a, opt_b = factory(params_a), factory(params_b)
    ref_w, ref_state = weights(params_a), [{} for _ in params_a]
    n_opposed = 0
    for _ in range(5):
        gl = [randn(*p.shape, gen=gen) for p in params_a]
        gu = [randn(*p.shape, gen=gen) for p in params_a]
        gu_b = []
        for i in range(len(gl)):
            new_w, direction, _ = _labeled_direction(name, ref_w[i], ref_state[i], gl[i], gu[i], ref_kwargs)
            opposed = direction * gu[i] < 0
            n_opposed += int(opposed.sum())
            gu_b.append(torch.where(opposed, torch.zeros_like(gu[i]), gu[i]))
            # advance the reference with the full gU (as run A)
            if name.startswith("sgd"):
                ref_w[i], _, _ = ref_hco_sgd(ref_w[i], ref_state[i], gl[i], gu[i], **ref_kwargs)
            else:
                ref_w[i], _, _ = ref_hco_adamw(ref_w[i], ref_state[i], gl[i], gu[i], **ref_kwargs)
        opt_a.step_hco(gl, gu)
        opt_b.step_hco(gl, gu_b)
        for a, b in zip(params_a, params_b):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)
        assert opt_a.last_mask_ratio == opt_b.last_mask_ratio
    assert n_opposed > 50  # the test did exercise opposed coordinates


def test_opposed_unlabeled_gradient_alone_equals_labeled_only_step():
    """One step from zero state: gU opposing gL everywhere gives exactly the step of a zero gU."""
    gen = torch.Generator().manual_seed(7)
    gl = randn(20, gen=gen)
    gu = -gl.sign() * randn(20, gen=gen).abs()
    for factory in (lambda p: HierarchicalCautiousAdamW(p, lr=0.01), lambda p: HierarchicalCautiousSGD(p, lr=0.01)):
        a, b = torch.nn.Parameter(randn(20, gen=gen)), None
        b = torch.nn.Parameter(a.detach().clone())
        oa, ob = factory([a]), factory([b])
        oa.step_hco([gl], [gu])
        ob.step_hco([gl], [torch.zeros_like(gu)])
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0)
        assert oa.last_mask_ratio == 0.0


@pytest.mark.parametrize("name, factory", [
    ("adamw", lambda p: HierarchicalCautiousAdamW(p, lr=0.05, weight_decay=0.0)),
    ("adamw_second_mask", lambda p: HierarchicalCautiousAdamW(p, lr=0.05, weight_decay=0.0, second_mask=True)),
    ("adam", lambda p: HierarchicalCautiousAdam(p, lr=0.05, weight_decay=0.0)),
    ("sgd", lambda p: HierarchicalCautiousSGD(p, lr=0.05, momentum=0.9)),
    ("sgd_nesterov", lambda p: HierarchicalCautiousSGD(p, lr=0.05, momentum=0.99, nesterov=True)),
])
def test_zero_labeled_coordinate_never_moves(name, factory):
    gen = torch.Generator().manual_seed(8)
    w = torch.nn.Parameter(randn(30, gen=gen))
    w0 = w.detach().clone()
    dead = torch.zeros(30, dtype=torch.bool)
    dead[::3] = True
    opt = factory([w])
    for _ in range(10):
        gl = torch.where(dead, torch.zeros(30, dtype=F64), randn(30, gen=gen))
        opt.step_hco([gl], [randn(30, gen=gen) * 10])
    assert torch.equal(w.detach()[dead], w0[dead])
    assert not torch.equal(w.detach()[~dead], w0[~dead])


# ----------------------------------------------------------------------------------------------------------------------
# 5. Pitfall P3: a parameter without a labeled (or unlabeled) gradient takes the base step
# ----------------------------------------------------------------------------------------------------------------------
P3_CASES = [
    (lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.0),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.0)),
    (lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.05),
     lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.05)),
    (lambda p: HierarchicalCautiousAdam(p, lr=0.01, weight_decay=0.05),
     lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05)),
    (lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True)),
]


@pytest.mark.parametrize("hco_factory, torch_factory", P3_CASES, ids=["adamw", "adamw_wd", "adam_l2", "sgd_nnunet"])
def test_p3_missing_gradient_takes_base_step(hco_factory, torch_factory):
    """Parameters: [only unlabeled, only labeled, both]. The first two follow torch's optimizer on the one gradient
    they get (fresh state each); the third follows the HCO reference — all in one optimizer."""
    gen = torch.Generator().manual_seed(9)
    params = make_params([(5, 4), (9,), (3, 3)], gen)
    ref = clone_params(params[:2])
    both_w, both_state = params[2].detach().clone(), {}
    opt, ref_opt = hco_factory(params), torch_factory(ref)
    hco_kind = type(opt)
    for _ in range(4):
        g_u_only, g_l_only = randn(5, 4, gen=gen), randn(9, gen=gen)
        gl3, gu3 = randn(3, 3, gen=gen), randn(3, 3, gen=gen)
        opt.step_hco([None, g_l_only, gl3], [g_u_only, None, gu3])
        ref[0].grad, ref[1].grad = g_u_only.clone(), g_l_only.clone()
        ref_opt.step()
        g = opt.param_groups[0]
        if hco_kind is HierarchicalCautiousSGD:
            both_w, _, phi = ref_hco_sgd(both_w, both_state, gl3, gu3, lr=g["lr"], momentum=g["momentum"],
                                         wd=g["weight_decay"])
        else:
            both_w, _, phi = ref_hco_adamw(both_w, both_state, gl3, gu3, lr=g["lr"], wd=g["weight_decay"],
                                           decoupled=hco_kind is HierarchicalCautiousAdamW)
        torch.testing.assert_close(params[0].detach(), ref[0].detach())
        torch.testing.assert_close(params[1].detach(), ref[1].detach())
        torch.testing.assert_close(params[2].detach(), both_w)
        # only the parameter with both gradients is masked
        assert opt.last_mask_ratio == pytest.approx(phi.mean().item(), abs=1e-12)


def test_p3_parameter_with_no_gradient_at_all_stays():
    w, v = torch.nn.Parameter(t64([1.0, 2.0])), torch.nn.Parameter(t64([3.0]))
    opt = HierarchicalCautiousAdamW([w, v], lr=0.1, weight_decay=0.1)
    opt.step_hco([None, t64([1.0])], [None, t64([1.0])])
    assert torch.equal(w.detach(), t64([1.0, 2.0]))  # no decay either: no gradient, no step
    assert v.item() != 3.0


# ----------------------------------------------------------------------------------------------------------------------
# 6. The mask clamp (P2) and last_mask_ratio
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("numel, aligned, mask_eps, expected", [
    (10_000, 1, 1e-3, 1000.0),   # mean 1e-4 clamped to 1e-3 (not numel = 10_000)
    (10_000, 10, 1e-3, 1000.0),  # mean 1e-3 == the clamp
    (10_000, 20, 1e-3, 500.0),   # mean 2e-3
    (10_000, 1, 1e-2, 100.0),
    (4, 1, 1e-3, 4.0),           # the oracle: phi_bar = 4
    (8, 4, 1e-3, 2.0),
    (5, 5, 1e-3, 1.0),           # all aligned: phi_bar = phi
    (1, 1, 1.0, 1.0),
])
def test_mask_scale(numel, aligned, mask_eps, expected):
    phi = torch.zeros(numel, dtype=F64)
    idx = torch.randperm(numel, generator=torch.Generator().manual_seed(numel))[:aligned]
    phi[idx] = 1.0
    (out,) = mask_scale([phi], mask_eps)
    want = torch.zeros(numel, dtype=F64)
    want[idx] = expected
    torch.testing.assert_close(out, want, rtol=1e-12, atol=0)
    assert torch.equal(phi[idx], torch.ones(aligned, dtype=F64))  # input untouched


def test_mask_scale_is_per_tensor():
    phis = [t64([1, 0, 0, 0]), t64([1, 1, 0, 0, 0, 0, 0, 0]), torch.zeros(3, dtype=F64), t64([1.0] * 6)]
    out = mask_scale(phis, 1e-3)
    want = [t64([4, 0, 0, 0]), t64([4, 4, 0, 0, 0, 0, 0, 0]), torch.zeros(3, dtype=F64), t64([1.0] * 6)]
    for o, e in zip(out, want):
        torch.testing.assert_close(o, e, rtol=1e-12, atol=0)


N = 10_000


def _one_aligned_grads():
    """gL = 1 everywhere; gU agrees with it at coordinate 0 only (+1) and opposes it elsewhere (-1)."""
    gl = torch.ones(N, dtype=F64)
    gu = -torch.ones(N, dtype=F64)
    gu[0] = 1.0
    return gl, gu


def test_mask_clamp_in_hco_adamw_step():
    gl, gu = _one_aligned_grads()
    w = torch.nn.Parameter(torch.zeros(N, dtype=F64))
    opt = HierarchicalCautiousAdamW([w], lr=1e-3, weight_decay=0.0)
    opt.step_hco([gl], [gu])
    # step 1 by hand: m_hat = 1, v_hat = 1 -> uL = 1/(1+eps); aligned: m = 0.2, v = 0.002 -> m_hat = 2, v_hat = 2
    u_l = 1.0 / (1.0 + 1e-8)
    u0 = 2.0 / (math.sqrt(2.0) + 1e-8)
    expected = torch.full((N,), -1e-3 * u_l, dtype=F64)
    expected[0] = -1e-3 * u_l - 1e-3 * 1000.0 * u0   # phi_bar = 1000, not 10_000
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=0)
    assert opt.last_mask_ratio == pytest.approx(1 / N, rel=1e-12)


def test_mask_clamp_in_hco_sgd_step():
    gl, gu = _one_aligned_grads()
    w = torch.nn.Parameter(torch.zeros(N, dtype=F64))
    opt = HierarchicalCautiousSGD([w], lr=1e-3, momentum=0.9)
    opt.step_hco([gl], [gu])
    # mL = 1; phi_bar[0] = 1000; m[0] = 0.9 * 1 + 1 * 1000 = 1000.9; w0 = -lr (1 + 1000 * 1000.9)
    expected = torch.full((N,), -1e-3, dtype=F64)
    expected[0] = -1e-3 * (1.0 + 1000.0 * 1000.9)
    torch.testing.assert_close(w.detach(), expected, rtol=1e-12, atol=0)
    buf = torch.full((N,), 0.9, dtype=F64)
    buf[0] = 1000.9
    torch.testing.assert_close(opt.state[w]["momentum_buffer"], buf, rtol=1e-12, atol=0)
    assert opt.last_mask_ratio == pytest.approx(1 / N, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("aligned, expected", [(50_000, 2.0), (100_000, 1.0)])
def test_mask_scale_half_precision_large_tensor(dtype, aligned, expected):
    """phi / max(mean(phi), eps') must not depend on the parameter dtype: 100_000 elements exceed float16's range
    (max 65504), so counting ones / elements in the parameter's dtype gives inf."""
    phi = torch.zeros(100_000, dtype=dtype)
    phi[:aligned] = 1
    (out,) = mask_scale([phi], 1e-3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:aligned].float(), torch.full((aligned,), expected), rtol=1 / 128, atol=0)
    assert (out[aligned:] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_hco_step_half_precision_large_tensor(dtype):
    """All 100_000 coordinates aligned: phi_bar = 1, last_mask_ratio = 1, w = -lr (uL + u) with uL = 1, u = sqrt 2."""
    w = torch.nn.Parameter(torch.zeros(100_000, dtype=dtype))
    opt = HierarchicalCautiousAdamW([w], lr=1e-3, weight_decay=0.0, eps=1e-3)  # eps representable in float16
    opt.step_hco([torch.ones_like(w)], [torch.ones_like(w)])
    want = -1e-3 * (1 / (1 + 1e-3) + 2 / (math.sqrt(2) + 1e-3))
    torch.testing.assert_close(w.detach().float(), torch.full((100_000,), want), rtol=1e-2, atol=0)
    assert opt.last_mask_ratio == pytest.approx(1.0, abs=1e-6)  # a ratio of counts: exact


def test_last_mask_ratio_over_several_tensors_and_before_any_step():
    a, b = torch.nn.Parameter(torch.zeros(4, dtype=F64)), torch.nn.Parameter(torch.zeros(6, dtype=F64))
    opt = HierarchicalCautiousAdamW([a, b], lr=0.1)
    assert math.isnan(opt.last_mask_ratio)
    # a: 1 of 4 aligned, b: 3 of 6 aligned -> 4 / 10
    opt.step_hco([torch.ones(4, dtype=F64), torch.ones(6, dtype=F64)],
                 [t64([1, -1, -1, -1]), t64([1, 1, 1, -1, -1, 0])])
    assert opt.last_mask_ratio == pytest.approx(0.4, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# 7. A toy regression goes down
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", [
    lambda p: HierarchicalCautiousAdamW(p, lr=0.05, weight_decay=0.0),
    lambda p: HierarchicalCautiousAdamW(p, lr=0.05, weight_decay=1e-4),
    lambda p: HierarchicalCautiousAdam(p, lr=0.05, weight_decay=0.0),
    lambda p: HierarchicalCautiousSGD(p, lr=0.003, momentum=0.9),
], ids=["hco_adamw", "hco_adamw_wd", "hco_adam", "hco_sgd"])
def test_toy_regression_goes_down(factory):
    """Labeled: least squares on clean targets; unlabeled: least squares on noisy (pseudo-)targets."""
    gen = torch.Generator().manual_seed(0)
    d = 20
    w_true = randn(d, gen=gen)
    x_l = randn(40, d, gen=gen)
    y_l = x_l @ w_true
    x_u = randn(200, d, gen=gen)
    y_u = x_u @ w_true + randn(200, gen=gen)
    x_test = randn(100, d, gen=gen)
    y_test = x_test @ w_true

    w = torch.nn.Parameter(torch.zeros(d, dtype=F64))
    opt = factory([w])

    def clean_loss():
        return ((x_test @ w - y_test) ** 2).mean()

    with torch.no_grad():
        start = clean_loss().item()
    ratios = []
    for _ in range(200):
        (gl,) = torch.autograd.grad(((x_l @ w - y_l) ** 2).mean(), w)
        (gu,) = torch.autograd.grad(((x_u @ w - y_u) ** 2).mean(), w)
        opt.step_hco([gl], [gu])
        ratios.append(opt.last_mask_ratio)
    with torch.no_grad():
        end = clean_loss().item()
    assert math.isfinite(end)
    assert end < start / 10, (start, end)
    assert all(0.0 <= r <= 1.0 for r in ratios)


# ----------------------------------------------------------------------------------------------------------------------
# 8. state_dict round trip, all five optimizers
# ----------------------------------------------------------------------------------------------------------------------
ALL_FIVE = [
    ("hco_adamw", lambda p: HierarchicalCautiousAdamW(p, lr=0.01, weight_decay=0.01)),
    ("hco_adam", lambda p: HierarchicalCautiousAdam(p, lr=0.01, weight_decay=0.01)),
    ("hco_sgd", lambda p: HierarchicalCautiousSGD(p, lr=0.01, momentum=0.99, weight_decay=3e-5, nesterov=True)),
    ("co_adamw", lambda p: CautiousAdamW(p, lr=0.01, weight_decay=0.01)),
    ("co_sgd", lambda p: CautiousSGD(p, lr=0.01, momentum=0.9, weight_decay=3e-5)),
]


def _do_step(opt, params, grads_l, grads_u):
    if isinstance(opt, HCO_CLASSES):
        opt.step_hco(grads_l, grads_u)
    else:
        for p, a, b in zip(params, grads_l, grads_u):
            p.grad = (a if a is not None else 0) + (b if b is not None else 0)
        opt.step()


@pytest.mark.parametrize("name, factory", ALL_FIVE, ids=[c[0] for c in ALL_FIVE])
def test_state_dict_round_trip(name, factory):
    gen = torch.Generator().manual_seed(10)
    params = make_params([(4, 3), (5,), (2,)], gen)
    opt = factory(params)

    def grads():
        gl = [randn(*p.shape, gen=gen) for p in params]
        gu = [randn(*p.shape, gen=gen) for p in params]
        gl[2] = None  # P3 path for the HCO optimizers (unlabeled-only parameter)
        return gl, gu

    for _ in range(2):
        _do_step(opt, params, *grads())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    fresh_params = clone_params(params)
    fresh = factory(fresh_params)
    fresh.load_state_dict(torch.load(buffer, weights_only=False))

    gl, gu = grads()
    _do_step(opt, params, gl, gu)
    _do_step(fresh, fresh_params, [g.clone() if g is not None else None for g in gl], [g.clone() for g in gu])
    for p, q in zip(params, fresh_params):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=0)
    for p, q in zip(params, fresh_params):
        for key, value in opt.state[p].items():
            other = fresh.state[q][key]
            if torch.is_tensor(value):
                torch.testing.assert_close(value, other, rtol=0, atol=0)
            else:
                assert value == other
    # and the trajectory was non-trivial
    assert not torch.equal(params[0].detach(), make_params([(4, 3)], torch.Generator().manual_seed(10))[0].detach())


# ----------------------------------------------------------------------------------------------------------------------
# 9. Hyperparameter validation
# ----------------------------------------------------------------------------------------------------------------------
def _w():
    return [torch.nn.Parameter(torch.zeros(2))]


ADAM_LIKE = (HierarchicalCautiousAdamW, HierarchicalCautiousAdam, CautiousAdamW)
SGD_LIKE = (HierarchicalCautiousSGD, CautiousSGD)
INVALID = (
    [(cls, dict(lr=-0.1), "-0.1") for cls in ADAM_LIKE + SGD_LIKE]
    + [(cls, dict(weight_decay=-1e-4), "-0.0001") for cls in ADAM_LIKE + SGD_LIKE]
    + [(cls, dict(mask_eps=0.0), "mask_eps 0.0") for cls in ADAM_LIKE + SGD_LIKE]
    + [(cls, dict(mask_eps=1.5), "mask_eps 1.5") for cls in ADAM_LIKE + SGD_LIKE]
    + [(cls, dict(mask_eps=-1e-3), "mask_eps -0.001") for cls in ADAM_LIKE + SGD_LIKE]
    + [(cls, dict(betas=(0.9, 1.0)), "(0.9, 1.0)") for cls in ADAM_LIKE]
    + [(cls, dict(betas=(1.0, 0.999)), "(1.0, 0.999)") for cls in ADAM_LIKE]
    + [(cls, dict(betas=(0.9, 1.5)), "(0.9, 1.5)") for cls in ADAM_LIKE]
    + [(cls, dict(eps=0.0), "eps 0.0") for cls in ADAM_LIKE]
    + [(cls, dict(eps=-1e-8), "eps -1e-08") for cls in ADAM_LIKE]
    + [(cls, dict(momentum=1.0), "momentum 1.0") for cls in SGD_LIKE]
    + [(cls, dict(momentum=1.5), "momentum 1.5") for cls in SGD_LIKE]
    + [(cls, dict(momentum=-0.1), "momentum -0.1") for cls in SGD_LIKE]
)


@pytest.mark.parametrize("cls, kwargs, named", INVALID,
                         ids=[f"{c.__name__}-{list(k)[0]}={list(k.values())[0]}" for c, k, _ in INVALID])
def test_invalid_hyperparameters(cls, kwargs, named):
    with pytest.raises(ValueError) as info:
        cls(_w(), **kwargs)
    assert named in str(info.value), str(info.value)


@pytest.mark.parametrize("cls, kwargs", [
    (HierarchicalCautiousAdamW, dict(lr=0.0, weight_decay=0.0, mask_eps=1.0, betas=(0.0, 0.0))),
    (HierarchicalCautiousAdam, dict(lr=0.0, weight_decay=0.0, mask_eps=1.0)),
    (HierarchicalCautiousSGD, dict(lr=0.0, momentum=0.0, weight_decay=0.0, mask_eps=1.0)),
    (CautiousAdamW, dict(lr=0.0, weight_decay=0.0, mask_eps=1.0)),
    (CautiousSGD, dict(lr=0.0, momentum=0.0, weight_decay=0.0, mask_eps=1.0)),
])
def test_boundary_hyperparameters_are_valid(cls, kwargs):
    cls(_w(), **kwargs)


@pytest.mark.parametrize("cls", HCO_CLASSES)
@pytest.mark.parametrize("n_labeled, n_unlabeled", [(1, 2), (2, 1), (3, 2), (0, 0), (2, 3)])
def test_step_hco_wrong_number_of_gradients(cls, n_labeled, n_unlabeled):
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = cls(params, lr=0.1)
    with pytest.raises(ValueError, match="per parameter"):
        opt.step_hco([None] * n_labeled, [None] * n_unlabeled)
    assert torch.equal(params[0].detach(), torch.zeros(2))


# ----------------------------------------------------------------------------------------------------------------------
# fused=True: compiled kernels for the large tensors, the _foreach path for the rest (slow: the first compilation
# takes about a minute on a 2-core CPU)
# ----------------------------------------------------------------------------------------------------------------------
FUSED_CASES = [
    ("adamw_wd", HierarchicalCautiousAdamW, dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, wd=0.1)),
    ("adamw_second_mask_clamp", HierarchicalCautiousAdamW,
     dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0, mask_eps=0.7, second_mask=True),
     dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, mask_eps=0.7, second_mask=True)),
    ("adam_l2", HierarchicalCautiousAdam, dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, wd=0.1, decoupled=False)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, cls, kwargs, ref_kwargs", FUSED_CASES, ids=[c[0] for c in FUSED_CASES])
def test_fused_step_matches_reference_and_foreach_step(name, cls, kwargs, ref_kwargs):
    from semi_nnunet.optim.hco import FUSED_MIN_NUMEL
    gen = torch.Generator().manual_seed(3)
    shapes = [(FUSED_MIN_NUMEL,), (16, 9, 3, 3, 3), (7,), (3, 5)]  # two fused tensors, two small ones
    fused = make_params(shapes, gen)
    plain = clone_params(fused)
    opt_f, opt_p = cls(fused, **kwargs, fused=True), cls(plain, **kwargs)
    ws, states = weights(fused), [{} for _ in fused]
    for _ in range(5):
        gl = [randn(*s, gen=gen) for s in shapes]
        gu = [randn(*s, gen=gen) for s in shapes]
        gu[0][: FUSED_MIN_NUMEL // 2] = 0.0  # some coordinates without an unlabeled gradient
        opt_f.step_hco(gl, gu)
        opt_p.step_hco(gl, gu)
        ones = 0
        for i in range(len(ws)):
            ws[i], _, phi = ref_hco_adamw(ws[i], states[i], gl[i], gu[i], **ref_kwargs)
            ones += phi.sum().item()
        assert opt_f.fused  # compiled, not fallen back
        for p, q, w, st in zip(fused, plain, ws, states):
            torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-13, atol=1e-15)
            torch.testing.assert_close(opt_f.state[p]["exp_avg"], st["m"], rtol=1e-12, atol=1e-15)
            torch.testing.assert_close(opt_f.state[p]["exp_avg_sq"], st["v"], rtol=1e-12, atol=1e-15)
        assert opt_f.last_mask_ratio == pytest.approx(ones / sum(math.prod(s) for s in shapes), abs=1e-12)
        assert opt_f.last_mask_ratio == opt_p.last_mask_ratio


@pytest.mark.slow
def test_fused_step_float32_equals_foreach_step_to_rounding():
    gen = torch.Generator().manual_seed(4)
    shapes = [(64, 32, 3, 3), (64,)]
    fused = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    plain = [torch.nn.Parameter(p.detach().clone()) for p in fused]
    opt_f = HierarchicalCautiousAdamW(fused, lr=1e-3, weight_decay=3e-5, fused=True)
    opt_p = HierarchicalCautiousAdamW(plain, lr=1e-3, weight_decay=3e-5)
    for _ in range(5):
        gl = [torch.randn(s, generator=gen) for s in shapes]
        gu = [torch.randn(s, generator=gen) for s in shapes]
        opt_f.step_hco(gl, gu)
        opt_p.step_hco(gl, gu)
    for p, q in zip(fused, plain):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-6)
    assert opt_f.fused and opt_f.last_mask_ratio == pytest.approx(opt_p.last_mask_ratio, abs=1e-7)


def test_fused_step_that_cannot_compile_falls_back_before_any_state_moves(monkeypatch):
    """No compiler: a warning, the _foreach step from then on, and the first step equal to the plain optimizer's."""
    import semi_nnunet.optim.hco as hco

    def broken(fn):
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail
    monkeypatch.setattr(hco, "_compiled", broken)
    monkeypatch.setattr(hco, "_WARM", set())
    gen = torch.Generator().manual_seed(5)
    fused = make_params([(hco.FUSED_MIN_NUMEL,), (3,)], gen)
    plain = clone_params(fused)
    opt_f = HierarchicalCautiousAdamW(fused, lr=0.01, fused=True)
    opt_p = HierarchicalCautiousAdamW(plain, lr=0.01)
    for step in range(2):
        gl = [randn(*p.shape, gen=gen) for p in fused]
        gu = [randn(*p.shape, gen=gen) for p in fused]
        if step == 0:
            with pytest.warns(UserWarning, match="could not be compiled.*no C\\+\\+ compiler"):
                opt_f.step_hco(gl, gu)
        else:
            opt_f.step_hco(gl, gu)
        opt_p.step_hco(gl, gu)
        assert not opt_f.fused
        for p, q in zip(fused, plain):
            assert torch.equal(p.detach(), q.detach())
        assert opt_f.state[fused[0]]["step"] == step + 1
