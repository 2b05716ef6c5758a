"""The unlabeled data loader: random patches of the preprocessed unlabeled cases, through nnU-Net's own loader.

:class:`UnlabeledDataset` opens only a case's image (``.b2nd``) and properties (``.pkl``), never a segmentation
file, and hands nnU-Net's ``nnUNetDataLoader`` an all-zero, zero-memory stand-in for the segmentation it expects.
Patches are drawn uniformly (no foreground oversampling: there is no foreground to know of).
"""
import os
from typing import List

import blosc2
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, load_pickle
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2


class UnlabeledDataset(nnUNetDatasetBlosc2):
    """Preprocessed unlabeled cases (``<data_identifier>_unlabeled``): images only."""

    def __init__(self, folder: str, identifiers: List[str] = None):
        super().__init__(folder, identifiers, None)

    def load_case(self, identifier):
        data = blosc2.open(urlpath=join(self.source_folder, identifier + ".b2nd"), mode="r",
                           dparams={"nthreads": 1}, **self.mmap_kwargs)
        properties = load_pickle(join(self.source_folder, identifier + ".pkl"))
        properties.setdefault("class_locations", {})
        # a read-only broadcast view: shape of one image channel, no memory, never a label
        seg = np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data.shape[1:]))
        return data, seg, None, properties


def unlabeled_identifiers(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        return []
    return UnlabeledDataset.get_identifiers(folder)
