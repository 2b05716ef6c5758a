"""Hermes' networks besides nnU-Net's U-Net (Zhang, Lai, Kong, ECAI 2025; trainer in ``hermes.py``).

* :class:`UNetTaps` — forward hooks on a dynamic-network-architectures U-Net (``network.encoder`` skips and
  ``network.decoder.stages`` outputs; optionally an additive input into one decoder stage), so the heads read the
  planned network's features without copying it.
* :class:`HermesClassifier` — ResNet-18 (torchvision, no weights) with the first conv adapted to nnU-Net's channel
  count, an :class:`InterTaskAttention` after the stem, layer1, layer2 and layer3 (strides 2/4/8/16), the class
  head, the image-contrast MLP and the inter-task-consistency projection.
* :class:`PixelProjectionHead`, :class:`SegConsistencyHead` — the segmentation side's contrast and ITC heads.
* :func:`saliency_map` and :class:`SaliencyFusion` — the saliency module (classifier input gradient fed to the
  segmentation decoder).
"""
import math
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

CLASSIFIER_TAPS = (2, 4, 8, 16)  # strides of ResNet-18's stem, layer1, layer2, layer3 outputs
CLASSIFIER_WIDTHS = (64, 64, 128, 256)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return x if tuple(x.shape[2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                                      align_corners=False)


class UNetLayout:
    """Channels and cumulative strides of a dynamic-network-architectures U-Net's encoder stages."""

    def __init__(self, unet: nn.Module):
        encoder = unet.encoder
        self.channels = [int(c) for c in encoder.output_channels]
        dim = len(encoder.kernel_sizes[0]) if isinstance(encoder.kernel_sizes[0], (list, tuple)) else 2
        self.strides, current = [], [1] * dim
        for s in encoder.strides:
            s = [int(s)] * dim if isinstance(s, int) else [int(v) for v in s]
            current = [c * v for c, v in zip(current, s)]
            self.strides.append(tuple(current))
        self.num_stages = len(self.channels)

    def nearest_stage(self, stride: int, candidates: Sequence[int]) -> int:
        """The stage among ``candidates`` whose (geometric-mean) stride is closest to ``stride`` on a log scale."""
        def distance(i):
            mean = math.prod(self.strides[i]) ** (1.0 / len(self.strides[i]))
            return abs(math.log2(mean) - math.log2(stride))
        return min(candidates, key=distance)

    def decoder_index(self, stage: int) -> int:
        """Index in ``decoder.stages`` of the decoder output at encoder stage ``stage`` (< num_stages - 1)."""
        return self.num_stages - 2 - stage


class UNetTaps:
    """Forward hooks that, inside :meth:`capture`, record the encoder skips and every decoder stage output, and add
    ``injection(upsampled)`` to the upsampled input of one decoder stage. Outside :meth:`capture` they do nothing, so
    validation and inference run the plain U-Net."""

    def __init__(self, unet: nn.Module, inject_stage: Optional[int] = None):
        self.layout = UNetLayout(unet)
        self.active = False
        self.skips: List[torch.Tensor] = []
        self.decoded: Dict[int, torch.Tensor] = {}
        self.injection = None
        self.handles = [unet.encoder.register_forward_hook(self._encoder_hook)]
        for j, stage in enumerate(unet.decoder.stages):
            self.handles.append(stage.register_forward_hook(self._decoder_hook(j)))
        if inject_stage is not None:
            transpconv = unet.decoder.transpconvs[self.layout.decoder_index(inject_stage)]
            self.handles.append(transpconv.register_forward_hook(self._inject_hook))

    def _encoder_hook(self, module, inputs, output):
        if self.active:
            self.skips = list(output)

    def _decoder_hook(self, j):
        def hook(module, inputs, output):
            if self.active:
                self.decoded[j] = output
        return hook

    def _inject_hook(self, module, inputs, output):
        if self.active and self.injection is not None:
            return output + self.injection(output)
        return None

    @contextmanager
    def capture(self, injection=None):
        self.active, self.injection, self.skips, self.decoded = True, injection, [], {}
        try:
            yield self
        finally:
            self.active, self.injection = False, None

    def stage_output(self, stage: int, decoder: bool = True) -> torch.Tensor:
        """Features at encoder stage ``stage``: the decoder's output there (if ``decoder`` and it has one), else the
        encoder's."""
        if decoder and stage < self.layout.num_stages - 1:
            return self.decoded[self.layout.decoder_index(stage)]
        return self.skips[stage]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class InterTaskAttention(nn.Module):
    """Segmentation features gate classifier features (paper Eq. 2-5):

        M_c = sigmoid(FC(ReLU(FC(GAP(conv3x3([x_cls; x_seg]))))))      x_m = M_c * x_cls
        M_s = sigmoid(conv3x3([max_c x_m; mean_c x_m]))                 out = M_s * x_m

    ``x_seg`` first passes an adapter (2 x conv3x3-BN-ReLU) to the classifier's width unless the widths agree, and is
    resized to ``x_cls``'s grid when the grids differ."""

    def __init__(self, cls_channels: int, seg_channels: int, reduction: int = 4):
        super().__init__()
        mid = max(cls_channels, seg_channels // 2)
        self.adapter = nn.Identity() if seg_channels == cls_channels else nn.Sequential(
            nn.Conv2d(seg_channels, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cls_channels, 3, padding=1), nn.BatchNorm2d(cls_channels), nn.ReLU(inplace=True))
        self.fuse = nn.Conv2d(2 * cls_channels, cls_channels, 3, padding=1)
        hidden = max(1, cls_channels // reduction)
        self.channel_fc = nn.Sequential(nn.Linear(cls_channels, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, cls_channels))
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x_cls: torch.Tensor, x_seg: torch.Tensor) -> torch.Tensor:
        x_seg = _resize(self.adapter(x_seg), x_cls.shape[2:])
        pooled = self.fuse(torch.cat([x_cls, x_seg], 1)).mean((2, 3))
        x_m = torch.sigmoid(self.channel_fc(pooled))[:, :, None, None] * x_cls
        stats = torch.cat([x_m.amax(1, keepdim=True), x_m.mean(1, keepdim=True)], 1)
        return torch.sigmoid(self.spatial(stats)) * x_m


def consistency_projection(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear(no bias)-BN-ReLU-Linear-BN-ReLU: the inter-task consistency heads h_c and h_s (Eq. 14)."""
    return nn.Sequential(nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_features), nn.BatchNorm1d(out_features), nn.ReLU(inplace=True))


RESNET18_ENV = "SEMI_NNUNET_RESNET18"


def classifier_weights_file(path: Optional[str]) -> Optional[str]:
    """The ResNet-18 weights to start Hermes's classifier from: ``path``, else ``$SEMI_NNUNET_RESNET18``, else None
    (random). A path that does not exist is an error naming it and the fix."""
    import os
    path = path or os.environ.get(RESNET18_ENV) or None
    if path is not None and not os.path.isfile(path):
        raise FileNotFoundError(f"Hermes classifier weights {path} (classifier_weights or ${RESNET18_ENV}) do not "
                                f"exist. Point it at torchvision's ResNet-18 ImageNet state dict "
                                f"(resnet18-f37072fd.pth), or unset it to start from random weights.")
    return path


class HermesClassifier(nn.Module):
    """ResNet-18 classifier with inter-task attention. ``forward(x, seg_features)`` returns ``logits``, the pooled
    512-d ``feature``, the normalised image-contrast embedding ``embedding`` and the ITC projection ``consistency``.
    ``seg_features`` (one map per tap, strides 2/4/8/16) switches the attention on; ``None`` runs the plain ResNet
    (the saliency pass)."""

    def __init__(self, in_channels: int, num_classes: int, seg_channels: Optional[Sequence[int]] = None,
                 embedding_dim: int = 128, consistency_dim: int = 128):
        super().__init__()
        from torchvision.models import resnet18
        net = resnet18(weights=None, num_classes=num_classes)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), net.bn1, net.relu)
        nn.init.kaiming_normal_(self.stem[0].weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc
        self.attention = nn.ModuleList([InterTaskAttention(w, c) for w, c in zip(CLASSIFIER_WIDTHS, seg_channels)]) \
            if seg_channels is not None else None
        self.embedding_head = nn.Sequential(nn.Linear(512, 256), nn.LeakyReLU(0.1, inplace=True),
                                            nn.Linear(256, embedding_dim))
        self.consistency_head = consistency_projection(512, 256, consistency_dim)

    def load_resnet18(self, path: str) -> None:
        """Start the ResNet from a torchvision ResNet-18 state dict (e.g. ImageNet's ``resnet18-f37072fd.pth``):
        ``conv1`` (3 input channels) is averaged over RGB and repeated for this network's channels (scaled to keep the
        response), ``bn1`` goes to the stem, ``layer1..4`` as they are; ``fc`` is not used (other classes)."""
        from semi_nnunet.utilities.checkpoints import load_checkpoint_file
        state = load_checkpoint_file(path, map_location="cpu")
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        mine = self.state_dict()
        mapped = {}
        for key, value in state.items() if isinstance(state, dict) else ():
            if key == "conv1.weight" and getattr(value, "ndim", 0) == 4:
                c = mine["stem.0.weight"].shape[1]
                mapped["stem.0.weight"] = value.mean(1, keepdim=True).repeat(1, c, 1, 1) * (3 / c)
            elif key.startswith("bn1."):
                mapped["stem.1." + key[len("bn1."):]] = value
            elif key.startswith("layer"):
                mapped[key] = value
        expected = [k for k in mine if k.startswith(("stem.", "layer"))]
        missing = [k for k in expected if k not in mapped]
        wrong = [k for k in expected if k in mapped and tuple(mapped[k].shape) != tuple(mine[k].shape)]
        if missing or wrong:
            raise ValueError(f"{path} is not a torchvision ResNet-18 state dict: {len(missing)} of its tensors are "
                             f"missing (e.g. {missing[:3]}) and {len(wrong)} have other shapes (e.g. {wrong[:3]}). "
                             f"Use torchvision's resnet18 ImageNet weights (resnet18-f37072fd.pth), or set "
                             f"classifier_weights = None / unset SEMI_NNUNET_RESNET18 for random weights.")
        self.load_state_dict(mapped, strict=False)

    def forward(self, x: torch.Tensor, seg_features: Optional[Sequence[torch.Tensor]] = None,
                heads: bool = True) -> Dict[str, torch.Tensor]:
        use_attention = self.attention is not None and seg_features is not None

        def tap(k, h):
            return self.attention[k](h, seg_features[k]) if use_attention else h

        h = tap(0, self.stem(x))
        h = tap(1, self.layer1(self.maxpool(h)))
        h = tap(2, self.layer2(h))
        h = tap(3, self.layer3(h))
        feature = torch.flatten(F.adaptive_avg_pool2d(self.layer4(h), 1), 1)
        out = {"logits": self.fc(feature), "feature": feature}
        if heads:
            out["embedding"] = F.normalize(self.embedding_head(feature), dim=1)
            out["consistency"] = self.consistency_head(feature)
        return out


class PixelProjectionHead(nn.Module):
    """conv1x1(C->C)-BN-ReLU-conv1x1(C->dim), L2-normalised over channels (ContrastiveSeg's head)."""

    def __init__(self, channels: int, dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


class SegConsistencyHead(nn.Module):
    """h_s: global average pool of the deepest encoder map, then the ITC projection (Linear C->512 ...)."""

    def __init__(self, channels: int, dim: int = 128):
        super().__init__()
        self.net = consistency_projection(channels, 512, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def saliency_map(classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``S = max_channel |d max_k f_c(x)_k / dx|`` with the classifier in eval mode, detached; shape (B, 1, ...).
    Uses ``autograd.grad``, so no parameter's ``.grad`` is touched."""
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.enable_grad():
            xi = x.detach().requires_grad_(True)
            logits = classifier(xi, heads=False)["logits"]
            (grad,) = torch.autograd.grad(logits.max(1).values.sum(), xi)
    finally:
        classifier.train(was_training)
    return grad.abs().amax(1, keepdim=True).detach()


class SaliencyFusion(nn.Module):
    """Feeds ``[x; S]`` (image and saliency, C_in + 1 channels, resized bilinearly) into one decoder stage through a
    zero-initialised 1x1 conv added to that stage's upsampled features. The paper concatenates instead; adding keeps
    the U-Net's own layers (and so ``network_weights``) unchanged, and the zero start is the plain U-Net."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + 1, out_channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def injection(self, x: torch.Tensor, saliency: torch.Tensor):
        """The function :class:`UNetTaps` adds to the decoder stage's upsampled features."""
        source = torch.cat([x, saliency.to(x.dtype)], 1)
        return lambda upsampled: self.conv(_resize(source, upsampled.shape[2:]).to(upsampled.dtype))


def fit_to_patch(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """``x`` (B, C, ...) shrunk (bilinear, aspect kept) if it exceeds ``patch_size`` anywhere, then zero-padded
    (centred) to exactly ``patch_size``: the whole image at (about) the scale the training patches have."""
    spatial = x.shape[2:]
    scale = min(1.0, min(p / s for p, s in zip(patch_size, spatial)))
    if scale < 1.0:
        size = [min(int(p), max(1, round(s * scale))) for p, s in zip(patch_size, spatial)]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    pad = []
    for p, s in reversed(list(zip(patch_size, x.shape[2:]))):
        total = int(p) - int(s)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)
