"""SynFoC's pieces against hand-computed values: SMC weight, fusion, masked CE / Dice, CDCR, CutMix boxes, SAM input
mapping, LoRA (frozen encoder, moving adapters), the teacher's shared encoder, SAM checkpoint loading, and the
grouped optimizer (U-Net SGD + SAM AdamW as one)."""
import math

import pytest
import torch
import torch.nn.functional as F

from semi_nnunet.networks.sam import (MEDSAM_FILE, SAM_CHECKPOINT_ENV, SAMCheckpointError, build_sam,
                                      build_sam_student, ema_update_trainable_, frozen_encoder_names,
                                      load_sam_weights, make_sam_teacher, resolve_checkpoint, to_sam_input)
from semi_nnunet.optim.grouped import GroupedPolyLR, GroupedTwoGradientOptimizer, grouped_optimizer
from semi_nnunet.trainers.pseudo_label_losses import confident_labels, cutmix_boxes, masked_ce, soft_dice_loss
from semi_nnunet.trainers.synfoc_losses import cdcr, dice_per_sample, fuse, smc_weight


def block_mask(size, top, left, h, w, value=1):
    m = torch.zeros(size, size, dtype=torch.long)
    m[top:top + h, left:left + w] = value
    return m


# ---------------------------------------------------------------- SMC weight
@pytest.mark.parametrize("a, b, expected", [
    (block_mask(8, 0, 0, 2, 2), block_mask(8, 0, 0, 2, 1), (2 * 2 + 1) / (4 + 2 + 1.001)),  # 2 of 4 pixels shared
    (block_mask(8, 0, 0, 2, 2), block_mask(8, 4, 4, 2, 2), 1 / (4 + 4 + 1.001)),            # disjoint
    (block_mask(8, 0, 0, 3, 3), block_mask(8, 0, 0, 3, 3), 19 / 19.001),                     # identical
    (torch.zeros(8, 8, dtype=torch.long), torch.zeros(8, 8, dtype=torch.long), 1.0),         # both empty: 1
    (block_mask(8, 0, 0, 2, 2), torch.zeros(8, 8, dtype=torch.long), 1 / (4 + 1.001)),        # one empty
])
def test_dice_per_sample(a, b, expected):
    assert dice_per_sample(a[None], b[None], 2).item() == pytest.approx(expected, rel=1e-6)


def test_dice_per_sample_averages_foreground_classes():
    a = block_mask(8, 0, 0, 2, 2)                    # class 1 only
    b = block_mask(8, 0, 0, 2, 2) + block_mask(8, 5, 5, 1, 1, value=2)  # class 1 equal, class 2 only in b
    expected = (9 / 9.001 + 1 / (1 + 1.001)) / 2
    assert dice_per_sample(a[None], b[None], 3).item() == pytest.approx(expected, rel=1e-6)


def test_smc_early_training_trusts_sam():
    """The U-Net student and teacher disagree (unstable U-Net): lambda is small, the fusion is mostly SAM."""
    student, teacher_u = block_mask(8, 0, 0, 2, 2), block_mask(8, 4, 4, 2, 2)
    teacher_sam = block_mask(4, 2, 2, 1, 1)  # = nearest(teacher_u -> 4x4): the two teachers agree
    lam, s, m = smc_weight(student[None], teacher_u[None], teacher_sam[None], 2)
    assert s.item() == pytest.approx(1 / 9.001) and m.item() == pytest.approx(3 / 3.001)
    assert lam.item() == pytest.approx(1 / 9.001 * 3 / 3.001)
    p_sam, p_unet = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1).expand(1, 2, 4, 4), \
        torch.tensor([0.1, 0.9]).view(1, 2, 1, 1).expand(1, 2, 8, 8)
    fused = fuse(p_sam, p_unet, lam)
    assert fused[0, :, 3, 3].tolist() == pytest.approx([0.8 - 0.7 * lam.item(), 0.2 + 0.7 * lam.item()])
    assert fused[0, 0, 3, 3] > 0.7  # SAM's background dominates


