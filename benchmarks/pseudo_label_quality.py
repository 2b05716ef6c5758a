"""Dice of a stage's pseudo-labels against the ground truth that a benchmark withheld.

A benchmark subset treats labeled cases of the source as unlabeled; their masks still exist in the source folder
that the converter read. This compares the pseudo-labels a staged trainer wrote (``<model>/pseudo_labels/stage_<k>/
fold_<f>``, nnU-Net's preprocessed ``<case>_seg.b2nd``) with those masks, cropped by the bounding box nnU-Net's
preprocessing recorded. Only for plans that do not resample (the target spacing equals the image's spacing, as in
Hippocampus 3d_fullres): a case whose shapes differ is reported and skipped.

    python benchmarks/pseudo_label_quality.py PSEUDO_LABEL_FOLDER CONVERSION_INFO_JSON [--masks DIR]

CONVERSION_INFO_JSON: the converter's ``conversion_info.json`` (its ``source_dir`` holds ``masks/<case>.nii.gz``
unless --masks says otherwise).
"""
import argparse
import ast
import glob
import json
import os
import pickle

import numpy as np


def main() -> None:
    import blosc2
    import SimpleITK as sitk

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pseudo_labels")
    parser.add_argument("conversion_info")
    parser.add_argument("--masks", default=None)
    args = parser.parse_args()
    with open(args.conversion_info) as f:
        info = json.load(f)
    cases = info["cases"] if isinstance(info["cases"], dict) else ast.literal_eval(info["cases"])
    masks = args.masks or os.path.join(info["source_dir"], "masks")
    per_split = {}
    for seg_file in sorted(glob.glob(os.path.join(args.pseudo_labels, "*_seg.b2nd"))):
        case = os.path.basename(seg_file)[:-len("_seg.b2nd")]
        mask_file = os.path.join(masks, case + ".nii.gz")
        if case not in cases or not os.path.isfile(mask_file):
            continue
        with open(os.path.join(args.pseudo_labels, case + ".pkl"), "rb") as f:
            bbox = pickle.load(f)["bbox_used_for_cropping"]
        seg = np.asarray(blosc2.open(seg_file)[:])[0]
        gt = sitk.GetArrayFromImage(sitk.ReadImage(mask_file))[tuple(slice(a, b) for a, b in bbox)]
        if gt.shape != seg.shape:
            print(f"{case}: shapes differ ({seg.shape} vs {gt.shape}; resampled plans are not supported), skipped")
            continue
        classes = [int(c) for c in np.unique(gt) if c > 0]
        dice = [2 * np.sum((seg == c) & (gt == c)) / max(np.sum(seg == c) + np.sum(gt == c), 1) for c in classes]
        per_split.setdefault(cases[case]["split"], []).append(dice)
    for split, rows in per_split.items():
        rows = np.array(rows)
        print(f"source split '{split}': {len(rows)} cases, pseudo-label Dice per class "
              f"{', '.join(f'{d:.4f}' for d in rows.mean(0))}, mean {rows.mean():.4f}")


if __name__ == "__main__":
    main()
