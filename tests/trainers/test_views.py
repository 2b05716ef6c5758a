"""Weak/strong views, CutMix boxes and the invertible spatial transform."""
import math

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from semi_nnunet.trainers.views import (InvertibleSpatial, WeakStrongViews, cutmix, random_boxes, split_views,
                                        strong_intensity_transforms)


# ---------------------------------------------------------------------------------------------- InvertibleSpatial
def _reference_apply(x: np.ndarray, ops) -> np.ndarray:
    """Independent reference with numpy: ops on a (C, *spatial) sample, in order."""
    for kind, axes in ops:
        if kind == "flip":
            x = np.flip(x, axes[0] + 1)
        else:
            x = np.rot90(x, 1, (axes[0] + 1, axes[1] + 1))
    return x


@pytest.mark.parametrize("spatial", [(8, 8), (6, 10), (7, 7), (4, 6, 6), (6, 4, 6), (5, 5, 5), (3, 4, 5)])
def test_invert_undoes_apply_exactly(spatial):
    gen = torch.Generator().manual_seed(1234)
    t = InvertibleSpatial(spatial)
    batch = 16
    for _ in range(10):
        x = torch.randn((batch, 2, *spatial), generator=gen)
        ops = t.sample(batch, generator=gen)
        y = t.apply(x, ops)
        assert y.shape == x.shape
        assert torch.equal(t.invert(y, ops), x)
        for b in range(batch):  # apply does what the ops say (checked against numpy)
            np.testing.assert_array_equal(y[b].numpy(), _reference_apply(x[b].numpy(), ops[b]))


@pytest.mark.parametrize("spatial", [(8, 8), (6, 10), (4, 6, 6), (5, 5, 5)])
def test_ops_differ_across_the_batch_and_change_the_samples(spatial):
    gen = torch.Generator().manual_seed(7)
    t = InvertibleSpatial(spatial)
    ops = t.sample(32, generator=gen)
    assert len(ops) == 32
    assert len({tuple(o) for o in ops}) > 1  # per-sample draws, not one op list for the batch
    x = torch.randn((32, 1, *spatial), generator=gen)
    y = t.apply(x, ops)
    changed = [not torch.equal(y[b], x[b]) for b in range(32)]
    assert sum(changed) >= 16  # most samples move (the identity draw has probability <= 1/4)


@pytest.mark.parametrize("spatial, planes", [
    ((8, 8), {(0, 1)}),
    ((6, 10), set()),              # non-square 2D: flips only
    ((4, 6, 6), {(1, 2)}),
    ((6, 4, 6), {(0, 2)}),
    ((6, 6, 4), {(0, 1)}),
    ((5, 5, 5), {(0, 1), (0, 2), (1, 2)}),
    ((3, 4, 5), set()),
])
def test_rot90_only_in_square_planes(spatial, planes):
    gen = torch.Generator().manual_seed(3)
    t = InvertibleSpatial(spatial)
    assert set(t.square_planes) == planes
    ops = t.sample(200, generator=gen)
    used_planes = {axes for sample in ops for kind, axes in sample if kind == "rot90"}
    assert used_planes == planes  # every square plane gets turned in 200 draws, no other plane ever does
    flipped_axes = {axes for sample in ops for kind, axes in sample if kind == "flip"}
    assert flipped_axes == {(a,) for a in range(len(spatial))}


def test_rotate_false_gives_flips_only():
    gen = torch.Generator().manual_seed(0)
    t = InvertibleSpatial((8, 8), rotate=False)
    ops = t.sample(100, generator=gen)
    assert all(kind == "flip" for sample in ops for kind, _ in sample)


@pytest.mark.parametrize("p_flip, expected_flips", [(0.0, []), (1.0, [("flip", (0,)), ("flip", (1,)), ("flip", (2,))])])
def test_flip_probability_extremes(p_flip, expected_flips):
    gen = torch.Generator().manual_seed(0)
    t = InvertibleSpatial((3, 4, 5), p_flip=p_flip)  # no square plane: flips only
    assert t.sample(20, generator=gen) == [expected_flips] * 20


def test_flip_then_rotate_needs_reverse_order_to_undo():
    """The Semi-CervixSeg bug: undoing [flip, rot90] as [unflip, unrotate] (same order) does not give x back."""
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    ops = [[("flip", (0,)), ("rot90", (0, 1))]]
    t = InvertibleSpatial((3, 3))
    y = t.apply(x, ops)
    # flip rows -> [[6,7,8],[3,4,5],[0,1,2]]; quarter turn from axis 0 towards axis 1 (numpy's convention)
    assert y[0, 0].tolist() == [[8, 5, 2], [7, 4, 1], [6, 3, 0]]
    # undoing the ops in the SAME order: flip rows, then a quarter turn back
    wrong = torch.rot90(torch.flip(y[0], [1]), -1, [1, 2])
    assert wrong[0].tolist() == [[8, 7, 6], [5, 4, 3], [2, 1, 0]]  # x turned by 180 degrees, not x
    assert not torch.equal(wrong, x[0])
    assert torch.equal(t.invert(y, ops), x)


