"""Training-length attributes as class attributes, so a short variant is a two-line subclass.

nnU-Net sets ``num_epochs`` and friends inside ``nnUNetTrainer.__init__``; a class attribute alone would be
overwritten. :class:`ScheduleMixin` applies the class-level ``schedule`` after nnU-Net's ``__init__``, once, here,
instead of every variant copying an ``__init__``. It also writes nnU-Net's checkpoints atomically (a kill while one is
written leaves the previous one intact), for the variants of nnU-Net's own trainers (``nnUNetTrainer_demo``, budget
variants); the semi-supervised trainers write theirs atomically themselves.
"""
from typing import Dict

import torch


class ScheduleMixin:
    """Put before ``nnUNetTrainer`` in the bases. ``schedule`` maps trainer attributes to values."""
    schedule: Dict[str, object] = {}

    # nnU-Net records its constructor arguments by reading this signature, so it must be nnU-Net's own
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for key, value in type(self).schedule.items():
            if not hasattr(self, key):
                raise AttributeError(f"{type(self).__name__}.schedule sets '{key}', which the trainer does not have")
            setattr(self, key, value)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        from semi_nnunet.utilities.file_ops import atomic_path
        with atomic_path(filename) as tmp:
            super().save_checkpoint(tmp)