def test_smc_late_training_trusts_unet():
    """Student = teacher = SAM (a stable U-Net that agrees with SAM): lambda near 1, the fusion is the U-Net's."""
    y = block_mask(8, 0, 0, 4, 4)
    lam, s, m = smc_weight(y[None], y[None], block_mask(4, 0, 0, 2, 2)[None], 2)
    assert s.item() == pytest.approx(33 / 33.001) and m.item() == pytest.approx(9 / 9.001)
    assert lam.item() == pytest.approx(33 / 33.001 * 9 / 9.001)
    p_sam = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1).expand(1, 2, 4, 4)
    p_unet = torch.tensor([0.1, 0.9]).view(1, 2, 1, 1).expand(1, 2, 8, 8)
    assert fuse(p_sam, p_unet, lam)[0, 1, 0, 0].item() == pytest.approx(0.9, abs=1e-3)


def test_fusion_equals_the_formula_per_sample():
    p_sam = torch.tensor([0.8, 0.2]).view(1, 2, 1, 1).expand(2, 2, 2, 2)  # constant maps: bilinear keeps them
    p_unet = torch.tensor([0.02, 0.98]).view(1, 2, 1, 1).expand(2, 2, 4, 4)
    fused = fuse(p_sam, p_unet, torch.tensor([0.25, 1.0]))
    assert fused.shape == (2, 2, 4, 4)
    assert torch.allclose(fused[0], torch.tensor([0.605, 0.395]).view(2, 1, 1).expand(2, 4, 4))
    assert torch.allclose(fused[1], torch.tensor([0.02, 0.98]).view(2, 1, 1).expand(2, 4, 4))
    labels, mask = confident_labels(fused, 0.95)
    assert labels[0].eq(0).all() and labels[1].eq(1).all()
    assert mask[0].eq(0).all() and mask[1].eq(1).all()  # 0.605 < 0.95 < 0.98


def test_fusion_upsamples_sam_bilinearly():
    p_sam = torch.zeros(1, 2, 1, 2)
    p_sam[0, 0, 0, 0], p_sam[0, 0, 0, 1] = 1.0, 0.0
    p_sam[0, 1] = 1 - p_sam[0, 0]
    fused = fuse(p_sam, torch.zeros(1, 2, 1, 4), torch.tensor([0.0]))
    # align_corners=False, 2 -> 4: samples at -0.25, 0.25, 0.75, 1.25 -> 1, 0.75, 0.25, 0
    assert fused[0, 0, 0].tolist() == pytest.approx([1.0, 0.75, 0.25, 0.0])


# ---------------------------------------------------------------- masked CE and Dice
def test_masked_ce_averages_over_all_pixels():
    logits = torch.zeros(1, 2, 2, 2)  # CE = ln 2 everywhere
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 0] = 1
    assert masked_ce(logits, torch.zeros(1, 2, 2), mask).item() == pytest.approx(math.log(2) / 4)
    assert masked_ce(logits, torch.zeros(1, 1, 2, 2)).item() == pytest.approx(math.log(2))


