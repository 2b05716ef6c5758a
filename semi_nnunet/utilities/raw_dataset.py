"""The semi-supervised raw dataset format and its checks.

The format is nnU-Net v2's own raw layout plus one folder::

    DatasetXXX_Name/
        dataset.json        nnU-Net's keys + "numUnlabeled" (+ optional "class_names", "image_classes")
        imagesTr/           labeled images   CASE_0000.ext, CASE_0001.ext, ...
        labelsTr/           their labels     CASE.ext
        imagesTs/           optional test images (never used for training)
        imagesUnlabeled/    unlabeled images CASE_0000.ext, ... (no masks, dummy or otherwise)

Every check here raises :class:`DatasetError`, whose message names the offending file and says how to fix it, and all
checks run before anything is written.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json

from semi_nnunet.utilities.errors import InputError

UNLABELED_FOLDER = "imagesUnlabeled"
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class DatasetError(InputError):
    """Bad input in a raw dataset. The message names the file (or key) and the fix."""


@dataclass
class SemiDataset:
    """What :func:`check_semi_dataset` found: labeled and unlabeled cases, id -> list of channel files."""
    folder: str
    dataset_json: dict
    labeled: Dict[str, List[str]] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)
    unlabeled: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])


def supported_file_endings() -> List[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES
    return sorted({e for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings})


def load_dataset_json(raw_folder: str) -> dict:
    path = join(raw_folder, "dataset.json")
    if not isdir(raw_folder):
        raise DatasetError("The raw dataset folder does not exist.", raw_folder,
                           "convert your data first (see documentation/dataset_format.md) and check nnUNet_raw.")
    if not isfile(path):
        raise DatasetError("dataset.json is missing.", path,
                           "write it with semi_nnunet.utilities.raw_dataset.write_dataset_json or by hand "
                           "(documentation/dataset_format.md).")
    try:
        dataset_json = load_json(path)
    except ValueError as e:
        raise DatasetError(f"dataset.json is not valid JSON ({e}).", path, "fix the JSON syntax.") from None
    missing = [k for k in ("channel_names", "labels", "numTraining", "file_ending") if k not in dataset_json]
    if missing:
        raise DatasetError(f"dataset.json lacks the required key(s) {missing}.", path,
                           "add them; see documentation/dataset_format.md for an example.")
    values = label_values(dataset_json, path)
    if values != list(range(len(values))):
        raise DatasetError(f"The label values in dataset.json are {values}; nnU-Net needs them consecutive from 0 "
                           f"(0, 1, 2, ...).", path,
                           "renumber the labels in \"labels\" (and the values in the label files) to 0, 1, 2, ...")
    ending = dataset_json["file_ending"]
    if ending.lower() not in supported_file_endings():
        raise DatasetError(f"file_ending '{ending}' is not one nnU-Net can read.", path,
                           f"convert the images to one of {supported_file_endings()} (JPEG is lossy and not "
                           f"supported: convert it to PNG, e.g. with semi_nnUNet_convert_2d).")
    return dataset_json


def list_cases(folder: str, file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """Group ``folder``'s files into cases ``CASE_XXXX<file_ending>``; every case must have channels 0..n-1.

    Channel files are counted, not their colour components: an RGB PNG is one file ``CASE_0000.png`` whose three
    components :func:`read_header_check` counts against ``channel_names``.
    """
    cases: Dict[str, Dict[int, str]] = {}
    if not isdir(folder):
        return {}
    for name in sorted(os.listdir(folder)):
        path = join(folder, name)
        if name.startswith(".") or not isfile(path):
            continue
        if not name.endswith(file_ending):
            raise DatasetError(f"File with an unexpected ending (dataset.json says file_ending '{file_ending}').",
                               path, f"convert it to {file_ending} or remove it from {folder}.")
        m = _CHANNEL_RE.match(name[:-len(file_ending)])
        if m is None:
            raise DatasetError("File name lacks nnU-Net's 4-digit channel suffix.", path,
                               f"rename it to CASE_0000{file_ending} (channel 0), CASE_0001{file_ending} "
                               f"(channel 1), ...")
        cases.setdefault(m["case"], {})[int(m["channel"])] = path
    result = {}
    for case, channels in cases.items():
        if len(channels) > num_channels or sorted(channels) != list(range(len(channels))):
            raise DatasetError(f"Case '{case}' has channel files {sorted(channels)}; expected 0..{num_channels - 1}.",
                               channels[max(channels)],
                               f"give every case exactly the channels in dataset.json's channel_names "
                               f"({num_channels}), numbered from _0000.")
        result[case] = [channels[c] for c in sorted(channels)]
    return result


def label_values(dataset_json: dict, path: str = "dataset.json") -> List[int]:
    """The values a label file may hold: every label (regions: every value of a region) and the ignore label."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    try:
        lm = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get("regions_class_order"))
        values = sorted({int(v) for v in lm.all_labels} | ({int(lm.ignore_label)} if lm.has_ignore_label else set()))
    except (AssertionError, TypeError, ValueError, KeyError, AttributeError) as e:
        raise DatasetError(f"dataset.json's \"labels\" cannot be used ({type(e).__name__}: {e}).", path,
                           "give \"labels\" as {\"background\": 0, \"name\": 1, ...} (documentation/dataset_format.md)."
                           ) from None
    return values


