"""Hermes: the dual threshold, the contrastive losses, the memory bank, the inter-task modules and the trainer's
modes, each against values worked out by hand in the comments."""
import math

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import TrainingError
from semi_nnunet.trainers.hermes import HermesTrainer
from semi_nnunet.trainers.hermes_losses import (
    MemoryBank,
    classwise_confidence_thresholds,
    code_entropy_threshold,
    dual_threshold_mask,
    masked_dice_loss,
    paper_thresholds,
    pixel_info_nce,
    sample_anchors,
    supcon_loss,
)
from semi_nnunet.trainers.hermes_modules import HermesClassifier, InterTaskAttention, fit_to_patch, saliency_map

LN2 = math.log(2)


# ---------------------------------------------------------------------------------------------- dual threshold
@pytest.mark.parametrize("step, kappa, tau", [
    (0, 0.75, 0.75 + 0.25 * math.exp(-0.5) * LN2),  # 0.855104: kappa = 0.25 + 0.25 (1 + cos 0)
    (50, 0.50, 0.75 + 0.25 * math.exp(-0.125) * LN2),  # 0.902925: cos(pi/2) = 0
    (100, 0.25, 0.75 + 0.25 * LN2),  # 0.923287: cos(pi) = -1
])
def test_paper_threshold_schedules(step, kappa, tau):
    assert paper_thresholds(step, 100) == pytest.approx((kappa, tau), abs=1e-12)


def test_code_thresholds():
    # entropy bound (0.75 + 0.25 exp(-5 (1 - t/T)^2)) ln2: 0.75 ln2 + 0.25 e^-5 ln2 at t = 0, ln2 at the end
    assert code_entropy_threshold(0, 100) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * LN2)
    assert code_entropy_threshold(100, 100) == pytest.approx(LN2)
    # pseudo-labels 0,0,0,1: shares 0.75 / 0.25 -> 0.95 - 0.45 * 0.25 = 0.8375 and 0.95 - 0.45 * 0.75 = 0.6125
    theta = classwise_confidence_thresholds(torch.tensor([0, 0, 0, 1]), 2)
    assert theta.tolist() == pytest.approx([0.8375, 0.6125])


# binary rows (p_fg as the second entry): entropy H = -sum p ln p
#   0.95: H = 0.0487 + 0.1498 = 0.1985     0.80: H = 0.1785 + 0.3219 = 0.5004
#   0.925: H = 0.0721 + 0.1943 = 0.2664    0.50: H = ln 2 = 0.6931
BINARY = torch.tensor([[0.95, 0.05], [0.80, 0.20], [0.925, 0.075], [0.5, 0.5]])


@pytest.mark.parametrize("step, combine, expected", [
    # t = 0: kappa 0.75 (every H passes but ln2 ... 0.693 <= 0.75 too), tau 0.855: 0.80 and 0.50 fail the confidence
    (0, "and", [True, False, True, False]),
    # t = T: kappa 0.25, tau 0.923: 0.925 is confident enough but H = 0.266 > 0.25, so it is dropped
    (100, "and", [True, False, False, False]),
    # OR (the code's rule for the segmentation loss): 0.925 passes on confidence alone
    (100, "or", [True, False, True, False]),
])
def test_dual_threshold_mask_on_hand_made_probabilities(step, combine, expected):
    kappa, tau = paper_thresholds(step, 100)
    keep, pseudo = dual_threshold_mask(BINARY[:, :, None, None], kappa, tau, combine)  # as a (B, K, 1, 1) map
    assert keep[:, 0, 0].tolist() == expected
    assert pseudo[:, 0, 0].tolist() == [0, 0, 0, 0]


def test_entropy_is_rescaled_for_more_than_two_classes():
    # p = (0.9, 0.05, 0.05): H = 0.0948 + 2 * 0.1498 = 0.3944 nats; x ln2/ln3 = 0.2488 <= 0.25 -> certain.
    # Unscaled (0.394 > 0.25) it would be rejected.
    probs = torch.tensor([[0.9, 0.05, 0.05]])
    assert dual_threshold_mask(probs, 0.25, 0.85)[0].tolist() == [True]
    assert dual_threshold_mask(probs, 0.24, 0.85)[0].tolist() == [False]  # 0.2488 > 0.24
    assert dual_threshold_mask(probs, 0.25, 0.95)[0].tolist() == [False]  # conf 0.9 < 0.95


