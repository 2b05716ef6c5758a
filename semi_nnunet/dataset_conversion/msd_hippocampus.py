"""Medical Segmentation Decathlon Task04 Hippocampus -> semi-supervised nnU-Net raw dataset (3D NIfTI).

Source layout: ``{images,masks}/hippocampus_XXX.nii.gz`` (MSD Task04's training crops; MSD's own ``imagesTr`` /
``labelsTr`` names work too). Mask labels: 0 background, 1 anterior, 2 posterior. Each case is its own patient.
Images keep their pixel type (float32 or uint8) and geometry; masks are written as uint8 with the same geometry.

    from semi_nnunet.dataset_conversion.msd_hippocampus import convert_msd_hippocampus
    convert_msd_hippocampus("/data/Hippocampus_MSD_Task04", dataset_id=504, num_labeled=20, num_test=60)
"""
import os
from typing import Dict, Optional

import numpy as np

from semi_nnunet.dataset_conversion.common import OutputFolder, grouped_split
from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, write_dataset_json

DEFAULT_DATASET_ID = 504
LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}
CHANNELS = {0: "MRI"}
ENDING = ".nii.gz"


def _pick(source_dir: str, names) -> Optional[str]:
    for n in names:
        if os.path.isdir(os.path.join(source_dir, n)):
            return os.path.join(source_dir, n)
    return None


def list_hippocampus_cases(source_dir: str, verbose: bool = True) -> Dict[str, dict]:
    """``{case id: {"image", "mask"}}`` for every image with a mask; unpaired files are skipped with a note."""
    source_dir = os.path.abspath(str(source_dir))
    if not os.path.isdir(source_dir):
        raise DatasetError("The Hippocampus source folder does not exist.", source_dir,
                           "pass the folder holding images/ and masks/ (hippocampus_XXX.nii.gz).")
    images_dir = _pick(source_dir, ("images", "imagesTr"))
    masks_dir = _pick(source_dir, ("masks", "labelsTr", "labels"))
    if images_dir is None or masks_dir is None:
        raise DatasetError("The source folder lacks an images/ or masks/ subfolder.", source_dir,
                           "pass the folder holding images/ and masks/ (or MSD's imagesTr/ and labelsTr/).")

    def scan(folder):
        return {f[:-len(ENDING)]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
                if f.endswith(ENDING) and not f.startswith((".", "._"))}

    images, masks = scan(images_dir), scan(masks_dir)
    # MSD's imagesTr names images hippocampus_XXX_0000.nii.gz; accept both
    images = {(k[:-5] if k.endswith("_0000") and k[:-5] not in images else k): v for k, v in images.items()}
    cases = {}
    for case in sorted(set(images) | set(masks)):
        if case not in masks:
            if verbose:
                print(f"note: skipping {images[case]}: no mask in {masks_dir}")
            continue
        if case not in images:
            if verbose:
                print(f"note: skipping {masks[case]}: no image in {images_dir}")
            continue
        cases[case] = {"image": images[case], "mask": masks[case]}
    if not cases:
        raise DatasetError(f"No image/mask pairs (*{ENDING}) found.", source_dir,
                           "pass the folder holding images/ and masks/ with matching hippocampus_XXX.nii.gz files.")
    return cases


def _read_pair(image_path: str, mask_path: str):
    """Read and check one pair: 3D scalar image, mask on the same grid with values in 0..2."""
    import SimpleITK as sitk
    try:
        image = sitk.ReadImage(image_path)
    except RuntimeError as e:
        raise DatasetError(f"Cannot read the image ({str(e).strip().splitlines()[-1]}).", image_path,
                           "replace the file with an intact copy, or remove the case.") from None
    try:
        mask = sitk.ReadImage(mask_path)
    except RuntimeError as e:
        raise DatasetError(f"Cannot read the mask ({str(e).strip().splitlines()[-1]}).", mask_path,
                           "replace the file with an intact copy, or remove the case.") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DatasetError(f"Expected a 3D single-channel image, got {image.GetDimension()}D with "
                           f"{image.GetNumberOfComponentsPerPixel()} component(s).", image_path,
                           "use the MSD Task04 Hippocampus images.")
    same_grid = (image.GetSize() == mask.GetSize()
                 and np.allclose(image.GetSpacing(), mask.GetSpacing(), atol=1e-4)
                 and np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-3)
                 and np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-4))
    if not same_grid:
        raise DatasetError(f"The mask's grid (size {mask.GetSize()}, spacing {mask.GetSpacing()}) differs from the "
                           f"image's (size {image.GetSize()}, spacing {image.GetSpacing()}).", mask_path,
                           "use the mask that belongs to this image, or remove the case.")
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    bad = [v for v in values.tolist() if v not in LABELS.values()]
    if bad:
        raise DatasetError(f"The mask holds values {bad} outside the labels {sorted(LABELS.values())}.", mask_path,
                           "use the original MSD masks (0 background, 1 anterior, 2 posterior).")
    if mask.GetPixelID() != sitk.sitkUInt8:
        mask = sitk.Cast(mask, sitk.sitkUInt8)  # Cast keeps origin, spacing and direction
    return image, mask


