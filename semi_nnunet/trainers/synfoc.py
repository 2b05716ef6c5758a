"""SynFoC (Ma et al., CVPR 2025; documentation/methods/synfoc.md, formulas from the authors' code — the paper body
was not retrievable): a foundation model (SAM ViT-B, MedSAM weights, frozen encoder + LoRA, trainable prompt-free
decoder) and nnU-Net's U-Net learn side by side, each with an EMA teacher, from fused pseudo-labels.

    P_F = softmax(SAM_teacher(x_w))  (SAM low resolution L = S/4)      P_U = softmax(UNet_teacher(x_w))
    lambda_i = DSC(Y_S,i, Y_U,i) * DSC(nearest(Y_U,i -> L), Y_F,i)     (SMC: self- times mutual confidence)
    P = (1 - lambda) * bilinear(P_F -> patch) + lambda * P_U ;  Y = argmax P ;  M = 1[max P > tau]
    CutMix (box B per sample): x_mix = x_s (1-B) + x_l B ; Y_mix = Y (1-B) + y_l B ; M_mix = max(M, B)
    L = L_sup^F + L_sup^U + w(t) (L_uns^F + L_uns^U + L_cons + L_div)
    L_sup^F = CE + Dice(SAM(x_l), nearest(y_l -> L)) ;  L_sup^U = nnU-Net's deep-supervised Dice+CE
    L_uns^* = mean(CE_pix(student(x_mix), Y_mix) M_mix) + Dice_M(student(x_mix), Y_mix; M_mix)   (both resolutions)
    L_cons, L_div = CDCR: entropy on pixels where the students agree, MSE where they disagree (synfoc_losses.cdcr)

Y_S = argmax of the student U-Net on the weak view (no grad; only for the statistic), Y_U / Y_F the teachers'.
w(t) = consistency_weight * exp(-5 (1 - t/T)^2) over the whole run (``rampup_fraction = 1``). EMA decay 0.99
(capped by the budget rule: a horizon of at most 2 % of the run, ``SemiSupervisedTrainer.teacher_decay``) with the
``min(1 - 1/(t+1), decay)`` warm-up for both teachers; SAM's teacher shares the frozen encoder and averages LoRA,
prompt encoder and decoder. tau = 0.95. Optimizers: the U-Net keeps nnU-Net's (SGD 1e-2, poly; ``optimizer_name``),
SAM gets AdamW 1.2e-4, weight decay 0.1, constant (SynFoC's published setting); one GradScaler and clip.

Resolutions: the U-Net works at nnU-Net's patch size; SAM sees the same patches mapped to [0, 1] (per image
min-max of the weak view, so the strong view keeps its intensity change; clipped), resized bilinearly to
``sam_image_size`` (512, SynFoC) with position tables resized from the 1024 checkpoint, and predicts at S/4.
Strong view = weak view + brightness x U(0.1, 2), contrast x U(0.1, 2), Gaussian blur sigma U(0.1, 2), always
(SynFoC's three ops). HCO (``SynFoCTrainer_HCO``): trusted = L_sup^F + L_sup^U, untrusted = the w(t) term (the CutMix
box content belongs to it); U-Net HCO-SGD, SAM HCO-AdamW.

Resolved ambiguities: the released code decides where it and the paper differ; SAM lr 1.2e-4 constant; the U-Net
is the model nnU-Net predicts with, SAM is only saved for resume; LoRA on the fused qkv by peft (one rank-4 update of
q, k and v instead of the code's separate q and v updates — same parameter count); fusion bilinear, CDCR nearest;
mutual confidence at SAM's resolution; per-sample Dice over foreground classes, 1 when both empty; CE averaged over
all pixels; the masked Dice masks every class (the code's background term is unmasked); the
labeled patch pasted into unlabeled sample i is labeled sample i mod B_l; unlabeled terms on the full-resolution
U-Net output only. What the paper's results depend on and we keep: MedSAM weights, SMC fusion, tau, CutMix, CDCR,
the SAM learning rate and the whole-run ramp.

2D only: SAM's encoder takes 2D images; 3D configurations fail in ``initialize`` (train ``2d``).
"""
from typing import Dict, Optional, Tuple

import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from semi_nnunet.networks.sam import (SAM_CONFIGS, SAMCheckpointError, build_sam_student, ema_update_trainable_,
                                      frozen_encoder_names, make_sam_teacher, resolve_checkpoint, to_sam_input)
