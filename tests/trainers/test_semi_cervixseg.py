"""Semi-CervixSeg initial stage: the multi-view consistency compares exactly aligned maps."""
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.semi_cervixseg import SemiCervixTrainer


class _Pointwise(torch.nn.Module):
    """A 1x1 convolution: commutes with every flip and rotation, so aligned views give identical outputs."""

    def __init__(self, cin, cout, dim):
        super().__init__()
        self.conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(cin, cout, 1)

    def forward(self, x):
        return [self.conv(x)]


@pytest.fixture(scope="module")
def trainers(module_paths):
    out = {}
    for dim, config, did in ((2, "2d", 981), (3, "3d_fullres", 982)):
        shape = (32, 32) if dim == 2 else (16, 16, 16)  # square planes: rotations get drawn
        make_synthetic_dataset(module_paths["nnUNet_raw"], did, dim=dim, num_labeled=2, num_unlabeled=2, shape=shape)
        plan_and_preprocess(did, [config], num_processes=1, show_progress=False, preprocess=False)
        pre = join(module_paths["nnUNet_preprocessed"], f"Dataset{did}_Synthetic{dim}D")
        out[dim] = (load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json")), config)
    return out


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("space", ["logits", "softmax"])
def test_consistency_vanishes_for_an_equivariant_network(trainers, dim, space):
    plans, dataset_json, config = trainers[dim]
    variant = type("V", (SemiCervixTrainer,), {"cons_space": space})
    trainer = variant({**plans, "continue_training": False}, config, 0, dataset_json, torch.device("cpu"))
    trainer.network = _Pointwise(1, 2, dim)
    x = torch.randn((4, 1) + (16,) * dim, generator=torch.Generator().manual_seed(dim))
    torch.manual_seed(0)
    loss, logs = trainer.unlabeled_loss({"views": [x]}, {})
    assert float(logs["consistency"]) < 1e-12  # inverse in reverse order: both maps back in the original frame

    # a position-dependent network is not equivariant, so the term is active and trains it
    bias = torch.zeros(1, requires_grad=True)
    trainer.network = lambda t, b=bias: [torch.cat([t, -t], 1) * torch.linspace(0, 1, t.shape[-1]) + b]
    loss, logs = trainer.unlabeled_loss({"views": [x]}, {})
    assert float(logs["consistency"]) > 1e-4 and loss.requires_grad


def test_bad_consistency_space_is_refused(trainers):
    plans, dataset_json, config = trainers[2]
    trainer = type("V", (SemiCervixTrainer,), {"cons_space": "probs"})(
        {**plans, "continue_training": False}, config, 0, dataset_json, torch.device("cpu"))
    with pytest.raises(ValueError, match="cons_space must be 'logits' or 'softmax', not 'probs'"):
        trainer.unlabeled_loss({"views": [torch.zeros(1, 1, 8, 8)]}, {})
