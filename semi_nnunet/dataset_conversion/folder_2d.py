"""Your own 2D images -> semi-supervised nnU-Net raw dataset.

    from semi_nnunet.dataset_conversion.folder_2d import convert_2d_folder
    convert_2d_folder("my/images", "my/masks", dataset_id=600, dataset_name="MyData",
                      unlabeled_dir="my/unlabeled", test_images_dir="my/test/images", test_masks_dir="my/test/masks")

* Images: PNG, JPG/JPEG, BMP or TIF, written as PNG. Greyscale stays one channel; colour images become a 3-channel
  RGB PNG (channel_names R, G, B). A dataset is either greyscale or colour: a colour-type file whose three channels
  are identical counts as greyscale unless the dataset holds true colour images. Mixing greyscale and colour images
  is an error that names the file.
* Masks: matched to images by file stem, optionally with a suffix (``x.png`` <- ``x.png``, ``x_mask.png``,
  ``x_Annotation.png``, ``x_seg.png``, ...). Either binary 0/255 (-> 0/1) or class ids 0..K (kept). Masks may sit in
  the image folder itself (then files named like ``<image stem><suffix>`` are the masks).
* Image-level classes (optional): a CSV (columns ``filename`` or ``stem``, and ``class``) or a regex with a named
  group ``class`` applied to the file stem; written to dataset.json's ``class_names`` / ``image_classes``.
* Case ids are the file stems, sanitized (letters, digits, ``_``, ``-``) and made unique with a ``_2``... suffix.
* All inputs are read and checked before anything is written; problems raise
  :class:`~semi_nnunet.utilities.raw_dataset.DatasetError` naming the file and the fix.
"""
import csv
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from semi_nnunet.dataset_conversion.common import OutputFolder, unique_case_id, write_label_png, write_png
from semi_nnunet.utilities.file_ops import save_json_atomic
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, write_dataset_json

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIXES = ("_mask", "_masks", "-mask", "_annotation", "_seg", "-seg", "_segmentation", "_label", "_labels",
                 "_gt")
_JPEG = (".jpg", ".jpeg")


# --------------------------------------------------------------------------------------------------------- listing
def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _strip_mask_suffix(stem: str) -> Optional[str]:
    low = stem.lower()
    for suffix in MASK_SUFFIXES:
        if low.endswith(suffix) and len(stem) > len(suffix):
            return stem[:-len(suffix)]
    return None


def _image_files(folder: str, what: str) -> List[str]:
    if not os.path.isdir(folder):
        raise DatasetError(f"The {what} folder does not exist.", folder, "check the path.")
    files = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            files.append(path)
        else:
            print(f"note: ignoring {path} (not one of {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _by_stem(files: Sequence[str]) -> Dict[str, str]:
    result: Dict[str, str] = {}
    for path in files:
        stem = _stem(path)
        if stem in result:
            raise DatasetError(f"Two files share the stem '{stem}' ({os.path.basename(result[stem])} and "
                               f"{os.path.basename(path)}).", path,
                               "keep one of them (masks are matched to images by stem, so it must be unique).")
        result[stem] = path
    return result


def list_images(images_dir: str, masks_dir: Optional[str] = None, what: str = "images") -> Dict[str, str]:
    """``{stem: path}`` of the images in ``images_dir``. When ``masks_dir`` is the same folder, files named
    ``<another file's stem><mask suffix>`` are masks and are left out."""
    files = _image_files(images_dir, what)
    if masks_dir is not None and os.path.realpath(masks_dir) == os.path.realpath(images_dir):
        stems = {_stem(f) for f in files}
        files = [f for f in files if _strip_mask_suffix(_stem(f)) not in stems]
    images = _by_stem(files)
    if not images:
        raise DatasetError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found in the {what} folder.", images_dir,
                           "check the path.")
    return images


def match_masks(images: Mapping[str, str], masks_dir: str, what: str = "masks") -> Dict[str, str]:
    """``{image stem: mask path}``: a mask named like the image, or like it plus one of :data:`MASK_SUFFIXES`."""
    image_paths = {os.path.realpath(p) for p in images.values()}
    mask_files = [f for f in _image_files(masks_dir, what) if os.path.realpath(f) not in image_paths]
    candidates: Dict[str, List[str]] = {}
    for path in mask_files:
        stem = _stem(path)
        candidates.setdefault(stem, []).append(path)
        base = _strip_mask_suffix(stem)
        if base is not None:
            candidates.setdefault(base, []).append(path)
    result, used = {}, set()
    for stem, image in images.items():
        found = candidates.get(stem, [])
        if not found:
            raise DatasetError(f"Image '{os.path.basename(image)}' has no mask in {masks_dir}.", image,
                               f"add {stem}.png (or {stem}_mask.png) to the masks folder, or move the image to the "
                               f"unlabeled folder.")
        if len(found) > 1:
            raise DatasetError(f"Image '{os.path.basename(image)}' matches several masks: "
                               f"{[os.path.basename(f) for f in found]}.", found[1],
                               "keep one mask per image.")
        result[stem] = found[0]
        used.add(found[0])
    for path in mask_files:
        if path not in used:
            print(f"note: ignoring mask {path}: no image of that name")
    return result