def test_soft_dice_loss_hand_values():
    logits, target = torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2)  # p = 0.5, every pixel background
    # class 0: 1 - 2*(0.5*4) / (0.25*4 + 4) = 0.2 ; class 1: 1 - eps / (0.25*4 + eps) = 1 ; mean 0.6
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.6, abs=1e-6)
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, :] = 1  # two pixels: class 0 1 - 2 / (0.5 + 2) = 0.2 as well
    assert soft_dice_loss(logits, target, mask).item() == pytest.approx(0.6, abs=1e-6)
    perfect = torch.tensor([20.0, -20.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    target2 = torch.zeros(1, 1, 2, 2)
    target2[0, 0, 1, 1] = 1  # one pixel of class 1 the logits miss: masked out, so the rest is perfect
    mask2 = torch.ones(1, 1, 2, 2)
    mask2[0, 0, 1, 1] = 0
    # class 0 perfect on the 3 masked pixels (loss 0); class 1 absent from prediction and target: eps / eps, loss 0
    assert soft_dice_loss(perfect, target2, mask2).item() == pytest.approx(0.0, abs=1e-6)
    # unmasked: class 0 1 - 2*3 / (4 + 3) = 1/7 (one pixel predicted 0 is class 1), class 1 missed: 1
    assert soft_dice_loss(perfect, target2).item() == pytest.approx((1 / 7 + 1) / 2, abs=1e-6)


# ---------------------------------------------------------------- CDCR
def test_cdcr_on_a_hand_made_consensus_map():
    q_sam = torch.tensor([0.2, 0.8]).view(1, 2, 1, 1).repeat(1, 1, 2, 2)
    q_sam[0, :, 0, 0] = torch.tensor([0.9, 0.1])  # only the top-left SAM pixel says background
    q_unet = torch.tensor([0.7, 0.3]).view(1, 2, 1, 1).repeat(1, 1, 4, 4)  # the U-Net says background everywhere
    sam_logits, unet_logits = q_sam.log().requires_grad_(), q_unet.log().requires_grad_()
    cons, div, consensus = cdcr(sam_logits, unet_logits)
    expected_c = torch.zeros(1, 1, 4, 4)
    expected_c[0, 0, :2, :2] = 1  # the SAM pixel covers a 2x2 block at the U-Net's size
    assert torch.equal(consensus, expected_c)
    h_f = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h_u = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    # SAM: 1 consensus pixel of 2*2*2 elements; U-Net: 4 consensus pixels of 2*4*4 elements
    assert cons.item() == pytest.approx((h_f / 8 + 4 * h_u / 32) / 2, rel=1e-5)
    # 12 divergent pixels, each (0.2-0.7)^2 + (0.8-0.3)^2 = 0.5, over 32 elements
    assert div.item() == pytest.approx(12 * 0.5 / 32, rel=1e-5)
    div.backward()
    assert sam_logits.grad.abs().sum() > 0 and unet_logits.grad.abs().sum() > 0, "the MSE pulls both students"


# ---------------------------------------------------------------- CutMix boxes and SAM input
def test_cutmix_boxes_are_one_rectangle_of_the_drawn_area():
    g = torch.Generator().manual_seed(0)
    boxes = cutmix_boxes(16, (40, 30), generator=g)
    assert boxes.shape == (16, 1, 40, 30)
    for b in boxes[:, 0]:
        rows, cols = b.any(1).nonzero(), b.any(0).nonzero()
        h, w = len(rows), len(cols)
        assert b.sum() == h * w, "one filled rectangle"
        assert rows.max() - rows.min() + 1 == h and cols.max() - cols.min() + 1 == w
        assert 0.3 * 0.02 * 1200 <= h * w <= 0.4 * 1200 + 1e-6  # int() truncation can only shrink the box
        assert 0.3 - 0.15 <= h / w <= 1 / 0.3 + 1.5


def test_sam_input_maps_the_reference_range_to_unit_interval():
    weak = torch.tensor([[-1.0, 1.0], [0.0, 3.0]]).view(1, 1, 2, 2)
    out = to_sam_input(weak, 2)
    assert out.shape == (1, 3, 2, 2) and torch.equal(out[:, 0], out[:, 2])
    assert out[0, 0].flatten().tolist() == pytest.approx([0.0, 0.5, 0.25, 1.0])
    strong = 2 * weak  # a brightness change survives (a per-view min-max would undo it); clipped to [0, 1]
    assert to_sam_input(strong, 2, reference=weak)[0, 0].flatten().tolist() == pytest.approx([0.0, 0.75, 0.25, 1.0])
    assert to_sam_input(torch.rand(2, 3, 8, 8), 16).shape == (2, 3, 16, 16)


# ---------------------------------------------------------------- LoRA, teacher, checkpoint loading
def test_lora_trains_adapters_and_decoder_but_never_the_frozen_encoder():
    torch.manual_seed(0)
    student = build_sam_student("tiny_random", 2, 64)
    frozen = {n: p.detach().clone() for n, p in student.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert any(n.startswith("mask_decoder.transformer") for n in trainable)
    assert not any(n.startswith("image_encoder") and "lora_" not in n for n in trainable)
    qkv = student.image_encoder.blocks[0].attn.qkv
    x = torch.randn(3, qkv.in_features)
    assert torch.equal(qkv(x), qkv.base_layer(x)), "LoRA starts as the identity update (B = 0)"

    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.1)  # even given every parameter
    images, target = torch.rand(2, 3, 64, 64), torch.randint(0, 2, (2, 32, 32))
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(student(images), target).backward()
        optimizer.step()
    for n, value in frozen.items():
        assert torch.equal(dict(student.named_parameters())[n], value), f"{n} moved"
    after = dict(student.named_parameters())
    for n in trainable:
        if "lora_" in n or n.startswith("mask_decoder.output_upscaling"):
            assert not torch.equal(after[n], before[n]), f"{n} did not move"


def test_teacher_shares_the_frozen_encoder_and_averages_only_trainable_weights():
    student = build_sam_student("tiny_random", 3, 64)
    teacher = make_sam_teacher(student)
    s, t = dict(student.named_parameters()), dict(teacher.named_parameters())
    for n in frozen_encoder_names(student):
        assert t[n] is s[n], "one frozen ViT in memory"
    assert all(not p.requires_grad for p in teacher.parameters())
    name = next(n for n in s if "lora_B" in n)
    with torch.no_grad():
        s[name].fill_(2.0)
    ema_update_trainable_(teacher, student, alpha=0.75)
    assert torch.allclose(t[name], torch.full_like(t[name], 0.5))  # 0.75 * 0 + 0.25 * 2
    assert t[name] is not s[name]


def test_vit_b_state_dict_loads_with_resized_position_tables(tmp_path):
    """A SAM ViT-B state dict in the real format (segment_anything's build_sam_vit_b, random weights) loads into
    the 512-input student: weights equal, the 64x64 position embedding resized to 32x32, decoder heads fresh."""
    from segment_anything.build_sam import build_sam_vit_b
    torch.manual_seed(0)
    reference = build_sam_vit_b().state_dict()
    path = str(tmp_path / MEDSAM_FILE)
    torch.save(reference, path)
    student = build_sam_student("vit_b", 2, 512, path)
    own = student.state_dict()
    assert torch.equal(own["image_encoder.patch_embed.proj.weight"], reference["image_encoder.patch_embed.proj.weight"])
    assert torch.equal(own["image_encoder.blocks.7.attn.qkv.base_layer.weight"],
                       reference["image_encoder.blocks.7.attn.qkv.weight"])
    assert torch.equal(own["mask_decoder.transformer.layers.1.mlp.lin1.weight"],
                       reference["mask_decoder.transformer.layers.1.mlp.lin1.weight"])
    # bilinear 64 -> 32 (align_corners=False) samples halfway between pixel pairs: a 2x2 average
    pooled = F.avg_pool2d(reference["image_encoder.pos_embed"].permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    assert torch.allclose(own["image_encoder.pos_embed"], pooled, atol=1e-6)
    assert own["image_encoder.blocks.2.attn.rel_pos_h"].shape == (63, 64)  # global attention: 2*32-1
    assert torch.equal(own["image_encoder.blocks.0.attn.rel_pos_h"], reference["image_encoder.blocks.0.attn.rel_pos_h"])
    assert own["mask_decoder.mask_tokens.weight"].shape == (2, 256)  # background + 1 class, not SAM's 4
    del reference, student, own

    tiny = str(tmp_path / "tiny.pth")
    torch.save(build_sam("tiny_random", 2, 64).state_dict(), tiny)
    with pytest.raises(SAMCheckpointError, match="does not match SAM vit_b") as e:
        load_sam_weights(build_sam("vit_b", 2, 512), tiny)
    assert tiny in str(e.value) and MEDSAM_FILE in str(e.value)


def test_checkpoint_errors_name_the_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv(SAM_CHECKPOINT_ENV, raising=False)
    with pytest.raises(SAMCheckpointError) as e:
        resolve_checkpoint(None)
    for text in (SAM_CHECKPOINT_ENV, MEDSAM_FILE, "https://github.com/bowang-lab/MedSAM", "sam_checkpoint"):
        assert text in str(e.value)
    missing = str(tmp_path / "nowhere" / MEDSAM_FILE)
    monkeypatch.setenv(SAM_CHECKPOINT_ENV, missing)
    with pytest.raises(SAMCheckpointError, match="does not exist") as e:
        resolve_checkpoint(None)
    assert missing in str(e.value) and SAM_CHECKPOINT_ENV in str(e.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SAMCheckpointError, match="Could not read") as e:
        load_sam_weights(build_sam("tiny_random", 2, 64), str(garbage))
    assert str(garbage) in str(e.value)


# ---------------------------------------------------------------- grouped optimizer
def test_grouped_optimizer_poly_for_unet_constant_for_sam_and_state_round_trip():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    sgd = torch.optim.SGD([a], lr=1e-2, momentum=0.99, nesterov=True)
    adamw = torch.optim.AdamW([{"params": [b], "poly": False}], lr=1.2e-4, weight_decay=0.1)
    opt = grouped_optimizer([sgd, adamw])
    scheduler = GroupedPolyLR(opt, 1e-2, 10)
    scheduler.step(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** 0.9)
    assert opt.param_groups[1]["lr"] == pytest.approx(1.2e-4)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert a[0].item() == pytest.approx(1 - 1e-2 * 0.5 ** 0.9 * (1 + 0.99))  # Nesterov: g + momentum * buf
    assert b[0].item() == pytest.approx((1 - 1.2e-4 * 0.1) - 1.2e-4, rel=1e-6)  # AdamW: decay, then lr * sign
    state = opt.state_dict()
    c, d = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    other = grouped_optimizer([torch.optim.SGD([c], lr=1.0), torch.optim.AdamW([d], lr=1.0)])
    other.load_state_dict(state)
    assert other.param_groups[1]["lr"] == pytest.approx(1.2e-4) and other.param_groups[1]["poly"] is False
    assert torch.equal(other.optimizers[0].state[c]["momentum_buffer"], sgd.state[a]["momentum_buffer"])


def test_grouped_hco_hands_each_optimizer_its_gradients():
    from semi_nnunet.optim import HierarchicalCautiousAdamW, HierarchicalCautiousSGD
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4)) for _ in range(2)]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    gl, gu = [torch.randn(4) for _ in range(2)], [torch.randn(4) for _ in range(2)]
    grouped = grouped_optimizer([HierarchicalCautiousSGD([params[0]], lr=0.1, momentum=0.9),
                                 HierarchicalCautiousAdamW([params[1]], lr=0.1)])
    assert isinstance(grouped, GroupedTwoGradientOptimizer)
    grouped.step_hco(gl, gu)
    HierarchicalCautiousSGD([twins[0]], lr=0.1, momentum=0.9).step_hco(gl[:1], gu[:1])
    HierarchicalCautiousAdamW([twins[1]], lr=0.1).step_hco(gl[1:], gu[1:])
    assert all(torch.equal(p, t) for p, t in zip(params, twins))
    assert 0.0 <= grouped.last_mask_ratio <= 1.0
    with pytest.raises(ValueError, match="HCO and plain"):
        grouped_optimizer([torch.optim.SGD([twins[0]], lr=0.1), HierarchicalCautiousAdamW([twins[1]], lr=0.1)])
