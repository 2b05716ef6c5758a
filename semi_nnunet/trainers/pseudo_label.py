"""``PseudoLabelTrainer``: one stage of staged self-training (Semi-CervixSeg stages I-IV; USL-Net cycles).

    L = L_sup(f(x_l), y_l) + pseudo_weight * L_sup(f(x_u), y_hat_u)

A freshly initialised network (``-pretrained_weights`` fine-tunes from the previous stage instead) is trained on the
fold's labeled training cases and on every pseudo-labeled unlabeled case, both with nnU-Net's online augmentation and
deep-supervised Dice+CE. Labeled and pseudo-labeled cases are drawn as separate parts of each batch (labeled: nnU-Net's
loader; pseudo-labeled: the base's second loader, ``unlabeled_batch_size``, default the labeled batch size), so the
ground-truth term stays apart and HCO can trust it (``L_L`` = ground truth, ``L_U`` = pseudo-labels).

The pseudo-labels of stage ``stage`` for fold ``fold`` live in the initial trainer's results folder,
``<initial_trainer>__<plans>__<config>/pseudo_labels/stage_<stage>/fold_<fold>/`` (preprocessed cases with their
pseudo-label and a ``provenance.json``), never beside ground truth. ``semi_nnunet.stages`` makes them.

``pseudo_sampling``: ``"balanced"`` (default) puts labeled and pseudo-labeled patches 1:1 in every batch (two loaders,
``B`` patches each); ``"uniform"`` is the Semi-CervixSeg paper's sampling, one batch of ``B`` patches drawn uniformly
from the union of labeled and pseudo-labeled cases: ``k ~ Binomial(B, n_l / (n_l + n_u))`` labeled patches and
``B - k`` pseudo-labeled ones, each loss weighted by its share of the batch (``k / B``, ``(B - k) / B``). With few
labels most such batches hold no labeled patch, so HCO (which trusts the labeled gradient) refuses it.

``pseudo_confidence_threshold`` (set on the staged trainer, its stages inherit it): the pseudo-labels mark voxels whose
ensemble confidence is below it with an ignore value (:func:`ignore_value`), and the
pseudo-label loss is nnU-Net's Dice+CE built with that ignore label: those voxels count in neither term. The
ground-truth loss is nnU-Net's own, unchanged.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from semi_nnunet.trainers.base import NoUnlabeledDataError, SemiSupervisedTrainer
from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers


def pseudo_label_folder(dataset_name: str, initial_trainer: str, plans_name: str, configuration: str, stage: int,
                        fold) -> str:
    from nnunetv2.paths import nnUNet_results
    return join(str(nnUNet_results), dataset_name, f"{initial_trainer}__{plans_name}__{configuration}",
                "pseudo_labels", f"stage_{stage}", f"fold_{fold}")


def ignore_value(label_manager) -> int:
    """The label that marks a voxel to leave out of a loss: the dataset's ignore label, else its largest label + 1
    (nnU-Net requires an ignore label to be the largest). Refused for region-based datasets (no single argmax)."""
    if label_manager.has_regions:
        raise ValueError("pseudo_confidence_threshold needs mutually exclusive labels; this dataset is region-based "
                         "(set pseudo_confidence_threshold = None).")
    if label_manager.has_ignore_label:
        return int(label_manager.ignore_label)
    return int(max(label_manager.all_labels)) + 1


class PseudoLabelTrainer(SemiSupervisedTrainer):
    stage: int = 1
    initial_trainer: str = ""  # the trainer whose results folder holds the pseudo-labels
    pseudo_weight: float = 1.0
    pseudo_confidence_threshold: Optional[float] = None  # None: every voxel's argmax; e.g. 0.9: confident ones only
    pseudo_sampling: str = "balanced"  # or "uniform" (the paper's): see the module docstring
    use_teacher = False
    num_strong_views = 0
    method_log_keys = ("pseudo_loss",)

    @property
    def pseudo_label_folder(self) -> str:
        return pseudo_label_folder(self.plans_manager.dataset_name, self.initial_trainer or type(self).__name__,
                                   self.plans_manager.plans_name, self.configuration_name, self.stage, self.fold)

    def check_unlabeled_data(self) -> List[str]:
        ids = unlabeled_identifiers(self.pseudo_label_folder)
        if not ids:
            raise NoUnlabeledDataError(
                f"{type(self).__name__} trains on the stage-{self.stage} pseudo-labels of fold {self.fold}, but "
                f"{self.pseudo_label_folder} holds none. Run the staged pipeline, which makes them with the previous "
                f"stage's model of the same fold: semi_nnUNet_train {self.plans_manager.dataset_name} "
                f"{self.configuration_name} {self.initial_trainer} {self.fold} --stages {self.stage}.")
        return ids

    def get_unlabeled_dataloader(self):
        ids = self.check_unlabeled_data()
        transforms, initial_patch_size, _ = self.second_loader_transforms(self._get_deep_supervision_scales())
        return self.background_loader(nnUNetDataLoader(
            nnUNetDatasetBlosc2(self.pseudo_label_folder, ids), self.unlabeled_batch_size or self.batch_size,
            initial_patch_size, self.configuration_manager.patch_size, self.label_manager,
            oversample_foreground_percent=self.oversample_foreground_percent, transforms=transforms))

    @classmethod
    def settings_problem(cls) -> Optional[str]:
        if cls.pseudo_sampling not in ("balanced", "uniform"):
            return f"{cls.__name__}.pseudo_sampling = {cls.pseudo_sampling!r}: use 'balanced' or 'uniform'."
        if cls.pseudo_sampling == "uniform" and (cls.optimizer_name or "").startswith(("hco", "co_")):
            return (f"{cls.__name__}: pseudo_sampling 'uniform' leaves most batches without a labeled patch, and "
                    f"{cls.optimizer_name} trusts the labeled gradient; use 'balanced' with HCO.")
        return super().settings_problem()

    def initialize(self):
        super().initialize()
        self._labeled_in_batch: Optional[int] = None
        self.pseudo_loss = self.loss
        if self.pseudo_confidence_threshold is not None and not self.label_manager.has_ignore_label:
            value = ignore_value(self.label_manager)
            # nnU-Net's own loss builder, with the ignore value the pseudo-labels carry as its ignore label
            self.label_manager._ignore_label = value
            try:
                self.pseudo_loss = self._build_loss()
            finally:
                self.label_manager._ignore_label = None

    def get_dataloaders(self):
        train, val = super().get_dataloaders()
        if self.pseudo_sampling == "uniform":
            n_labeled, n_pseudo = len(self.do_split()[0]), len(self.check_unlabeled_data())
            self._labeled_share = n_labeled / (n_labeled + n_pseudo)
        return train, val

    def prepare_unlabeled(self, batch: dict) -> dict:
        """With ``uniform`` sampling, draw this step's number of labeled patches (the rest are pseudo-labeled)."""
        if self.pseudo_sampling == "uniform":
            share = getattr(self, "_labeled_share", 0.5)
            k = (torch.rand(self.batch_size) < share).sum().to(self.device)  # Binomial(B, share)
            if self.is_ddp:  # every rank runs the same forwards (nnU-Net's DDP Dice gathers across ranks)
                dist.broadcast(k, 0)
            self._labeled_in_batch = int(k)
        return super().prepare_unlabeled(batch)

    @staticmethod
    def _first(batch: dict, k: int) -> Tuple[torch.Tensor, list]:
        target = batch["target"]
        return batch["data"][:k], [t[:k] for t in target] if isinstance(target, list) else target[:k]

    def supervised_loss(self, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        k = self._labeled_in_batch
        if k is None:  # balanced: the whole labeled batch
            return super().supervised_loss(labeled)
        if k == 0:
            return torch.zeros((), device=self.device), {}
        data, target = self._first(labeled, k)
        return self.loss(self.network(data), target) * (k / self.batch_size), {}

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        k = self._labeled_in_batch
        share = 1.0 if k is None else (self.batch_size - k) / self.batch_size
        if share == 0:
            return torch.zeros((), device=self.device), {"unsup_weight": 0.0}
        data, target = (unlabeled["data"], unlabeled["target"]) if k is None else \
            self._first(unlabeled, self.batch_size - k)
        loss = self.pseudo_loss(self.network(data), target)
        return self.pseudo_weight * share * loss, {"pseudo_loss": loss.detach(), "unsup_weight": self.pseudo_weight}