# --------------------------------------------------------------------------------------------------------- reading
def _open(path: str):
    from PIL import Image
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # PIL raises many types for broken files
        raise DatasetError(f"Cannot read the file ({type(e).__name__}: {e}).", path,
                           "replace it with an intact copy, or remove it.") from None
    if getattr(img, "n_frames", 1) > 1:
        raise DatasetError(f"The file holds {img.n_frames} frames/pages; 2D images have one.", path,
                           "save each frame as its own image.")
    return img


def read_image(path: str) -> Tuple[np.ndarray, str]:
    """(array, kind): kind ``grey`` (2D uint8/uint16), ``rgb_grey`` (colour file with identical channels) or
    ``colour`` (H, W, 3 uint8). Alpha channels are dropped."""
    img = _open(path)
    mode = img.mode
    if mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.array(img.convert("L") if mode in ("1", "LA") else img)
        if arr.dtype != np.uint8:
            if arr.size and (arr.min() < 0 or arr.max() > 65535):
                raise DatasetError(f"Image values {arr.min()}..{arr.max()} do not fit 16 bits.", path,
                                   "save it as an 8- or 16-bit greyscale image.")
            arr = arr.astype(np.uint16)
        return arr, "grey"
    if mode == "F":
        raise DatasetError("Floating-point images are not supported.", path,
                           "save it as an 8- or 16-bit image (scaling the intensities as you see fit).")
    arr = np.array(img.convert("RGB"))
    if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        return arr, "rgb_grey"
    return arr, "colour"


def read_mask(path: str) -> np.ndarray:
    """The raw mask values as a 2D integer array (palette masks give their indices)."""
    img = _open(path)
    if img.mode in ("RGB", "RGBA", "LA", "CMYK", "YCbCr"):
        arr = np.array(img.convert("RGB") if img.mode != "LA" else img.convert("L"))
        if arr.ndim == 3:
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise DatasetError("The mask is colour-coded (its RGB channels differ).", path,
                                   "save masks as single-channel images of class ids 0..K (or 0/255 for binary).")
            arr = arr[..., 0]
    elif img.mode == "1":
        arr = np.array(img.convert("L"))
    else:
        arr = np.array(img)
    if arr.ndim != 2:
        raise DatasetError(f"The mask has shape {arr.shape}; expected a 2D image.", path,
                           "save masks as single-channel images.")
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DatasetError("The mask holds non-integer values.", path,
                               "save masks as integer class ids 0..K (or 0/255 for binary).")
        arr = arr.astype(np.int64)
    return arr


def mask_to_labels(arr: np.ndarray, path: str) -> np.ndarray:
    """0/255 binary -> 0/1; class ids 0..254 are kept; anything else is a :class:`DatasetError`."""
    values = set(np.unique(arr).tolist())
    if 255 in values and values <= {0, 255}:
        return (arr == 255).astype(np.uint8)
    if min(values) >= 0 and max(values) < 255:
        return arr.astype(np.uint8)
    jpeg = os.path.splitext(path)[1].lower() in _JPEG
    shown = sorted(values)[:8] + (["..."] if len(values) > 8 else [])
    raise DatasetError(f"Mask values {shown} are neither binary 0/255 nor class ids 0..K.", path,
                       ("JPEG compression changes mask values: save the masks losslessly as PNG. " if jpeg else "")
                       + "Use 0/255 for a binary mask, or 0, 1, ..., K for K classes.")


