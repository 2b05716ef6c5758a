"""CCAM: class-agnostic activation maps as USL-Net's saliency (from the official code CVI-SZU/CCAM).

[CCAM code] ``Z = concat(layer4, layer3)`` of the ResNet trunk with layer4 at stride 1 (stride 16 overall). Head:
conv3x3 (C -> 1, no bias) -> BN(1) -> sigmoid = ``A``. Per image ``v_fg = mean_p A_p Z_p``, ``v_bg = mean_p (1 - A_p)
Z_p``; cosine similarities clamped to [5e-4, 0.9995]::

    L = L_pull(v_fg) + L_push(v_bg, v_fg) + L_pull(v_bg)
    L_pull(v)       = mean_ij w_ij max(0, -log cos(v_i, v_j)),  w_ij = exp(-alpha (rank_i(j) - 1)), alpha = 0.25
    L_push(v_b, v_f) = mean_ij -log(1 - cos(v_b,i, v_f,j))

``rank_i(j)`` is the position of j in row i sorted by similarity, descending (self first, rank 0). SGD with poly decay
(power 0.9), momentum 0.9, Nesterov, weight decay 1e-4; learning rates: trunk weights ``lr``, trunk biases 2 ``lr``
(no decay), head weights 10 ``lr``, head biases 20 ``lr`` (no decay); horizontal flips; ImageNet normalisation.

Polarity [our reading]: the loss is symmetric in fg/bg, so the head may light up the background. The code
decides from the first image at iteration 100; we decide after training from **all** images: binarise ``A`` at 0.5,
and if more than half of the border pixels (four border rows/columns of every map) are "foreground", the map is
flipped (``A <- 1 - A``; for the raw head output: negated).

Saliency [CCAM code]: raw head output (BN, before the sigmoid), negated if flipped, ReLU, plus the same for the
horizontally flipped image (flipped back), summed over ``scales`` (0.5, 1, 1.5, 2; an attribute),
resized to the case's size, divided by its maximum -> ``S`` in [0, 1].

Resizing [rec]: a PyTorch ResNet's feature cell ``i`` is centred on input pixel ``16 i`` (its padded stride-2 convs
and pools are centred, not offset by half a stride), while a plain bilinear resize (``align_corners=False``) puts it
at ``16 i + 7.5``: a shift of 7.5 input pixels down and right, negligible at CCAM's 448 px, 10 % of a small image.
:func:`cam_to_image` samples the map at each output pixel's true cell coordinate instead.
"""
import os
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semi_nnunet.uslnet.backbone import imagenet_normalize, load_backbone_weights, resnet_trunk, train_epochs
from semi_nnunet.utilities.file_ops import atomic_path

SIM_MIN, SIM_MAX = 5e-4, 0.9995


