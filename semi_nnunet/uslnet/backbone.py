"""The ResNet backbone shared by MoCo v2 and CCAM, its checkpoints, and the images it sees.

* :func:`resnet_trunk` [CCAM code]: a torchvision ResNet without its classifier. ``ccam_strides=True`` sets layer4's
  stride to 1 (CCAM's strides (1, 2, 2, 1) per stage after the stem): layer3 and layer4 then share stride 16 and
  CCAM concatenates them (ResNet-50: 1024 + 2048 = 3072 channels). MoCo pre-training uses the ordinary stride 32; the
  weights are the same either way.
* :func:`load_backbone_weights`: a user checkpoint: the official MoCo v1/v2 format (``state_dict`` with
  ``module.encoder_q.`` keys), our own ``moco_encoder.pth`` (``{"encoder": state_dict}``), or a plain torchvision
  ResNet state dict. The classifier / MLP head is dropped; a checkpoint that fills less than 90 % of the trunk is
  refused (wrong architecture).
* :func:`images_for_backbone` [rec]: the images are nnU-Net's **preprocessed** cases (so saliency, pseudo-labels and
  predictions share one grid); each channel is rescaled to [0, 1] between its 0.5 and 99.5 percentiles, a grey image
  is repeated to three channels, resized to ``size x size`` and stored as uint8. :func:`imagenet_normalize` applies
  ImageNet's mean and std (CCAM code, MoCo) on the fly.
"""
import os
import time
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet10_w16")


