"""Hermes (Zhang, Lai, Kong, ECAI 2025; documentation/methods/hermes.md): semi-supervised segmentation + image
classification with dual-threshold pseudo-labels, contrast at pixel and image level, and inter-task links.

    L = 1/lambda_seg * [ lambda_seg (L_seg^l + w_u L_seg^u + alpha L_c^seg)
                       + lambda_cls (L_cls^l + w_u L_cls^u + beta L_c^cls) + gamma r(t) L_itc ]        (Eq. 15)

* Views: weak = nnU-Net's augmentation of the unlabeled patch, strong = the same patch + intensity perturbations.
  No teacher: the network's own weak-view prediction (detached) is the pseudo-label (FixMatch style).
* Dual threshold (Eq. 7): keep a pseudo-label iff ``H(p_w) <= kappa(t)`` and ``max p_w >= tau(t)``, with
  ``kappa = 0.25 + 0.25 (1 + cos(pi t/T))`` and ``tau = 0.75 + 0.25 exp(-0.5 (1 - t/T)^2) ln 2`` (supp. Eq. 16-17;
  entropy rescaled by ``ln2 / ln K`` for K > 2 classes). ``threshold_mode = "code"``: the released code's rising
  entropy bound, class-adaptive confidence and OR for the segmentation loss (anchors always AND).
* ``L_seg^u`` = 1 - foreground soft Dice of the strong view against the kept pseudo-labels (Eq. 9);
  ``L_cls^u = mean_i w_i CE(f_c(strong_i), y_i)`` (Eq. 10).
* ``L_c^seg``: supervised pixel InfoNCE (Eq. 11, temperature 0.07) on ``normalize(head(stride-8 encoder map))``
  averaged over the two views; anchors = reliable pixels (pseudo-labels nearest-resized), <= 1024 per batch and <= 100
  per (image, class), half hard (strong prediction != pseudo-label), half easy. Optional memory bank of negatives
  (``memory_bank_size`` per class; off by default, the released code has none).
* ``L_c^cls``: SupCon over weak+strong image embeddings (MLP 512-256-128 on the pooled ResNet feature), positives =
  same pseudo-class, each anchor weighted by its image's reliability (Eq. 12-13 as the code reads them).
* ``L_itc = 1 - cos(h_c(F_cls), h_s(GAP(deepest encoder map)))`` on the strong view (Eq. 14), 128-d (paper).
* Inter-task attention: decoder features at strides 2/4/8 and the stride-16 encoder map (nearest available stage,
  resized; **detached**) gate the ResNet-18 after its stem, layer1, layer2, layer3 — on every classifier
  forward (labeled, weak, strong and in :meth:`classify`), so training and inference run the same classifier.
* Saliency module (``use_saliency``, off by default): ``[x; max_c |d max_k f_c(x)_k / dx|]`` added through a
  zero-initialised 1x1 conv to the stride-4 decoder stage. Off because nnU-Net's predictor runs ``network_weights``
  alone and could not supply the saliency at inference (and the released code has it off by default).
* Weights: paper values (lambda_seg 0.5, lambda_cls 1, alpha 0.8, beta 0.2, gamma 0.1, w_u 1). The whole of Eq. 15 is
  divided by lambda_seg so the U-Net's supervised term keeps nnU-Net's weight 1 (its SGD learning rate was tuned for
  that); every relative weight, which is what the paper's per-network Adam optimizers see, is unchanged.
* Contrastive terms start after ``contrast_start_fraction`` (0.15) of training (the code: after 10 epochs).
* No image classes in dataset.json (``class_names`` + ``image_classes``): segmentation-only Hermes (dual threshold +
  pixel contrast; no classifier, attention, saliency, image contrast or ITC), said in the training log.
* HCO: trusted ``L_L = L_seg^l + lambda_cls/lambda_seg L_cls^l`` (ground truth only), everything else is ``L_U``.
  The projection heads get no labeled gradient: the HCO optimizer steps them on ``g_U`` alone (hco.md P3).
* Classifier start and rate: ``classifier_weights`` (or ``$SEMI_NNUNET_RESNET18``) names a torchvision ResNet-18 state
  dict (ImageNet, as in the paper); its first conv is averaged over RGB for nnU-Net's channels, ``fc`` is left out.
  The classifier is then its own parameter group at the paper's 1e-4 (SGD, poly decay from its own rate;
  ``classifier_lr`` overrides); without weights it trains at the U-Net's rate.
* 2D only (cases are images); torch.compile is off (the heads read features through forward hooks).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from semi_nnunet.trainers.lookup import TrainingError
from semi_nnunet.trainers.base import SemiSupervisedTrainer
from semi_nnunet.trainers.generated import hco_counterpart
from semi_nnunet.trainers.hermes_losses import (
    MemoryBank,
    classwise_confidence_thresholds,
    code_entropy_threshold,
    dual_threshold_mask,
    masked_dice_loss,
    paper_thresholds,
    per_image_samples,
    pixel_info_nce,
    resize_labels,
    sample_anchors,
    supcon_loss,
)
from semi_nnunet.trainers.hermes_modules import (
    CLASSIFIER_TAPS,
    HermesClassifier,
    PixelProjectionHead,
    SaliencyFusion,
    SegConsistencyHead,
    UNetLayout,
    UNetTaps,
    classifier_weights_file,
    fit_to_patch,
    saliency_map,
)
from semi_nnunet.trainers.ramps import sigmoid_rampup
from semi_nnunet.trainers.variants import nnUNetTrainer_2epochs_2it, nnUNetTrainer_demo


class HermesTrainer(SemiSupervisedTrainer):
    use_teacher = False
    supported_dims = (2,)
    num_strong_views = 1
    lambda_seg: float = 0.5
    lambda_cls: float = 1.0
    alpha: float = 0.8  # pixel contrast (supp. Fig. 8 text says 0.6; §4.1 and the code 0.8)
    beta: float = 0.2  # image contrast
    gamma: float = 0.1  # inter-task consistency
    unsup_weight: float = 1.0  # on L_seg^u and L_cls^u (Eq. 15; code 0.1)
    itc_rampup_fraction: float = 0.0  # sigmoid ramp of gamma over this fraction of training (0: none)
    contrast_start_fraction: float = 0.15
    threshold_mode: str = "paper"  # or "code"
    temperature: float = 0.07
    pixel_dim: int = 256
    image_dim: int = 128
    itc_dim: int = 128
    contrast_stride: int = 8
    max_anchors: int = 1024
    max_views: int = 100
    memory_bank_size: int = 0  # per class; 0 = no bank (ContrastiveSeg: 5000)
    memory_bank_per_image: int = 10
    use_attention: bool = True
    # the classifier's ImageNet start (paper: torchvision ResNet-18): a state-dict file, None = $SEMI_NNUNET_RESNET18,
    # neither = random weights
    classifier_weights: Optional[str] = None
    # its own learning rate (paper: SGD 1e-4, with pretrained weights); None: 1e-4 with weights, else the U-Net's
    classifier_lr: Optional[float] = None
    use_saliency: bool = False
    saliency_stride: int = 4
    method_log_keys = ("seg_sup", "cls_sup", "seg_unsup", "cls_unsup", "pixel_contrast", "image_contrast", "itc",
                       "seg_reliable", "cls_reliable", "kappa", "tau")

    # ------------------------------------------------------------------ image classes
    @property
    def image_class_names(self) -> Dict[int, str]:
        names, classes = self.dataset_json.get("class_names"), self.dataset_json.get("image_classes")
        return {int(k): v for k, v in names.items()} if names and classes is not None else {}

    @property
    def has_classifier(self) -> bool:
        """True when dataset.json gives image classes: the classification branch is trained and :meth:`classify`
        works; False is segmentation-only Hermes."""
        return bool(self.image_class_names)

    def labeled_classes(self, keys: Sequence[str]) -> torch.Tensor:
        classes = self.dataset_json["image_classes"]
        missing = [str(k) for k in keys if str(k) not in classes]
        if missing:
            raise TrainingError(f"{type(self).__name__}: dataset.json's image_classes has no class for labeled "
                                f"case(s) {missing[:10]}; give every labeled training case a class, or remove "
                                f"class_names/image_classes to train segmentation-only Hermes.")
        return torch.tensor([int(classes[str(k)]) for k in keys], device=self.device)

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        name = type(self).__name__
        if len(self.configuration_manager.patch_size) != 2:
            raise TrainingError(
                f"{name} supports 2D configurations only (cases are images; the classifier is a 2D ResNet-18), but "
                f"'{self.configuration_name}' is {len(self.configuration_manager.patch_size)}D. Train the 2d "
                f"configuration: semi_nnUNet_train DATASET 2d {name} FOLD")
        if self.label_manager.has_regions:
            raise TrainingError(f"{name} needs label-based (softmax) training; region-based labels are not supported")
        if self.threshold_mode not in ("paper", "code"):
            raise ValueError(f"threshold_mode must be 'paper' or 'code', not {self.threshold_mode!r}")
        ids = sorted(self.image_class_names)
        if ids and ids != list(range(len(ids))):
            raise TrainingError(f"{name}: class_names keys must be 0..K-1, got {ids}")
        super().initialize()
        if self.has_classifier:
            self.print_to_log_file(f"Hermes: classification branch on, classes {self.image_class_names}; saliency "
                                   f"module {'on' if self.use_saliency else 'off'}")
        else:
            self.print_to_log_file("Hermes: dataset.json has no 'class_names'/'image_classes', so this is "
                                   "SEGMENTATION-ONLY Hermes (dual threshold + pixel contrast; no classifier, "
                                   "inter-task attention, saliency, image contrast or inter-task consistency)")

    def _do_i_compile(self):
        if super()._do_i_compile():
            self.print_to_log_file("torch.compile is off for Hermes: its heads read U-Net features through hooks")
        return False

    def raw_network(self) -> torch.nn.Module:
        net = self.network.module if isinstance(self.network, DistributedDataParallel) else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def build_auxiliary_modules(self) -> Dict[str, torch.nn.Module]:
        net = self.raw_network()
        layout = UNetLayout(net)
        stages, decoded = range(layout.num_stages), range(layout.num_stages - 1)
        self._contrast_stage = layout.nearest_stage(self.contrast_stride, stages)
        modules = {"pixel_head": PixelProjectionHead(layout.channels[self._contrast_stage], self.pixel_dim)}
        if self.memory_bank_size > 0:
            modules["memory_bank"] = MemoryBank(self.label_manager.num_segmentation_heads, self.memory_bank_size,
                                                self.pixel_dim)
        inject = None
        if self.has_classifier:  # decoder outputs at strides 2/4/8, the encoder map at stride 16
            self._attention_stages = [(layout.nearest_stage(s, decoded), True) for s in CLASSIFIER_TAPS[:3]] + \
                                     [(layout.nearest_stage(CLASSIFIER_TAPS[3], stages), False)]
            channels = [layout.channels[i] for i, _ in self._attention_stages] if self.use_attention else None
            modules["classifier"] = HermesClassifier(self.num_input_channels, len(self.image_class_names), channels,
                                                     self.image_dim, self.itc_dim)
            self.classifier_weights_file = classifier_weights_file(self.classifier_weights)
            if self.classifier_weights_file:
                modules["classifier"].load_resnet18(self.classifier_weights_file)
                self.print_to_log_file(f"Hermes: classifier starts from {self.classifier_weights_file}")
            modules["seg_consistency"] = SegConsistencyHead(layout.channels[-1], self.itc_dim)
            if self.use_saliency:
                inject = layout.nearest_stage(self.saliency_stride, decoded)
                modules["saliency_fusion"] = SaliencyFusion(self.num_input_channels, layout.channels[inject])
        self._taps = UNetTaps(net, inject)
        return modules

    def auxiliary_learning_rates(self) -> Dict[str, float]:
        """The classifier trains at ``classifier_lr`` (paper: 1e-4 from ImageNet weights); without weights at the
        U-Net's rate (a random ResNet at 1e-4 would barely move: our judgement call)."""
        if not self.has_classifier:
            return {}
        lr = self.classifier_lr
        if lr is None:
            lr = 1e-4 if getattr(self, "classifier_weights_file", None) else None
        return {"classifier": lr} if lr is not None else {}

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if self.has_classifier:  # fail before any loader starts
            self.labeled_classes(self.do_split()[0])
        super().on_train_start()

    # ------------------------------------------------------------------ forward passes
    def segment(self, x: torch.Tensor) -> Tuple[object, UNetTaps]:
        """The U-Net's output for ``x`` (with the saliency input when on) and its tapped features."""
        injection = None
        if "saliency_fusion" in self.auxiliary:
            sal = saliency_map(self.auxiliary["classifier"], x)
            injection = self.auxiliary["saliency_fusion"].injection(x, sal)
        with self._taps.capture(injection) as taps:
            out = self.network(x)
        return out, taps

    def attention_features(self, taps: UNetTaps) -> List[torch.Tensor]:
        return [taps.stage_output(i, dec).detach() for i, dec in self._attention_stages]

    def select(self, probs: torch.Tensor, segmentation: bool):
        """``(keep_for_loss, keep_as_anchor, pseudo, kappa, tau)`` by the dual threshold of ``threshold_mode``."""
        t, total = self.global_step, self.total_iterations
        if self.threshold_mode == "paper":
            kappa, tau = paper_thresholds(t, total)
            keep, pseudo = dual_threshold_mask(probs, kappa, tau)
            return keep, keep, pseudo, kappa, tau
        kappa = code_entropy_threshold(t, total)
        tau = classwise_confidence_thresholds(probs.argmax(1), probs.shape[1])
        anchor, pseudo = dual_threshold_mask(probs, kappa, tau, "and", strict_confidence=True)
        keep = dual_threshold_mask(probs, kappa, tau, "or", strict_confidence=True)[0] if segmentation else anchor
        return keep, anchor, pseudo, kappa, float(tau.mean())

    # ------------------------------------------------------------------ losses
    def supervised_loss(self, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        x = labeled["data"]
        out, taps = self.segment(x)
        seg = self.loss(out, labeled["target"])
        if not self.has_classifier:
            return seg, {"seg_sup": seg.detach()}
        logits = self.auxiliary["classifier"](x, self.attention_features(taps), heads=False)["logits"]
        cls = F.cross_entropy(logits.float(), self.labeled_classes(labeled["keys"]))
        return seg + self.lambda_cls / self.lambda_seg * cls, {"seg_sup": seg.detach(), "cls_sup": cls.detach()}

    def pixel_contrast(self, taps: UNetTaps, pseudo, keep, strong_logits) -> torch.Tensor:
        e_w, e_s = self.auxiliary["pixel_head"](taps.skips[self._contrast_stage]).float().chunk(2)
        emb = (e_w + e_s) / 2  # the code's mean of the two views' embeddings
        labels = resize_labels(torch.where(keep, pseudo, -1), emb.shape[2:])
        preds = resize_labels(strong_logits.detach().argmax(1), emb.shape[2:])
        feats, classes = sample_anchors(emb, labels, preds, self.max_anchors, self.max_views)
        bank = self.auxiliary["memory_bank"] if "memory_bank" in self.auxiliary else None
        loss = emb.sum() * 0.0 if feats is None else \
            pixel_info_nce(feats, classes, self.temperature, bank.entries() if bank is not None else None)
        if bank is not None:
            bank.push(*per_image_samples(emb.detach(), labels, self.memory_bank_per_image))
        return loss

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        weak, strong = unlabeled["views"][0], unlabeled["views"][1]
        x = torch.cat([weak, strong])
        out, taps = self.segment(x)
        logits_w, logits_s = self.full_resolution(out).float().chunk(2)
        keep, anchor, pseudo, kappa, tau = self.select(self.probabilities(logits_w.detach()), segmentation=True)
        seg_u = masked_dice_loss(self.probabilities(logits_s), pseudo, keep)
        contrast_on = self.global_step >= self.contrast_start_fraction * self.total_iterations
        pix = self.pixel_contrast(taps, pseudo, anchor, logits_s) if contrast_on else seg_u.new_zeros(())
        loss = self.lambda_seg * (self.unsup_weight * seg_u + self.alpha * pix)
        logs = {"seg_unsup": seg_u.detach(), "pixel_contrast": pix.detach(), "seg_reliable": keep.float().mean(),
                "kappa": kappa, "tau": tau, "unsup_weight": self.unsup_weight}
        if self.has_classifier:
            cls_out = self.auxiliary["classifier"](x, self.attention_features(taps))
            cls_w, cls_s = cls_out["logits"].float().chunk(2)
            keep_c, _, pseudo_c, _, _ = self.select(torch.softmax(cls_w.detach(), 1), segmentation=False)
            cls_u = (F.cross_entropy(cls_s, pseudo_c, reduction="none") * keep_c).mean()
            img = supcon_loss(cls_out["embedding"].float(), pseudo_c.repeat(2), keep_c.repeat(2), self.temperature) \
                if contrast_on else cls_u.new_zeros(())
            # both views through the heads (BatchNorm never sees a batch of one), the strong half compared
            h_s = self.auxiliary["seg_consistency"](taps.skips[-1]).float()[weak.shape[0]:]
            h_c = cls_out["consistency"].float()[weak.shape[0]:]
            itc = (1.0 - F.cosine_similarity(h_c, h_s, dim=1)).mean()
            gamma = self.gamma * sigmoid_rampup(self.global_step, self.itc_rampup_fraction * self.total_iterations)
            loss = loss + self.lambda_cls * (self.unsup_weight * cls_u + self.beta * img) + gamma * itc
            logs.update(cls_unsup=cls_u.detach(), image_contrast=img.detach(), itc=itc.detach(),
                        cls_reliable=keep_c.float().mean())
        return loss / self.lambda_seg, logs

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def classify(self, data) -> torch.Tensor:
        """Class probabilities ``(num_classes,)`` for one preprocessed image ``data`` of shape ``(C, X, Y)`` (or
        nnU-Net's 2D layout ``(C, 1, X, Y)``): shrunk to fit nnU-Net's patch if larger (aspect kept) and zero-padded to
        it (training sees patches at native scale), then the U-Net (for the attention features) and the classifier,
        both in eval mode."""
        if not self.has_classifier:
            raise RuntimeError(f"{type(self).__name__} was trained segmentation-only (dataset.json had no "
                               f"'class_names'/'image_classes'), so it has no classifier")
        if self.auxiliary is None:
            raise RuntimeError("classify needs the trained modules: call initialize() and load_checkpoint() first")
        x = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data, dtype=torch.float32)
        if x.ndim == 4 and x.shape[1] == 1:
            x = x[:, 0]
        if x.ndim != 3 or x.shape[0] != self.num_input_channels:
            raise ValueError(f"classify expects one preprocessed 2D image ({self.num_input_channels}, X, Y) or "
                             f"({self.num_input_channels}, 1, X, Y), got shape {tuple(x.shape)}")
        x = fit_to_patch(x[None], self.configuration_manager.patch_size).to(self.device)
        modes = self.network.training, self.auxiliary.training
        self.network.eval()
        self.auxiliary.eval()
        try:
            _, taps = self.segment(x)
            logits = self.auxiliary["classifier"](x, self.attention_features(taps), heads=False)["logits"]
        finally:
            self.network.train(modes[0])
            self.auxiliary.train(modes[1])
        return torch.softmax(logits.float(), 1)[0].cpu()


