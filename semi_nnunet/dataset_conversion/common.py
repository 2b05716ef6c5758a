"""Helpers shared by the dataset converters.

* :func:`grouped_split` - the seeded, patient-grouped split into labeled / unlabeled / test cases.
* :func:`write_png`, :func:`write_label_png` - atomic PNG writing of greyscale/RGB images and uint8 label maps.
* :func:`target_shape`, :func:`resize_image`, :func:`resize_label` - downsampling.
* :class:`OutputFolder` - builds a dataset in a hidden staging folder next to its final place and moves it there only
  when everything was written, so a failed conversion never leaves a half-written ``DatasetXXX_Name``.

The split protocol (documented in ``documentation/dataset_conversion.md``):

1. Cases are grouped by patient. Patient ids are sorted, then shuffled with ``random.Random(seed)`` (Python's
   generator, stable across Python and numpy versions).
2. Patients are visited in that order and each goes, with all of its cases, to the first split it still fits into,
   in the order **test, labeled, unlabeled**. A patient that fits nowhere is left out (only possible when
   ``num_unlabeled`` is given). Filling the test set first keeps it fixed for a seed and ``num_test`` when the number
   of labeled cases changes.
3. ``num_unlabeled=None`` puts every remaining case into the unlabeled pool.
"""
import os
import random
import re
import shutil
import tempfile
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np

from semi_nnunet.utilities.file_ops import atomic_path, umask
from semi_nnunet.utilities.raw_dataset import DatasetError

SPLITS = ("labeled", "unlabeled", "test")
# a dataset name usable in DatasetXXX_Name
_DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")


# ----------------------------------------------------------------------------------------------------------- split
def grouped_split(case_to_patient: Dict[str, Hashable], num_labeled: int, num_unlabeled: Optional[int],
                  num_test: int, seed: int = 0, where: str = "the source data") -> Dict[str, List[str]]:
    """Split cases into ``{"labeled": [...], "unlabeled": [...], "test": [...]}`` (each sorted), patient-grouped.

    ``case_to_patient`` maps every case (any string key, e.g. a source file name) to its patient id. Counts are
    numbers of cases (images), not patients. Raises :class:`DatasetError` when the counts cannot be met exactly.
    """
    for name, value in (("num_labeled", num_labeled), ("num_test", num_test), ("num_unlabeled", num_unlabeled)):
        if value is not None and (int(value) != value or value < 0):
            raise DatasetError(f"{name} must be a non-negative integer, got {value!r}.", name,
                               f"pass a whole number >= 0 for {name}.")
    total = len(case_to_patient)
    wanted = num_labeled + num_test + (num_unlabeled or 0)
    if wanted > total:
        raise DatasetError(f"Asked for {num_labeled} labeled + {num_test} test"
                           + (f" + {num_unlabeled} unlabeled" if num_unlabeled is not None else "")
                           + f" = {wanted} cases, but only {total} are available.", where,
                           "lower --num-labeled/--num-test/--num-unlabeled, or add data.")
    groups: Dict[Hashable, List[str]] = {}
    for case in sorted(case_to_patient):
        groups.setdefault(case_to_patient[case], []).append(case)
    patients = sorted(groups, key=lambda p: str(p))
    random.Random(seed).shuffle(patients)

    target = {"test": num_test, "labeled": num_labeled,
              "unlabeled": total if num_unlabeled is None else num_unlabeled}
    result: Dict[str, List[str]] = {s: [] for s in SPLITS}
    for patient in patients:
        cases = groups[patient]
        for split in ("test", "labeled", "unlabeled"):
            if len(result[split]) + len(cases) <= target[split]:
                result[split].extend(cases)
                break
    for split in ("test", "labeled") + (("unlabeled",) if num_unlabeled is not None else ()):
        if len(result[split]) != target[split]:
            raise DatasetError(f"Could not fill the {split} split with exactly {target[split]} cases while keeping "
                               f"each patient's cases together (got {len(result[split])}).", where,
                               "change the requested counts slightly, or use another --seed.")
    return {s: sorted(v) for s, v in result.items()}