def test_class_adaptive_confidence_is_strict_and_indexed_by_pseudo_label():
    probs = torch.tensor([[0.8375, 0.1625], [0.9, 0.1], [0.3, 0.7]])
    tau = torch.tensor([0.8375, 0.6125])
    keep, _ = dual_threshold_mask(probs, 1.0, tau, strict_confidence=True)
    assert keep.tolist() == [False, True, True]  # 0.8375 is not > 0.8375; 0.7 > 0.6125 (class 1's bound)
    with pytest.raises(ValueError, match="combine must be 'and' or 'or', not 'xor'"):
        dual_threshold_mask(probs, 1.0, 0.5, "xor")


# ---------------------------------------------------------------------------------------------- segmentation
def test_masked_dice_on_a_hand_computed_case():
    probs = torch.tensor([[0.2, 0.6], [0.8, 0.4]])[None]  # (1, 2 classes, 2 pixels): p_fg = 0.8, 0.4
    pseudo = torch.tensor([[1, 0]])
    # both kept: inter 0.8, denominator 0.8^2 + 0.4^2 + 1 = 1.8 -> loss 1 - 1.6 / 1.8 = 0.11111
    both = torch.tensor([[True, True]])
    assert float(masked_dice_loss(probs, pseudo, both)) == pytest.approx(1 - 1.6 / 1.8, abs=1e-5)
    # second pixel rejected: denominator 0.64 + 1 = 1.64 -> 1 - 1.6 / 1.64 = 0.02439
    assert float(masked_dice_loss(probs, pseudo, torch.tensor([[True, False]]))) == pytest.approx(1 - 1.6 / 1.64,
                                                                                                  abs=1e-5)
    assert float(masked_dice_loss(probs, pseudo, torch.tensor([[False, False]]))) == pytest.approx(0.0)


def _rows(*vectors):
    return torch.tensor(vectors, dtype=torch.float32)


def test_pixel_info_nce_on_a_tiny_hand_computed_case():
    # samples a1 = (1,0), a2 = (0,1) of class 0 and a3 = (-1,0) of class 1; temperature 1.
    # a1: positive a2 (dot 0), negative a3 (dot -1): -log(e^0 / (e^0 + e^-1)) = log(1 + e^-1) = 0.313262
    # a2: positive a1 (0), negative a3 (0): log 2 = 0.693147;  a3 has no positive and is left out
    feats = _rows((1, 0), (0, 1), (-1, 0))[:, None]  # (A=3, n=1, D=2)
    classes = torch.tensor([0, 0, 1])
    expected = (math.log(1 + math.exp(-1)) + LN2) / 2
    assert float(pixel_info_nce(feats, classes, temperature=1.0)) == pytest.approx(expected, abs=1e-6)
    # the same with temperature 0.5: dots are doubled -> a1: log(1 + e^-2), a2: log 2
    assert float(pixel_info_nce(feats, classes, temperature=0.5)) == pytest.approx(
        (math.log(1 + math.exp(-2)) + LN2) / 2, abs=1e-6)
    # a memory-bank negative b = (0,-1) of class 1 adds e^{a.b}: a1: log(1 + e^-1 + 1), a2: log(1 + 1 + e^-1)
    bank = (_rows((0, -1)), torch.tensor([1]))
    assert float(pixel_info_nce(feats, classes, 1.0, bank)) == pytest.approx(math.log(2 + math.exp(-1)), abs=1e-6)
    # a bank entry of the anchors' own class is no negative
    same = (_rows((0, -1)), torch.tensor([0]))
    assert float(pixel_info_nce(feats, classes, 1.0, same)) == pytest.approx(expected, abs=1e-6)


