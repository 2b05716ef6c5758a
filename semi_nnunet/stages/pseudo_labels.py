"""Pseudo-labels for every preprocessed unlabeled case, predicted by trained fold model(s).

The prediction runs on the preprocessed unlabeled cases (nnU-Net's sliding window with Gaussian weighting; mirroring
off by default, as the Semi-CervixSeg paper used a single pass) and the hard labels (argmax) are stored in the same
preprocessed space, ready for the next stage's loader: ``<case>.b2nd`` (the image), ``<case>_seg.b2nd`` (the
pseudo-label), ``<case>.pkl`` (properties with nnU-Net's foreground locations of the pseudo-label). Each case is
written into a staging folder and renamed into place; ``provenance.json`` (stage, fold, model, checkpoint, date) is
written last and marks the folder complete, so an interrupted run resumes where it stopped.

The engine is ``semi_nnunet.inference.predict_api`` (the one behind ``semi_nnUNet_predict``): the folds' softmax
outputs are averaged in memory. With ``save_maps`` the ensemble's confidence (max probability) and entropy (nats) are
saved next to each pseudo-label as ``<case>_confidence.npy`` / ``<case>_entropy.npy`` (float16, preprocessed space;
nnU-Net's loaders list cases by ``.b2nd`` and ignore them).

With ``confidence_threshold`` (a staged trainer's ``pseudo_confidence_threshold``) every voxel whose ensemble
confidence is below it gets the *ignore value* instead of its argmax: the dataset's ignore label if it has one, else
one above its largest label; the stage trainer leaves those voxels out of its pseudo-label loss (nnU-Net's ignore-label
handling), so a stage learns only from voxels its teacher was sure of. ``provenance.json`` records the threshold,
the value and the fraction of voxels ignored.
"""
import datetime
import os
import shutil
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, maybe_mkdir_p
from tqdm import tqdm

from semi_nnunet.trainers.pseudo_label import ignore_value
from semi_nnunet.trainers.unlabeled_data import UnlabeledDataset, unlabeled_identifiers
from semi_nnunet.utilities.file_ops import save_json_atomic

PROVENANCE = "provenance.json"


def is_complete(folder: str, expected_cases: Sequence[str]) -> bool:
    if not isfile(join(folder, PROVENANCE)):
        return False
    return sorted(load_json(join(folder, PROVENANCE)).get("cases", [])) == sorted(expected_cases)


def predict_pseudo_labels(model_folder: str, folds: Sequence[Union[int, str]], unlabeled_folder: str,
                          output_folder: str, provenance: dict, checkpoint_name: str = "checkpoint_final.pth",
                          device: str = "cpu", use_mirroring: bool = False,
                          cases: Optional[List[str]] = None, save_maps: bool = False,
                          confidence_threshold: Optional[float] = None) -> str:
    """Predict hard pseudo-labels for the cases of ``unlabeled_folder`` with the ensemble of ``folds`` of
    ``model_folder`` (softmax outputs averaged) into ``output_folder``; voxels below ``confidence_threshold`` get
    :func:`ignore_value`. Returns ``output_folder``."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params, nnUNetDatasetBlosc2

    from semi_nnunet.inference.models import Member
    from semi_nnunet.inference.predict_api import fold_average, load_predictor
    cases = sorted(cases if cases is not None else unlabeled_identifiers(unlabeled_folder))
    if is_complete(output_folder, cases):
        return output_folder
    predictor = load_predictor(Member(model_folder, list(folds), checkpoint_name), torch.device(device),
                               use_mirroring)
    label_manager = predictor.label_manager
    ignore = ignore_value(label_manager) if confidence_threshold is not None else None
    ignored = []
    collect = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    patch = tuple(predictor.configuration_manager.patch_size)
    dataset = UnlabeledDataset(unlabeled_folder, cases)
    staging = join(os.path.dirname(output_folder.rstrip(os.sep)), ".staging_" + os.path.basename(output_folder))
    shutil.rmtree(staging, ignore_errors=True)
    maybe_mkdir_p(staging)
    maybe_mkdir_p(output_folder)
    done = set(unlabeled_identifiers(output_folder))
    for case in tqdm(cases, desc=f"Pseudo-labels ({os.path.basename(output_folder)})"):
        if case in done and isfile(join(output_folder, case + "_seg.b2nd")):
            continue
        data, _, _, properties = dataset.load_case(case)
        data = np.asarray(data[:], dtype=np.float32)
        probabilities = fold_average(predictor, torch.from_numpy(data))
        seg = np.asarray(label_manager.convert_probabilities_to_segmentation(probabilities))[None]
        if ignore is not None:
            unsure = confidence_and_entropy(probabilities)[0].numpy()[None] < confidence_threshold
            seg = np.where(unsure, ignore, seg)
            ignored.append(float(unsure.mean()))
        seg = seg.astype(np.int16 if seg.max() > 127 else np.int8)
        properties = {**properties, "class_locations": DefaultPreprocessor._sample_foreground_locations(seg, collect)}
        blocks, chunks = comp_blosc2_params(data.shape, patch, data.itemsize)
        blocks_seg, chunks_seg = comp_blosc2_params(seg.shape, patch, seg.itemsize)
        nnUNetDatasetBlosc2.save_case(data, seg, properties, join(staging, case), chunks=chunks, blocks=blocks,
                                      chunks_seg=chunks_seg, blocks_seg=blocks_seg)
        if save_maps:
            confidence, entropy = confidence_and_entropy(probabilities, label_manager.has_regions)
            np.save(join(staging, case + "_confidence.npy"), confidence.numpy().astype(np.float16))
            np.save(join(staging, case + "_entropy.npy"), entropy.numpy().astype(np.float16))
        for suffix in ("_confidence.npy", "_entropy.npy", "_seg.b2nd", ".pkl", ".b2nd")[0 if save_maps else 2:]:
            # the data file last: loaders list cases by it
            os.replace(join(staging, case + suffix), join(output_folder, case + suffix))
    shutil.rmtree(staging, ignore_errors=True)
    save_json_atomic({**provenance, "model_folder": model_folder, "folds": [str(f) for f in folds],
                      "checkpoint": checkpoint_name, "mirroring": use_mirroring, "average": "probabilities",
                      "maps": save_maps, "confidence_threshold": confidence_threshold, "ignore_value": ignore,
                      "ignored_fraction": float(np.mean(ignored)) if ignored else None,
                      "date": datetime.datetime.now().isoformat(timespec="seconds"), "cases": cases},
                     join(output_folder, PROVENANCE))
    return output_folder


def confidence_and_entropy(probabilities: torch.Tensor, regions: bool = False):
    """Per-voxel confidence (max probability) and entropy in nats of class probabilities (C, *spatial); for
    regions (independent sigmoids) the mean over regions of each region's binary confidence and entropy."""
    p = probabilities.float().clamp_min(1e-12)
    if regions:
        q = (1 - p).clamp_min(1e-12)
        return torch.maximum(p, q).mean(0), -(p * p.log() + q * q.log()).mean(0)
    return p.max(0).values, -(p * p.log()).sum(0)
