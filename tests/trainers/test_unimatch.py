"""UniMatch and FixMatch: CutMix boxes and masked Dice in 2D and 3D, the feature-perturbation switch in the U-Net's own
encoder, the box-mixed pseudo-label targets, and training end to end (2D train -> resume -> stock nnUNetv2_predict;
3D train -> predict). The contract (finite losses, a gradient on the student) is in test_contract.py."""
import copy
import os
import shutil
import subprocess

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import ext_trainer_path, find_trainer_class
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.trainers.pseudo_label_losses import confident_labels, cutmix_boxes, soft_dice_loss
from semi_nnunet.trainers.unimatch import FixMatchTrainer, UniMatchTrainer


# ---------------------------------------------------------------- pieces
@pytest.mark.parametrize("shape", [(40, 30), (12, 20, 16)])
def test_cutmix_boxes_are_one_box_per_sample_of_the_drawn_volume(shape):
    boxes = cutmix_boxes(32, shape, area=(0.1, 0.3), generator=torch.Generator().manual_seed(0))
    assert boxes.shape == (32, 1, *shape)
    total = float(torch.tensor(shape).prod())
    for b in boxes[:, 0]:
        extents = [b.amax(dim=[d for d in range(len(shape)) if d != a]) for a in range(len(shape))]
        sides = [int(e.sum()) for e in extents]
        assert b.sum() == torch.tensor(sides).prod(), "one filled box (a cuboid in 3D)"
        for e in extents:  # contiguous along every axis
            idx = e.nonzero()
            assert idx.max() - idx.min() + 1 == len(idx)
        assert 0.02 < float(b.sum()) / total < 0.45  # U(0.1, 0.3) of the volume, less the rounding down of sides


def test_cutmix_probability_leaves_samples_unmixed():
    g = torch.Generator().manual_seed(1)
    assert cutmix_boxes(8, (16, 16), generator=g, p=0.0).sum() == 0
    kept = cutmix_boxes(400, (16, 16), generator=g, p=0.5).flatten(1).amax(1)
    assert 0.4 < float(kept.float().mean()) < 0.6


def test_masked_dice_in_3d_is_the_2d_value_of_the_same_pixels():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(2, 3, 4, 5, 6, generator=g), torch.randint(0, 3, (2, 1, 4, 5, 6), generator=g)
    mask = (torch.rand(2, 1, 4, 5, 6, generator=g) > 0.5).float()
    flat = soft_dice_loss(logits.reshape(2, 3, 4, 30), target.reshape(2, 1, 4, 30), mask.reshape(2, 1, 4, 30))
    assert soft_dice_loss(logits, target, mask).item() == pytest.approx(flat.item(), abs=1e-6)
    nothing = torch.zeros_like(mask)
    assert soft_dice_loss(logits, target, nothing).item() == pytest.approx(0.0, abs=1e-6)  # nothing kept: no loss


def test_confidence_mask_is_inclusive_for_unimatch():
    probs = torch.tensor([0.95, 0.05]).view(1, 2, 1, 1)
    assert confident_labels(probs, 0.95, inclusive=True)[1].item() == 1
    assert confident_labels(probs, 0.95)[1].item() == 0


# ---------------------------------------------------------------- the trainer on a planned dataset
@pytest.fixture(scope="module")
def planned(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], 971, dim=2, num_labeled=4, num_unlabeled=3)
    plan_and_preprocess(971, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset971_Synthetic2D")
    return load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))


