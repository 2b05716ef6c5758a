"""HC18 (fetal head, 2D ultrasound) -> semi-supervised nnU-Net raw dataset.

Source: the HC18 Grand Challenge training set (van den Heuvel et al., PLoS ONE 13(8), 2018; CC BY 4.0):
``NNN_HC.png`` (patients with several images: ``NNN_2HC.png``, ``NNN_3HC.png``, ...), greyscale, about 800x540, each
with ``NNN_HC_Annotation.png``, the head outline drawn as a thin ellipse (0/255). The mask is the filled ellipse
(label 1 = fetal head). All images of one patient (same ``NNN``) land on one side of every split; unlabeled cases get
their image only.

    from semi_nnunet.dataset_conversion.hc18 import convert_hc18
    convert_hc18("/data/HC18/training_set", dataset_id=501, num_labeled=50, num_test=300, max_size=256)
"""
import os
import re
from typing import Dict, Optional, Tuple

import numpy as np

from semi_nnunet.dataset_conversion.common import (OutputFolder, grouped_split, read_png, resize_image, resize_label,
                                                   target_shape, write_label_png, write_png)
from semi_nnunet.utilities.file_ops import save_json_atomic
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, write_dataset_json

DEFAULT_DATASET_ID = 501
_IMAGE_RE = re.compile(r"^(?P<patient>\d+)_(?P<index>\d*)HC\.png$", re.IGNORECASE)
LABELS = {"background": 0, "head": 1}
CHANNELS = {0: "US"}


def find_hc18_source(source_dir: str) -> str:
    """The folder holding ``NNN_HC.png``: ``source_dir`` itself or its ``training_set`` subfolder."""
    source_dir = os.path.abspath(str(source_dir))
    if not os.path.isdir(source_dir):
        raise DatasetError("The HC18 source folder does not exist.", source_dir,
                           "pass the folder holding NNN_HC.png and NNN_HC_Annotation.png (HC18's training_set).")
    sub = os.path.join(source_dir, "training_set")
    if not any(_IMAGE_RE.match(f) for f in os.listdir(source_dir)) and os.path.isdir(sub):
        return sub
    return source_dir


def list_hc18_cases(source_dir: str, verbose: bool = True) -> Dict[str, dict]:
    """``{image file name: {"patient", "image", "annotation"}}`` for every image with an annotation.

    Images without an annotation and annotations without an image are skipped with a printed note.
    """
    folder = find_hc18_source(source_dir)
    files = set(os.listdir(folder))
    cases: Dict[str, dict] = {}
    for name in sorted(files):
        m = _IMAGE_RE.match(name)
        if m is None:
            continue
        annotation = name[:-4] + "_Annotation.png"
        if annotation not in files:
            if verbose:
                print(f"note: skipping {os.path.join(folder, name)}: it has no {annotation}")
            continue
        cases[name] = {"patient": m["patient"], "image": os.path.join(folder, name),
                       "annotation": os.path.join(folder, annotation)}
    for name in sorted(files):
        image = name[:-len("_Annotation.png")] + ".png"
        if name.endswith("_Annotation.png") and _IMAGE_RE.match(image) and image not in files and verbose:
            print(f"note: skipping {os.path.join(folder, name)}: its image {image} is missing")
    if not cases:
        raise DatasetError("No HC18 images (NNN_HC.png with NNN_HC_Annotation.png) found.", folder,
                           "pass HC18's training_set folder (or the folder containing it).")
    return cases


def fill_outline(outline: np.ndarray, where: str = "annotation") -> np.ndarray:
    """Filled mask (bool) of a closed outline drawn on a 2D image.

    ``scipy.ndimage.binary_fill_holes`` fills a closed outline. An ellipse cut by the image border is not closed
    (a few HC18 annotations: the head extends past the image edge): then the background component around the centre
    of the ellipse fitted to the outline is taken as the inside, and checked against that ellipse's area.
    """
    from scipy import ndimage
    outline = np.asarray(outline) > 0
    if outline.sum() < 5:
        raise DatasetError("The annotation holds no outline.", where, "replace the annotation or remove the case.")
    filled = ndimage.binary_fill_holes(outline)
    if filled.sum() > outline.sum():
        return filled
    ys, xs = np.nonzero(outline)
    fit = _fit_ellipse(np.stack([xs, ys], 1).astype(float))
    if fit is None:
        raise DatasetError("The annotation outline is open and no ellipse fits it.", where,
                           "fix the outline (close it) or remove the case.")
    xc, yc, a, b = fit
    cy, cx = int(round(yc)), int(round(xc))
    components, _ = ndimage.label(~outline)
    inside = 0 < cy < outline.shape[0] and 0 < cx < outline.shape[1] and components[cy, cx] > 0
    if inside:
        region = components == components[cy, cx]
        expected = np.pi * a * b
        if region.sum() <= 1.05 * expected:  # not the outside (the ellipse may extend past the image)
            return region | outline
    raise DatasetError("The annotation outline is open and cannot be filled.", where,
                       "close the outline (draw it as a closed curve) or remove the case.")


