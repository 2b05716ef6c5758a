"""MoCo v2 pre-training of the ResNet trunk on the dataset's own images (used when no checkpoint is supplied).

Standard MoCo v2 [MoCo v2 defaults]: query encoder = trunk + global pooling + MLP head
(C -> C -> ``dim`` = 128); key encoder = its EMA (``m`` = 0.999); InfoNCE against a queue of keys with temperature
``tau`` = 0.2::

    L = -log( exp(q.k+ / tau) / (exp(q.k+ / tau) + sum_{k- in queue} exp(q.k- / tau)) )

SGD (lr 0.03 * B / 256, momentum 0.9, weight decay 1e-4) with a cosine schedule over all iterations; augmentation
RandomResizedCrop (scale 0.2-1), ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale p 0.2, Gaussian blur (sigma
0.1-2 px at 224 px, scaled with the image size [rec]) p 0.5, horizontal flip.

Our resolutions [rec]: the queue holds at most ``max(B, N - B)`` keys for a dataset of N images (a longer queue
would hold several stale keys of every image, the positive's own among the negatives; hence a small queue for small
datasets); no shuffling BN (it needs several processes; single-device MoCo implementations skip it); the
pre-training is resumable (``moco_latest.pth`` every epoch) and ends in ``moco_encoder.pth`` = ``{"encoder": trunk
weights, "arch": ...}``, the format :func:`~semi_nnunet.uslnet.backbone.load_backbone_weights` reads.
"""
import copy
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from semi_nnunet.uslnet.backbone import imagenet_normalize, resnet_trunk, train_epochs
from semi_nnunet.utilities.file_ops import atomic_path


@dataclass
class MoCoSettings:
    arch: str = "resnet50"
    epochs: int = 200
    batch_size: int = 32
    queue: int = 4096
    momentum: float = 0.999
    temperature: float = 0.2
    dim: int = 128
    base_lr: float = 0.03  # per 256 images
    weight_decay: float = 1e-4
    seed: int = 0


class MoCoEncoder(nn.Module):
    def __init__(self, arch: str, dim: int):
        super().__init__()
        self.trunk = resnet_trunk(arch)
        c = self.trunk.out_channels
        self.head = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, dim))

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.trunk(x)[1], 1), 1))


class MoCo(nn.Module):
    def __init__(self, arch: str = "resnet50", dim: int = 128, queue: int = 4096, momentum: float = 0.999,
                 temperature: float = 0.2):
        super().__init__()
        self.m, self.t = momentum, temperature
        self.encoder_q = MoCoEncoder(arch, dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self):
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            pk.mul_(self.m).add_(pq.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor):
        n, size = keys.shape[0], self.queue.shape[1]
        idx = (int(self.queue_ptr) + torch.arange(n, device=keys.device)) % size
        self.queue[:, idx] = keys.T
        self.queue_ptr.fill_((int(self.queue_ptr) + n) % size)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update()
            k = F.normalize(self.encoder_k(im_k), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.clone().detach()], 1) / self.t
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        self._enqueue(k)
        return loss


def moco_augmentation(size: int):
    """MoCo v2's augmentation for ``size x size`` float images in [0, 1] (one sample at a time)."""
    from torchvision.transforms import v2
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    sigma = (0.1 * size / 224, 2.0 * size / 224)
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=0.5),
        v2.RandomHorizontalFlip(),
    ])


def two_views(images: torch.Tensor, augment) -> tuple:
    x = images.float() / 255
    q = torch.stack([augment(img) for img in x])
    k = torch.stack([augment(img) for img in x])
    return imagenet_normalize(q), imagenet_normalize(k)


def train_moco(images: torch.Tensor, settings: MoCoSettings, output_folder: str, device: torch.device,
               log: Callable[[str], None] = print) -> str:
    """Pre-train on ``images`` (N, 3, S, S) uint8; returns the path of ``moco_encoder.pth`` (skips if it exists)."""
    final = os.path.join(output_folder, "moco_encoder.pth")
    latest = os.path.join(output_folder, "moco_latest.pth")
    if os.path.isfile(final):
        return final
    n = len(images)
    batch = min(settings.batch_size, n)
    if batch < 2:
        raise ValueError("MoCo pre-training needs at least 2 images")
    queue = max(1, min(settings.queue, max(batch, n - batch)))
    torch.manual_seed(settings.seed)
    model = MoCo(settings.arch, settings.dim, queue, settings.momentum, settings.temperature).to(device)
    lr = settings.base_lr * batch / 256
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    augment = moco_augmentation(images.shape[-1])

    def batch_loss(idx, generator):
        return model(*two_views(images[idx].to(device), augment))  # augmentation on the device too

    train_epochs(model, optimizer, n, batch, settings.epochs, settings.seed, latest, device, "MoCo v2", log,
                 lambda group, step, total: lr * 0.5 * (1 + math.cos(math.pi * step / total)), batch_loss)
    with atomic_path(final) as tmp:
        torch.save({"encoder": model.encoder_q.trunk.state_dict(), "arch": settings.arch,
                    "settings": asdict(settings), "num_images": n, "queue": queue}, tmp)
    if os.path.isfile(latest):
        os.remove(latest)
    return final


def moco_checkpoint_arch(path: str) -> Optional[str]:
    """The architecture our own ``moco_encoder.pth`` records (None for other formats)."""
    from semi_nnunet.utilities.checkpoints import load_checkpoint_file
    checkpoint = load_checkpoint_file(path, fix="give an intact MoCo v1/v2 or torchvision ResNet checkpoint.")
    return checkpoint.get("arch") if isinstance(checkpoint, dict) else None
