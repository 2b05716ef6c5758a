"""Mean Teacher (Tarvainen & Valpola 2017) on nnU-Net: the baseline every method is compared with.

    L = L_sup(student(x_l), y_l) + w(t) * mean( (softmax(student(strong(x_u))) - softmax(teacher(weak(x_u))))^2 )

* ``L_sup``: nnU-Net's deep-supervised Dice+CE on ground truth (the base's default).
* The teacher (EMA of the student, decay ``ema_decay`` with the ``min(1 - 1/(t+1), decay)`` warm-up) sees the weak
  view. Budget rule: the decay is ``min(ema_decay, 1 - 1/(0.02 T))`` for a run of ``T`` iterations
  (``ema_horizon_fraction``), so the teacher averages over at most 2 % of the run: 0.99 (the paper's) from 5,000
  iterations up, nnU-Net's 250,000 included; 0.9875 at 4,000; 0.6875 at the demo's 160. The student sees the
  strong view of the same patch (same geometry), so no inverse transform is needed.
* ``w(t) = consistency_weight * exp(-5 (1 - t/T)^2)``, ``T = rampup_fraction`` of all iterations.
* The consistency is on full-resolution probabilities (MSE), as in the medical Mean Teacher line (UA-MT, Yu et al.
  2019: weight 0.1, EMA 0.99), which these defaults follow.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from semi_nnunet.trainers.base import SemiSupervisedTrainer


class MeanTeacherTrainer(SemiSupervisedTrainer):
    consistency_weight: float = 0.1
    ema_decay: float = 0.99
    rampup: str = "sigmoid"
    rampup_fraction: float = 0.4
    method_log_keys = ("consistency",)

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        weak, strong = unlabeled["views"][0], unlabeled["views"][1]
        target = self.probabilities(self.teacher_logits(weak))
        student = self.probabilities(self.full_resolution(self.network(strong)))
        consistency = F.mse_loss(student, target)
        weight = self.unlabeled_weight(self.consistency_weight)
        return weight * consistency, {"consistency": consistency.detach(), "unsup_weight": weight}