@dataclass
class CCAMSettings:
    arch: str = "resnet50"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    alpha: float = 0.25
    scales: Tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    seed: int = 0


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Clamped cosine similarities ``cos(a_i, b_j)`` (CCAM's ``cos_simi``)."""
    return (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).clamp(SIM_MIN, SIM_MAX)


def pull_loss(v: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    """``L_pull``: rank-weighted ``-log cos`` between every pair of rows of ``v`` (N, C)."""
    sim = cosine_matrix(v, v)
    loss = (-torch.log(sim)).clamp_min(0)
    order = sim.argsort(dim=1, descending=True)
    rank = order.argsort(dim=1)  # rank[i, j]: position of j in row i
    return (loss * torch.exp(-(rank - 1).float() * alpha)).mean()


def push_loss(v_bg: torch.Tensor, v_fg: torch.Tensor) -> torch.Tensor:
    """``L_push``: ``-log(1 - cos)`` between every background and every foreground vector."""
    return (-torch.log(1 - cosine_matrix(v_bg, v_fg))).mean()


def ccam_loss(v_fg: torch.Tensor, v_bg: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    return pull_loss(v_fg, alpha) + push_loss(v_bg, v_fg) + pull_loss(v_bg, alpha)


class CCAM(nn.Module):
    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        self.trunk = resnet_trunk(arch, ccam_strides=True)
        channels = self.trunk.out_channels + self.trunk.layer3_channels
        self.head = nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1, bias=False), nn.BatchNorm2d(1))
        self.register_buffer("flipped", torch.zeros((), dtype=torch.bool))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x3, x4 = self.trunk(x)
        return torch.cat([x4, x3], 1)

    def raw_map(self, x: torch.Tensor) -> torch.Tensor:
        """Head output before the sigmoid, oriented so that positive = foreground."""
        raw = self.head(self.features(x))
        return -raw if bool(self.flipped) else raw

    def forward(self, x: torch.Tensor):
        z = self.features(x)
        a = torch.sigmoid(self.head(z))  # unflipped: the loss is symmetric in fg / bg
        v_fg = (a * z).mean((2, 3))
        v_bg = ((1 - a) * z).mean((2, 3))
        return v_fg, v_bg, a

    def parameter_groups(self, lr: float, weight_decay: float) -> List[dict]:
        groups = [([], lr, weight_decay), ([], 2 * lr, 0.0), ([], 10 * lr, weight_decay), ([], 20 * lr, 0.0)]
        for name, p in self.named_parameters():
            head = name.startswith("head.")
            groups[2 * head + name.endswith("bias")][0].append(p)
        return [{"params": ps, "lr": r, "initial_lr": r, "weight_decay": wd} for ps, r, wd in groups if ps]


def border_foreground_fraction(a: torch.Tensor) -> float:
    """Fraction of border pixels (four border rows / columns) of maps ``a`` (N, 1, h, w) with ``a > 0.5``."""
    binary = (a > 0.5).float()
    border = torch.ones_like(binary[0, 0], dtype=torch.bool)
    border[1:-1, 1:-1] = False
    return float(binary[..., border].mean())


def _flip_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def train_ccam(images: torch.Tensor, settings: CCAMSettings, output_folder: str, device: torch.device,
               backbone_checkpoint: Optional[str] = None, log: Callable[[str], None] = print) -> str:
    """Train CCAM on ``images`` (N, 3, S, S) uint8 from ``backbone_checkpoint``; returns ``ccam.pth`` (skips if it
    exists; resumes from ``ccam_latest.pth``)."""
    final = os.path.join(output_folder, "ccam.pth")
    latest = os.path.join(output_folder, "ccam_latest.pth")
    if os.path.isfile(final):
        return final
    torch.manual_seed(settings.seed)
    model = CCAM(settings.arch)
    if backbone_checkpoint:
        counts = load_backbone_weights(model.trunk, backbone_checkpoint)
        log(f"CCAM: trunk from {backbone_checkpoint} ({counts['loaded']} tensors)")
    model = model.to(device)
    n = len(images)
    batch = min(settings.batch_size, n)
    optimizer = torch.optim.SGD(model.parameter_groups(settings.lr, settings.weight_decay), lr=settings.lr,
                                momentum=0.9, nesterov=True)

    def batch_loss(idx, generator):
        v_fg, v_bg, _ = model(imagenet_normalize(_flip_augment(images[idx], generator)).to(device))
        return ccam_loss(v_fg, v_bg, settings.alpha)

    train_epochs(model, optimizer, n, batch, settings.epochs, settings.seed, latest, device, "CCAM", log,
                 lambda group, step, total: group["initial_lr"] * (1 - step / total) ** 0.9, batch_loss)
    border = decide_polarity(model, images, device, batch)
    log(f"CCAM polarity: {border:.3f} of border pixels active -> {'flipped' if bool(model.flipped) else 'kept'}")
    with atomic_path(final) as tmp:
        torch.save({"model": model.state_dict(), "arch": settings.arch, "settings": asdict(settings),
                    "border_fraction": border}, tmp)
    if os.path.isfile(latest):
        os.remove(latest)
    return final


@torch.no_grad()
def decide_polarity(model: CCAM, images: torch.Tensor, device: torch.device, batch: int = 32) -> float:
    """Set ``model.flipped`` from the border rule over all images; returns the border fraction before flipping."""
    model.eval()
    model.flipped.fill_(False)
    maps = [torch.sigmoid(model.head(model.features(imagenet_normalize(images[i:i + batch]).to(device)))).cpu()
            for i in range(0, len(images), batch)]
    fraction = border_foreground_fraction(torch.cat(maps))
    model.flipped.fill_(fraction > 0.5)
    return fraction


def load_ccam(path: str, device: torch.device) -> CCAM:
    from semi_nnunet.utilities.checkpoints import load_checkpoint_file
    checkpoint = load_checkpoint_file(path, fix="delete it: the next run trains CCAM again.")
    model = CCAM(checkpoint["arch"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


FEATURE_STRIDE = 16


def cam_to_image(cam: torch.Tensor, out_hw: Tuple[int, int], input_hw: Tuple[int, int],
                 stride: int = FEATURE_STRIDE) -> torch.Tensor:
    """Resample a feature map ``cam`` (N, 1, h, w) of a network input of size ``input_hw`` onto an image of size
    ``out_hw`` that was resized (bilinear, ``align_corners=False``) to that input: output pixel ``y`` sits at input
    pixel ``(y + 0.5) * input / out - 0.5`` and thus at cell ``u = that / stride`` (bilinear, border clamped)."""
    h, w = cam.shape[-2:]
    coords = []
    for size_out, size_in, cells in ((out_hw[0], input_hw[0], h), (out_hw[1], input_hw[1], w)):
        y = torch.arange(size_out, dtype=torch.float32, device=cam.device)
        u = ((y + 0.5) * size_in / size_out - 0.5) / stride
        coords.append(2 * u / (cells - 1) - 1 if cells > 1 else torch.zeros_like(u))
    gy, gx = torch.meshgrid(coords[0], coords[1], indexing="ij")
    grid = torch.stack([gx, gy], -1)[None].expand(cam.shape[0], -1, -1, -1)
    return F.grid_sample(cam.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)


@torch.no_grad()
def saliency_maps(model: CCAM, images: torch.Tensor, shapes: Sequence[Tuple[int, int]], device: torch.device,
                  scales: Sequence[float] = (0.5, 1.0, 1.5, 2.0), batch: int = 16) -> List[np.ndarray]:
    """CCAM saliency in [0, 1] for ``images`` (N, 3, S, S) uint8, each resized to its ``shapes[i]`` (H, W)."""
    model.eval()
    size = images.shape[-1]
    out = []
    for start in range(0, len(images), batch):
        x = imagenet_normalize(images[start:start + batch]).to(device)
        total = [torch.zeros(shapes[start + i], device=device) for i in range(len(x))]
        for scale in scales:
            s = max(16, int(round(size * scale)))
            xs = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False) if s != size else x
            cam = F.relu(model.raw_map(xs))
            # the flipped pass's cell j covers input pixel (s - 1) - 16 j: resample it in the flipped frame
            cam_flipped = F.relu(model.raw_map(xs.flip(-1)))
            for i in range(len(x)):
                shape = tuple(shapes[start + i])
                total[i] += cam_to_image(cam[i:i + 1], shape, (s, s))[0, 0]
                total[i] += cam_to_image(cam_flipped[i:i + 1], shape, (s, s))[0, 0].flip(-1)
        for t in total:
            out.append((t / (t.max() + 1e-5)).clamp(0, 1).cpu().numpy().astype(np.float32))
    return out
