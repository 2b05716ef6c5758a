"""Loading checkpoints from places that might not be trusted: ``torch.load(weights_only=True)``, never a full unpickle.

A ``.pth`` file is a pickle, and a full unpickle runs any code the file names. nnU-Net's checkpoints (and ours, which
add state dicts and counters) hold only tensors, plain containers, strings, numbers, ``torch.device`` and numpy
scalars (nnU-Net logs ``np.float32`` Dice values), so they load with PyTorch's restricted unpickler once the numpy
scalar types are allowed (:data:`SAFE_GLOBALS`: numeric dtypes only, no object arrays). A file that names anything else
is refused with an error naming it, unless the user declares their checkpoints trusted with the environment variable
``SEMI_NNUNET_TRUST_CHECKPOINTS=1``. Truncated or corrupt files give an error naming the file instead of PyTorch's
zip-archive message. See documentation/reliability.md for which loads go through here and which (nnU-Net's own) do
not.
"""
import os
import pickle
from typing import Optional

import numpy as np

from semi_nnunet.utilities.errors import InputError

TRUST_ENV = "SEMI_NNUNET_TRUST_CHECKPOINTS"


class CheckpointError(InputError):
    """A checkpoint that cannot be read, is not safe to read, or does not belong where it was found."""


def _numpy_globals() -> list:
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    numeric = sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDG"}, key=lambda t: t.__name__)
    # the same function under numpy 1.x's module name, for checkpoints written with numpy < 2
    return [np.dtype, scalar, (scalar, "numpy.core.multiarray.scalar"), *numeric]


SAFE_GLOBALS = _numpy_globals()


def trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").lower() in ("1", "true", "yes")


def load_checkpoint_file(path: str, map_location="cpu", mmap: bool = False, fix: Optional[str] = None) -> dict:
    """``torch.load`` of ``path`` with the restricted unpickler. ``mmap``: tensors are not read until used (cheap
    checks of a checkpoint's metadata). ``fix``: what to tell the user when the file cannot be read."""
    import torch
    if not os.path.isfile(path):
        raise CheckpointError("The checkpoint does not exist.", path,
                              fix or "check the path, or train the model first.")
    fix = fix or "replace the file with an intact copy (e.g. copy it again, or retrain that fold)."
    try:
        if trusted():
            return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        raise CheckpointError(f"The checkpoint holds Python objects other than tensors and plain values "
                              f"({', '.join(unsafe) or str(e).splitlines()[0]}); it is not unpickled, since "
                              f"unpickling can run code.", path,
                              f"only if you trust the file, set {TRUST_ENV}=1 to load it in full.") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"The checkpoint cannot be read: it is truncated or not a PyTorch checkpoint "
                              f"({first}).", path, fix) from None


def _unsafe_globals(path: str) -> list:
    import torch
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # an old (non-zip) format or a broken file: the load's own message is used
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS if not isinstance(g, tuple)} | \
        {g[1] for g in SAFE_GLOBALS if isinstance(g, tuple)}
    return [n for n in names if n not in allowed]


def checkpoint_dataset(checkpoint: dict) -> Optional[str]:
    """The dataset the checkpoint's trainer was built for (nnU-Net's ``init_args``), if recorded."""
    plans = (checkpoint.get("init_args") or {}).get("plans") or {}
    return plans.get("dataset_name")
