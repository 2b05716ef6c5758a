"""SAM for SynFoC: the ``segment_anything`` architecture, a frozen image encoder with LoRA (``peft``) on its qkv
projections, and a prompt-free mask decoder that returns one low-resolution logit map per class.

* ``vit_b``: SAM ViT-B (the hyperparameters of ``segment_anything.build_sam.build_sam_vit_b``), weights from the
  MedSAM checkpoint ``medsam_vit_b.pth`` (https://github.com/bowang-lab/MedSAM) or SAM's ``sam_vit_b_01ec64.pth``
  (the same state-dict format). The path comes from the trainer attribute ``sam_checkpoint`` or the environment
  variable ``SEMI_NNUNET_MEDSAM_CHECKPOINT``; nothing is ever downloaded.
* ``tiny_random``: a two-block ViT of width 32 with **random weights**, for tests and CPU smoke runs only. It has
  the same code path as ViT-B and none of its knowledge: results with it say nothing about SynFoC.

The input size may differ from SAM's native 1024 (SynFoC uses 512): the checkpoint's absolute position embedding
and the relative position tables of the global-attention blocks are resized bilinearly (SAMed / SynFoC). The mask
decoder has ``num_classes`` mask tokens (``num_multimask_outputs = num_classes - 1``); the class-count dependent
parts (mask tokens, hypernetwork MLPs, IoU head) start from SAM's random initialisation, as in SAMed / SynFoC.
Images enter SAM in [0, 1] with pixel mean 0 and std 1 (MedSAM's convention).
"""
import copy
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

SAM_CHECKPOINT_ENV = "SEMI_NNUNET_MEDSAM_CHECKPOINT"
MEDSAM_FILE = "medsam_vit_b.pth"
MEDSAM_URL = "https://github.com/bowang-lab/MedSAM"
# decoder parts whose shape depends on the number of classes: never taken from the checkpoint
CLASS_DEPENDENT = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.",
                   "mask_decoder.iou_prediction_head.")


class SAMCheckpointError(ValueError):
    """The SAM checkpoint is missing, unreadable or not a SAM state dict of the expected architecture."""


@dataclass(frozen=True)
class SAMConfig:
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    mask_in_chans: int = 16
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    needs_checkpoint: bool = True


SAM_CONFIGS: Dict[str, SAMConfig] = {
    "vit_b": SAMConfig(768, 12, 12, (2, 5, 8, 11)),  # = segment_anything.build_sam.build_sam_vit_b
    # ViT-B's shapes, randomly initialised: step time and memory of SynFoC without MedSAM weights (gpu_check)
    "vit_b_random": SAMConfig(768, 12, 12, (2, 5, 8, 11), needs_checkpoint=False),
    "tiny_random": SAMConfig(32, 2, 2, (1,), patch_size=8, window_size=4, mlp_ratio=2.0, prompt_embed_dim=32,
                             decoder_depth=1, decoder_mlp_dim=64, decoder_num_heads=2, mask_in_chans=4,
                             iou_head_depth=2, iou_head_hidden_dim=32, needs_checkpoint=False),
}


