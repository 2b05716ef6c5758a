"""USL-Net's pseudo-label folders, in nnU-Net's preprocessed format, and the cases they are made from.

A cycle's folder holds, per unlabeled case, ``<case>.b2nd`` (the preprocessed image: a hard link to the unlabeled
folder's file where the file system allows, else a copy), ``<case>_seg.b2nd`` (the pseudo-label: 0 / 1 / 2 =
uncertain / -1 outside the nonzero region) and ``<case>.pkl`` (properties with nnU-Net's ``class_locations`` for a
label manager whose ignore label is the uncertain value, as nnU-Net's preprocessor writes them). Each case is written
into a staging folder and renamed into place (the image last: loaders list cases by it); ``<folder>.json`` next to
the folder (nnU-Net infers a folder's format from every file ending in it), with per-case statistics, is written last
and marks the folder complete, so an interrupted run resumes where it stopped.
"""
import datetime
import os
import shutil
from typing import Dict, Optional, Sequence, Tuple

import blosc2
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, load_pickle, write_pickle

from semi_nnunet.utilities.file_ops import save_json_atomic


def provenance_file(folder: str) -> str:
    return folder.rstrip(os.sep) + ".json"


def load_unlabeled_case(folder: str, case: str) -> Tuple[np.ndarray, np.ndarray, dict]:
    """``(data (C, 1, H, W) float32, nonzero (H, W) bool, properties)`` of a preprocessed unlabeled 2D case."""
    data = np.asarray(blosc2.open(join(folder, case + ".b2nd"), mode="r")[:], dtype=np.float32)
    seg_file = join(folder, case + "_seg.b2nd")
    if isfile(seg_file):
        nonzero = np.asarray(blosc2.open(seg_file, mode="r")[:])[0] >= 0
    else:
        nonzero = np.ones(data.shape[1:], dtype=bool)
    return data, nonzero.reshape(data.shape[-2:]), load_pickle(join(folder, case + ".pkl"))


def load_pseudo_label(folder: str, case: str) -> np.ndarray:
    """The (H, W) int8 pseudo-label of ``case``."""
    seg = np.asarray(blosc2.open(join(folder, case + "_seg.b2nd"), mode="r")[:])
    return seg.reshape(seg.shape[-2:])


def is_complete(folder: str, cases: Sequence[str]) -> bool:
    return isfile(provenance_file(folder)) and \
        sorted(load_json(provenance_file(folder)).get("cases", [])) == sorted(cases)


def provenance(folder: str) -> dict:
    return load_json(provenance_file(folder))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


class PseudoLabelWriter:
    """Writes the cases of one pseudo-label folder (see the module docstring)."""

    def __init__(self, folder: str, unlabeled_folder: str, label_manager, patch_size: Sequence[int]):
        self.folder, self.unlabeled_folder = folder, unlabeled_folder
        self.collect = list(label_manager.foreground_labels) + \
            ([[-1] + list(label_manager.all_labels)] if label_manager.has_ignore_label else [])
        self.patch = tuple(int(p) for p in patch_size)
        self.staging = join(os.path.dirname(folder.rstrip(os.sep)), ".staging_" + os.path.basename(folder))
        shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(self.staging)
        os.makedirs(folder, exist_ok=True)
        self.stats: Dict[str, dict] = {}

    def done(self, case: str) -> bool:
        return all(isfile(join(self.folder, case + s)) for s in (".b2nd", "_seg.b2nd", ".pkl"))

    def write(self, case: str, label: np.ndarray, properties: dict, stats: Optional[dict] = None) -> None:
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2
        seg = np.asarray(label, dtype=np.int8).reshape((1, 1) + label.shape[-2:])
        properties = {**properties,
                      "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, self.collect)}
        blocks, chunks = comp_blosc2_params(seg.shape, self.patch, seg.itemsize)
        truncated = join(self.staging, case)
        nnUNetDatasetBlosc2.save_seg(seg, truncated + "_seg", chunks_seg=chunks, blocks_seg=blocks)
        write_pickle(properties, truncated + ".pkl")
        _link_or_copy(join(self.unlabeled_folder, case + ".b2nd"), truncated + ".b2nd")
        for suffix in ("_seg.b2nd", ".pkl", ".b2nd"):  # the image last: loaders list cases by it
            os.replace(truncated + suffix, join(self.folder, case + suffix))
        if stats is not None:
            self.stats[case] = stats

    def finish(self, cases: Sequence[str], record: dict) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        save_json_atomic({**record, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                          "cases": sorted(cases), "stats": self.stats}, provenance_file(self.folder))
