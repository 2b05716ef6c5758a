"""Self-training with nnU-Net (the recipe behind nnU-Net + offline pseudo-labels, e.g. the FLARE22 entries that went
from 89.20 to 91.98 Dice; Xie et al., "Self-training with Noisy Student", CVPR 2020, for the general form):

    stage 0:  L = L_sup(f(x_l), y_l)                                     (supervised nnU-Net, nothing else)
    stage k:  L = L_sup(g(x_l), y_l) + pseudo_weight * L_sup(g(x_u), y_hat_u)     (a fresh network g)

* Stage 0 is nnU-Net's supervised training step itself (its loader, loss, step); the unlabeled images are only read
  when the pseudo-labels are made.
* ``y_hat_u``: the hard pseudo-labels of the previous stage's model of the same fold (``semi_nnunet.stages``: a fold's
  pseudo-labels never come from a model that saw its validation cases), with nnU-Net's online augmentation in the
  stage (the "noise" of Noisy Student).
* ``pseudo_confidence_threshold`` (``SelfTrainingTrainer_conf90``: 0.9): voxels whose ensemble confidence is below it
  are ignored by the pseudo-label loss (nnU-Net's ignore label), so a stage learns only from voxels its teacher was
  sure of. ``None`` (the default): every voxel's argmax, as in the FLARE recipe.
* One pseudo-label stage by default (``num_stages``; ``--stages k`` for more).
"""
from typing import Dict, Tuple

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from semi_nnunet.trainers.base import SemiSupervisedTrainer
from semi_nnunet.trainers.pseudo_label import PseudoLabelTrainer


class SelfTrainingTrainer(SemiSupervisedTrainer):
    use_teacher = False
    num_strong_views = 0
    num_stages: int = 1
    stage_trainer = PseudoLabelTrainer
    pseudo_confidence_threshold = None  # read by the stage runner and inherited by the stages
    contract_test_variant = "SelfTrainingTrainer_stage1"  # stage 0 has no unlabeled loss; its stages do

    def get_dataloaders(self):
        return nnUNetTrainer.get_dataloaders(self)  # no unlabeled loader: stage 0 is supervised

    def train_step(self, batch: dict) -> dict:
        out = nnUNetTrainer.train_step(self, batch)
        self.global_step += 1
        return out

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        return torch.zeros((), device=self.device), {}


class SelfTrainingTrainer_conf90(SelfTrainingTrainer):
    """Self-training whose stages learn only from pseudo-label voxels the ensemble is at least 90 % sure of."""
    pseudo_confidence_threshold = 0.9
    contract_test_variant = "SelfTrainingTrainer_conf90_stage1"
