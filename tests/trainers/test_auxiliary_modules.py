"""Auxiliary modules (classification heads, foundation models): optimized, clipped, switched and checkpointed with
the U-Net, while ``network_weights`` stays the U-Net alone."""
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.mean_teacher import MeanTeacherTrainer


class _WithHead(MeanTeacherTrainer):
    def build_auxiliary_modules(self):
        frozen = torch.nn.Linear(2, 2)
        frozen.requires_grad_(False)
        return {"head": torch.nn.Linear(self.num_input_channels, 3), "frozen": frozen}


@pytest.fixture(scope="module")
def planned(module_paths):
    make_synthetic_dataset(module_paths["nnUNet_raw"], 953, dim=2, num_labeled=4, num_unlabeled=2)
    plan_and_preprocess(953, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], "Dataset953_Synthetic2D")
    return load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))


def make(planned):
    plans, dataset_json = planned
    trainer = _WithHead({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def test_auxiliary_parameters_are_optimized_and_checkpointed(planned, tmp_path):
    trainer = make(planned)
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    head, frozen = trainer.auxiliary["head"], trainer.auxiliary["frozen"]
    assert all(id(p) in optimized for p in head.parameters())
    assert not any(id(p) in optimized for p in frozen.parameters()), "frozen weights are not given to the optimizer"
    assert all(id(p) in optimized for p in trainer.network.parameters())

    x = torch.randn(4, trainer.num_input_channels)
    before = head.weight.detach().clone()
    trainer.optimizer.zero_grad()
    head(x).pow(2).sum().backward()
    trainer._clip_and_step()
    assert not torch.equal(before, head.weight), "one optimizer step moves the auxiliary head"

    trainer.on_validation_epoch_start()
    assert not head.training
    trainer.on_train_epoch_start()
    assert head.training

    path = join(str(tmp_path), "checkpoint.pth")
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert not any(k.startswith("head") for k in saved["network_weights"]), "network_weights is the U-Net alone"
    assert torch.equal(saved["auxiliary_weights"]["head.weight"], head.weight)

    other = make(planned)
    assert not torch.equal(other.auxiliary["head"].weight, head.weight)
    other.load_checkpoint(path)
    assert torch.equal(other.auxiliary["head"].weight, head.weight)
    assert torch.equal(other.auxiliary["frozen"].weight, frozen.weight)