# ------------------------------------------------------------------------------------------------------ PNG writing
def choose_labeled(labeled_ids: Sequence[str], n: int, seed: int) -> List[str]:
    """The first ``n`` of one seeded permutation of the labeled ids: nested subsets for growing ``n`` (the
    label-efficiency benchmark's subsets, and the demo data's labeled cases)."""
    order = np.random.default_rng(seed).permutation(sorted(labeled_ids))
    return sorted(str(c) for c in order[:n])


def write_png(array: np.ndarray, path: str) -> None:
    """Write a greyscale (H, W) uint8/uint16 or RGB (H, W, 3) uint8 image as PNG, atomically."""
    from PIL import Image
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 3:
        if array.dtype != np.uint8:
            raise ValueError(f"RGB images must be uint8, got {array.dtype} for {path}")
        img = Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    elif array.ndim == 2 and array.dtype == np.uint8:
        img = Image.fromarray(np.ascontiguousarray(array), mode="L")
    elif array.ndim == 2 and array.dtype == np.uint16:
        img = Image.fromarray(np.ascontiguousarray(array))  # mode I;16 -> 16-bit greyscale PNG
    else:
        raise ValueError(f"cannot write an array of shape {array.shape} and dtype {array.dtype} as PNG ({path})")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def write_label_png(label: np.ndarray, path: str) -> None:
    """Write a 2D label map of class ids 0..255 as an 8-bit PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label maps must be 2D, got shape {label.shape} for {path}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must be in 0..255 for {path}")
    write_png(label.astype(np.uint8), path)


def read_png(path: str) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as img:
        return np.array(img)


# ------------------------------------------------------------------------------------------------------ resampling
def target_shape(shape: Sequence[int], downsample: float = 1.0, max_size: Optional[int] = None) -> Tuple[int, ...]:
    """Output (H, W) after scaling by ``downsample`` (<= 1 shrinks) and capping the longer side at ``max_size``."""
    if downsample <= 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")
    scale = float(downsample)
    if max_size is not None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        scale = min(scale, max_size / max(shape))
    if scale == 1.0:
        return tuple(int(s) for s in shape)
    return tuple(max(1, int(round(s * scale))) for s in shape)


def resize_image(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Anti-aliased (Gaussian pre-filter + bilinear) resize of a 2D greyscale or RGB image; keeps the dtype."""
    from skimage.transform import resize
    shape = tuple(int(s) for s in shape)
    if tuple(image.shape[:2]) == shape:
        return image.copy()
    out_shape = shape + tuple(image.shape[2:])
    downscaling = any(o < i for o, i in zip(shape, image.shape[:2]))
    out = resize(image.astype(np.float64), out_shape, order=1, mode="edge", anti_aliasing=downscaling,
                 preserve_range=True)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(image.dtype)


