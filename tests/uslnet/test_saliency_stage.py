"""CCAM losses, polarity and resampling; MoCo v2 queue and momentum; backbone checkpoints (hand-worked values)."""
import math

import pytest
import torch

from semi_nnunet.uslnet.backbone import images_for_backbone, load_backbone_weights, resnet_trunk
from semi_nnunet.uslnet.ccam import (CCAM, border_foreground_fraction, cam_to_image, ccam_loss, decide_polarity,
                                     pull_loss, push_loss)
from semi_nnunet.uslnet.moco import MoCo


def test_pull_loss_hand_computed():
    # v0 = (1, 0), v1 = (2, 1), v2 = (0, 1): cos01 = 2/sqrt(5) = 0.894427, cos12 = 1/sqrt(5) = 0.447214,
    # cos02 = 0 -> clamped to 5e-4, self -> clamped to 0.9995. Ranks per row (descending similarity, self = 0):
    # row 0: self 0, v1 1, v2 2; row 1: self 0, v0 1, v2 2; row 2: self 0, v1 1, v0 2.
    # weights exp(-0.25 (rank - 1)): rank 0 -> 1.284025, rank 1 -> 1, rank 2 -> 0.778801.
    # row 0: -log(.9995)*1.284025 + -log(.894427)*1 + -log(5e-4)*0.778801 = 6.031803
    # row 1: -log(.894427)*1 + -log(.9995)*1.284025 + -log(.447214)*0.778801 = 0.738930
    # row 2: -log(5e-4)*0.778801 + -log(.447214)*1 + -log(.9995)*1.284025 = 6.724950;  mean over 9 = 1.499520
    v = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0]])
    assert pull_loss(v, alpha=0.25).item() == pytest.approx(1.499520, abs=1e-5)


@pytest.mark.parametrize("bg, fg, expected", [
    ([[1.0, 0.0]], [[0.0, 1.0]], -math.log(1 - 5e-4)),  # orthogonal: cos clamped to 5e-4 -> 0.000500
    ([[1.0, 0.0]], [[1.0, 1.0]], 1.227947),  # cos 0.707107: -log(0.292893)
    # cos .894427 and .447214: (-log(.105573) - log(.552786)) / 2 = (2.248354 + 0.592784) / 2
    ([[1.0, 0.0], [0.0, 1.0]], [[2.0, 1.0]], (2.248354 + 0.592784) / 2),
])
def test_push_loss_hand_computed(bg, fg, expected):
    assert push_loss(torch.tensor(bg), torch.tensor(fg)).item() == pytest.approx(expected, abs=1e-5)


def test_ccam_loss_is_symmetric_in_foreground_and_background():
    # swapping fg and bg leaves pull(fg) + pull(bg) unchanged and transposes the push matrix (same mean): the
    # head may light up either side, hence the polarity rule
    g = torch.Generator().manual_seed(0)
    fg, bg = torch.rand(4, 6, generator=g), torch.rand(4, 6, generator=g)
    assert ccam_loss(fg, bg).item() == pytest.approx(ccam_loss(bg, fg).item(), rel=1e-6)


def test_border_fraction_and_polarity():
    a = torch.zeros(2, 1, 4, 4)
    a[:, :, 0, :] = 1  # the top row of both maps is "foreground": 4 of the 12 border pixels
    assert border_foreground_fraction(a) == pytest.approx(4 / 12)
    model = CCAM("resnet10_w16").eval()
    torch.nn.init.zeros_(model.head[0].weight)  # head output = the BN bias everywhere
    with torch.no_grad():
        model.head[1].bias.fill_(5.0)  # sigmoid(5) > 0.5 everywhere, the border included -> flip
    images = torch.randint(0, 255, (3, 3, 32, 32), dtype=torch.uint8)
    assert decide_polarity(model, images, torch.device("cpu")) == pytest.approx(1.0)
    assert bool(model.flipped)
    assert (model.raw_map(torch.zeros(1, 3, 32, 32)) < 0).all()  # flipped: raw output negated
    with torch.no_grad():
        model.head[1].bias.fill_(-5.0)
    assert decide_polarity(model, images, torch.device("cpu")) == 0.0 and not bool(model.flipped)


def test_cam_to_image_puts_cell_i_on_pixel_16_i():
    # a ResNet's feature cell (1, 2) is centred on input pixel (16, 32); same-size output: exactly there, value 1
    cam = torch.zeros(1, 1, 4, 4)
    cam[0, 0, 1, 2] = 1
    out = cam_to_image(cam, (64, 64), (64, 64))[0, 0]
    assert divmod(int(out.argmax()), 64) == (16, 32) and out[16, 32] == 1
    # halfway between cells 1 and 2 (pixel 24) both count half
    cam[0, 0, 1, 1] = 1
    assert cam_to_image(cam, (64, 64), (64, 64))[0, 0, 16, 24].item() == pytest.approx(1.0)


