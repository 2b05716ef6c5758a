"""AMP bookkeeping for two gradient sets (documentation/hco.md: unscale both, one finiteness check) and ``clip_``.

``torch.amp.GradScaler("cpu")`` is enabled on CPU in the torch this project uses, so the tests drive a real scaler
(its scale is created lazily by ``scale()``, as in training, so each test scales a loss first)."""
import math

import pytest
import torch

from semi_nnunet.trainers.optimizers import HCOScaler, all_finite, clip_


def real_scaler(init_scale=8.0, growth_interval=3):
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=growth_interval)
    assert scaler.is_enabled()
    scaler.scale(torch.ones(()))  # lazy creation of the scale tensor, as the backward of a scaled loss does
    return scaler


def grad_lists():
    gl = [torch.tensor([8.0, -16.0, 4.0]), None, torch.full((2, 2), 24.0)]
    gu = [torch.tensor([0.5, 2.0, -8.0]), torch.tensor([40.0]), None]
    return gl, gu


# ----------------------------------------------------------------------------------------------------------------------
# unscale_
# ----------------------------------------------------------------------------------------------------------------------
def test_without_scaler_unscale_only_checks_finiteness():
    hs = HCOScaler(None)
    gl, gu = grad_lists()
    before = [g.clone() if g is not None else None for g in gl + gu]
    assert hs.unscale_(gl + gu) is True
    for a, b in zip(gl + gu, before):
        assert (a is None and b is None) or torch.equal(a, b)
    gu[0][1] = float("nan")
    assert hs.unscale_(gl + gu) is False
    hs.update(False)  # no scaler: nothing to do, no error
    hs.update(True)
    assert hs.unscale_([]) is True
    assert hs.unscale_([None, None]) is True


def test_unscale_divides_both_lists_in_place():
    scaler = real_scaler(init_scale=8.0)
    hs = HCOScaler(scaler, growth_interval=3)
    gl, gu = grad_lists()
    objects = [id(g) for g in gl + gu]
    assert hs.unscale_(gl + gu) is True
    assert [id(g) for g in gl + gu] == objects  # in place
    torch.testing.assert_close(gl[0], torch.tensor([1.0, -2.0, 0.5]), rtol=0, atol=0)
    torch.testing.assert_close(gl[2], torch.full((2, 2), 3.0), rtol=0, atol=0)
    torch.testing.assert_close(gu[0], torch.tensor([0.0625, 0.25, -1.0]), rtol=0, atol=0)
    torch.testing.assert_close(gu[1], torch.tensor([5.0]), rtol=0, atol=0)
    assert gl[1] is None and gu[2] is None


@pytest.mark.parametrize("which, index, position, bad", [
    ("labeled", 0, 1, float("nan")),
    ("labeled", 2, 3, float("inf")),
    ("unlabeled", 0, 2, float("-inf")),
    ("unlabeled", 1, 0, float("nan")),
])
def test_unscale_non_finite_anywhere_returns_false(which, index, position, bad):
    for scaler in (real_scaler(), None):
        hs = HCOScaler(scaler, growth_interval=3)
        gl, gu = grad_lists()
        target = (gl if which == "labeled" else gu)[index]
        target.view(-1)[position] = bad
        assert hs.unscale_(gl + gu) is False


def test_huge_finite_gradient_overflowing_only_after_scaling_is_finite():
    hs = HCOScaler(real_scaler(init_scale=2.0 ** 16), growth_interval=3)
    g = [torch.tensor([3.0e38])]
    assert hs.unscale_(g) is True
    assert g[0].item() == pytest.approx(3.0e38 / 2 ** 16, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# update: GradScaler's rule (halve on inf, double after growth_interval clean steps)
# ----------------------------------------------------------------------------------------------------------------------
def test_update_false_halves_and_resets_the_counter():
    scaler = real_scaler(init_scale=8.0, growth_interval=3)
    hs = HCOScaler(scaler, growth_interval=3)
    hs.update(True)
    hs.update(True)
    assert scaler.get_scale() == 8.0 and hs.clean_steps == 2
    hs.update(False)
    assert scaler.get_scale() == 4.0 and hs.clean_steps == 0
    # the counter really restarted: two clean steps do not grow the scale, the third does
    hs.update(True)
    hs.update(True)
    assert scaler.get_scale() == 4.0
    hs.update(True)
    assert scaler.get_scale() == 8.0
    # and the scaler uses the new scale
    assert scaler.scale(torch.ones(())).item() == 8.0


@pytest.mark.parametrize("sequence, expected_scales", [
    # growth_interval = 3, init 8
    ([True, True, True], [8.0, 8.0, 16.0]),
    ([True] * 6, [8.0, 8.0, 16.0, 16.0, 16.0, 32.0]),
    ([False, False, False], [4.0, 2.0, 1.0]),
    ([True, False, True, True, True], [8.0, 4.0, 4.0, 4.0, 8.0]),
    ([True, True, False, True, True, True, False], [8.0, 8.0, 4.0, 4.0, 4.0, 8.0, 4.0]),
])
def test_update_sequence(sequence, expected_scales):
    scaler = real_scaler(init_scale=8.0, growth_interval=3)
    hs = HCOScaler(scaler, growth_interval=3)
    scales = []
    for finite in sequence:
        hs.update(finite)
        scales.append(scaler.get_scale())
    assert scales == expected_scales


def test_default_growth_interval_is_gradscalers():
    scaler = real_scaler(init_scale=2.0, growth_interval=2000)
    hs = HCOScaler(scaler)
    for _ in range(1999):
        hs.update(True)
    assert scaler.get_scale() == 2.0
    hs.update(True)
    assert scaler.get_scale() == 4.0


def test_skipped_step_flow():
    """The trainer's flow: unscale both lists; on inf skip the step and halve; else step and keep the scale."""
    scaler = real_scaler(init_scale=4.0, growth_interval=100)
    hs = HCOScaler(scaler, growth_interval=100)
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.5)
    for bad, want_scale, want_w in [(True, 2.0, [1.0, 1.0, 1.0]), (False, 2.0, [0.5, 0.5, 0.5])]:
        g = torch.full((3,), 2.0)  # scaled by 2 -> unscaled 1.0
        if bad:
            g[0] = float("inf")
        finite = hs.unscale_([g])
        if finite:
            w.grad = g
            opt.step()
        hs.update(finite)
        assert scaler.get_scale() == want_scale
        torch.testing.assert_close(w.detach(), torch.tensor(want_w))