def build_sam(config: str, num_classes: int, image_size: int):
    """A ``segment_anything`` ``Sam`` (random weights, no LoRA) for ``image_size``² inputs and ``num_classes``
    output maps (background included)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    if config not in SAM_CONFIGS:
        raise ValueError(f"Unknown SAM configuration '{config}'; choose one of {sorted(SAM_CONFIGS)}")
    c = SAM_CONFIGS[config]
    if image_size % c.patch_size:
        raise ValueError(f"SAM input size {image_size} is not a multiple of the patch size {c.patch_size}")
    if num_classes < 2:
        raise ValueError("SynFoC's SAM needs at least two output maps (background and one class)")
    tokens = image_size // c.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=image_size, patch_size=c.patch_size, embed_dim=c.encoder_embed_dim, depth=c.encoder_depth,
            num_heads=c.encoder_num_heads, mlp_ratio=c.mlp_ratio, out_chans=c.prompt_embed_dim, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=c.window_size,
            global_attn_indexes=c.encoder_global_attn_indexes),
        prompt_encoder=PromptEncoder(embed_dim=c.prompt_embed_dim, image_embedding_size=(tokens, tokens),
                                     input_image_size=(image_size, image_size), mask_in_chans=c.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=num_classes - 1,
            transformer=TwoWayTransformer(depth=c.decoder_depth, embedding_dim=c.prompt_embed_dim,
                                          mlp_dim=c.decoder_mlp_dim, num_heads=c.decoder_num_heads),
            transformer_dim=c.prompt_embed_dim, iou_head_depth=c.iou_head_depth,
            iou_head_hidden_dim=c.iou_head_hidden_dim),
        pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])


def _how_to_get_weights() -> str:
    return (f"Download {MEDSAM_FILE} (MedSAM ViT-B) from {MEDSAM_URL} (README, 'Model Checkpoints'; SAM's own "
            f"sam_vit_b_01ec64.pth has the same format) and point the environment variable {SAM_CHECKPOINT_ENV} at it "
            f"(export {SAM_CHECKPOINT_ENV}=/path/to/{MEDSAM_FILE}) or set the trainer attribute sam_checkpoint in a "
            f"subclass. Weights are never downloaded at run time. For CPU smoke tests without weights use "
            f"SynFoCTrainer_tinySAM (a random tiny SAM; its results say nothing about SynFoC).")


def resolve_checkpoint(attribute: Optional[str]) -> str:
    """The checkpoint path from the trainer attribute, else the environment variable; a clear error if neither
    names an existing file."""
    path, source = (attribute, "trainer attribute sam_checkpoint") if attribute else \
        (os.environ.get(SAM_CHECKPOINT_ENV), f"environment variable {SAM_CHECKPOINT_ENV}")
    if not path:
        raise SAMCheckpointError("SynFoC's SAM branch needs the MedSAM ViT-B checkpoint and none was given. "
                                 + _how_to_get_weights())
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise SAMCheckpointError(f"The SAM checkpoint {path} (from the {source}) does not exist. "
                                 + _how_to_get_weights())
    return path


def _resize_position_tables(state: Dict[str, torch.Tensor], own: Dict[str, torch.Tensor]) -> None:
    """In place: the absolute position embedding (1, h, w, C) and relative position tables (2h-1, C) of the
    checkpoint, bilinearly resized to the model's input size (SAMed / SynFoC for 512 inputs)."""
    for key, value in list(state.items()):
        target = own.get(key)
        if target is None or value.shape == target.shape or value.dim() != target.dim():
            continue
        if key.endswith("pos_embed") and value.dim() == 4 and value.shape[3] == target.shape[3]:
            state[key] = F.interpolate(value.permute(0, 3, 1, 2).float(), size=tuple(target.shape[1:3]),
                                       mode="bilinear", align_corners=False).permute(0, 2, 3, 1).to(value.dtype)
        elif ".rel_pos_" in key and value.dim() == 2 and value.shape[1] == target.shape[1]:
            state[key] = F.interpolate(value[None, None].float(), size=tuple(target.shape), mode="bilinear",
                                       align_corners=False)[0, 0].to(value.dtype)


def load_sam_weights(sam: nn.Module, path: str, config: str = "vit_b") -> None:
    """Load a SAM state dict (``medsam_vit_b.pth``) into ``sam`` (a model of :func:`build_sam`, before LoRA), with
    clear errors when the file is unreadable or does not fit the architecture."""
    expected = f"Expected {MEDSAM_FILE}: the state dict of SAM {config} (image_encoder.*, prompt_encoder.*, " \
               f"mask_decoder.*). "
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-tensor payloads
        raise SAMCheckpointError(f"Could not read the SAM checkpoint {path} as a PyTorch state dict ({e}). "
                                 + expected + _how_to_get_weights()) from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # a training checkpoint around the weights
        state = state["model"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SAMCheckpointError(f"The SAM checkpoint {path} is not a state dict of tensors. " + expected
                                 + _how_to_get_weights())
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = sam.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(CLASS_DEPENDENT)}
    _resize_position_tables(state, own)
    missing = [k for k in own if k not in state and not k.startswith(CLASS_DEPENDENT)]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        problems = "; ".join(f"{len(items)} {what} (e.g. {', '.join(items[:3])})" for what, items in
                             (("keys missing", missing), ("unexpected keys", unexpected), ("shapes differ", shapes))
                             if items)
        raise SAMCheckpointError(f"{path} does not match SAM {config}: {problems}. " + expected
                                 + "A ViT-H/ViT-L checkpoint or another model's weights do not fit. "
                                 + _how_to_get_weights())
    sam.load_state_dict({**own, **state}, strict=True)