def test_layer3_and_layer4_share_stride_16():
    model = CCAM("resnet10_w16")
    x3, x4 = model.trunk(torch.zeros(1, 3, 64, 64))
    assert x3.shape[-2:] == x4.shape[-2:] == (4, 4)
    assert model.features(torch.zeros(1, 3, 64, 64)).shape[1] == 64 + 128


def test_moco_queue_wraps_and_key_encoder_follows_the_query_encoder():
    model = MoCo("resnet10_w16", dim=8, queue=5, momentum=0.9)
    keys = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    model._enqueue(keys)
    assert int(model.queue_ptr) == 3
    model._enqueue(keys * 2)  # columns 3, 4 and then 0 (wrap-around); the pointer ends at (3 + 3) % 5 = 1
    assert int(model.queue_ptr) == 1
    torch.testing.assert_close(model.queue[:, [3, 4, 0]], (keys * 2).T)
    torch.testing.assert_close(model.queue[:, [1, 2]], keys[1:].T)
    q_param, k_param = next(model.encoder_q.parameters()), next(model.encoder_k.parameters())
    with torch.no_grad():
        q_param.fill_(1.0)
        k_param.fill_(0.0)
    model._momentum_update()  # k <- 0.9 k + 0.1 q = 0.1
    torch.testing.assert_close(k_param, torch.full_like(k_param, 0.1))
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


def test_moco_loss_trains_the_query_encoder_only():
    model = MoCo("resnet10_w16", dim=8, queue=6)
    x = torch.randn(4, 3, 32, 32)
    loss = model(x, x.flip(-1))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_q.parameters())
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_official_moco_checkpoint_format_loads(tmp_path):
    source = resnet_trunk("resnet10_w16")
    state = {f"module.encoder_q.{k}": v.clone() + 1 for k, v in source.state_dict().items()}
    state["module.encoder_q.fc.0.weight"] = torch.zeros(3, 3)  # the MLP head is dropped
    state["module.encoder_k.conv1.weight"] = torch.zeros(1)  # the key encoder is ignored
    path = str(tmp_path / "moco_v2.pth.tar")
    torch.save({"state_dict": state, "epoch": 200}, path)
    target = resnet_trunk("resnet10_w16", ccam_strides=True)
    counts = load_backbone_weights(target, path)
    assert counts["missing"] == 0
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight + 1)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = str(tmp_path / "r18.pth")
    torch.save(resnet_trunk("resnet10_w16").state_dict(), path)
    with pytest.raises(ValueError, match="same architecture"):
        load_backbone_weights(resnet_trunk("resnet18"), path)


def test_images_for_backbone_grey_to_three_channels():
    case = torch.full((1, 1, 16, 16), -1.0)  # (C, 1, H, W) as nnU-Net stores 2D; z-scored values
    case[..., 8:] = 1.0
    out = images_for_backbone([case.numpy()], 8)
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.uint8
    # percentile rescale: -1 -> 0, +1 -> 255; halving the size keeps the step between columns 3 and 4
    assert torch.equal(out[0, 0], out[0, 2])
    assert (out[0, :, :, :4] == 0).all() and (out[0, :, :, 4:] == 255).all()


@pytest.mark.parametrize("stage", ["moco", "ccam"])
def test_saliency_stage_training_resumes_after_an_interruption(tmp_path, stage):
    """Killed after epoch 1 of 2: the rerun starts at epoch 2 from ``*_latest.pth`` and writes the final file."""
    from semi_nnunet.uslnet.ccam import CCAMSettings, train_ccam
    from semi_nnunet.uslnet.moco import MoCoSettings, train_moco
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    cpu = torch.device("cpu")

    def train(log):
        if stage == "moco":
            return train_moco(images, MoCoSettings(arch="resnet10_w16", epochs=2, batch_size=2, queue=4),
                              str(tmp_path), cpu, log)
        return train_ccam(images, CCAMSettings(arch="resnet10_w16", epochs=2, batch_size=2), str(tmp_path), cpu,
                          log=log)

    def killed(message):
        if "epoch 1/2" in message:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    assert (tmp_path / f"{stage}_latest.pth").exists()
    messages = []
    final = train(messages.append)
    assert any("resuming at epoch 1" in m for m in messages)
    assert any("epoch 2/2" in m for m in messages) and not any("epoch 1/2" in m for m in messages)
    assert final.endswith(("moco_encoder.pth", "ccam.pth")) and not (tmp_path / f"{stage}_latest.pth").exists()
