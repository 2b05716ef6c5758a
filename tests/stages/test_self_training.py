"""Self-training: stage 0 is nnU-Net's supervised step, stage 1 learns from the pseudo-labels; with a confidence
threshold the unsure voxels carry the ignore value and the stage's pseudo-label loss leaves them out."""
import blosc2
import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import find_trainer_class
from semi_nnunet.run.train_entrypoint import main as train_main

TRAINER = "SelfTrainingTrainer_conf90_2epochs_2it"


def test_self_training_with_confidence_ignores_unsure_voxels(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 993, dim=2, num_labeled=5, num_unlabeled=3)
    plan_and_preprocess(993, ["2d"], num_processes=1, show_progress=False)
    stage1 = find_trainer_class(f"{TRAINER}_stage1")
    assert stage1.pseudo_confidence_threshold == 0.9  # the stage inherits the initial trainer's threshold
    train_main(["993", "2d", TRAINER, "0", "-device", "cpu"])  # stage 0 + the default one stage

    results = join(nnunet_paths["nnUNet_results"], "Dataset993_Synthetic2D")
    initial = join(results, f"{TRAINER}__nnUNetPlans__2d")
    ckpt0 = torch.load(join(initial, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt0["semi_global_step"] == 4 and ckpt0["teacher_weights"] is None
    pseudo = join(initial, "pseudo_labels", "stage_1", "fold_0")
    provenance = load_json(join(pseudo, "provenance.json"))
    assert provenance["confidence_threshold"] == 0.9 and provenance["ignore_value"] == 2  # labels 0, 1: ignore 2
    assert 0.0 < provenance["ignored_fraction"] < 1.0  # four iterations: the model is unsure in places, not all
    seg = np.concatenate([np.asarray(blosc2.open(join(pseudo, f"unl00{i}_seg.b2nd"), mode="r")[:]).ravel()
                          for i in range(3)])
    assert set(np.unique(seg)) <= {0, 1, 2} and 2 in seg
    assert np.mean(seg == 2) == pytest.approx(provenance["ignored_fraction"], abs=1e-6)
    ckpt1 = torch.load(join(results, f"{TRAINER}_stage1__nnUNetPlans__2d", "fold_0", "checkpoint_final.pth"),
                       map_location="cpu", weights_only=False)
    assert ckpt1["trainer_name"] == f"{TRAINER}_stage1" and np.isfinite(ckpt1["logging"]["pseudo_loss"]).all()


def test_the_ignore_value_drops_out_of_the_pseudo_label_loss(nnunet_paths):
    """Voxels marked with the ignore value take no part in the pseudo-label loss (Dice and CE)."""
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 994, dim=2, num_labeled=5, num_unlabeled=3)
    plan_and_preprocess(994, ["2d"], num_processes=1, show_progress=False)
    pre = join(nnunet_paths["nnUNet_preprocessed"], "Dataset994_Synthetic2D")
    plans, dataset_json = load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))
    trainer = find_trainer_class("SelfTrainingTrainer_conf90_stage1")(
        {**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    assert trainer.label_manager.ignore_label is None  # the dataset's own labels are untouched
    g = torch.Generator().manual_seed(0)
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    x = torch.randn(2, 1, *patch, generator=g)
    with torch.no_grad():
        out = trainer.network(x)
    target = [torch.randint(0, 2, (2, 1, *o.shape[2:]), generator=g).float() for o in out]
    marked = [t.clone() for t in target]
    for t in marked:
        t[..., : t.shape[-1] // 2] = 2  # half of every map unsure
    a = trainer.pseudo_loss(out, marked)
    b = trainer.pseudo_loss(out, target)
    assert torch.isfinite(a) and not torch.isclose(a, b)
    # what the network says where the voxels are ignored changes nothing
    other = [o.clone() for o in out]
    for o in other:
        o[..., : o.shape[-1] // 2] = torch.randn(o[..., : o.shape[-1] // 2].shape, generator=g) * 5
    assert torch.isclose(trainer.pseudo_loss(other, marked), a, rtol=1e-5)
    assert not torch.isclose(trainer.pseudo_loss(other, target), b, rtol=1e-5)  # without the mark it would