# ----------------------------------------------------------------------------------------------------------------------
# clip_
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes, magnitude, max_norm, none_at", [
    ([(3, 4), (5,), (2, 2, 2)], 10.0, 12.0, []),
    ([(3, 4), (5,), (2, 2, 2)], 10.0, 1.0, [1]),
    ([(100,)], 1.0, 2.0, []),
    ([(7,), (7,)], 50.0, 12.0, [0, 2]),
    ([(3,), (4, 4)], 1e-3, 12.0, [1]),  # small: unchanged
])
def test_clip_matches_clip_grad_norm(shapes, magnitude, max_norm, none_at):
    gen = torch.Generator().manual_seed(len(shapes))
    tensors = [torch.randn(*s, generator=gen) * magnitude for s in shapes]
    grads = list(tensors)
    for i in none_at:
        grads.insert(i, None)
    params = [torch.nn.Parameter(torch.zeros_like(t)) for t in tensors]
    for p, t in zip(params, tensors):
        p.grad = t.clone()
    before = [t.clone() for t in tensors]
    total_before = math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))

    clip_(grads, max_norm)
    torch.nn.utils.clip_grad_norm_(params, max_norm)

    assert [g is None for g in grads] == [i in none_at for i in range(len(grads))]
    for t, p in zip(tensors, params):
        torch.testing.assert_close(t, p.grad)
    total_after = math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))
    if total_before > max_norm:
        assert total_after == pytest.approx(max_norm, rel=1e-5)
        for t, b in zip(tensors, before):  # one common factor for the whole list
            torch.testing.assert_close(t, b * (max_norm / total_before), rtol=1e-5, atol=0)
    else:
        for t, b in zip(tensors, before):
            assert torch.equal(t, b)


def test_clip_list_norm_is_joint_not_per_tensor():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 4.0])  # joint norm 5
    clip_([a, b], 1.0)
    torch.testing.assert_close(a, torch.tensor([0.6, 0.0]), rtol=1e-5, atol=0)
    torch.testing.assert_close(b, torch.tensor([0.0, 0.8]), rtol=1e-5, atol=0)


def test_clip_empty_and_all_none():
    clip_([], 1.0)
    clip_([None, None], 1.0)


@pytest.mark.parametrize("grads, expected", [
    ([], True),
    ([None], True),
    ([torch.ones(2), None], True),
    ([torch.ones(2), torch.tensor([1.0, float("nan")])], False),
    ([torch.tensor([float("inf")])], False),
])
def test_all_finite(grads, expected):
    assert all_finite(grads) is expected


@pytest.mark.parametrize("with_scaler", [False, True])
@pytest.mark.parametrize("max_norm", [12.0, 5.0, 1e6])  # both sets clipped / one of them / neither
def test_fused_unscale_and_clip_equals_unscale_then_clip(with_scaler, max_norm):
    """The trainer's fused HCO path gives bit for bit what unscale_ followed by clip_ on each set gives."""
    sets = []
    for _ in range(2):
        gl, gu = grad_lists()
        scaler = real_scaler(init_scale=4.0) if with_scaler else None
        sets.append((HCOScaler(scaler), gl, gu))
    (a, gl_a, gu_a), (b, gl_b, gu_b) = sets
    assert a.unscale_(gl_a + gu_a) is True
    clip_(gl_a, max_norm)
    clip_(gu_a, max_norm)
    assert b.unscale_and_clip_((gl_b, gu_b), max_norm) is True
    for x, y in zip(gl_a + gu_a, gl_b + gu_b):
        assert (x is None and y is None) or torch.equal(x, y)


@pytest.mark.parametrize("which, value", [(0, float("inf")), (1, float("nan")), (1, float("-inf"))])
def test_fused_unscale_and_clip_refuses_a_non_finite_set(which, value):
    gl, gu = grad_lists()
    (gl, gu)[which][0][0] = value
    assert HCOScaler(None).unscale_and_clip_((gl, gu), 12.0) is False
    assert HCOScaler(None).unscale_and_clip_(([None], []), 12.0) is True