def test_anchor_sampling_takes_half_hard_half_easy():
    # one image, 4x5 grid: class 0 on the first 10 pixels, class 1 on the last 10; the embedding of pixel i is e_i,
    # so a sampled row tells which pixels were drawn. Predictions: class-1 pixels 10..12 are wrong (hard).
    emb = torch.eye(20).reshape(1, 20, 4, 5)
    labels = torch.tensor([0] * 10 + [1] * 10).reshape(1, 4, 5)
    preds = labels.clone().reshape(-1)
    preds[10:13] = 0
    feats, classes = sample_anchors(emb, labels, preds.reshape(1, 4, 5), max_anchors=8, max_views=4, min_pixels=5,
                                    generator=torch.Generator().manual_seed(0))
    # 2 (image, class) pairs -> n = min(8 // 2, 4) = 4 per pair
    assert feats.shape == (2, 4, 20) and classes.tolist() == [0, 1]
    drawn = feats.argmax(-1)
    assert all(0 <= i < 10 for i in drawn[0].tolist())  # class 0 has no hard pixel: 4 easy
    hard = [i for i in drawn[1].tolist() if i < 13]
    assert len(hard) == 2 and len(set(drawn[1].tolist())) == 4 and all(i >= 10 for i in drawn[1].tolist())
    # rejected pixels (-1) never count; with a single hard pixel the easy set tops the row up
    labels[0, 0, :] = -1
    preds[10:13] = torch.tensor([0, 1, 1])
    feats, classes = sample_anchors(emb, labels, preds.reshape(1, 4, 5), 8, 4, 4)
    assert (feats[1].argmax(-1) == 10).sum() == 1 and not (feats[0].argmax(-1) < 5).any()
    assert sample_anchors(emb, torch.full((1, 4, 5), -1), preds.reshape(1, 4, 5)) == (None, None)


def test_memory_bank_size_and_update():
    bank = MemoryBank(num_classes=2, size=3, dim=2)
    assert bank.queue.shape == (2, 3, 2) and bank.entries()[0].shape == (0, 2)
    five = torch.arange(10, dtype=torch.float32).reshape(5, 2)  # rows (0,1), (2,3), ..., (8,9)
    bank.push(five[:2], torch.tensor([0, 0]))
    assert bank.filled.tolist() == [2, 0] and bank.pointer.tolist() == [2, 0]
    bank.push(five[2:], torch.tensor([0, 0, 0]))  # 3 more into a queue of 3: the two oldest are overwritten
    assert bank.filled.tolist() == [3, 0] and bank.pointer.tolist() == [2, 0]
    assert sorted(bank.queue[0, :, 0].tolist()) == [4.0, 6.0, 8.0]  # rows 2, 3, 4 are the newest three
    bank.push(torch.tensor([[-1.0, -1.0]]), torch.tensor([1]))
    feats, classes = bank.entries()
    assert feats.shape == (4, 2) and classes.tolist() == [0, 0, 0, 1] and feats[-1].tolist() == [-1.0, -1.0]
    assert {"queue", "pointer", "filled"} <= set(bank.state_dict())  # saved with the auxiliary modules


def test_supcon_on_a_hand_computed_case():
    # v1 = v2 = (1,0) (class 0, the two views of one image), v3 = v4 = (0,1) (class 1); temperature 1.
    # l_1 = -log(e^1 / (e^1 + e^0 + e^0)) = log(1 + 2/e) = 0.551445, the same for every anchor by symmetry.
    v = _rows((1, 0), (1, 0), (0, 1), (0, 1))
    classes = torch.tensor([0, 0, 1, 1])
    ell = math.log(1 + 2 / math.e)
    assert float(supcon_loss(v, classes, torch.ones(4), 1.0)) == pytest.approx(ell, abs=1e-6)
    # an unreliable anchor (weight 0) drops out of the mean over all 2N anchors: 3/4 of l
    assert float(supcon_loss(v, classes, torch.tensor([1.0, 0.0, 1.0, 1.0]), 1.0)) == pytest.approx(0.75 * ell,
                                                                                                    abs=1e-6)