def _area_resize(plane: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Area-averaging resize of a float plane (PIL's BOX filter weights every source pixel by its covered area)."""
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
    return np.array(img.resize((int(shape[1]), int(shape[0])), resample=Image.BOX), dtype=np.float32)


def resize_label(label: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a 2D label map by area averaging: a binary map becomes 1 where >= 50 % of the area was foreground;
    a multi-class map takes, per pixel, the class covering most of the area (ties: lowest id). Returns uint8."""
    shape = tuple(int(s) for s in shape)
    label = np.asarray(label)
    if tuple(label.shape) == shape:
        return label.astype(np.uint8)
    classes = [int(c) for c in np.unique(label)]
    if set(classes) <= {0, 1}:
        fraction = _area_resize((label == 1).astype(np.float32), shape)
        return (fraction >= 0.5 - 1e-6).astype(np.uint8)
    fractions = np.stack([_area_resize((label == c).astype(np.float32), shape) for c in classes])
    return np.asarray(classes, dtype=np.uint8)[np.argmax(fractions, axis=0)]


# -------------------------------------------------------------------------------------------------- output folders
def dataset_folder_name(dataset_id: int, dataset_name: str) -> str:
    if isinstance(dataset_id, bool) or int(dataset_id) != dataset_id or not 1 <= int(dataset_id) <= 9999:
        raise DatasetError(f"Dataset id {dataset_id!r} is not a whole number between 1 and 9999.", "dataset_id",
                           "pass e.g. -d 501.")
    if not _DATASET_NAME_RE.match(dataset_name or ""):
        raise DatasetError(f"Dataset name {dataset_name!r} is not usable in a folder name.", "dataset_name",
                           "use letters, digits, '_' and '-' only, e.g. MyUltrasound.")
    return f"Dataset{int(dataset_id):03d}_{dataset_name}"


def resolve_output_root(output_root: Optional[str]) -> str:
    if output_root is not None:
        return os.path.abspath(str(output_root))
    from nnunetv2.paths import nnUNet_raw
    if not nnUNet_raw:
        raise DatasetError("No output folder: nnUNet_raw is not set and no output root was given.", "nnUNet_raw",
                           "export nnUNet_raw=/path/to/nnUNet_raw, or pass -o/--output-root.")
    return os.path.abspath(str(nnUNet_raw))


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class OutputFolder:
    """The folder of one dataset being converted: ``with OutputFolder(...) as out: ... out.path(...)``.

    Everything is written into a hidden staging folder in ``output_root``; on success it replaces the dataset folder
    (an existing one only with ``overwrite=True``), on error it is removed. Refuses to write into any source folder.
    """

    def __init__(self, output_root: Optional[str], dataset_id: int, dataset_name: str,
                 source_dirs: Sequence[Optional[str]] = (), overwrite: bool = False):
        self.name = dataset_folder_name(dataset_id, dataset_name)
        self.root = resolve_output_root(output_root)
        self.final = os.path.join(self.root, self.name)
        for src in source_dirs:
            if src is None:
                continue
            if _inside(self.final, src) or _inside(src, self.final):
                raise DatasetError("The output folder lies inside a source folder (or the other way round); the "
                                   "converters never write into source data.", self.final,
                                   f"choose an output root outside {src} (-o/--output-root or nnUNet_raw).")
        if os.path.isdir(self.root):
            prefix = f"Dataset{int(dataset_id):03d}_"
            clash = [d for d in sorted(os.listdir(self.root))
                     if d.startswith(prefix) and d != self.name and os.path.isdir(os.path.join(self.root, d))]
            if clash:
                raise DatasetError(f"Another dataset already uses id {int(dataset_id)}: {clash[0]}.",
                                   os.path.join(self.root, clash[0]),
                                   "choose another dataset id (-d), or remove that dataset.")
        if os.path.exists(self.final) and not overwrite:
            raise DatasetError("The dataset folder already exists.", self.final,
                               "remove it, choose another dataset id, or pass overwrite=True (--overwrite).")
        self.staging: Optional[str] = None

    def __enter__(self) -> "OutputFolder":
        os.makedirs(self.root, exist_ok=True)
        self.staging = tempfile.mkdtemp(prefix=f".tmp-{self.name}-", dir=self.root)
        return self

    def path(self, *parts: str) -> str:
        """Path inside the dataset being written (the staging folder until the conversion finishes)."""
        p = os.path.join(self.staging, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return False
        if os.path.exists(self.final):
            trash = tempfile.mkdtemp(prefix=f".old-{self.name}-", dir=self.root)
            os.replace(self.final, os.path.join(trash, self.name))
            os.replace(self.staging, self.final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(self.staging, self.final)
        os.chmod(self.final, 0o777 & ~umask())
        return False


def sanitize_case_id(stem: str) -> str:
    """A case id nnU-Net accepts: letters, digits, '_' and '-'; other characters become '_'."""
    case = re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_")
    return case or "case"


def unique_case_id(stem: str, taken: set) -> str:
    """:func:`sanitize_case_id`, made unique against ``taken`` with a ``_2``, ``_3``, ... suffix; adds it to taken."""
    base = sanitize_case_id(stem)
    case, n = base, 1
    while case in taken:
        n += 1
        case = f"{base}_{n}"
    taken.add(case)
    return case