def add_lora(image_encoder: nn.Module, rank: int) -> nn.Module:
    """Freeze the encoder and add rank-``rank`` LoRA adapters (peft; scale 1, A Kaiming-uniform, B zero) to every
    block's fused qkv projection."""
    from peft import LoraConfig, inject_adapter_in_model
    image_encoder.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["qkv"], lora_dropout=0.0, bias="none")
    return inject_adapter_in_model(config, image_encoder)


class PromptFreeSAM(nn.Module):
    """SAM without prompts: image encoder -> mask decoder fed the prompt encoder's no-prompt embeddings (an empty
    sparse set and the learned no-mask dense embedding), returning all ``num_classes`` mask logits at
    ``image_size / 4`` (SAMed's ``forward_train``). Input: (B, 3, image_size, image_size) in [0, 1]."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.image_encoder, self.prompt_encoder, self.mask_decoder = \
            sam.image_encoder, sam.prompt_encoder, sam.mask_decoder

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    @property
    def output_size(self) -> int:
        return 4 * self.prompt_encoder.image_embedding_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeddings = self.image_encoder(x)
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)  # batch 1, broadcast over images
        masks, _ = self.mask_decoder.predict_masks(image_embeddings=embeddings,
                                                   image_pe=self.prompt_encoder.get_dense_pe(),
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return masks


def build_sam_student(config: str, num_classes: int, image_size: int, checkpoint: Optional[str] = None,
                      lora_rank: int = 4) -> PromptFreeSAM:
    """The trainable SAM branch: weights from ``checkpoint`` (required for ``vit_b``), frozen encoder + LoRA,
    trainable prompt encoder and mask decoder (the IoU head, which no loss uses, frozen)."""
    sam = build_sam(config, num_classes, image_size)
    if SAM_CONFIGS[config].needs_checkpoint or checkpoint:
        load_sam_weights(sam, resolve_checkpoint(checkpoint), config)
    add_lora(sam.image_encoder, lora_rank)
    sam.mask_decoder.iou_prediction_head.requires_grad_(False)
    return PromptFreeSAM(sam)


def frozen_encoder_names(student: nn.Module) -> List[str]:
    """Names of the frozen image-encoder parameters (the weights shared with the teacher and read from the file)."""
    return [f"image_encoder.{n}" for n, p in student.image_encoder.named_parameters() if not p.requires_grad]


def make_sam_teacher(student: PromptFreeSAM) -> PromptFreeSAM:
    """The EMA teacher: a copy of the student that takes no gradient and **shares** the frozen encoder weights (one
    ViT in memory; only LoRA, prompt encoder and decoder are averaged)."""
    shared = {id(p): p for p in student.image_encoder.parameters() if not p.requires_grad}
    teacher = copy.deepcopy(student, memo=shared)
    return teacher.requires_grad_(False)


@torch.no_grad()
def ema_update_trainable_(teacher: nn.Module, student: nn.Module, alpha: float) -> None:
    """``teacher = alpha * teacher + (1 - alpha) * student`` over the student's trainable parameters only."""
    t = dict(teacher.named_parameters())
    pairs = [(t[n], p.detach()) for n, p in student.named_parameters() if p.requires_grad]
    if pairs:
        torch._foreach_lerp_([a for a, _ in pairs], [b for _, b in pairs], 1.0 - alpha)


def to_sam_input(x: torch.Tensor, size: int, reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """nnU-Net's normalised patches (B, C, H, W) -> SAM's input (B, 3, size, size) in [0, 1].

    Per image, the intensity range [min, max] of ``reference`` (default ``x``) is mapped to [0, 1] and the result
    clipped: a strong view mapped with its weak view's range keeps its brightness/contrast change (a per-view min-max
    would undo it). 3-channel images stay RGB, others use their first channel, repeated to 3. Bilinear resize."""
    ref = x if reference is None else reference
    channels = 3 if x.shape[1] == 3 else 1
    x, ref = x[:, :channels].float(), ref[:, :channels].float()
    lo = ref.amin(dim=(1, 2, 3), keepdim=True)
    hi = ref.amax(dim=(1, 2, 3), keepdim=True)
    y = ((x - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    y = F.interpolate(y, size=(size, size), mode="bilinear", align_corners=False)
    return y.expand(-1, 3, -1, -1) if channels == 1 else y