def _read_information(case: str, f: str, what: str = "Image"):
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(f)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)
        raise DatasetError(f"{what} of case '{case}' cannot be read ({first}).", f,
                           "replace the file with an intact copy, or remove the case.") from None
    return reader


def read_header_check(case: str, files: List[str], num_channels: int) -> Tuple[tuple, tuple]:
    """Open each file's header (SimpleITK, no pixel data): readable, channel components add up, same grid.
    Returns the case's grid: (size, spacing)."""
    sizes, components, spacing = [], 0, None
    for f in files:
        reader = _read_information(case, f)
        sizes.append(tuple(reader.GetSize()))
        spacing = spacing or tuple(reader.GetSpacing())
        components += reader.GetNumberOfComponents()
    if components != num_channels:
        raise DatasetError(f"Case '{case}' has {components} channel(s); dataset.json's channel_names lists "
                           f"{num_channels}.", files[0],
                           "give the case the channels listed in channel_names (a colour image counts its colour "
                           "components), or fix channel_names.")
    if len(set(sizes)) > 1:
        raise DatasetError(f"The channels of case '{case}' have different sizes {sizes}.", files[-1],
                           "resample all channels of a case onto one grid.")
    return sizes[0], spacing


def label_header_check(case: str, label: str, grid: Tuple[tuple, tuple]) -> None:
    """The label's header: readable, one component, the image's size and spacing (nnU-Net's own tolerance)."""
    import numpy as np
    reader = _read_information(case, label, "The label")
    if reader.GetNumberOfComponents() != 1:
        raise DatasetError(f"The label of case '{case}' has {reader.GetNumberOfComponents()} components (a colour "
                           f"image?); a label map has one.", label,
                           "save the label as a single-channel image of integer label values.")
    size, spacing = tuple(reader.GetSize()), tuple(reader.GetSpacing())
    if size != grid[0]:
        raise DatasetError(f"The label of case '{case}' has size {size}, its image {grid[0]}.", label,
                           "give image and label the same grid (resample the label onto the image, or crop both "
                           "alike).")
    if not np.allclose(spacing, grid[1]):
        raise DatasetError(f"The label of case '{case}' has spacing {spacing}, its image {grid[1]}.", label,
                           "give image and label the same spacing (copy the image's header geometry to the label).")