def test_invert_handles_channels_and_multiple_turns():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    ops = [[("flip", (1,)), ("rot90", (0, 1)), ("rot90", (0, 1)), ("rot90", (0, 1))]]
    t = InvertibleSpatial((4, 4))
    y = t.apply(x, ops)
    # three quarter turns = one turn back; each channel transformed alike
    expected = torch.rot90(torch.flip(x[0], [2]), -1, [1, 2])
    assert torch.equal(y[0], expected)
    assert torch.equal(t.invert(y, ops), x)


# ---------------------------------------------------------------------------------------------- WeakStrongViews
class Times2(BasicTransform):
    """Intensity-only, deterministic stand-in for the strong transforms."""

    def _apply_to_image(self, img, **params):
        return img * 2


@pytest.mark.parametrize("shape, num_strong", [((1, 32, 32), 1), ((2, 24, 20), 1), ((2, 16, 16), 2),
                                               ((1, 8, 16, 16), 1), ((3, 6, 8, 10), 3)])
def test_views_shape_and_weak_channels(shape, num_strong):
    torch.manual_seed(0)
    np.random.seed(0)
    img = torch.randn(shape)
    original = img.clone()
    seg = torch.randint(0, 3, (1, *shape[1:]), dtype=torch.int16)
    seg_before = seg.clone()
    ignore = (0,) if len(shape) == 4 else None
    out = WeakStrongViews(num_strong, ignore_axes=ignore)(image=img, segmentation=seg)
    c = shape[0]
    assert out["image"].shape == ((1 + num_strong) * c, *shape[1:])
    assert torch.equal(out["image"][:c], original)  # the weak view is the input, exactly
    assert torch.equal(img, original)  # the input is not modified in place
    assert torch.equal(out["segmentation"], seg_before)
    assert out["segmentation"].dtype == torch.int16


def test_strong_view_differs_from_weak_for_most_samples():
    torch.manual_seed(1)
    np.random.seed(1)
    views = WeakStrongViews(1)
    n, differ = 60, 0
    for _ in range(n):
        img = torch.rand(1, 24, 24) * 4 - 1
        out = views(image=img, segmentation=torch.zeros(1, 24, 24, dtype=torch.int16))["image"]
        assert out[1:].shape == img.shape
        assert torch.isfinite(out).all()
        differ += not torch.allclose(out[1:], out[:1])
    # nothing at all is applied with probability 0.5*0.7*0.5*0.5*0.7*0.6 < 2 %
    assert differ >= 0.85 * n


def test_num_strong_views_are_independent_draws():
    torch.manual_seed(2)
    np.random.seed(2)
    out = WeakStrongViews(3)(image=torch.rand(1, 24, 24))["image"]
    strong = [out[i] for i in range(1, 4)]
    assert not (torch.equal(strong[0], strong[1]) and torch.equal(strong[1], strong[2]))


def test_strong_transforms_are_intensity_only():
    names = [type(t.transform).__name__ for t in strong_intensity_transforms().transforms]
    assert not any("Spatial" in n or "Mirror" in n for n in names)