# ---------------------------------------------------------------------------------------------- modules
def test_inter_task_attention_shape_and_gradients_reach_both_branches():
    torch.manual_seed(0)
    module = InterTaskAttention(cls_channels=64, seg_channels=128)
    x_cls = torch.randn(2, 64, 12, 12, requires_grad=True)
    x_seg = torch.randn(2, 128, 6, 6, requires_grad=True)  # another width and grid: adapter + resize
    out = module(x_cls, x_seg)
    assert out.shape == x_cls.shape
    out.pow(2).sum().backward()
    assert float(x_cls.grad.abs().sum()) > 0 and float(x_seg.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in module.parameters())
    assert isinstance(InterTaskAttention(64, 64).adapter, torch.nn.Identity)  # same width: used as is


def test_classifier_outputs_and_saliency():
    torch.manual_seed(0)
    clf = HermesClassifier(in_channels=1, num_classes=3, seg_channels=[32, 64, 128, 256], embedding_dim=8,
                           consistency_dim=16)
    x = torch.randn(2, 1, 48, 48)
    seg = [torch.randn(2, 32, 24, 24), torch.randn(2, 64, 12, 12), torch.randn(2, 128, 6, 6),
           torch.randn(2, 256, 3, 3)]
    out = clf(x, seg)
    assert out["logits"].shape == (2, 3) and out["feature"].shape == (2, 512)
    assert out["embedding"].shape == (2, 8) and torch.allclose(out["embedding"].norm(dim=1), torch.ones(2))
    assert out["consistency"].shape == (2, 16)
    assert not torch.allclose(clf(x)["logits"], out["logits"])  # the attention changes the prediction

    clf.train()
    s = saliency_map(clf, x)
    assert s.shape == (2, 1, 48, 48) and (s >= 0).all() and float(s.sum()) > 0
    assert clf.training and all(p.grad is None for p in clf.parameters())  # mode restored, no parameter grads


@pytest.mark.parametrize("shape, patch, expected_inner", [
    ((60, 40), (48, 48), (48, 32)),  # shrunk by min(48/60, 48/40) = 0.8, then 8 + 8 columns of padding
    ((20, 30), (48, 48), (20, 30)),  # smaller: padded only (training patches are at native scale)
])
def test_fit_to_patch(shape, patch, expected_inner):
    x = torch.ones(1, 1, *shape)
    y = fit_to_patch(x, patch)
    assert y.shape == (1, 1, *patch)
    rows, cols = torch.nonzero(y[0, 0] > 0.5, as_tuple=True)
    assert (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)) == expected_inner
    assert int(rows.min()) == (patch[0] - expected_inner[0]) // 2 and int(cols.min()) == (patch[1] -
                                                                                          expected_inner[1]) // 2


# ---------------------------------------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def planned(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], 970, dim=2, num_labeled=5, num_unlabeled=3,
                           image_classes=True)
    plan_and_preprocess(970, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset970_Synthetic2D")
    return load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))


