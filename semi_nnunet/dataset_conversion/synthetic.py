"""Tiny synthetic semi-supervised datasets (bright blobs on noise) for tests and smoke runs.

2D datasets are PNG, 3D datasets NIfTI (SimpleITK). Each image holds one or two bright ellipsoids on a noisy
background; the label marks them (1 = first blob, 2 = second blob when ``num_classes`` is 3). Unlabeled cases go to
``imagesUnlabeled/`` with no mask; test cases to ``imagesTs/`` + ``labelsTs/``.
"""
import os
from typing import Optional, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import join, maybe_mkdir_p

from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, write_dataset_json


def synthetic_case(shape: Tuple[int, ...], rng: np.random.Generator, num_classes: int = 2):
    """One image (float, ~0..255) and its label map, shape ``shape`` (2D or 3D)."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for cls in range(1, num_classes):
        centre = np.array([rng.uniform(0.3 * s, 0.7 * s) for s in shape])
        radii = np.array([rng.uniform(0.12 * s, 0.25 * s) for s in shape])
        inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1
        label[inside & (label == 0)] = cls
    image = rng.normal(60, 15, shape) + 120 * (label > 0) + 30 * (label == 2)
    return np.clip(image, 0, 255), label


def _write(array: np.ndarray, path: str, is_label: bool) -> None:
    if path.endswith(".png"):
        from PIL import Image
        Image.fromarray(array.astype(np.uint8)).save(path)
    else:
        import SimpleITK as sitk
        img = sitk.GetImageFromArray(array.astype(np.uint8 if is_label else np.float32))
        img.SetSpacing((1.0, 1.0, 1.5))
        sitk.WriteImage(img, path)


def make_synthetic_dataset(raw_root: str, dataset_id: int = 901, dim: int = 2, num_labeled: int = 8,
                           num_unlabeled: int = 6, num_test: int = 0, shape: Optional[Tuple[int, ...]] = None,
                           num_classes: int = 2, seed: int = 0, name: Optional[str] = None,
                           image_classes: bool = False) -> str:
    """Write ``Dataset{id}_{name}`` into ``raw_root`` and return its folder.

    ``image_classes=True`` adds ``class_names``/``image_classes`` (class 1 = "large" when the foreground covers more
    than 10 % of the image, else 0 = "small"), for methods with a classification head.
    """
    shape = shape or ((48, 48) if dim == 2 else (16, 24, 24))
    ending = ".png" if dim == 2 else ".nii.gz"
    name = name or f"Synthetic{dim}D"
    folder = join(raw_root, f"Dataset{dataset_id:03d}_{name}")
    for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER) + (("imagesTs", "labelsTs") if num_test else ()):
        maybe_mkdir_p(join(folder, sub))
    rng = np.random.default_rng(seed)
    classes = {}
    for prefix, count, img_dir, lab_dir in (("lab", num_labeled, "imagesTr", "labelsTr"),
                                            ("unl", num_unlabeled, UNLABELED_FOLDER, None),
                                            ("test", num_test, "imagesTs", "labelsTs")):
        for i in range(count):
            case = f"{prefix}{i:03d}"
            image, label = synthetic_case(shape, rng, num_classes)
            _write(image, join(folder, img_dir, f"{case}_0000{ending}"), False)
            if lab_dir is not None:
                _write(label, join(folder, lab_dir, case + ending), True)
            classes[case] = int((label > 0).mean() > 0.1)
    labels = {"background": 0, **{f"blob{c}": c for c in range(1, num_classes)}}
    extra = dict(class_names={0: "small", 1: "large"}, image_classes=classes) if image_classes else {}
    write_dataset_json(folder, {0: "synthetic"}, labels, num_labeled, ending, num_unlabeled, name, **extra)
    return folder


def set_nnunet_paths(root: str) -> dict:
    """Point nnU-Net's three folders into ``root`` (created) and return them; for scripts and the demo."""
    paths = {k: join(root, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for k, v in paths.items():
        maybe_mkdir_p(v)
        os.environ[k] = v
    return paths
