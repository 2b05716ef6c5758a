"""USLNetTrainer: the loss ignores uncertain pixels, no supervised part, HCO refused, 2D and binary only; planning
a dataset whose images are all unlabeled."""
import math
import os

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import find_trainer_class
from semi_nnunet.trainers.optimizers import HCONotApplicableError
from semi_nnunet.trainers.uslnet import USLNetError, USLNetTrainer, check_2d, with_uncertain_label


@pytest.fixture(scope="module")
def planned(module_paths):
    """A dataset with no labeled case at all: 4 unlabeled images."""
    make_synthetic_dataset(module_paths["nnUNet_raw"], 992, dim=2, num_labeled=0, num_unlabeled=4, shape=(32, 32))
    summary = plan_and_preprocess(992, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset992_Synthetic2D")
    return {"summary": summary, "pre": pre, "plans": load_json(join(pre, "nnUNetPlans.json")),
            "dataset_json": load_json(join(pre, "dataset.json"))}


def make(planned, cls=USLNetTrainer, fold="all"):
    return cls({**planned["plans"], "continue_training": False}, "2d", fold, planned["dataset_json"],
               torch.device("cpu"))


def test_planning_without_any_labeled_case(planned):
    summary = planned["summary"]
    assert summary["num_labeled"] == 0 and summary["num_unlabeled"] == 4
    assert summary["configurations"]["2d"]["unlabeled"]["done"] == 4
    fingerprint = load_json(join(planned["pre"], "dataset_fingerprint.json"))
    assert fingerprint["shapes_after_crop"] == [[1, 32, 32]] * 4  # nnU-Net's 2D shapes: a leading axis of 1
    assert planned["plans"]["experiment_planner_used"] == "ExperimentPlanner"
    assert planned["plans"]["configurations"]["2d"]["patch_size"] == [32, 32]
    assert not os.listdir(join(planned["pre"], "gt_segmentations"))  # no label anywhere


def test_loss_gives_zero_gradient_on_uncertain_pixels(planned):
    trainer = make(planned)
    trainer.initialize()
    g = torch.Generator().manual_seed(0)
    scales = trainer._get_deep_supervision_scales()
    logits, targets = [], []
    for scale in scales:
        shape = [max(1, round(32 * s)) for s in scale]
        logits.append(torch.randn((2, 2, *shape), generator=g).requires_grad_(True))
        targets.append(torch.randint(0, 3, (2, 1, *shape), generator=g).float())  # 0 bg, 1 fg, 2 uncertain
    loss = trainer.loss(logits, targets)
    loss.backward()
    for x, t in zip(logits, targets):
        uncertain = (t == 2).expand_as(x)
        assert uncertain.any()
        grad = x.grad if x.grad is not None else torch.zeros_like(x)  # nnU-Net weighs the lowest scale 0
        assert torch.count_nonzero(grad[uncertain]) == 0  # exactly zero, every deep-supervision scale
    assert torch.count_nonzero(logits[0].grad[(targets[0] != 2).expand_as(logits[0])]) > 0
    # and the loss does not change when the logits of uncertain pixels do
    moved = [torch.where((t == 2).expand_as(x), x.detach() * 7 - 3, x.detach()) for x, t in zip(logits, targets)]
    assert trainer.loss(moved, targets).item() == pytest.approx(loss.item(), abs=1e-6)


def test_partial_cross_entropy_hand_computed(planned):
    variant = type("CEOnly", (USLNetTrainer,), {"dice_weight": 0.0})
    trainer = make(planned, variant)
    trainer.initialize()
    ce = trainer.loss.loss  # the full-resolution term inside nnU-Net's deep-supervision wrapper
    # 3 pixels: logits (0, 0) target 0 -> -log 0.5 = 0.693147; logits (0, ln 3) target 1 -> -log 0.75 = 0.287682;
    # logits (5, -5) uncertain -> ignored. Mean over the 2 certain pixels: 0.490415
    x = torch.tensor([[[[0.0, 0.0, 5.0]], [[0.0, math.log(3), -5.0]]]])
    t = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    assert ce(x, t).item() == pytest.approx(0.490415, abs=1e-5)


def test_no_supervised_part_and_unlabeled_loss_trains_the_network(planned):
    trainer = make(planned)
    trainer.initialize()
    sup, _ = trainer.supervised_loss({})
    assert sup.item() == 0 and not sup.requires_grad
    g = torch.Generator().manual_seed(1)
    targets = [torch.randint(0, 3, (2, 1, *[max(1, round(32 * s)) for s in sc]), generator=g).float()
               for sc in trainer._get_deep_supervision_scales()]
    batch = trainer.prepare_unlabeled({"data": torch.randn(2, 1, 32, 32, generator=g), "target": targets})
    loss, logs = trainer.unlabeled_loss(batch, {})
    loss.backward()
    assert math.isfinite(loss.item()) and math.isfinite(float(logs["pseudo_loss"]))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.network.parameters())


def test_hco_is_refused(planned):
    trainer = make(planned, find_trainer_class("USLNetTrainer_HCO"))
    with pytest.raises(HCONotApplicableError, match="learns without labels"):
        trainer.initialize()


def test_the_results_folder_gets_an_ordinary_two_class_dataset_json(planned):
    trainer = make(planned)
    assert trainer.label_manager.ignore_label == 2 and trainer.label_manager.num_segmentation_heads == 2
    assert "ignore" not in trainer.raw_dataset_json["labels"]


def test_only_fold_all(planned):
    trainer = make(planned, fold=0)
    with pytest.raises(USLNetError, match="train fold 'all'"):
        trainer.do_split()


def test_without_pseudo_labels_the_trainer_points_to_the_command(planned):
    with pytest.raises(Exception, match="semi_nnUNet_run_uslnet Dataset992_Synthetic2D"):
        make(planned).check_unlabeled_data()


@pytest.mark.parametrize("labels, ok", [({"background": 0, "lesion": 1}, True),
                                        ({"background": 0, "a": 1, "b": 2}, False),
                                        ({"background": 0, "lesion": 1, "ignore": 2}, True)])
def test_binary_only(labels, ok):
    if ok:
        out, value = with_uncertain_label({"labels": labels})
        assert out["labels"]["ignore"] == value == 2
    else:
        with pytest.raises(USLNetError, match="one foreground class"):
            with_uncertain_label({"labels": labels})


def test_3d_is_refused_with_the_fix():
    with pytest.raises(USLNetError, match=r"2D only.*'3d_fullres'.*-c 2d"):
        check_2d((16, 24, 24), "3d_fullres", "Dataset993_Synthetic3D")