from semi_nnunet.optim.grouped import GroupedPolyLR, grouped_optimizer
from semi_nnunet.trainers.lookup import TrainingError
from semi_nnunet.trainers.base import SemiSupervisedTrainer
from semi_nnunet.trainers.optimizers import build_optimizer
from semi_nnunet.trainers.pseudo_label_losses import confident_labels, cutmix_boxes, masked_ce, soft_dice_loss
from semi_nnunet.trainers.synfoc_losses import cdcr, fuse, resize_labels, resize_probs, smc_weight
from semi_nnunet.trainers.variants import nnUNetTrainer_2epochs_2it, nnUNetTrainer_demo
from semi_nnunet.trainers.views import cutmix


class SynFoCSetupError(TrainingError):
    """SynFoC cannot run with this configuration or without its SAM weights; the message says how to fix it."""


def synfoc_strong_transforms(multiplier=(0.1, 2.0), blur_sigma=(0.1, 2.0)) -> ComposeTransforms:
    """SynFoC's strong view: brightness and contrast factors ~U(multiplier), then Gaussian blur, always."""
    return ComposeTransforms([
        MultiplicativeBrightnessTransform(multiplier_range=multiplier, synchronize_channels=True, p_per_channel=1),
        ContrastTransform(contrast_range=multiplier, preserve_range=True, synchronize_channels=True, p_per_channel=1),
        GaussianBlurTransform(blur_sigma=blur_sigma, synchronize_channels=True, synchronize_axes=True,
                              p_per_channel=1, benchmark=False)])


