"""Training-length attributes as class attributes, so a short variant is a two-line subclass.

nnU-Net sets ``num_epochs`` and friends inside ``nnUNetTrainer.__init__``; a class attribute alone would be
overwritten. :class:`ScheduleMixin` applies the class-level ``schedule`` after nnU-Net's ``__init__``, once, here,
instead of every variant copying an ``__init__``. It also writes nnU-Net's checkpoints atomically (a kill while one is
written leaves the previous one intact), for the variants of nnU-Net's own trainers (``nnUNetTrainer_demo``, budget
variants); the semi-supervised trainers write theirs atomically themselves.

``snapshot_epochs`` keeps extra checkpoints: after each listed epoch count ``E`` a copy of the training state is saved
as ``checkpoint_epoch<E>.pth`` beside nnU-Net's own (the label-efficiency benchmark evaluates the budget's half-way
point from it, to tell whether the supervised baseline converged, without a second training). Functions in
``EPOCH_LISTENERS`` are called with the trainer after every epoch (a progress bar, for example).
"""
from typing import Callable, Dict, List, Tuple

import torch

EPOCH_LISTENERS: List[Callable[[object], None]] = []


def snapshot_name(epoch: int) -> str:
    """The file a snapshot after ``epoch`` epochs is saved as (see ``ScheduleMixin.snapshot_epochs``)."""
    return f"checkpoint_epoch{epoch}.pth"


class ScheduleMixin:
    """Put before ``nnUNetTrainer`` in the bases. ``schedule`` maps trainer attributes to values."""
    schedule: Dict[str, object] = {}
    snapshot_epochs: Tuple[int, ...] = ()  # after these many epochs, also save checkpoint_epoch<E>.pth

    # nnU-Net records its constructor arguments by reading this signature, so it must be nnU-Net's own
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for key, value in type(self).schedule.items():
            if not hasattr(self, key):
                raise AttributeError(f"{type(self).__name__}.schedule sets '{key}', which the trainer does not have")
            setattr(self, key, value)

    def on_epoch_end(self):
        finished = self.current_epoch + 1  # nnU-Net counts the epoch as done at the end of its on_epoch_end
        if finished in tuple(self.snapshot_epochs):
            from batchgenerators.utilities.file_and_folder_operations import join
            self.save_checkpoint(join(self.output_folder, snapshot_name(finished)))
        super().on_epoch_end()
        for listener in list(EPOCH_LISTENERS):
            listener(self)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)
        from semi_nnunet.utilities.file_ops import atomic_path
        with atomic_path(filename) as tmp:
            super().save_checkpoint(tmp)