def _write(img, path: str) -> None:
    import SimpleITK as sitk
    with atomic_path(path) as tmp:  # tmp ends in the target's name, so SimpleITK picks the NIfTI writer
        sitk.WriteImage(img, tmp, True)


def convert_msd_hippocampus(source_dir: str, dataset_id: int = DEFAULT_DATASET_ID, num_labeled: int = 20,
                            num_unlabeled: Optional[int] = None, num_test: int = 60, seed: int = 0,
                            output_root: Optional[str] = None, dataset_name: str = "Hippocampus",
                            overwrite: bool = False, verbose: bool = True) -> str:
    """Convert MSD Task04 Hippocampus into ``{output_root}/Dataset{id:03d}_{dataset_name}``; returns that folder.

    ``num_labeled`` cases go to imagesTr/labelsTr, ``num_test`` to imagesTs/labelsTs, ``num_unlabeled`` (``None``:
    all remaining) to imagesUnlabeled (images only); seeded, one patient per case (see
    :func:`semi_nnunet.dataset_conversion.common.grouped_split`). Writes ``conversion_info.json``.
    """
    source_dir = os.path.abspath(str(source_dir))
    cases = list_hippocampus_cases(source_dir, verbose)
    out = OutputFolder(output_root, dataset_id, dataset_name, [source_dir], overwrite)
    split = grouped_split({c: c for c in cases}, num_labeled, num_unlabeled, num_test, seed, where=source_dir)
    subfolders = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": (UNLABELED_FOLDER, None),
                  "test": ("imagesTs", "labelsTs")}
    info_cases = {}
    with out:
        for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER) + (("imagesTs", "labelsTs") if split["test"] else ()):
            os.makedirs(os.path.join(out.staging, sub), exist_ok=True)
        for split_name in ("labeled", "unlabeled", "test"):
            img_dir, lab_dir = subfolders[split_name]
            for case in split[split_name]:
                src = cases[case]
                image, mask = _read_pair(src["image"], src["mask"])
                _write(image, out.path(img_dir, f"{case}_0000{ENDING}"))
                entry = {"source_image": os.path.relpath(src["image"], source_dir), "patient": case,
                         "split": split_name, "size": list(image.GetSize())}
                if lab_dir is not None:
                    _write(mask, out.path(lab_dir, case + ENDING))
                    entry["source_mask"] = os.path.relpath(src["mask"], source_dir)
                info_cases[case] = entry
        write_dataset_json(out.staging, CHANNELS, LABELS, len(split["labeled"]), ENDING, len(split["unlabeled"]),
                           dataset_name, numTest=len(split["test"]), tensorImageSize="3D",
                           reference="Medical Segmentation Decathlon Task04 (Simpson et al., arXiv:1902.09063; "
                                     "Antonelli et al., Nat. Commun. 2022)",
                           licence="CC BY-SA 4.0")
        save_json_atomic({
            "converter": "semi_nnunet.dataset_conversion.msd_hippocampus.convert_msd_hippocampus",
            "source_dir": source_dir, "seed": seed, "num_labeled": num_labeled, "num_unlabeled": num_unlabeled,
            "num_test": num_test,
            "split_protocol": "cases sorted, shuffled with random.Random(seed); each case (its own patient) goes to "
                              "the first split with room, in the order test, labeled, unlabeled",
            "counts": {s: len(split[s]) for s in ("labeled", "unlabeled", "test")},
            "cases": info_cases,
        }, out.path("conversion_info.json"))
    if verbose:
        print(f"Hippocampus: {len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, "
              f"{len(split['test'])} test cases -> {out.final}")
    return out.final