# --------------------------------------------------------------------------------------------------------- classes
def _normalize_label_names(label_names, max_id: int, where: str) -> Dict[str, int]:
    if label_names is None:
        if max_id <= 1:
            return {"background": 0, "foreground": 1}
        return {"background": 0, **{f"class_{i}": i for i in range(1, max_id + 1)}}
    if isinstance(label_names, (list, tuple)):
        labels = {str(n): i for i, n in enumerate(label_names)}
    else:
        items = list(dict(label_names).items())
        if all(isinstance(v, (int, np.integer)) for _, v in items):  # name -> id (nnU-Net's own form)
            labels = {str(k): int(v) for k, v in items}
        else:  # id -> name
            try:
                labels = {str(v): int(k) for k, v in items}
            except ValueError:
                raise DatasetError(f"label_names {label_names!r} is neither id->name nor name->id.", "label_names",
                                   "pass e.g. {0: 'background', 1: 'lesion'} or ['background', 'lesion'].") from None
    if sorted(labels.values()) != list(range(len(labels))):
        raise DatasetError(f"label_names gives ids {sorted(labels.values())}; nnU-Net needs 0, 1, ..., K.",
                           "label_names", "number the labels consecutively from 0 (background).")
    if max_id >= len(labels):
        raise DatasetError(f"The masks hold class id {max_id}, but label_names names only ids 0..{len(labels) - 1}.",
                           where, "add the missing label names, or fix the masks.")
    return labels