def check_label_values(ds: "SemiDataset", num_threads: int = 1) -> None:
    """Read every label fully with nnU-Net's reader: readable, and only values that dataset.json's labels list."""
    import numpy as np
    from concurrent.futures import ThreadPoolExecutor
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    if not ds.labels:
        return
    json_path = join(ds.folder, "dataset.json")
    allowed = label_values(ds.dataset_json, json_path)
    first = next(iter(ds.labeled.values()))[0]
    rw = determine_reader_writer_from_dataset_json(ds.dataset_json, first, verbose=False)

    def values(item):
        case, label = item
        try:
            seg, _ = rw().read_seg(label)
        except Exception as e:  # the readers raise anything from AssertionError to OSError
            raise DatasetError(f"The label of case '{case}' cannot be read ({type(e).__name__}: {e}).", label,
                               "replace the file with an intact copy, or remove the case.") from None
        return case, label, np.unique(seg)

    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        for case, label, found in pool.map(values, sorted(ds.labels.items())):
            bad = [int(v) if float(v).is_integer() else float(v) for v in found if v not in allowed]
            if bad:
                raise DatasetError(f"The label of case '{case}' holds value(s) {bad[:10]} that dataset.json's "
                                   f"\"labels\" does not list (allowed: {allowed}).", label,
                                   f"fix the label file, or add the missing label(s) to \"labels\" in {json_path}.")


def read_full_check(case: str, files: List[str], reader_writer_class) -> None:
    """Read the pixels with nnU-Net's reader (what preprocessing does): catches truncated files, NaNs and blank
    (constant) images."""
    import numpy as np
    try:
        data, _ = reader_writer_class().read_images(files)
    except Exception as e:  # the readers raise anything from AssertionError to OSError
        raise DatasetError(f"Image of case '{case}' cannot be read ({type(e).__name__}: {e}).", files[0],
                           "replace the file with an intact copy, or remove the case.") from None
    if not np.all(np.isfinite(data)):
        raise DatasetError(f"Image of case '{case}' contains NaN or infinite values.", files[0],
                           "replace non-finite values (e.g. with the image minimum) before preprocessing.")
    for c, channel in enumerate(data):
        if channel.size and channel.min() == channel.max():
            raise DatasetError(f"Image of case '{case}' is constant (channel {c}: every pixel is "
                               f"{channel.flat[0].item()}); it carries no information.",
                               files[min(c, len(files) - 1)],
                               "remove the case, or replace the file if it should not be blank.")


def _check_unique_ids(labeled: Dict[str, List[str]], unlabeled: Dict[str, List[str]]) -> None:
    for case in sorted(set(labeled) & set(unlabeled)):
        raise DatasetError(f"Case id '{case}' is used by a labeled and an unlabeled case.", unlabeled[case][0],
                           f"rename the unlabeled case (ids must be unique; the labeled one is {labeled[case][0]}).")


def _check_classes(dataset_json: dict, path: str, known: set) -> None:
    class_names = dataset_json.get("class_names")
    image_classes = dataset_json.get("image_classes")
    if image_classes is None and class_names is None:
        return
    if image_classes is None or class_names is None:
        raise DatasetError("dataset.json has only one of 'class_names' and 'image_classes'.", path,
                           "give both (class_names: {\"0\": \"benign\", ...}, image_classes: {\"CASE\": 0, ...}) "
                           "or neither.")
    valid = {str(k) for k in class_names}
    for case, cls in image_classes.items():
        if case not in known:
            raise DatasetError(f"image_classes names case '{case}', which is not in imagesTr, imagesUnlabeled or "
                               f"imagesTs.", path, "remove the entry or fix the case id.")
        if str(cls) not in valid:
            raise DatasetError(f"image_classes gives case '{case}' class {cls!r}, not a key of class_names "
                               f"{sorted(valid)}.", path, "use one of the class_names keys.")