def _narrow_resnet(width: int = 16, blocks=(1, 1, 1, 1)):
    """A small ResNet (BasicBlock, one block per stage, widths 16-128): the CPU stand-in for tests and smoke runs
    (``resnet10_w16``), about 1/60 of ResNet-18's compute. Not a pretrained architecture."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class Narrow(ResNet):
        def __init__(self):
            nn.Module.__init__(self)
            self._norm_layer, self.dilation, self.groups, self.base_width = nn.BatchNorm2d, 1, 1, 64
            self.inplanes = width
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1, self.relu, self.maxpool = nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
            self.layer1 = self._make_layer(BasicBlock, width, blocks[0])
            self.layer2 = self._make_layer(BasicBlock, 2 * width, blocks[1], stride=2)
            self.layer3 = self._make_layer(BasicBlock, 4 * width, blocks[2], stride=2)
            self.layer4 = self._make_layer(BasicBlock, 8 * width, blocks[3], stride=2)
            self.fc = nn.Linear(8 * width, 1000)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    return Narrow()


class ResNetTrunk(nn.Module):
    """ResNet stem + layer1..4. ``forward`` returns (layer3, layer4) feature maps."""

    def __init__(self, arch: str = "resnet50", ccam_strides: bool = False):
        super().__init__()
        import torchvision
        if arch not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {ARCHITECTURES}, not {arch!r}")
        net = _narrow_resnet() if arch == "resnet10_w16" else getattr(torchvision.models, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = net.fc.in_features  # layer4 channels
        self.layer3_channels = self.out_channels // 2
        if ccam_strides:
            set_layer4_stride_one(self)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x3 = self.layer3(self.layer2(self.layer1(x)))
        return x3, self.layer4(x3)


def set_layer4_stride_one(trunk: ResNetTrunk) -> None:
    block = trunk.layer4[0]
    for conv in (getattr(block, "conv1", None), getattr(block, "conv2", None)):
        if conv is not None and conv.stride != (1, 1):
            conv.stride = (1, 1)
    if block.downsample is not None:
        block.downsample[0].stride = (1, 1)


def resnet_trunk(arch: str = "resnet50", ccam_strides: bool = False) -> ResNetTrunk:
    return ResNetTrunk(arch, ccam_strides)


_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.encoder.", "encoder.", "module.backbone.", "backbone.",
             "module.")


def trunk_state_from_checkpoint(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The trunk's weights from the checkpoint formats listed in the module docstring (heads dropped)."""
    state = checkpoint
    for key in ("encoder", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        if k.startswith(("fc.", "head.", "encoder_k.", "queue")):
            continue
        out[k] = v
    return out


def load_backbone_weights(trunk: ResNetTrunk, path: str) -> Dict[str, int]:
    """Load a user or MoCo checkpoint into ``trunk``; returns counts of loaded and missing tensors."""
    from semi_nnunet.utilities.checkpoints import load_checkpoint_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MoCo/backbone checkpoint not found: {path}")
    # a user's file: the restricted unpickler (semi_nnunet.utilities.checkpoints)
    checkpoint = load_checkpoint_file(path, fix="give an intact MoCo v1/v2 or torchvision ResNet checkpoint.")
    state = trunk_state_from_checkpoint(checkpoint)
    own = trunk.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.9 * len(own):
        raise ValueError(f"{path} fills only {len(matched)} of the {len(own)} tensors of a torchvision "
                         f"{type(trunk).__name__} ({len(state)} usable tensors in the file): is it a checkpoint of the "
                         f"same architecture (the trainer's `backbone`)? Expected the official MoCo format "
                         f"('state_dict' with 'module.encoder_q.' keys) or a torchvision ResNet state dict.")
    trunk.load_state_dict(matched, strict=False)
    return {"loaded": len(matched), "missing": len(own) - len(matched)}


def _percentile_rescale(channel: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(channel, (0.5, 99.5))
    if hi <= lo:
        return np.zeros_like(channel, dtype=np.float32)
    return np.clip((channel - lo) / (hi - lo), 0, 1).astype(np.float32)


def images_for_backbone(cases: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """``(N, 3, size, size)`` uint8 images from preprocessed 2D cases (each ``(C, 1, H, W)`` or ``(C, H, W)``)."""
    out = []
    for data in cases:
        data = np.asarray(data, dtype=np.float32)
        if data.ndim == 4:
            if data.shape[1] != 1:
                raise ValueError(f"USL-Net's saliency stage is 2D; got a case of shape {data.shape}")
            data = data[:, 0]
        channels = [_percentile_rescale(c) for c in data]
        if len(channels) == 1:
            channels = channels * 3
        elif len(channels) != 3:
            channels = [np.mean(channels, 0)] * 3  # [rec] other channel counts: their mean as a grey image
        x = torch.from_numpy(np.stack(channels))[None]
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        out.append((x[0] * 255).round().clamp(0, 255).to(torch.uint8))
    return torch.stack(out)


def imagenet_normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images (N, 3, H, W) -> ImageNet-normalised float."""
    x = x.float() / 255 if x.dtype == torch.uint8 else x
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def iterate_batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = True) -> List[List[int]]:
    """One epoch of shuffled index batches (``drop_last``: every batch full, at least one batch)."""
    order = torch.randperm(n, generator=generator).tolist()
    batch_size = min(batch_size, n)
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    return batches


def end_epoch(latest: str, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, epochs: int,
              losses: list, started: float, name: str, log) -> None:
    """Save the resumable per-epoch checkpoint (atomically), then log the epoch's mean loss."""
    from semi_nnunet.utilities.file_ops import atomic_path
    with atomic_path(latest) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}, tmp)
    log(f"{name} epoch {epoch + 1}/{epochs}: loss {sum(losses) / len(losses):.4f} ({time.time() - started:.1f} s)")


def train_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, n: int, batch: int, epochs: int, seed: int,
                 latest: str, device: torch.device, name: str, log,
                 learning_rate: Callable[[dict, int, int], float],
                 batch_loss: Callable[[List[int], torch.Generator], torch.Tensor]) -> None:
    """The epoch loop MoCo and CCAM share: resume from ``latest`` (:func:`resume_epoch`), one seeded shuffle per epoch
    (a resumed run sees the batches an uninterrupted one would), each group's lr set to ``learning_rate(group, step,
    total_steps)``, one optimizer step on ``batch_loss(indices, epoch_generator)`` per batch, and the per-epoch
    checkpoint (:func:`end_epoch`)."""
    per_epoch = len(iterate_batches(n, batch, torch.Generator().manual_seed(0)))
    total = epochs * per_epoch
    start_epoch = resume_epoch(latest, model, optimizer, device, name, log)
    model.train()
    for epoch in range(start_epoch, epochs):
        t0, losses = time.time(), []
        generator = torch.Generator().manual_seed(seed * 100003 + epoch)
        for i, idx in enumerate(iterate_batches(n, batch, generator)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(group, epoch * per_epoch + i, total)
            loss = batch_loss(idx, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        end_epoch(latest, model, optimizer, epoch, epochs, losses, t0, name, log)


def resume_epoch(latest: str, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, name: str,
                 log) -> int:
    """The epoch to start from: 0, or the one after the last :func:`end_epoch` checkpoint (model and optimizer
    restored from it)."""
    import os
    if not os.path.isfile(latest):
        return 0
    from semi_nnunet.utilities.checkpoints import load_checkpoint_file
    state = load_checkpoint_file(latest, map_location=device, fix="delete it to restart this step from its first "
                                                                  "epoch.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log(f"{name}: resuming at epoch {state['epoch']}")
    return state["epoch"]