class HermesTrainer_code(HermesTrainer):
    """The released code's values where they differ from the paper: code thresholds (rising entropy bound,
    class-adaptive confidence, OR for the segmentation loss), unlabeled weight 0.1, lambda_cls 1.1, ITC weight ramped
    to 1 over 4000 of 3000 iterations (0.73 at the end), 256-d ITC."""
    threshold_mode = "code"
    unsup_weight = 0.1
    lambda_cls = 1.1
    gamma = 1.0
    itc_rampup_fraction = 4000 / 3000
    itc_dim = 256


class HermesTrainer_saliency(HermesTrainer):
    """With the saliency module. nnU-Net's predictor runs the U-Net alone, without the saliency input."""
    use_saliency = True


class HermesTrainer_membank(HermesTrainer):
    """With the paper's memory bank of negatives (ContrastiveSeg's 5000 per class, 10 new pixels per image/class)."""
    memory_bank_size = 5000


class HermesTrainer_2epochs_2it(HermesTrainer):
    schedule = nnUNetTrainer_2epochs_2it.schedule


class HermesTrainer_demo(HermesTrainer):
    """Hermes on the demo's CPU budget (same schedule as nnUNetTrainer_demo)."""
    schedule = nnUNetTrainer_demo.schedule


class HermesTrainer_HCO_demo(HermesTrainer_demo):
    """HCO on Hermes on the demo's CPU budget: the converged benchmark's largest row (the demo's default)."""
    optimizer_name = hco_counterpart(HermesTrainer.optimizer_name)