class SynFoCTrainer(SemiSupervisedTrainer):
    supported_dims = (2,)
    # SAM branch
    sam_config: str = "vit_b"  # or "tiny_random" (tests only)
    sam_checkpoint: Optional[str] = None  # None: $SEMI_NNUNET_MEDSAM_CHECKPOINT (medsam_vit_b.pth)
    sam_image_size: int = 512
    lora_rank: int = 4
    sam_lr: float = 1.2e-4
    sam_weight_decay: float = 0.1
    sam_lr_poly: bool = False  # True: nnU-Net's poly decay for SAM too
    # losses
    confidence_threshold: float = 0.95
    consistency_weight: float = 1.0
    ema_decay: float = 0.99
    rampup: str = "sigmoid"
    rampup_fraction: float = 1.0
    cutmix_area: Tuple[float, float] = (0.02, 0.4)
    cutmix_aspect: Tuple[float, float] = (0.3, 1 / 0.3)
    strong_multiplier: Tuple[float, float] = (0.1, 2.0)
    strong_blur_sigma: Tuple[float, float] = (0.1, 2.0)
    # tests: the contract runs on the tiny SAM (no checkpoint); the SAM student must learn from unlabeled data
    contract_test_variant = "SynFoCTrainer_tinySAM"
    unlabeled_trained_auxiliary = ("sam_student",)
    sam_weights_file: Optional[str] = None  # set by build_auxiliary_modules: the file the SAM weights came from
    method_log_keys = ("sam_sup_loss", "unet_unsup_loss", "sam_unsup_loss", "cdcr_consensus", "cdcr_divergence",
                       "self_confidence", "mutual_confidence", "smc_lambda", "confident_fraction")

    # ------------------------------------------------------------------ set-up
    def initialize(self):
        if not self.was_initialized:
            self._check_applicable()
        super().initialize()

    def _check_applicable(self) -> None:
        patch = self.configuration_manager.patch_size
        if len(patch) != 2:
            raise SynFoCSetupError(
                f"{type(self).__name__} is 2D only: SAM's image encoder takes 2D images, and configuration "
                f"'{self.configuration_name}' has 3D patches {list(patch)}. Train the 2d configuration instead "
                f"(semi_nnUNet_train DATASET 2d {type(self).__name__}).")
        if self.label_manager.has_regions or self.label_manager.has_ignore_label:
            raise SynFoCSetupError(f"{type(self).__name__} needs plain class labels (no regions, no ignore label): "
                                   f"its pseudo-labels are argmax maps over mutually exclusive classes.")
        if SAM_CONFIGS[self.sam_config].needs_checkpoint:
            try:
                resolve_checkpoint(self.sam_checkpoint)
            except SAMCheckpointError as e:
                raise SynFoCSetupError(str(e)) from None

    def build_auxiliary_modules(self) -> Dict[str, torch.nn.Module]:
        if self.num_input_channels not in (1, 3):
            self.print_to_log_file(f"WARNING: {self.num_input_channels} input channels; SAM sees the first one.")
        needs = SAM_CONFIGS[self.sam_config].needs_checkpoint or self.sam_checkpoint
        try:
            self.sam_weights_file = resolve_checkpoint(self.sam_checkpoint) if needs else None
            student = build_sam_student(self.sam_config, self.label_manager.num_segmentation_heads,
                                        self.sam_image_size, self.sam_weights_file, self.lora_rank)
        except SAMCheckpointError as e:
            raise SynFoCSetupError(str(e)) from None
        return {"sam_student": student, "sam_teacher": make_sam_teacher(student)}

    @property
    def sam_student(self):
        return self.auxiliary["sam_student"]

    @property
    def sam_teacher(self):
        return self.auxiliary["sam_teacher"]

    def trainable_parameters(self):
        """The U-Net's parameters, for ``build_optimizer``; SAM's get their own AdamW in configure_optimizers."""
        return list(self.network.parameters())

    def configure_optimizers(self):
        self.build_auxiliary()
        unet, _ = build_optimizer(self)  # nnU-Net's SGD, or the optimizer_name variant (HCO-SGD for _HCO)
        from semi_nnunet.optim import CautiousAdamW, HierarchicalCautiousAdamW
        name = self.optimizer_name or "sgd"
        hco = name.startswith("hco")
        cls = HierarchicalCautiousAdamW if hco else CautiousAdamW if name.startswith("co_") else torch.optim.AdamW
        params = [p for p in self.auxiliary.parameters() if p.requires_grad]
        sam = cls([{"params": params, "poly": self.sam_lr_poly}], lr=self.sam_lr * (self.hco_lr_scale if hco else 1.0),
                  weight_decay=self.sam_weight_decay)
        optimizer = grouped_optimizer([unet, sam])
        return optimizer, GroupedPolyLR(optimizer, self.initial_lr, self.num_epochs)

    def strong_transforms(self):
        """SynFoC's strong view (brightness, contrast, blur) instead of the base's default one."""
        return synfoc_strong_transforms(self.strong_multiplier, self.strong_blur_sigma)

    # ------------------------------------------------------------------ losses
    def sam_input(self, x: torch.Tensor, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
        return to_sam_input(x, self.sam_student.image_size, reference)

    @staticmethod
    def full_resolution_target(labeled: dict) -> torch.Tensor:
        target = labeled["target"]
        return target[0] if isinstance(target, (list, tuple)) else target

    def supervised_loss(self, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        unet = self.loss(self.network(labeled["data"]), labeled["target"])
        logits = self.sam_student(self.sam_input(labeled["data"]))
        y = resize_labels(self.full_resolution_target(labeled), logits.shape[2:])
        sam = masked_ce(logits, y) + soft_dice_loss(logits, y)
        return unet + sam, {"sam_sup_loss": sam.detach()}

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        weak, strong = unlabeled["views"][0], unlabeled["views"][1]
        pair = torch.arange(weak.shape[0], device=weak.device) % labeled["data"].shape[0]
        x_l, y_l = labeled["data"][pair], self.full_resolution_target(labeled)[pair].long()
        num_classes, low = self.label_manager.num_segmentation_heads, self.sam_student.output_size
        with torch.no_grad():
            p_f = torch.softmax(self.sam_teacher(self.sam_input(weak)).float(), 1)
            p_u = torch.softmax(self.teacher_logits(weak).float(), 1)
            y_s = self.full_resolution(self.network(weak)).argmax(1)
            lam, s, m = smc_weight(y_s, p_u.argmax(1), p_f.argmax(1), num_classes)
            fused = fuse(p_f, p_u, lam)
            pseudo, conf = confident_labels(fused, self.confidence_threshold)
            pseudo_lr, conf_lr = confident_labels(resize_probs(fused, (low, low)), self.confidence_threshold)
            box = cutmix_boxes(weak.shape[0], weak.shape[2:], self.cutmix_area, self.cutmix_aspect,
                               device=weak.device)
            box_sam, box_lr = (resize_labels(box, (n, n)) for n in (self.sam_student.image_size, low))
            x_mix = cutmix(strong, x_l, box)
            sam_mix = cutmix(self.sam_input(strong, reference=weak), self.sam_input(x_l), box_sam)
            y_mix, m_mix = cutmix(pseudo[:, None], y_l, box), torch.maximum(conf, box)
            y_mix_lr = cutmix(pseudo_lr[:, None], resize_labels(y_l, (low, low)), box_lr)
            m_mix_lr = torch.maximum(conf_lr, box_lr)
        sam_logits = self.sam_student(sam_mix)
        unet_logits = self.full_resolution(self.network(x_mix))
        l_sam = masked_ce(sam_logits, y_mix_lr, m_mix_lr) + soft_dice_loss(sam_logits, y_mix_lr, m_mix_lr)
        l_unet = masked_ce(unet_logits, y_mix, m_mix) + soft_dice_loss(unet_logits, y_mix, m_mix)
        cons, div, _ = cdcr(sam_logits, unet_logits)
        weight = self.unlabeled_weight(self.consistency_weight)
        values = torch.stack([l_unet.detach(), l_sam.detach(), cons.detach(), div.detach(), s.mean(), m.mean(),
                              lam.mean(), conf.mean()]).tolist()  # one device sync
        logs = dict(zip(("unet_unsup_loss", "sam_unsup_loss", "cdcr_consensus", "cdcr_divergence",
                         "self_confidence", "mutual_confidence", "smc_lambda", "confident_fraction"), values))
        return weight * (l_sam + l_unet + cons + div), {**logs, "unsup_weight": weight}

    # ------------------------------------------------------------------ EMA and checkpoints
    def after_step(self) -> None:
        ema_update_trainable_(self.sam_teacher, self.sam_student, self.teacher_decay())
        super().after_step()

    def _frozen_keys(self) -> set:
        names = frozen_encoder_names(self.sam_student)
        return {f"{module}.{n}" for module in ("sam_student", "sam_teacher") for n in names}

    def extra_checkpoint_state(self) -> dict:
        """Without the frozen ViT when it came from a file (it is read again from there on resume); a random tiny
        SAM is saved whole."""
        state = super().extra_checkpoint_state()
        if self.sam_weights_file and state.get("auxiliary_weights") is not None:
            frozen = self._frozen_keys()
            state["auxiliary_weights"] = {k: v for k, v in state["auxiliary_weights"].items() if k not in frozen}
        state["sam_weights_file"] = self.sam_weights_file
        return state

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        saved = checkpoint.get("auxiliary_weights")
        if saved is not None and self.auxiliary:
            if checkpoint.get("sam_weights_file") != self.sam_weights_file:
                self.print_to_log_file(f"WARNING: the checkpoint was trained from SAM weights "
                                       f"{checkpoint.get('sam_weights_file')}, now {self.sam_weights_file}")
            checkpoint = {**checkpoint, "auxiliary_weights": {**self.auxiliary.state_dict(), **saved}}
        super().load_extra_checkpoint_state(checkpoint)


class SynFoCTrainer_randomViTB(SynFoCTrainer):
    """SynFoC with a randomly initialised SAM of ViT-B's size: the step time and memory of the real method where
    MedSAM's weights are not at hand (benchmarks/gpu_check.py). Says nothing about accuracy."""
    sam_config = "vit_b_random"


class SynFoCTrainer_tinySAM(SynFoCTrainer):
    """A random tiny SAM (2 ViT blocks, width 32, 64 px input) instead of MedSAM ViT-B, for tests and CPU smoke
    runs: the same code path without the foundation model's knowledge, so its numbers are not SynFoC's."""
    sam_config = "tiny_random"
    sam_image_size = 64


class SynFoCTrainer_tinySAM_2epochs_2it(SynFoCTrainer_tinySAM):
    """Two epochs of two iterations with the tiny random SAM: integration tests."""
    schedule = nnUNetTrainer_2epochs_2it.schedule
    ema_horizon_fraction = None  # four iterations: keep the paper's decay so the teachers lag (tests)


class SynFoCTrainer_tinySAM_demo(SynFoCTrainer_tinySAM):
    """The demo's CPU budget with the tiny random SAM (smoke run; not SynFoC's results)."""
    schedule = nnUNetTrainer_demo.schedule


class SynFoCTrainer_demo(SynFoCTrainer):
    """The demo's schedule with MedSAM ViT-B (needs the checkpoint and, realistically, a GPU)."""
    schedule = nnUNetTrainer_demo.schedule