def make(planned, cls=HermesTrainer, classes=True, **attributes):
    plans, dataset_json = planned
    if not classes:
        dataset_json = {k: v for k, v in dataset_json.items() if k not in ("class_names", "image_classes")}
    if attributes:
        cls = type(cls.__name__, (cls,), attributes)
    torch.manual_seed(0)
    trainer = cls({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def batch(trainer, seed=0):
    g = torch.Generator().manual_seed(seed)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    b = trainer.batch_size
    views = torch.randn((b, 2, *patch), generator=g)
    return {"views": [views[:, :1], views[:, 1:]], "keys": [f"unl{i:03d}" for i in range(b)]}


def student_grad(trainer, loss):
    trainer.network.zero_grad(set_to_none=True)
    loss.backward()
    return sum(float(p.grad.abs().sum()) for p in trainer.network.parameters() if p.grad is not None)


def test_segmentation_only_mode_says_so_and_trains_on_pseudo_labels(planned):
    trainer = make(planned, classes=False)
    assert not trainer.has_classifier and set(trainer.auxiliary) == {"pixel_head"}
    with open(trainer.log_file) as f:
        assert "SEGMENTATION-ONLY Hermes" in f.read()
    with pytest.raises(RuntimeError, match="segmentation-only .* no classifier"):
        trainer.classify(torch.zeros(1, 48, 48))
    trainer.global_step = 0  # kappa 0.75 >= ln2: only the confidence (tau 0.855) filters
    loss, logs = trainer.unlabeled_loss(batch(trainer), {})
    assert math.isfinite(loss.item()) and 0 < float(logs["seg_reliable"]) <= 1
    assert "itc" not in logs and float(logs["pixel_contrast"]) == 0  # contrast starts after 15 % of training
    assert student_grad(trainer, loss) > 0


def test_pixel_contrast_trains_the_encoder_and_fills_the_memory_bank(planned):
    # every pixel reliable, anchors from pairs with > 4 pixels on the 6x6 stride-8 grid of a 48x48 patch; the Dice
    # term weighted 0, so the contrast is the only unlabeled loss
    trainer = make(planned, classes=False, memory_bank_size=50, max_views=4, contrast_start_fraction=0.0,
                   unsup_weight=0.0)
    trainer.select = lambda probs, segmentation: (torch.ones_like(probs[:, 0], dtype=torch.bool),) * 2 + (
        probs.argmax(1), 1.0, 0.0)
    bank = trainer.auxiliary["memory_bank"]
    loss, logs = trainer.unlabeled_loss(batch(trainer), {})
    assert float(logs["pixel_contrast"]) > 0
    filled = bank.filled.clone()
    assert int(filled.sum()) > 0 and int(filled.max()) <= 2 * trainer.batch_size * 10  # <= 10 per image and class
    trainer.auxiliary.zero_grad(set_to_none=True)
    assert student_grad(trainer, loss) > 0
    assert trainer.auxiliary["pixel_head"].net[0].weight.grad is not None
    net = trainer.raw_network()  # the encoder up to the contrast stage learns from it, the decoder does not
    assert float(net.encoder.stages[trainer._contrast_stage][0].convs[0].conv.weight.grad.abs().sum()) > 0
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in net.decoder.stages.parameters())
    trainer.unlabeled_loss(batch(trainer, 1), {})
    assert int(bank.filled.sum()) > int(filled.sum())


def test_classification_branch_uses_labeled_classes_only(planned):
    trainer = make(planned)
    assert trainer.has_classifier and {"classifier", "seg_consistency", "pixel_head"} <= set(trainer.auxiliary)
    assert trainer.labeled_classes(["lab000", "lab004"]).tolist() == [
        planned[1]["image_classes"]["lab000"], planned[1]["image_classes"]["lab004"]]
    with pytest.raises(TrainingError, match=r"no class for labeled case\(s\) \['nope'\]"):
        trainer.labeled_classes(["lab000", "nope"])
    trainer.global_step = trainer.num_epochs * trainer.num_iterations_per_epoch // 2
    loss, logs = trainer.unlabeled_loss(batch(trainer), {})
    assert all(math.isfinite(float(logs[k])) for k in ("itc", "cls_unsup", "image_contrast", "seg_unsup"))
    assert student_grad(trainer, loss) > 0  # at least the inter-task consistency reaches the encoder


def test_attention_features_are_detached(planned):
    trainer = make(planned)
    x = torch.randn(2, 1, 48, 48)
    _, taps = trainer.segment(x)
    trainer.network.zero_grad(set_to_none=True)
    trainer.auxiliary["classifier"](x, trainer.attention_features(taps))["logits"].sum().backward()
    assert all(p.grad is None for p in trainer.network.parameters()), "the classifier loss must not train the U-Net"
    assert all(p.grad is not None for p in trainer.auxiliary["classifier"].attention[3].parameters())


def test_hco_trusts_ground_truth_only(planned):
    from semi_nnunet.trainers.lookup import find_trainer_class
    trainer = make(planned, find_trainer_class("HermesTrainer_HCO"))
    labeled = {"data": torch.randn(2, 1, 48, 48), "keys": ["lab000", "lab004"],
               "target": [torch.randint(0, 2, (2, 1, 48 // 2 ** k, 48 // 2 ** k)).float() for k in range(3)]}
    sup, logs = trainer.supervised_loss(labeled)
    assert set(logs) == {"seg_sup", "cls_sup"}
    assert sup.item() == pytest.approx(float(logs["seg_sup"]) + 1.0 / 0.5 * float(logs["cls_sup"]), rel=1e-5)
    trainer.auxiliary.zero_grad(set_to_none=True)
    sup.backward()
    aux = trainer.auxiliary
    assert aux["classifier"].fc.weight.grad is not None  # the classifier's labeled CE is trusted
    for head in (aux["pixel_head"], aux["seg_consistency"], aux["classifier"].embedding_head):
        assert all(p.grad is None for p in head.parameters()), "projection heads get no labeled gradient"


def test_classify_returns_class_probabilities(planned):
    trainer = make(planned)
    for shape in ((1, 60, 40), (1, 20, 30), (1, 1, 48, 48)):  # the last: nnU-Net's 2D layout (C, 1, X, Y)
        p = trainer.classify(torch.randn(shape))
        assert p.shape == (2,) and float(p.sum()) == pytest.approx(1.0, abs=1e-5) and (p >= 0).all()
    assert trainer.network.training and trainer.auxiliary.training  # modes restored
    with pytest.raises(ValueError, match=r"expects one preprocessed 2D image \(1, X, Y\)"):
        trainer.classify(torch.zeros(1, 2, 8, 8))


def test_3d_configuration_is_refused_with_the_fix(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], 971, dim=3, num_labeled=2, num_unlabeled=1)
    plan_and_preprocess(971, ["3d_fullres"], num_processes=1, show_progress=False, preprocess=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset971_Synthetic3D")
    trainer = HermesTrainer({**load_json(join(pre, "nnUNetPlans.json")), "continue_training": False}, "3d_fullres", 0,
                            load_json(join(pre, "dataset.json")), torch.device("cpu"))
    with pytest.raises(TrainingError, match="2D configurations only .* '3d_fullres' is 3D.*semi_nnUNet_train "
                                            "DATASET 2d HermesTrainer FOLD"):
        trainer.initialize()


# ---------------------------------------------------------------------------------------------- ImageNet start
@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    from torchvision.models import resnet18
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("weights") / "resnet18.pth")
    torch.save(resnet18(weights=None).state_dict(), path)  # the layout of torchvision's ImageNet file
    return path


def test_classifier_starts_from_resnet18_weights_and_trains_at_the_papers_rate(planned, resnet18_file):
    reference = torch.load(resnet18_file)
    trainer = make(planned, classifier_weights=resnet18_file)
    cls = trainer.auxiliary["classifier"]
    assert torch.equal(cls.layer3[1].conv2.weight, reference["layer3.1.conv2.weight"])
    assert torch.equal(cls.stem[1].running_var, reference["bn1.running_var"])
    c = trainer.num_input_channels
    rgb_mean = reference["conv1.weight"].mean(1, keepdim=True)
    assert torch.allclose(cls.stem[0].weight, rgb_mean.repeat(1, c, 1, 1) * 3 / c)
    groups = trainer.optimizer.param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(trainer.initial_lr), pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in cls.parameters()}
    assert not {id(p) for p in groups[0]["params"]} & {id(p) for p in cls.parameters()}
    half = trainer.num_epochs // 2
    trainer.lr_scheduler.step(half)  # poly: every group decays from its own rate
    factor = (1 - half / trainer.num_epochs) ** 0.9
    assert groups[1]["lr"] == pytest.approx(1e-4 * factor)
    assert groups[0]["lr"] == pytest.approx(trainer.initial_lr * factor)
    # without weights: one group, nnU-Net's rate for everything (a random ResNet at 1e-4 would barely move)
    assert len(make(planned).optimizer.param_groups) == 1


def test_a_wrong_classifier_weights_file_is_refused_with_the_fix(planned, tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"SEMI_NNUNET_RESNET18\) do not exist.*unset it"):
        make(planned, classifier_weights=str(tmp_path / "missing.pth"))
    other = str(tmp_path / "other.pth")
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    monkeypatch.setenv("SEMI_NNUNET_RESNET18", other)
    with pytest.raises(ValueError, match=r"other.pth is not a torchvision ResNet-18 state dict"):
        make(planned)
