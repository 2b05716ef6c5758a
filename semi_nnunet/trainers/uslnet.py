"""USL-Net (Li, Peng et al., arXiv 2309.13289): the segmentation stage of one refining cycle. Spec:
``documentation/methods/uslnet.md``. No label of any kind reaches this trainer.

    L_unc = CE(f(x), l) (+ dice_weight * Dice(f(x), l)),  both on the certain pixels {p : l(p) != uncertain} only

* ``l`` [paper, seed summary; rules marked [rec] in ``semi_nnunet.uslnet.uncertainty``]: the cycle's pseudo-label,
  0 background / 1 foreground / 2 uncertain (saliency or probability between 0.35 and 0.65, or dropped by the
  connectivity / centrality rules). Cycle 1 trains on ``l_0`` from CCAM saliency, cycle n >= 2 on the cycle n-1
  network's prediction passed through the same module (``semi_nnunet.uslnet.cycles`` makes them).
* Uncertain = nnU-Net's **ignore label** [our reading]: the trainer declares ``"ignore": 2`` in its in-memory
  dataset.json, so nnU-Net's own ``DC_and_CE_loss(ignore_label=2)`` (deep supervision kept) gives those pixels no
  loss and zero gradient, nnU-Net's validation scores certain pixels only, and its loader samples patches from
  annotated pixels. The results folder gets the raw dataset.json (background + foreground), so nnU-Net's predictor,
  ensembling and evaluation see an ordinary two-class model.
* ``dice_weight`` [our reading]: 1 = nnU-Net's CE + Dice (default), 0 = the partial CE alone.
* Segmentation network [deviation]: nnU-Net's planned U-Net instead of the paper's ResNet-50 + FCN, trained
  with nnU-Net's defaults (the paper gives no optimizer or augmentation); ``schedule`` = 300 epochs per cycle (seed
  summary: 5 cycles x 300 epochs).
* No ground truth: the supervised part is zero and the pseudo-labeled batch (from nnU-Net's own training loader over
  the cycle's pseudo-label folder) is the "unlabeled" part. ``requires_labels = False``: HCO is refused (no labeled
  gradient to trust). 2D only (the saliency stage is 2D).

The saliency stage and cycle settings are class attributes here too (so ``debug.json`` records them and a variant is
a two-line subclass): see :data:`USLNET_SETTINGS` and ``documentation/methods/uslnet.md``.
"""
import os
from typing import Dict, List, Optional, Tuple

import torch
from batchgenerators.utilities.file_and_folder_operations import join, save_json
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

from semi_nnunet.trainers.base import NoUnlabeledDataError, SemiSupervisedTrainer
from semi_nnunet.trainers.unlabeled_data import unlabeled_identifiers

UNCERTAIN_LABEL_NAME = "ignore"  # nnU-Net's name for the ignore label


class USLNetError(ValueError):
    """A request USL-Net cannot serve (3D, more than one foreground class, no pseudo-labels); says how to fix it."""


def with_uncertain_label(dataset_json: dict) -> Tuple[dict, int]:
    """``dataset_json`` with the uncertain value declared as nnU-Net's ignore label (the label after the last)."""
    labels = {k: v for k, v in dataset_json["labels"].items() if k != UNCERTAIN_LABEL_NAME}
    values = sorted(int(v) for v in labels.values() if not isinstance(v, (list, tuple)))
    if values != [0, 1] or "regions_class_order" in dataset_json:
        raise USLNetError(f"USL-Net segments one foreground class, but dataset.json declares the labels "
                          f"{dataset_json['labels']}. Give it {{'background': 0, '<name>': 1}} (e.g. lesion).")
    return {**dataset_json, "labels": {**labels, UNCERTAIN_LABEL_NAME: 2}}, 2


