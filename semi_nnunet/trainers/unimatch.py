"""UniMatch (Yang, Qi, Feng, Zhang, Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023) on nnU-Net, 2D and 3D, and its FixMatch ablation.

    L = L_sup + w_s (L_s1 + L_s2) + w_fp L_fp          (w_s = 0.25, w_fp = 0.5: the paper's
                                                        (L_s + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2, times 2)

* No teacher: the network's own prediction ``p_w`` of the weak view (nnU-Net's augmentation of the unlabeled
  patch), detached, gives the pseudo-label ``y = argmax p_w`` kept where ``max p_w >= tau`` (0.95). No ramp-up: the
  confidence mask is the curriculum.
* ``L_s1``, ``L_s2``: two strong views (the base's intensity perturbations, drawn independently), each with its own
  CutMix box (probability 0.5 per sample; volume U(0.02, 0.4) of the patch, aspect ratios U(0.3, 1/0.3); a cuboid in
  3D) pasting the same view of a second unlabeled image; inside the box the target and the mask are the second
  image's. The second image is the batch rolled by one (the paper's code uses a second loader; its pseudo-label,
  from a separate no-grad forward there, is the same weak prediction here).
* ``L_fp``: feature perturbation. The encoder's skip features of the weak view go through channel dropout (p 0.5,
  ``Dropout2d``/``Dropout3d``) and the same decoder; its output is trained on ``y`` with the same mask. This is a
  switch in the U-Net's own encoder (:func:`add_feature_perturbation`), not a copied network: the encoder returns the
  clean and the perturbed skips stacked along the batch, so one forward of the U-Net gives every stream.
* Each unlabeled term is the masked Dice of UniMatch's medical release (all classes, squared denominators, pixels
  below ``tau`` left out; :func:`~semi_nnunet.trainers.pseudo_label_losses.soft_dice_loss`);
  ``unlabeled_terms = ("dice", "ce")`` averages it with the masked CE of the natural-image release.
* ``L_sup``: nnU-Net's deep-supervised Dice+CE (weight 1, so nnU-Net's learning rate applies); the unlabeled terms
  use the full-resolution output only.
* One forward for all unlabeled streams: ``[weak, strong_1 (mixed), strong_2 (mixed)]`` stacked, with the weak
  part's perturbed skips appended by the encoder: the encoder sees 3 B patches, the decoder 4 B. That is also the
  shape DDP wants (one forward, one backward per loss).
* HCO: ``L_L = L_sup``, ``L_U`` = the rest (the base's split).

``FixMatchTrainer`` (Sohn et al., NeurIPS 2020, for segmentation): one strong view, no feature stream,
``L = L_sup + L_s1`` (the paper's ``(L_s + L_s1) / 2``, times 2): UniMatch's ablation.
"""
from contextlib import contextmanager
from typing import Dict, Iterator, Tuple

import torch
import torch.nn.functional as F

from semi_nnunet.trainers.base import SemiSupervisedTrainer
from semi_nnunet.trainers.pseudo_label_losses import confident_labels, cutmix_boxes, masked_ce, soft_dice_loss
from semi_nnunet.trainers.views import cutmix


def channel_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of whole channels (``nn.Dropout2d`` on 2D features, ``nn.Dropout3d`` on 3D), always on."""
    return (F.dropout2d if x.ndim == 4 else F.dropout3d)(x, p, training=True)


class _PerturbableEncoder:
    """Mixed into the encoder's own class by :func:`add_feature_perturbation`."""
    perturb_first: int = 0
    perturb_p: float = 0.5

    def forward(self, x):
        skips = super().forward(x)
        k = self.perturb_first
        if not k:
            return skips
        return [torch.cat([s, channel_dropout(s[:k], self.perturb_p)]) for s in skips]


_PERTURBABLE: Dict[type, type] = {}


def add_feature_perturbation(network: torch.nn.Module, p: float) -> torch.nn.Module:
    """Give ``network.encoder`` a switch ``perturb_first`` (an int, 0 = off): when it is ``k > 0`` the encoder returns
    every skip feature with the channel-dropped copy of its first ``k`` samples appended along the batch, so the
    decoder decodes both. The encoder's class becomes a subclass of its own with that ``forward`` (works for every
    dynamic-network-architectures U-Net whose encoder returns its skips); its modules, state dict, nnU-Net's
    checkpoints and predictor are unchanged, and a deep copy keeps the switch."""
    encoder = network.encoder
    base = type(encoder)
    if base not in _PERTURBABLE:
        _PERTURBABLE[base] = type(f"Perturbable{base.__name__}", (_PerturbableEncoder, base), {})
    encoder.__class__ = _PERTURBABLE[base]
    encoder.perturb_first, encoder.perturb_p = 0, p
    return network


