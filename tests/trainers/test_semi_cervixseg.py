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


def test_stage_trainers_inherit_every_setting_of_a_variant():
    """A variant of the staged trainer sets a learning rate, batch sizes and its stages' pseudo-label weight: its
    stages keep them (they reverted to the defaults before); the method's stage-0 choices do not leak into stages."""
    from semi_nnunet.trainers.generated import budget_variant, optimizer_variant, stage_variant
    from semi_nnunet.trainers.pseudo_label import PseudoLabelTrainer
    from semi_nnunet.trainers.semi_cervixseg import SemiCervixTrainer

    class TunedCervix(SemiCervixTrainer):
        optimizer_name = "adamw"
        adamw_initial_lr = 3e-4
        unlabeled_batch_size = 6
        pseudo_weight = 0.5
        lambda_cons = 0.3  # stage 0 only: the stage trainer has no such attribute

    stage = stage_variant(TunedCervix, 2)
    assert (stage.optimizer_name, stage.adamw_initial_lr, stage.unlabeled_batch_size, stage.pseudo_weight) == \
        ("adamw", 3e-4, 6, 0.5)
    assert stage.stage == 2 and stage.initial_trainer == "TunedCervix" and issubclass(stage, PseudoLabelTrainer)
    assert not hasattr(stage, "lambda_cons") and stage.method_log_keys == PseudoLabelTrainer.method_log_keys
    assert stage.num_stages == 0 and stage.stage_trainer is None  # a stage is not itself staged
    # generated suffixes compose: a budget and HCO on the variant reach its stages too
    hco = stage_variant(optimizer_variant(budget_variant(TunedCervix, 6, 3), "HCO"), 1)
    assert hco.optimizer_name == "hco_adamw" and hco.adamw_initial_lr == 3e-4 and hco.pseudo_weight == 0.5
    assert hco.schedule["num_epochs"] == 6 and hco.schedule["num_iterations_per_epoch"] == 3
    # the plain method's stages: nnU-Net's defaults, as before
    plain = stage_variant(SemiCervixTrainer, 1)
    assert plain.optimizer_name is None and plain.pseudo_weight == 1.0 and plain.unlabeled_batch_size is None


def test_uniform_pseudo_sampling_draws_labeled_patches_by_their_share(tmp_path, monkeypatch):
    """``pseudo_sampling = "uniform"``: each batch holds Binomial(B, n_l / (n_l + n_u)) labeled patches, the losses are
    weighted by their share of the batch; HCO refuses it."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, str(tmp_path / k))
    make_synthetic_dataset(str(tmp_path / "nnUNet_raw"), 996, dim=2, num_labeled=4, num_unlabeled=2)
    plan_and_preprocess(996, ["2d"], num_processes=1, show_progress=False)
    pre = join(str(tmp_path / "nnUNet_preprocessed"), "Dataset996_Synthetic2D")
    plans, dataset_json = load_json(join(pre, "nnUNetPlans.json")), load_json(join(pre, "dataset.json"))
    stage = find_trainer_class("SemiCervixTrainer_uniform_stage1")
    assert stage.pseudo_sampling == "uniform"
    trainer = stage({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    trainer.batch_size = 4
    trainer._labeled_share = 0.25
    torch.manual_seed(0)
    draws = []
    for _ in range(400):
        trainer.prepare_unlabeled({"data": torch.zeros(4, 1, 8, 8)})
        draws.append(trainer._labeled_in_batch)
    assert abs(sum(draws) / len(draws) - 1.0) < 0.15 and set(draws) <= {0, 1, 2, 3, 4}  # mean B * share = 1
    patch = [int(p) for p in trainer.configuration_manager.patch_size]
    g = torch.Generator().manual_seed(1)

    def batch():
        target = [torch.randint(0, 2, (4, 1, *[max(1, round(p * s)) for p, s in zip(patch, scale)]),
                                generator=g).float() for scale in trainer._get_deep_supervision_scales()]
        return {"data": torch.randn(4, 1, *patch, generator=g), "target": target}
    labeled, pseudo = batch(), batch()
    trainer._labeled_in_batch = 1
    sup, _ = trainer.supervised_loss(labeled)
    unsup, _ = trainer.unlabeled_loss(pseudo, labeled)
    one = trainer.loss(trainer.network(labeled["data"][:1]), [t[:1] for t in labeled["target"]])
    three = trainer.loss(trainer.network(pseudo["data"][:3]), [t[:3] for t in pseudo["target"]])
    assert sup.item() == pytest.approx(one.item() / 4, rel=1e-5) and unsup.item() == pytest.approx(
        three.item() * 3 / 4, rel=1e-5)
    trainer._labeled_in_batch = 4  # a batch of labeled patches only: no pseudo-label term
    assert trainer.unlabeled_loss(pseudo, labeled)[0].item() == 0.0
    hco = find_trainer_class("SemiCervixTrainer_uniform_HCO_stage1")
    with pytest.raises(ValueError, match="uniform' leaves most batches without a labeled patch"):
        hco({**plans, "continue_training": False}, "2d", 0, dataset_json, torch.device("cpu")).initialize()


@pytest.mark.parametrize("trainer, refused", [
    ("SemiCervixTrainer_uniform_HCO", True),  # its stages: uniform sampling under HCO
    ("SemiCervixTrainer_uniform_HCO_stage2", True),
    ("SemiCervixTrainer_uniform_5epochs_2it_HCO", True),
    ("SemiCervixTrainer_HCO", False),  # 1:1 batches: every batch has labeled patches to trust
    ("SemiCervixTrainer_uniform", False),
])
def test_settings_that_cannot_train_are_refused_before_training(trainer, refused):
    """semi_nnUNet_train checks a trainer's settings, and those of the stages it will make, before any fold starts:
    HCO on uniform stage sampling used to fail only when stage 1 initialised, after the whole stage-0 training."""
    from semi_nnunet.trainers.lookup import TrainingError, check_trainer_settings, find_trainer_class
    from semi_nnunet.trainers.training import TrainRequest, check_request
    if not refused:
        assert check_trainer_settings(trainer) is find_trainer_class(trainer)
        return
    with pytest.raises(TrainingError, match=rf"uniform' leaves most batches(.|\n)*where: trainer {trainer}"):
        check_trainer_settings(trainer)
    # the train command's first check: refused before the dataset is even looked up (999 does not exist)
    with pytest.raises(TrainingError, match="use 'balanced' with HCO"):
        check_request(TrainRequest(dataset=999, configuration="2d", trainer=trainer, device="cpu"))