@pytest.mark.parametrize("num_strong", [1, 2])
def test_geometry_is_shared_with_the_weak_view(num_strong):
    """Behind nnU-Net's own training transforms (rotation, scaling, mirroring), strong == 2 * weak pixel for pixel."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    torch.manual_seed(3)
    np.random.seed(3)
    weak = nnUNetTrainer.get_training_transforms((32, 32), (-math.pi, math.pi), None, (0, 1), False,
                                                 use_mask_for_norm=[False], foreground_labels=[1])
    pipeline = ComposeTransforms([weak, WeakStrongViews(num_strong, strong=Times2())])
    moved = 0
    for _ in range(10):
        img = torch.randn(2, 40, 40)
        seg = (torch.rand(1, 40, 40) > 0.5).to(torch.int16)
        out = pipeline(image=img.clone(), segmentation=seg.clone())
        views = out["image"]
        assert views.shape == (2 * (1 + num_strong), 32, 32)
        for k in range(1, 1 + num_strong):
            assert torch.equal(views[2 * k:2 * k + 2], 2 * views[:2])
        assert out["segmentation"].shape == (1, 32, 32)
        moved += not torch.equal(views[:2], img[:, 4:36, 4:36])
    assert moved > 0  # the weak transforms did act


@pytest.mark.parametrize("num_views, c", [(2, 1), (2, 3), (3, 2), (1, 4)])
def test_split_views(num_views, c):
    data = torch.randn(4, num_views * c, 5, 6)
    parts = split_views(data, c)
    assert len(parts) == num_views
    for i, p in enumerate(parts):
        assert p.shape == (4, c, 5, 6)
        assert torch.equal(p, data[:, i * c:(i + 1) * c])


def test_split_views_roundtrip_of_weak_strong_stack():
    torch.manual_seed(4)
    samples = [torch.randn(2, 8, 8) for _ in range(3)]
    stacked = torch.stack([WeakStrongViews(1, strong=Times2())(image=s)["image"] for s in samples])
    weak, strong = split_views(stacked, 2)
    assert torch.equal(weak, torch.stack(samples))
    assert torch.equal(strong, 2 * torch.stack(samples))


@pytest.mark.parametrize("channels, c", [(5, 2), (3, 2), (4, 3)])
def test_split_views_rejects_non_multiples(channels, c):
    with pytest.raises(ValueError):
        split_views(torch.zeros(2, channels, 4, 4), c)


# ---------------------------------------------------------------------------------------------- CutMix
@pytest.mark.parametrize("spatial, fraction, sides", [
    ((16, 16), 0.25, (8, 8)),          # side 0.5
    ((20, 10), 0.25, (10, 5)),
    ((16, 16), 0.5, (11, 11)),         # side 0.7071: round(11.31) = 11
    ((8, 8, 8), 0.125, (4, 4, 4)),     # side 0.5
    ((4, 10, 10), 0.216, (2, 6, 6)),   # side 0.6: round(2.4) = 2, round(6.0) = 6
    ((16, 16), 1.0, (16, 16)),
    ((16, 16), 1e-6, (1, 1)),          # at least one pixel per axis
])
def test_random_boxes_cover_the_area_fraction(spatial, fraction, sides):
    gen = torch.Generator().manual_seed(5)
    mask = random_boxes(6, spatial, fraction, generator=gen)
    assert mask.shape == (6, 1, *spatial)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    for b in range(6):
        m = mask[b, 0]
        assert int(m.sum()) == math.prod(sides)
        # a single axis-aligned box of those side lengths
        nz = m.nonzero()
        extent = tuple(int(v) for v in (nz.max(0).values - nz.min(0).values + 1))
        assert extent == sides


def test_random_boxes_vary_across_samples_and_follow_the_generator():
    m1 = random_boxes(16, (32, 32), 0.25, generator=torch.Generator().manual_seed(9))
    m2 = random_boxes(16, (32, 32), 0.25, generator=torch.Generator().manual_seed(9))
    assert torch.equal(m1, m2)
    assert len({tuple(m1[b, 0].nonzero().min(0).values.tolist()) for b in range(16)}) > 1


def test_cutmix_images():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4) + 1
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, 0, 1:3, 0:2] = 1
    mask[1, 0, 3, 3] = 1
    out = cutmix(a, b, mask)
    assert out.shape == a.shape and out.dtype == a.dtype
    for s in range(2):
        for c in range(3):
            inside = mask[s, 0].bool()
            assert torch.equal(out[s, c][inside], b[s, c][inside])
            assert torch.equal(out[s, c][~inside], a[s, c][~inside])
    assert int((out != 0).sum()) == 3 * (4 + 1)


def test_cutmix_integer_targets():
    a = torch.full((2, 1, 3, 3), 1, dtype=torch.int64)
    b = torch.full((2, 1, 3, 3), 2, dtype=torch.int64)
    mask = torch.zeros(2, 1, 3, 3)
    mask[0, 0, 0, :] = 1
    mask[1, 0, :, 2] = 1
    out = cutmix(a, b, mask)
    assert out.dtype == torch.int64
    assert out[0, 0].tolist() == [[2, 2, 2], [1, 1, 1], [1, 1, 1]]
    assert out[1, 0].tolist() == [[1, 1, 2], [1, 1, 2], [1, 1, 2]]


def test_cutmix_with_random_boxes_mixes_images_and_targets_alike():
    gen = torch.Generator().manual_seed(11)
    mask = random_boxes(3, (12, 12), 0.25, generator=gen)
    img_a, img_b = torch.zeros(3, 2, 12, 12), torch.ones(3, 2, 12, 12)
    tgt_a, tgt_b = torch.zeros(3, 1, 12, 12, dtype=torch.int16), torch.ones(3, 1, 12, 12, dtype=torch.int16)
    img, tgt = cutmix(img_a, img_b, mask), cutmix(tgt_a, tgt_b, mask)
    assert torch.equal(img[:, :1], mask) and torch.equal(img[:, 1:], mask)
    assert torch.equal(tgt, mask.to(torch.int16))
    assert int(tgt.sum()) == 3 * 36
