"""Weak and strong views of unlabeled patches, CutMix, and invertible spatial transforms.

* The **weak view** is what nnU-Net's training transforms make of a patch.
* A **strong view** is the same weak patch (same sample, same geometry) with intensity-only perturbations added:
  noise, blur, brightness, contrast, gamma, low resolution (batchgeneratorsv2 transforms, stronger settings than
  nnU-Net's). :class:`WeakStrongViews` runs at the end of the unlabeled loader's transforms, in the data-loading
  workers, and stacks the views along the channel axis; :func:`split_views` takes them apart in the trainer.
  Randomness is drawn once per sample by each transform and applied to that sample only, so the weak and strong
  views are pixel-aligned by construction.
* :class:`InvertibleSpatial` draws per-sample flips (every axis) and rot90 (planes whose two axes have equal length)
  and inverts them exactly (ops undone in reverse order: the Semi-CervixSeg code bug was undoing them in the same
  order).
"""
from typing import List, Optional, Sequence, Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform


def strong_intensity_transforms(ignore_axes: Optional[Tuple[int, ...]] = None) -> ComposeTransforms:
    """Intensity-only perturbations for a strong view (each applied with its own probability)."""
    return ComposeTransforms([
        RandomTransform(GaussianNoiseTransform(noise_variance=(0, 0.2), p_per_channel=1, synchronize_channels=True),
                        apply_probability=0.5),
        RandomTransform(GaussianBlurTransform(blur_sigma=(0.5, 1.5), synchronize_channels=False,
                                              synchronize_axes=False, p_per_channel=0.5, benchmark=False),
                        apply_probability=0.3),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.6, 1.4)),
                                                          synchronize_channels=False, p_per_channel=1),
                        apply_probability=0.5),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.6, 1.4)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), apply_probability=0.5),
        RandomTransform(SimulateLowResolutionTransform(scale=(0.4, 1), synchronize_channels=False,
                                                       synchronize_axes=True, ignore_axes=ignore_axes,
                                                       allowed_channels=None, p_per_channel=0.5),
                        apply_probability=0.3),
        RandomTransform(GammaTransform(gamma=BGContrast((0.6, 1.6)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), apply_probability=0.4),
    ])


class WeakStrongViews(BasicTransform):
    """Append ``num_strong`` strong views of the (already weakly augmented) image as extra channels."""

    def __init__(self, num_strong: int = 1, strong: Optional[BasicTransform] = None,
                 ignore_axes: Optional[Tuple[int, ...]] = None):
        super().__init__()
        self.num_strong = num_strong
        self.strong = strong if strong is not None else strong_intensity_transforms(ignore_axes)

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        views = [img] + [self.strong(image=img.clone())["image"] for _ in range(self.num_strong)]
        return torch.cat(views, dim=0)

    def _apply_to_segmentation(self, segmentation: torch.Tensor, **params) -> torch.Tensor:
        return segmentation


def split_views(data: torch.Tensor, num_channels: int) -> List[torch.Tensor]:
    """Undo :class:`WeakStrongViews`: ``[weak, strong_1, ...]``, each ``(B, num_channels, ...)``."""
    if data.shape[1] % num_channels:
        raise ValueError(f"{data.shape[1]} channels are not a multiple of {num_channels}")
    return list(torch.split(data, num_channels, dim=1))


def random_boxes(batch_size: int, spatial: Sequence[int], area_fraction: float, generator=None,
                 device=None) -> torch.Tensor:
    """One random box per sample covering ``area_fraction`` of the patch; returns a ``(B, 1, *spatial)`` mask."""
    side = area_fraction ** (1.0 / len(spatial))
    mask = torch.zeros((batch_size, 1, *spatial), device=device)
    for b in range(batch_size):
        slices = []
        for s in spatial:
            length = max(1, int(round(s * side)))
            start = int(torch.randint(0, s - length + 1, (1,), generator=generator))
            slices.append(slice(start, start + length))
        mask[(b, 0, *slices)] = 1
    return mask


def cutmix(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste ``b`` into ``a`` where ``mask`` is 1 (mask broadcast over channels); works for images and targets."""
    return torch.where(mask.bool(), b, a)


Op = Tuple[str, Tuple[int, ...]]  # ("flip", (axis,)) or ("rot90", (axis_a, axis_b))


class InvertibleSpatial:
    """Per-sample flips and rot90 with an exact inverse, on ``(B, C, *spatial)`` tensors.

    ``sample`` draws, for each sample, a coin per spatial axis (flip) and, for each plane whose two axes have equal
    length, a number of quarter turns in {0, 1, 2, 3}. ``apply`` runs the ops in order, ``invert`` runs the inverse
    ops in reverse order, so ``invert(apply(x)) == x`` exactly.
    """

    def __init__(self, spatial_shape: Sequence[int], p_flip: float = 0.5, rotate: bool = True):
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.p_flip = p_flip
        n = len(self.spatial_shape)
        self.square_planes = [(i, j) for i in range(n) for j in range(i + 1, n)
                              if self.spatial_shape[i] == self.spatial_shape[j]] if rotate else []

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> List[List[Op]]:
        ops = []
        for _ in range(batch_size):
            sample_ops: List[Op] = []
            for axis in range(len(self.spatial_shape)):
                if torch.rand(1, generator=generator).item() < self.p_flip:
                    sample_ops.append(("flip", (axis,)))
            for plane in self.square_planes:
                k = int(torch.randint(0, 4, (1,), generator=generator))
                sample_ops.extend([("rot90", plane)] * k)
            ops.append(sample_ops)
        return ops

    @staticmethod
    def _run(x: torch.Tensor, ops: List[Op], inverse: bool) -> torch.Tensor:
        for kind, axes in (reversed(ops) if inverse else ops):
            dims = [a + 1 for a in axes]  # sample tensors are (C, *spatial)
            if kind == "flip":
                x = torch.flip(x, dims)
            else:
                x = torch.rot90(x, -1 if inverse else 1, dims)
        return x

    def apply(self, x: torch.Tensor, ops: List[List[Op]]) -> torch.Tensor:
        return torch.stack([self._run(x[b], ops[b], False) for b in range(x.shape[0])])

    def invert(self, x: torch.Tensor, ops: List[List[Op]]) -> torch.Tensor:
        return torch.stack([self._run(x[b], ops[b], True) for b in range(x.shape[0])])
