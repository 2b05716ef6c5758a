"""nnU-Net's three folders pointed somewhere else for a while (nnU-Net reads them lazily from the environment)."""
import contextlib
import os
from typing import Dict, Iterator, Optional

from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p

NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


@contextlib.contextmanager
def nnunet_paths(root: str, results: Optional[str] = None) -> Iterator[Dict[str, str]]:
    """nnU-Net's three folders inside ``root`` (``nnUNet_results`` at ``results`` when given) for the duration
    (nnU-Net reads them lazily from the environment)."""
    old = {k: os.environ.get(k) for k in NNUNET_PATH_VARIABLES}
    paths = {k: join(root, k) for k in NNUNET_PATH_VARIABLES}
    if results is not None:
        paths["nnUNet_results"] = results
    try:
        for k, v in paths.items():
            maybe_mkdir_p(v)
            os.environ[k] = v
        yield paths
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