def _class_sort_key(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def read_class_csv(path: str) -> Dict[str, str]:
    """``{stem: class string}`` from a CSV with a ``filename`` (or ``stem``) column and a ``class`` column."""
    if not os.path.isfile(path):
        raise DatasetError("The class CSV does not exist.", path, "check the path.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    header = {(h or "").strip().lower(): h for h in (rows[0].keys() if rows else [])}
    key_col = next((header[k] for k in ("filename", "file", "stem", "image", "name", "case", "id") if k in header),
                   None)
    class_col = next((header[k] for k in ("class", "label", "category") if k in header), None)
    if not rows or key_col is None or class_col is None:
        raise DatasetError("The class CSV needs a header row with a 'filename' (or 'stem') column and a 'class' "
                           "column, and at least one row.", path,
                           "write it like:  filename,class  /  img001.png,benign")
    result: Dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        key, cls = (row.get(key_col) or "").strip(), (row.get(class_col) or "").strip()
        if not key:
            continue
        if not cls:
            raise DatasetError(f"Row {i} ({key}) has an empty class.", path, "fill in the class or drop the row.")
        name = os.path.basename(key)
        stem = _stem(name) if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else name
        if stem in result and result[stem] != cls:
            raise DatasetError(f"'{stem}' is listed with two classes ({result[stem]!r} and {cls!r}).", path,
                               f"keep one row for {stem} (row {i}).")
        result[stem] = cls
    return result


def _class_of_stems(stems: Sequence[str], class_csv: Optional[str], class_pattern: Optional[str]) -> Dict[str, str]:
    if class_csv is not None and class_pattern is not None:
        raise DatasetError("Both a class CSV and a class pattern were given.", class_csv,
                           "give only one of class_csv (--classes-csv) and class_pattern (--class-pattern).")
    if class_csv is not None:
        table = read_class_csv(class_csv)
        unused = sorted(set(table) - set(stems))
        if unused:
            print(f"note: {len(unused)} row(s) of {class_csv} name no image, e.g. {unused[:3]}")
        result = {s: table[s] for s in stems if s in table}
        if not result:
            raise DatasetError("No row of the class CSV names an image of this dataset.", class_csv,
                               "use the image file names (or stems) in the filename column.")
        return result
    try:
        regex = re.compile(class_pattern)
    except re.error as e:
        raise DatasetError(f"The class pattern is not a valid regular expression ({e}).", repr(class_pattern),
                           "fix it, e.g. '^(?P<class>[a-z]+)_\\d+$'.") from None
    if "class" not in regex.groupindex:
        raise DatasetError("The class pattern has no named group 'class'.", repr(class_pattern),
                           "mark the class part with (?P<class>...), e.g. '^(?P<class>[a-z]+)_\\d+$'.")
    result = {}
    for s in stems:
        m = regex.search(s)
        if m is not None and m.group("class"):
            result[s] = m.group("class")
    if not result:
        raise DatasetError("The class pattern matches no image file stem.", repr(class_pattern),
                           f"check it against a stem such as '{stems[0]}'." if stems else "check it.")
    return result


def _class_ids(classes: Dict[str, str], class_names, where: str) -> Tuple[Dict[int, str], Dict[str, int]]:
    """(class_names id->name, stem -> id)."""
    if class_names is None:
        names = sorted(set(classes.values()), key=_class_sort_key)
        id_of = {n: i for i, n in enumerate(names)}
        return {i: n for n, i in id_of.items()}, {s: id_of[c] for s, c in classes.items()}
    if isinstance(class_names, (list, tuple)):
        class_names = dict(enumerate(class_names))
    try:
        names = {int(k): str(v) for k, v in dict(class_names).items()}
    except ValueError:
        raise DatasetError(f"class_names {class_names!r} must map class ids (integers) to names.", "class_names",
                           "pass e.g. {0: 'benign', 1: 'malignant'}.") from None
    lookup = {v: k for k, v in names.items()}
    lookup.update({str(k): k for k in names})
    result = {}
    for stem, cls in classes.items():
        if cls not in lookup:
            raise DatasetError(f"Image '{stem}' has class {cls!r}, which is neither a name nor an id in class_names "
                               f"{names}.", where, "add it to class_names or fix the class.")
        result[stem] = lookup[cls]
    return names, result


# ------------------------------------------------------------------------------------------------------- converter
def convert_2d_folder(images_dir: str, masks_dir: str, dataset_id: int, dataset_name: str,
                      unlabeled_dir: Optional[str] = None, test_images_dir: Optional[str] = None,
                      test_masks_dir: Optional[str] = None, class_csv: Optional[str] = None,
                      class_pattern: Optional[str] = None,
                      class_names: Optional[Union[Mapping[int, str], Sequence[str]]] = None,
                      label_names: Optional[Union[Mapping, Sequence[str]]] = None,
                      output_root: Optional[str] = None, overwrite: bool = False, verbose: bool = True) -> str:
    """Convert folders of 2D images (+ masks) into ``{output_root}/Dataset{id:03d}_{dataset_name}``; returns it.

    ``images_dir``/``masks_dir``: the labeled images and their masks (imagesTr/labelsTr). ``unlabeled_dir``: images
    without masks (imagesUnlabeled). ``test_images_dir``/``test_masks_dir``: a held-out test set (imagesTs/labelsTs;
    masks optional). ``class_csv`` or ``class_pattern``: image-level classes (``class_names``: id -> name, default
    the sorted class strings as 0..n-1). ``label_names``: the mask classes, a list (index = id) or a dict (id -> name
    or name -> id); default ``background``/``foreground`` (binary) or ``class_k``. ``output_root`` defaults to
    ``$nnUNet_raw``. Everything is checked before anything is written.
    """
    if test_masks_dir is not None and test_images_dir is None:
        raise DatasetError("Test masks were given without test images.", test_masks_dir,
                           "also pass test_images_dir (--test-images).")
    # ---- list and match
    groups = [("labeled", list_images(images_dir, masks_dir, "images"), None)]
    groups[0] = ("labeled", groups[0][1], match_masks(groups[0][1], masks_dir))
    if unlabeled_dir is not None:
        groups.append(("unlabeled", list_images(unlabeled_dir, None, "unlabeled images"), None))
    if test_images_dir is not None:
        test = list_images(test_images_dir, test_masks_dir, "test images")
        groups.append(("test", test, match_masks(test, test_masks_dir, "test masks") if test_masks_dir else None))
    sources = [d for d in (images_dir, masks_dir, unlabeled_dir, test_images_dir, test_masks_dir) if d is not None]
    out = OutputFolder(output_root, dataset_id, dataset_name, sources, overwrite)

    # ---- read and check everything
    kinds: Dict[str, str] = {}  # image path -> kind
    shapes: Dict[str, Tuple[int, int]] = {}
    for _, images, _ in groups:
        for path in images.values():
            arr, kinds[path] = read_image(path)
            shapes[path] = arr.shape[:2]
    colour = [p for p, k in kinds.items() if k == "colour"]
    grey = [p for p, k in kinds.items() if k == "grey"]
    if colour and grey:
        raise DatasetError(f"The dataset mixes greyscale images ({len(grey)}, e.g. {os.path.basename(grey[0])}) and "
                           f"colour images ({len(colour)}, e.g. {os.path.basename(colour[0])}).",
                           grey[0] if len(grey) <= len(colour) else colour[0],
                           "convert all images to one type (all greyscale or all RGB) before converting.")
    rgb = bool(colour)
    max_label, mask_values = 0, {}
    for _, images, masks in groups:
        for stem, mask_path in (masks or {}).items():
            labels = mask_to_labels(read_mask(mask_path), mask_path)
            image_path = images[stem]
            if labels.shape != shapes[image_path]:
                raise DatasetError(f"Mask size {labels.shape[::-1]} (width x height) differs from its image's "
                                   f"{shapes[image_path][::-1]} ({os.path.basename(image_path)}).", mask_path,
                                   "use the mask that belongs to this image, or resize it to the image's size "
                                   "(nearest neighbour).")
            mask_values[mask_path] = set(np.unique(labels).tolist())
            max_label = max(max_label, max(mask_values[mask_path]))
    if label_names is None:
        seen = set().union(*mask_values.values()) if mask_values else {0}
        missing = sorted(set(range(max_label + 1)) - seen)
        if missing and max_label > 1:
            offender = next(p for p, v in mask_values.items() if max(v) > missing[0])
            raise DatasetError(f"The masks use class ids {sorted(seen)}; ids {missing} never occur, so these look "
                               f"like grey values rather than class ids.", offender,
                               "store class ids 0, 1, ..., K in the masks, or pass label_names (--label-names) "
                               "naming every id.")
    labels_json = _normalize_label_names(label_names, max_label, next(iter(mask_values), images_dir))

    # ---- case ids and classes
    taken: set = set()
    case_ids: Dict[Tuple[str, str], str] = {}
    for split, images, _ in groups:
        for stem in images:
            case_ids[(split, stem)] = unique_case_id(stem, taken)
            if verbose and case_ids[(split, stem)] != stem:
                print(f"note: {images[stem]} becomes case '{case_ids[(split, stem)]}'")
    image_classes, class_map = None, None
    class_of: Dict[str, str] = {}
    if class_csv is not None or class_pattern is not None:
        all_stems = sorted({stem for _, images, _ in groups for stem in images})
        class_of = _class_of_stems(all_stems, class_csv, class_pattern)
        class_map, stem_ids = _class_ids(class_of, class_names, class_csv or repr(class_pattern))
        image_classes = {case_ids[(split, stem)]: stem_ids[stem]
                         for split, images, _ in groups for stem in images if stem in stem_ids}
    elif class_names is not None:
        raise DatasetError("class_names was given without class_csv or class_pattern.", "class_names",
                           "also pass the classes (--classes-csv or --class-pattern).")

    # ---- write
    folders = {"labeled": ("imagesTr", "labelsTr"), "unlabeled": (UNLABELED_FOLDER, None),
               "test": ("imagesTs", "labelsTs")}
    info_cases, counts = {}, {"labeled": 0, "unlabeled": 0, "test": 0}
    with out:
        subs = ["imagesTr", "labelsTr", UNLABELED_FOLDER]
        for split, _, masks in groups:
            if split == "test":
                subs += ["imagesTs"] + (["labelsTs"] if masks is not None else [])
        for sub in subs:
            os.makedirs(os.path.join(out.staging, sub), exist_ok=True)
        for split, images, masks in groups:
            img_dir, lab_dir = folders[split]
            for stem, image_path in images.items():
                case = case_ids[(split, stem)]
                arr, kind = read_image(image_path)
                if kind == "rgb_grey" and not rgb:
                    arr = arr[..., 0]
                write_png(arr, out.path(img_dir, f"{case}_0000.png"))
                entry = {"source_image": os.path.abspath(image_path), "split": split}
                if masks is not None:
                    labels = mask_to_labels(read_mask(masks[stem]), masks[stem])
                    write_label_png(labels, out.path(lab_dir, case + ".png"))
                    entry["source_mask"] = os.path.abspath(masks[stem])
                if stem in class_of:
                    entry["class"] = class_of[stem]
                info_cases[case] = entry
                counts[split] += 1
        channels = {0: "R", 1: "G", 2: "B"} if rgb else {0: "image"}
        write_dataset_json(out.staging, channels, labels_json, counts["labeled"], ".png", counts["unlabeled"],
                           dataset_name, class_names=class_map, image_classes=image_classes,
                           **({"numTest": counts["test"]} if test_images_dir is not None else {}))
        save_json_atomic({
            "converter": "semi_nnunet.dataset_conversion.folder_2d.convert_2d_folder",
            "images_dir": os.path.abspath(images_dir), "masks_dir": os.path.abspath(masks_dir),
            "unlabeled_dir": unlabeled_dir and os.path.abspath(unlabeled_dir),
            "test_images_dir": test_images_dir and os.path.abspath(test_images_dir),
            "test_masks_dir": test_masks_dir and os.path.abspath(test_masks_dir),
            "class_csv": class_csv and os.path.abspath(class_csv), "class_pattern": class_pattern,
            "counts": counts, "cases": info_cases,
        }, out.path("conversion_info.json"))
    if verbose:
        print(f"{dataset_name}: {counts['labeled']} labeled, {counts['unlabeled']} unlabeled, {counts['test']} test "
              f"images ({'RGB' if rgb else 'greyscale'}) -> {out.final}")
    return out.final
