"""Semi-CervixSeg, initial stage (Jiang et al., ISBI 2025 FUGC challenge report;
documentation/methods/semi_cervixseg.md).

    L = L_sup(f(x_l), y_l) + lambda_c * L_cons,
    L_cons = mean_j ( T1^-1(f(T1 x_u))_j - T2^-1(f(T2 x_u))_j )^2          (all output elements, M = B*K*spatial)

* ``L_sup``: nnU-Net's deep-supervised Dice+CE on ground truth (the base's default).
* ``T1, T2``: random invertible spatial transforms drawn per sample (the paper is ambiguous: per sample rather than the
  code's per batch): a flip coin for every spatial axis and quarter turns in every plane whose two patch axes have
  equal length (2D and 3D). The inverse undoes the ops in **reverse** order (the authors' code undid them in the same
  order, which misaligns the maps whenever a flip and an odd rotation are drawn together; we do not copy that bug).
* Both views go through the student in one forward pass, both branches get gradient (no teacher, no stop-grad), as in
  the code. ``L_cons`` is computed on the full-resolution output only.
* ``cons_space = "logits"`` (default, the code's "logits space"; paper says "outputs") or ``"softmax"``: logit MSE is
  unbounded, so softmax is the safe fallback if it dominates early.
* ``lambda_cons = 1`` from iteration 0 (paper Eq. 1; the code's ``lambda_u`` is undefined; no ramp-up in paper or
  code). The unlabeled views are nnU-Net's training transforms of the unlabeled patch (the code also augments first).
* HCO split: ``L_L = L_sup``, ``L_U = lambda_c L_cons`` (disjoint graphs).

Stages I-IV (``SemiCervixTrainer_stage<k>``, made by ``semi_nnunet.trainers.generated``) are
:class:`PseudoLabelTrainer`: a fresh network on the fold's labeled cases + hard pseudo-labels (argmax, no threshold)
predicted by the previous stage's model of the same fold (``checkpoint_final`` by default), with online
augmentation. ``semi_nnUNet_train DATASET CONFIG SemiCervixTrainer`` runs them all (``semi_nnunet.stages``).
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from semi_nnunet.trainers.base import SemiSupervisedTrainer
from semi_nnunet.trainers.pseudo_label import PseudoLabelTrainer
from semi_nnunet.trainers.views import InvertibleSpatial


class SemiCervixTrainer(SemiSupervisedTrainer):
    lambda_cons: float = 1.0
    cons_space: str = "logits"  # or "softmax"
    use_teacher = False
    num_strong_views = 0  # the consistency compares two spatial transforms of the weak view
    method_log_keys = ("consistency",)
    num_stages: int = 4  # Initial + stages I-IV (paper Table 2 row 7); gains saturate after two
    stage_trainer = PseudoLabelTrainer

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        if self.cons_space not in ("logits", "softmax"):
            raise ValueError(f"cons_space must be 'logits' or 'softmax', not {self.cons_space!r}")
        x = unlabeled["views"][0]
        spatial = InvertibleSpatial(x.shape[2:])
        ops1, ops2 = spatial.sample(x.shape[0]), spatial.sample(x.shape[0])
        out = self.full_resolution(self.network(torch.cat([spatial.apply(x, ops1), spatial.apply(x, ops2)])))
        out1, out2 = out.chunk(2)
        back1, back2 = spatial.invert(out1, ops1), spatial.invert(out2, ops2)
        if self.cons_space == "softmax":
            back1, back2 = self.probabilities(back1), self.probabilities(back2)
        consistency = F.mse_loss(back1, back2)
        return self.lambda_cons * consistency, {"consistency": consistency.detach(), "unsup_weight": self.lambda_cons}