class UniMatchTrainer(SemiSupervisedTrainer):
    use_teacher = False
    num_strong_views = 2
    confidence_threshold: float = 0.95
    strong_weight: float = 0.25  # per strong view
    feature_weight: float = 0.5  # 0: no feature-perturbation stream (FixMatch)
    feature_dropout: float = 0.5
    cutmix_probability: float = 0.5
    cutmix_area: Tuple[float, float] = (0.02, 0.4)
    cutmix_aspect: Tuple[float, float] = (0.3, 1 / 0.3)
    unlabeled_terms: Tuple[str, ...] = ("dice",)  # "dice" (medical release), "ce" (natural images), or both
    method_log_keys = ("confident_fraction", "loss_strong", "loss_fp")

    def initialize(self):
        if self.label_manager.has_regions:
            raise ValueError(f"{type(self).__name__} needs mutually exclusive labels (softmax pseudo-labels); the "
                             f"dataset {self.plans_manager.dataset_name} is region-based. Use MeanTeacherTrainer.")
        bad = set(self.unlabeled_terms) - {"dice", "ce"}
        if bad or not self.unlabeled_terms:
            raise ValueError(f"{type(self).__name__}.unlabeled_terms = {self.unlabeled_terms}: use 'dice', 'ce' or "
                             f"both.")
        super().initialize()

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> torch.nn.Module:
        network = super().build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                     num_output_channels, enable_deep_supervision)
        return add_feature_perturbation(network, cls.feature_dropout) if cls.feature_weight else network

    @contextmanager
    def perturb_features(self, k: int) -> Iterator[None]:
        encoder = self.unwrapped_network().encoder
        encoder.perturb_first = k
        try:
            yield
        finally:
            encoder.perturb_first = 0

    def pseudo_label_loss(self, logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        terms = [soft_dice_loss(logits, target, keep) if t == "dice" else masked_ce(logits, target, keep)
                 for t in self.unlabeled_terms]
        return sum(terms) / len(terms)

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        weak, strong = unlabeled["views"][0], unlabeled["views"][1:1 + self.num_strong_views]
        b = weak.shape[0]
        boxes = [cutmix_boxes(b, weak.shape[2:], self.cutmix_area, self.cutmix_aspect, device=weak.device,
                              p=self.cutmix_probability) for _ in strong]
        mixed = [cutmix(s, s.roll(1, 0), box) for s, box in zip(strong, boxes)]
        k = b if self.feature_weight else 0
        with self.perturb_features(k):
            logits = self.full_resolution(self.network(torch.cat([weak, *mixed])))
        streams = list(torch.split(logits, b))  # weak, strong_1, ..., (perturbed weak)
        with torch.no_grad():
            pseudo, keep = confident_labels(self.probabilities(streams[0].detach().float()),
                                            self.confidence_threshold, inclusive=True)
        pseudo = pseudo[:, None].to(keep.dtype)
        loss_strong = []
        for out, box in zip(streams[1:1 + len(strong)], boxes):
            target, mask = cutmix(pseudo, pseudo.roll(1, 0), box), cutmix(keep, keep.roll(1, 0), box)
            loss_strong.append(self.pseudo_label_loss(out, target, mask))
        loss = self.strong_weight * sum(loss_strong)
        logs = {"confident_fraction": keep.mean().detach(), "loss_strong": (sum(loss_strong) / len(strong)).detach()}
        if self.feature_weight:
            loss_fp = self.pseudo_label_loss(streams[-1], pseudo, keep)
            loss = loss + self.feature_weight * loss_fp
            logs["loss_fp"] = loss_fp.detach()
        return loss, logs


class FixMatchTrainer(UniMatchTrainer):
    """FixMatch for segmentation: UniMatch without the second strong view and the feature stream (its ablation)."""
    num_strong_views = 1
    strong_weight = 1.0
    feature_weight = 0.0
    method_log_keys = ("confident_fraction", "loss_strong")