def check_semi_dataset(raw_folder: str, read_headers: bool = True, read_pixels: bool = False) -> SemiDataset:
    """Check a raw semi-supervised dataset and return its cases. Raises :class:`DatasetError` on bad input.

    ``read_headers`` opens the header of every image and label (cheap): channels, image/label grids. ``read_pixels``
    reads every image and label fully with nnU-Net's reader (what ``--verify_dataset_integrity`` asks for): NaNs,
    blank images, label values (:func:`check_label_values`, which plan_and_preprocess also runs whenever the
    labeled cases changed).
    """
    dataset_json = load_dataset_json(raw_folder)
    json_path = join(raw_folder, "dataset.json")
    ending, n_ch = dataset_json["file_ending"], len(dataset_json["channel_names"])
    ds = SemiDataset(raw_folder, dataset_json)

    if "dataset" in dataset_json:  # nnU-Net's explicit file list instead of imagesTr/labelsTr
        from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
        files = get_filenames_of_train_images_and_targets(raw_folder, dict(dataset_json))
        ds.labeled = {k: v["images"] for k, v in files.items()}
        ds.labels = {k: v["label"] for k, v in files.items()}
    else:
        ds.labeled = list_cases(join(raw_folder, "imagesTr"), ending, n_ch)
        ds.labels = {k: join(raw_folder, "labelsTr", k + ending) for k in ds.labeled}
        for case, label in ds.labels.items():
            if not isfile(label):
                raise DatasetError(f"Labeled case '{case}' has no label file.", label,
                                   f"add the label, or move the case's images to {UNLABELED_FOLDER}/ if it is "
                                   f"unlabeled.")
    if len(ds.labeled) != dataset_json["numTraining"]:
        raise DatasetError(f"numTraining is {dataset_json['numTraining']} but {len(ds.labeled)} labeled cases were "
                           f"found.", json_path, f"set \"numTraining\": {len(ds.labeled)}.")

    ds.unlabeled = list_cases(join(raw_folder, UNLABELED_FOLDER), ending, n_ch)
    _check_unique_ids(ds.labeled, ds.unlabeled)
    num_unlabeled = dataset_json.get("numUnlabeled")
    if num_unlabeled is None and ds.unlabeled:
        raise DatasetError(f"{UNLABELED_FOLDER}/ holds {len(ds.unlabeled)} cases but dataset.json has no "
                           f"'numUnlabeled'.", json_path, f"add \"numUnlabeled\": {len(ds.unlabeled)}.")
    if num_unlabeled is not None and num_unlabeled != len(ds.unlabeled):
        raise DatasetError(f"numUnlabeled is {num_unlabeled} but {join(raw_folder, UNLABELED_FOLDER)} holds "
                           f"{len(ds.unlabeled)} cases.", json_path, f"set \"numUnlabeled\": {len(ds.unlabeled)}.")

    test_ids = set(list_cases(join(raw_folder, "imagesTs"), ending, n_ch)) if isdir(join(raw_folder, "imagesTs")) \
        else set()
    _check_classes(dataset_json, json_path, set(ds.labeled) | set(ds.unlabeled) | test_ids)

    if read_headers:
        for case, files in ds.labeled.items():
            label_header_check(case, ds.labels[case], read_header_check(case, files, n_ch))
        for case, files in ds.unlabeled.items():
            read_header_check(case, files, n_ch)
    if read_pixels and (ds.labeled or ds.unlabeled):
        from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
        first = next(iter({**ds.labeled, **ds.unlabeled}.values()))[0]
        rw = determine_reader_writer_from_dataset_json(dataset_json, first, verbose=False)
        for case, files in {**ds.labeled, **ds.unlabeled}.items():
            read_full_check(case, files, rw)
        check_label_values(ds)
    return ds


def write_dataset_json(output_folder: str, channel_names: Dict, labels: Dict[str, int], num_training: int,
                       file_ending: str, num_unlabeled: int = 0, dataset_name: Optional[str] = None,
                       class_names: Optional[Dict] = None, image_classes: Optional[Dict[str, int]] = None,
                       **extra) -> dict:
    """Write a semi-supervised dataset.json (nnU-Net's keys plus ours), atomically. Returns the dict."""
    from semi_nnunet.utilities.file_ops import save_json_atomic
    content = {
        "channel_names": {str(k): v for k, v in channel_names.items()},
        "labels": dict(labels),
        "numTraining": int(num_training),
        "numUnlabeled": int(num_unlabeled),
        "file_ending": file_ending,
    }
    if dataset_name is not None:
        content["name"] = dataset_name
    if class_names is not None:
        content["class_names"] = {str(k): v for k, v in class_names.items()}
        content["image_classes"] = {k: int(v) for k, v in (image_classes or {}).items()}
    content.update(extra)
    save_json_atomic(content, join(output_folder, "dataset.json"))
    return content