def _fit_ellipse(points: np.ndarray) -> Optional[Tuple[float, float, float, float]]:
    """(x centre, y centre, semi-axis a, semi-axis b) of the least-squares ellipse through ``points`` (x, y)."""
    from skimage.measure import EllipseModel
    if hasattr(EllipseModel, "from_estimate"):  # scikit-image >= 0.26
        model = EllipseModel.from_estimate(points)
        if not model:
            return None
        (xc, yc), (a, b) = model.center, model.axis_lengths
    else:
        model = EllipseModel()
        if not model.estimate(points):
            return None
        xc, yc, a, b, _ = model.params
    return float(xc), float(yc), float(a), float(b)


def hc18_mask(annotation_path: str) -> np.ndarray:
    """Filled head mask (uint8 0/1, full resolution) from an HC18 ``..._Annotation.png``."""
    return fill_outline(read_png(annotation_path), annotation_path).astype(np.uint8)


def load_hc18_pair(image_path: str, annotation_path: Optional[str], downsample: float = 1.0,
                   max_size: Optional[int] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read an HC18 image (and fill its mask at full resolution), then downsample both (mask: area + >= 0.5)."""
    image = read_png(image_path)
    if image.ndim == 3:  # a greyscale image stored as RGB(A)
        image = image[..., 0]
    if image.dtype != np.uint8:
        raise DatasetError(f"HC18 images are 8-bit greyscale; this one is {image.dtype}.", image_path,
                           "use the original HC18 files.")
    mask = None
    if annotation_path is not None:
        mask = hc18_mask(annotation_path)
        if mask.shape != image.shape:
            raise DatasetError(f"Annotation size {mask.shape[::-1]} differs from image size {image.shape[::-1]}.",
                               annotation_path, "use the annotation that belongs to this image.")
    shape = target_shape(image.shape, downsample, max_size)
    image = resize_image(image, shape)
    if mask is not None:
        mask = resize_label(mask, shape)
    return image, mask


def convert_hc18(source_dir: str, dataset_id: int = DEFAULT_DATASET_ID, num_labeled: int = 50,
                 num_unlabeled: Optional[int] = None, num_test: int = 300, seed: int = 0, downsample: float = 1.0,
                 max_size: Optional[int] = None, output_root: Optional[str] = None, dataset_name: str = "HC18",
                 overwrite: bool = False, verbose: bool = True) -> str:
    """Convert HC18's training set into ``{output_root}/Dataset{id:03d}_{dataset_name}``; returns that folder.

    ``num_labeled`` images go to imagesTr/labelsTr, ``num_test`` to imagesTs/labelsTs, ``num_unlabeled`` (``None``:
    all remaining) to imagesUnlabeled (images only), patient-grouped and seeded (see
    :func:`semi_nnunet.dataset_conversion.common.grouped_split`). ``downsample`` (scale factor, <= 1 shrinks) and
    ``max_size`` (longest side in pixels) shrink the images; masks are filled at full resolution first.
    ``output_root`` defaults to ``$nnUNet_raw``. Writes ``conversion_info.json`` (source file -> case id, patient,
    split) next to ``dataset.json``.
    """
    folder = find_hc18_source(source_dir)
    cases = list_hc18_cases(folder, verbose)
    out = OutputFolder(output_root, dataset_id, dataset_name, [folder], overwrite)
    split = grouped_split({k: v["patient"] for k, v in cases.items()}, num_labeled, num_unlabeled, num_test, seed,
                          where=folder)
    subfolders = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": (UNLABELED_FOLDER, None),
                  "test": ("imagesTs", "labelsTs")}
    info_cases = {}
    with out:
        for split_name in ("labeled", "unlabeled", "test"):
            img_dir, lab_dir = subfolders[split_name]
            for name in split[split_name]:
                src = cases[name]
                case_id = name[:-4]
                image, mask = load_hc18_pair(src["image"], src["annotation"] if lab_dir else None, downsample,
                                             max_size)
                write_png(image, out.path(img_dir, f"{case_id}_0000.png"))
                entry = {"source_image": os.path.basename(src["image"]), "patient": src["patient"],
                         "split": split_name, "size": [int(image.shape[1]), int(image.shape[0])]}
                if lab_dir is not None:
                    write_label_png(mask, out.path(lab_dir, f"{case_id}.png"))
                    entry["source_annotation"] = os.path.basename(src["annotation"])
                info_cases[case_id] = entry
        for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER) + (("imagesTs", "labelsTs") if split["test"] else ()):
            os.makedirs(os.path.join(out.staging, sub), exist_ok=True)
        write_dataset_json(out.staging, CHANNELS, LABELS, len(split["labeled"]), ".png", len(split["unlabeled"]),
                           dataset_name, numTest=len(split["test"]),
                           reference="van den Heuvel et al., PLoS ONE 13(8), 2018 (HC18 Grand Challenge)",
                           licence="CC BY 4.0")
        save_json_atomic({
            "converter": "semi_nnunet.dataset_conversion.hc18.convert_hc18",
            "source_dir": folder, "seed": seed, "num_labeled": num_labeled, "num_unlabeled": num_unlabeled,
            "num_test": num_test, "downsample": downsample, "max_size": max_size,
            "split_protocol": "patients (NNN) sorted, shuffled with random.Random(seed); each patient's images go "
                              "together to the first split with room, in the order test, labeled, unlabeled",
            "counts": {s: len(split[s]) for s in ("labeled", "unlabeled", "test")},
            "cases": info_cases,
        }, out.path("conversion_info.json"))
    if verbose:
        print(f"HC18: {len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, {len(split['test'])} "
              f"test images -> {out.final}")
    return out.final
