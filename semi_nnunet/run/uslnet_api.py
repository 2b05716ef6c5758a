"""``semi_nnUNet_run_uslnet`` as a Python function: :func:`run_uslnet` (the work is in :mod:`semi_nnunet.uslnet`)."""
from semi_nnunet.uslnet.cycles import MOCO_ENV, run_uslnet

__all__ = ["MOCO_ENV", "run_uslnet"]