class USLNetTrainer(SemiSupervisedTrainer):
    """One USL-Net cycle on nnU-Net's planned network (see the module docstring)."""
    requires_labels = False
    supported_dims = (2,)
    use_teacher = False
    num_strong_views = 0
    method_log_keys = ("pseudo_loss",)
    schedule = dict(num_epochs=300)  # seed summary: 300 epochs per cycle (nnU-Net epochs of 250 iterations)
    dice_weight: float = 1.0  # [rec] CE + Dice on certain pixels; 0: partial CE only
    contract_test_variant = "USLNetTrainer_contract"

    # --- pseudo-labels and cycles (semi_nnunet.uslnet) ---
    fg_threshold: float = 0.65  # [paper] saliency / probability above: foreground
    bg_threshold: float = 0.35  # [paper] below: background; between: uncertain
    min_component_fraction: float = 0.1  # [rec] connectivity: drop components < 10 % of the largest
    keep_central_component: bool = True  # [rec] centrality: keep the component nearest the image centre
    cycle_combine: str = "replace"  # [rec] or "agree_with_l0"
    num_cycles: int = 5  # [seed summary]
    # --- saliency stage: backbone, MoCo v2 [MoCo v2 defaults], CCAM [CCAM code] ---
    backbone: str = "resnet50"  # [seed summary] ResNet-50; resnet18/34/101; resnet10_w16 (CPU tests only)
    moco_checkpoint: Optional[str] = None  # user checkpoint (MoCo format or torchvision ResNet); None: pre-train
    saliency_image_size: int = 224  # [rec] images resized to this square for MoCo / CCAM (MoCo and CCAM use 224 or 256)
    moco_epochs: int = 200
    moco_batch_size: int = 32  # [rec] MoCo's 256 does not fit one GPU with ResNet-50; lr scales with it
    moco_queue: int = 4096  # [rec] at most 4096 for small datasets; also capped by the dataset size
    moco_momentum: float = 0.999
    moco_temperature: float = 0.2
    ccam_epochs: int = 10
    ccam_batch_size: int = 32
    ccam_lr: float = 1e-3
    ccam_alpha: float = 0.25
    ccam_scales: Tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    seed: int = 0
    # --- reporting ---
    overlay_cases: int = 8  # cases on each cycle's overlay sheet

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        internal, self.uncertain_label = with_uncertain_label(dataset_json)
        super().__init__(plans, configuration, fold, internal, device)
        self.raw_dataset_json = {k: v for k, v in dataset_json.items()}
        self.raw_dataset_json["labels"] = {k: v for k, v in dataset_json["labels"].items()
                                           if k != UNCERTAIN_LABEL_NAME}
        check_2d(self.configuration_manager.patch_size, configuration, self.plans_manager.dataset_name)
        self.cycle: Optional[int] = None
        self.pseudo_label_folder: Optional[str] = None
        # until use_cycle names the pseudo-labels: the unlabeled cases (a USL-Net dataset may have no labeled one)
        self.preprocessed_dataset_folder = self.unlabeled_folder

    # ------------------------------------------------------------------ the cycle this trainer trains
    def use_cycle(self, cycle: int, pseudo_label_folder: str, model_folder: str) -> None:
        """Train cycle ``cycle`` on ``pseudo_label_folder``, writing the model into ``model_folder`` (nnU-Net's
        results layout: ``model_folder/fold_<fold>/checkpoint_final.pth``). Call before ``initialize``."""
        if self.was_initialized:
            raise RuntimeError("use_cycle must be called before initialize()")
        old_log = self.log_file
        self.cycle, self.pseudo_label_folder = cycle, pseudo_label_folder
        self.preprocessed_dataset_folder = pseudo_label_folder
        self.output_folder_base = model_folder
        self.output_folder = join(model_folder, f"fold_{self.fold}")
        os.makedirs(self.output_folder, exist_ok=True)
        self.logger.output_folder = self.output_folder
        self.log_file = join(self.output_folder, os.path.basename(old_log))
        if os.path.isfile(old_log):  # nnU-Net's __init__ wrote its greeting into the default folder
            os.replace(old_log, self.log_file)
            default_fold = os.path.dirname(old_log)
            for folder in (default_fold, os.path.dirname(default_fold)):
                if os.path.isdir(folder) and not os.listdir(folder):
                    os.rmdir(folder)

    def check_unlabeled_data(self) -> List[str]:
        ids = unlabeled_identifiers(self.pseudo_label_folder) if self.pseudo_label_folder else []
        if not ids:
            raise NoUnlabeledDataError(
                f"{type(self).__name__} trains one USL-Net cycle on that cycle's pseudo-labels "
                f"({self.pseudo_label_folder or 'none given'}). Run the whole pipeline (saliency, pseudo-labels, "
                f"cycles): semi_nnUNet_run_uslnet {self.plans_manager.dataset_name} -c {self.configuration_name} "
                f"-tr {type(self).__name__}.")
        return ids

    # ------------------------------------------------------------------ data and loss
    def get_unlabeled_dataloader(self):
        return None  # nnU-Net's training loader already yields the pseudo-labeled batches

    def do_split(self):
        if self.fold != "all":
            raise USLNetError(f"{type(self).__name__} has no labels to cross-validate with: train fold 'all' "
                              f"(semi_nnUNet_run_uslnet does).")
        return super().do_split()

    def _build_loss(self):
        loss = super()._build_loss()  # nnU-Net's DC_and_CE_loss(ignore_label=2), deep-supervised
        inner = loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss
        inner.weight_dice = self.dice_weight
        return loss

    def supervised_loss(self, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """No ground truth exists: the supervised part is zero (and sends no gradient)."""
        return torch.zeros((), device=self.device), {}

    def unlabeled_loss(self, unlabeled: dict, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        """``L_unc``: nnU-Net's loss with the uncertain pixels ignored."""
        loss = self.loss(self.network(unlabeled["data"]), unlabeled["target"])
        return loss, {"pseudo_loss": loss.detach(), "unsup_weight": 1.0}

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's loader yields the pseudo-labeled batch: it is handed to the base step as the unlabeled part,
        with an empty labeled part."""
        self.dataloader_unlabeled = iter([batch])
        return super().train_step({})

    # ------------------------------------------------------------------ results folder
    def on_train_start(self):
        super().on_train_start()
        # the inference model is an ordinary two-class model: no ignore label in its dataset.json
        save_json(self.raw_dataset_json, join(self.output_folder_base, "dataset.json"), sort_keys=False)

    def on_train_end(self):
        self.dataloader_unlabeled = None
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation compares with ground truth, which USL-Net does not have; the cycle runner
        reports the pseudo-labels and predictions instead (and Dice against evaluation labels when given)."""
        self.print_to_log_file("USL-Net: no ground truth, nnU-Net's final validation is skipped.")


def check_2d(patch_size, configuration: str, dataset_name: str = "") -> None:
    if len(patch_size) != 2:
        raise USLNetError(f"USL-Net is 2D only (its CCAM saliency stage works on 2D images), but configuration "
                          f"'{configuration}' of {dataset_name} is {len(patch_size)}D. Use the 2d configuration: "
                          f"semi_nnUNet_run_uslnet {dataset_name} -c 2d.")


class USLNetTrainer_contract(USLNetTrainer):
    """Stand-in for ``tests/trainers/test_contract.py`` only: USL-Net's loss plus nnU-Net's supervised term on the
    contract's random labeled batch, so the generic HCO test (which needs a labeled gradient) can run. USL-Net
    itself has no labeled term and refuses HCO (``tests/uslnet`` check the real trainer's contract)."""
    requires_labels = True

    def supervised_loss(self, labeled: dict) -> Tuple[torch.Tensor, Dict[str, float]]:
        return SemiSupervisedTrainer.supervised_loss(self, labeled)


class USLNetTrainer_tiny(USLNetTrainer):
    """CPU tests and smoke runs: a narrow ResNet-10 at 64 px, a few MoCo / CCAM epochs, 2 cycles of 2 x 10
    iterations. Not a setting to judge the method by."""
    schedule = dict(num_epochs=2, num_iterations_per_epoch=10, num_val_iterations_per_epoch=1, save_every=1)
    backbone = "resnet10_w16"
    saliency_image_size = 64
    moco_epochs, moco_batch_size = 2, 8
    ccam_epochs, ccam_batch_size = 10, 8
    num_cycles = 2
    overlay_cases = 4


class USLNetTrainer_50epochs(USLNetTrainer):
    """Shorter cycles (50 nnU-Net epochs each) for benchmarks on a budget; the saliency stage as USLNetTrainer."""
    schedule = dict(num_epochs=50)


USLNET_SETTINGS = ("fg_threshold", "bg_threshold", "min_component_fraction", "keep_central_component",
                   "cycle_combine", "num_cycles", "backbone", "moco_checkpoint", "saliency_image_size",
                   "moco_epochs", "moco_batch_size", "moco_queue", "moco_momentum", "moco_temperature", "ccam_epochs",
                   "ccam_batch_size", "ccam_lr", "ccam_alpha", "ccam_scales", "seed", "overlay_cases", "dice_weight")


class USLNetTrainer_cpu(USLNetTrainer):
    """A CPU budget for benchmarks (tens of minutes for ~100 images): ResNet-18 at 128 px, 30 MoCo epochs, 3 cycles
    of 10 x 25 iterations. Far below the paper's budget; a lower bound on what the method does."""
    schedule = dict(num_epochs=10, num_iterations_per_epoch=25, num_val_iterations_per_epoch=5)
    backbone = "resnet18"
    saliency_image_size = 128
    moco_epochs = 30
    num_cycles = 3
