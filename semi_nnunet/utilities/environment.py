"""Environment variables set for a while: any (a task's), or nnU-Net's three folders (nnU-Net reads them lazily from
the environment)."""
import contextlib
import os
from typing import Dict, Iterator, Optional

from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@contextlib.contextmanager
def environment(values: Dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then put back what was there."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def nnunet_paths(root: str, results: Optional[str] = None) -> Iterator[Dict[str, str]]:
    """nnU-Net's three folders inside ``root`` (``nnUNet_results`` at ``results`` when given) for the duration."""
    paths = {k: join(root, k) for k in NNUNET_PATH_VARIABLES}
    if results is not None:
        paths["nnUNet_results"] = results
    for v in paths.values():
        maybe_mkdir_p(v)
    with environment(paths):
        yield paths