def _trainer(planned, cls=UniMatchTrainer):
    plans, dataset_json = planned
    trainer = cls({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def test_feature_perturbation_is_a_switch_in_the_encoder_not_a_copied_network(planned):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    trainer = _trainer(planned)
    net = trainer.network
    plain = nnUNetTrainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                                     trainer.num_input_channels,
                                                     trainer.label_manager.num_segmentation_heads, True)
    assert net.state_dict().keys() == plain.state_dict().keys()  # nnU-Net's checkpoint and predictor unchanged
    plain.load_state_dict(net.state_dict())
    x = torch.randn(2, trainer.num_input_channels, *trainer.configuration_manager.patch_size)
    net.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(net(x)[0], plain(x)[0])  # switched off: the plain U-Net
        with trainer.perturb_features(2):
            out = net(x)[0]
        assert out.shape[0] == 4 and torch.allclose(out[:2], plain(x)[0], atol=1e-5)
        assert not torch.allclose(out[2:], out[:2])  # the dropped channels change the decoded map
        assert net.encoder.perturb_first == 0  # the switch is off again after the block
        twin = copy.deepcopy(net)
        twin.encoder.perturb_first = 1
        assert twin(x)[0].shape[0] == 3 and net(x)[0].shape[0] == 2
    assert FixMatchTrainer.build_network_architecture(
        trainer.plans_manager, trainer.configuration_manager, trainer.num_input_channels,
        trainer.label_manager.num_segmentation_heads, True).encoder.__class__ is type(plain.encoder)


class _Sign(torch.nn.Module):
    """A stand-in U-Net: class 1 where the image is positive, very confidently (logits +-100 x)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.scale = torch.nn.Parameter(torch.tensor(100.0))

    def forward(self, x):
        return [torch.cat([-x[:, :1], x[:, :1]], 1) * self.scale]


class _AlwaysMixed(FixMatchTrainer):
    cutmix_probability = 1.0


def test_strong_targets_are_mixed_with_the_rolled_partner_like_the_images(planned):
    """A network that is exactly right on every image scores a zero loss only if each mixed strong image is paired
    with the identically mixed pseudo-label (the partner is the batch rolled by one)."""
    trainer = _trainer(planned, _AlwaysMixed)
    trainer.network = _Sign()
    g = torch.Generator().manual_seed(3)
    weak = torch.randn(4, 1, 16, 16, generator=g)
    weak[:, :, :8] = weak[:, :, :8].abs() * torch.tensor([1, -1, 1, -1.0]).view(4, 1, 1, 1)  # partners differ
    loss, logs = trainer.unlabeled_loss({"views": [weak, weak.clone()]}, {})
    assert logs["confident_fraction"] > 0.99 and loss.item() == pytest.approx(0.0, abs=1e-5)
    # a target mixed with the wrong partner (rolled the other way) is not what the network sees: a loss
    wrong = trainer.unlabeled_loss({"views": [weak, weak.roll(2, 0)]}, {})[0]
    assert wrong.item() > 0.01


def test_nothing_confident_means_no_unlabeled_loss_and_no_gradient(planned):
    class Unsure(UniMatchTrainer):
        confidence_threshold = 1.01
    trainer = _trainer(planned, Unsure)
    x = torch.randn(2, trainer.num_input_channels * 3, *trainer.configuration_manager.patch_size)
    loss, logs = trainer.unlabeled_loss(trainer.prepare_unlabeled({"data": x}), {})
    assert logs["confident_fraction"] == 0 and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_bad_unlabeled_terms_fail_at_initialize(planned):
    class Typo(UniMatchTrainer):
        unlabeled_terms = ("dise",)
    with pytest.raises(ValueError, match=r"unlabeled_terms = \('dise',\): use 'dice', 'ce' or both"):
        _trainer(planned, Typo)


# ---------------------------------------------------------------- end to end
@pytest.fixture
def env(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return nnunet_paths


def test_unimatch_2d_trains_resumes_and_predicts_with_stock_nnunet(env):
    make_synthetic_dataset(env["nnUNet_raw"], 972, dim=2, num_labeled=5, num_unlabeled=3, num_test=2)
    plan_and_preprocess(972, ["2d"], num_processes=1, show_progress=False)
    trainer = "UniMatchTrainer_2epochs_2it"
    train_main(["972", "2d", trainer, "0", "-device", "cpu"])
    fold = join(env["nnUNet_results"], "Dataset972_Synthetic2D", f"{trainer}__nnUNetPlans__2d", "fold_0")
    ckpt = torch.load(join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["semi_global_step"] == 4 and ckpt["teacher_weights"] is None
    for key in ("confident_fraction", "loss_strong", "loss_fp"):
        assert len(ckpt["logging"][key]) == 2
    # resume into a longer budget (what --c does): the step counter continues
    longer = find_trainer_class("UniMatchTrainer_3epochs_2it")
    from nnunetv2.run.run_training import maybe_load_checkpoint
    pre = join(env["nnUNet_preprocessed"], "Dataset972_Synthetic2D")
    t = longer({**load_json(join(pre, "nnUNetPlans.json")), "continue_training": True}, "2d", 0,
               load_json(join(pre, "dataset.json")), torch.device("cpu"))
    t.output_folder = fold
    maybe_load_checkpoint(t, True, False, None)
    assert t.current_epoch == 2 and t.global_step == 4
    t.run_training()
    assert torch.load(join(fold, "checkpoint_final.pth"), map_location="cpu",
                      weights_only=False)["semi_global_step"] == 6
    out = join(env["nnUNet_results"], "pred_stock")
    raw = join(env["nnUNet_raw"], "Dataset972_Synthetic2D")
    r = subprocess.run([shutil.which("nnUNetv2_predict"), "-i", join(raw, "imagesTs"), "-o", out, "-d", "972",
                        "-c", "2d", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                        "--disable_tta"], env={**os.environ, "nnUNet_extTrainer": ext_trainer_path()},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["test000.png", "test001.png"]


@pytest.mark.slow  # about a minute; the default suite covers UniMatch's 3D pieces (cuboid boxes, 3D Dice) above
def test_unimatch_3d_trains_and_predicts(env):
    from semi_nnunet.demo_api import predict_and_evaluate
    make_synthetic_dataset(env["nnUNet_raw"], 973, dim=3, num_labeled=5, num_unlabeled=3, num_test=2)
    plan_and_preprocess(973, ["3d_fullres"], num_processes=1, show_progress=False)
    train_main(["973", "3d_fullres", "UniMatchTrainer_2epochs_2it", "0", "-device", "cpu"])
    model = join(env["nnUNet_results"], "Dataset973_Synthetic3D",
                 "UniMatchTrainer_2epochs_2it__nnUNetPlans__3d_fullres")
    ckpt = torch.load(join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and len(ckpt["logging"]["loss_fp"]) == 2
    raw = join(env["nnUNet_raw"], "Dataset973_Synthetic3D")
    dice = predict_and_evaluate(model, join(raw, "imagesTs"), join(raw, "labelsTs"),
                                join(env["nnUNet_results"], "pred3d"), folds=(0,))
    assert 0.0 <= dice <= 1.0
