"""Tiny synthetic source datasets for the converter tests (never real data)."""
import os

import numpy as np
import pytest
from PIL import Image


def _snapshot(folder):
    """{relative path: (size, mtime_ns)} of everything under folder: to prove a converter left its source alone."""
    result = {}
    for root, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            st = os.stat(p)
            result[os.path.relpath(p, folder)] = (st.st_size, st.st_mtime_ns)
    return result


def _all_files(folder):
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


@pytest.fixture
def snapshot():
    """snapshot(folder) -> {relative path: (size, mtime)}."""
    return _snapshot


@pytest.fixture
def all_files():
    """all_files(folder) -> sorted relative paths of every file under folder."""
    return _all_files


# ------------------------------------------------------------------------------------------------------------ HC18
HC18_W, HC18_H = 64, 48
# patient -> number of images; 12 patients, 17 images
HC18_PATIENTS = {f"{p:03d}": n for p, n in zip(range(12), (1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 2, 1))}
CUT_CASE = "011_HC.png"  # its ellipse runs past the top edge: the outline is open there


def _hc18_name(patient, k):
    return f"{patient}_{'' if k == 1 else k}HC.png"


def make_hc18_source(root):
    """HC18-style folder: NNN_HC.png, NNN_2HC.png, ... with NNN_..._Annotation.png ellipse outlines (0/255).

    Returns (folder, {image name: (centre row, centre col, row radius, col radius)}).
    """
    from skimage.draw import ellipse_perimeter
    folder = os.path.join(root, "training_set")
    os.makedirs(folder)
    rng = np.random.default_rng(42)
    ellipses = {}
    for patient, n in HC18_PATIENTS.items():
        for k in range(1, n + 1):
            name = _hc18_name(patient, k)
            if name == CUT_CASE:
                r, c, rr_, cr_ = 6, 32, 16, 20
            else:
                r, c = int(rng.integers(20, 28)), int(rng.integers(26, 38))
                rr_, cr_ = int(rng.integers(10, 15)), int(rng.integers(12, 20))
            ellipses[name] = (r, c, rr_, cr_)
            outline = np.zeros((HC18_H, HC18_W), np.uint8)
            rr, cc = ellipse_perimeter(r, c, rr_, cr_, shape=outline.shape)
            outline[rr, cc] = 255
            yy, xx = np.mgrid[:HC18_H, :HC18_W]
            inside = ((yy - r) / rr_) ** 2 + ((xx - c) / cr_) ** 2 <= 1
            image = np.clip(rng.normal(60, 10, outline.shape) + 80 * inside, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(folder, name))
            Image.fromarray(outline).save(os.path.join(folder, name[:-4] + "_Annotation.png"))
    # an image without annotation and an annotation without image: skipped with a note
    Image.fromarray(np.zeros((HC18_H, HC18_W), np.uint8)).save(os.path.join(folder, "900_HC.png"))
    Image.fromarray(np.zeros((HC18_H, HC18_W), np.uint8)).save(os.path.join(folder, "901_HC_Annotation.png"))
    return folder, ellipses


@pytest.fixture(scope="session")
def hc18_source(tmp_path_factory):
    return make_hc18_source(str(tmp_path_factory.mktemp("hc18_src")))


# ----------------------------------------------------------------------------------------------------- Hippocampus
def make_hippocampus_source(root, n=10):
    """{images,masks}/hippocampus_XXX.nii.gz, 16x16x12 (x, y, z), labels 0..2, float32 and uint8 images,
    varied geometry; plus one image without mask and one mask without image."""
    import SimpleITK as sitk
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub))
    geometry = {}
    for i in range(n):
        case = f"hippocampus_{i + 1:03d}"
        arr_mask = np.zeros((12, 16, 16), np.uint8)  # numpy z, y, x
        arr_mask[3:9, 4:12, 3:8] = 1
        arr_mask[3:9, 4:12, 8:13] = 2
        image = rng.normal(100, 20, arr_mask.shape) + 50 * arr_mask
        image = image.astype(np.float32) if i % 3 else np.clip(image, 0, 255).astype(np.uint8)
        spacing = (1.0, 1.0 + 0.1 * i, 1.5)
        origin = (float(i), -2.0 * i, 3.5)
        direction = (1, 0, 0, 0, 1, 0, 0, 0, 1) if i % 2 else (-1, 0, 0, 0, -1, 0, 0, 0, 1)
        for arr, sub in ((image, "images"), (arr_mask.astype(np.int16) if i == 4 else arr_mask, "masks")):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(spacing)
            img.SetOrigin(origin)
            img.SetDirection([float(d) for d in direction])
            sitk.WriteImage(img, os.path.join(root, sub, case + ".nii.gz"))
        geometry[case] = (spacing, origin, direction, image.dtype)
    extra = sitk.GetImageFromArray(np.zeros((12, 16, 16), np.float32))
    sitk.WriteImage(extra, os.path.join(root, "images", "hippocampus_118.nii.gz"))
    sitk.WriteImage(sitk.Cast(extra, sitk.sitkUInt8), os.path.join(root, "masks", "hippocampus_281.nii.gz"))
    return root, geometry


@pytest.fixture(scope="session")
def hippocampus_source(tmp_path_factory):
    return make_hippocampus_source(str(tmp_path_factory.mktemp("hippo_src")))


# --------------------------------------------------------------------------------------------------------- 2D folder
def ellipse_mask(h, w, rng, classes=1):
    yy, xx = np.mgrid[:h, :w]
    mask = np.zeros((h, w), np.uint8)
    for cls in range(1, classes + 1):
        r, c = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
        mask[((yy - r) / (h / 6)) ** 2 + ((xx - c) / (w / 6)) ** 2 <= 1] = cls
    return mask


def save_image(path, mask, rng, rgb=False):
    grey = np.clip(rng.normal(70, 10, mask.shape) + 60 * (mask > 0), 0, 255).astype(np.uint8)
    arr = np.stack([grey, (grey * 0.5).astype(np.uint8), 255 - grey], -1) if rgb else grey
    Image.fromarray(arr).save(path)


def _make_2d_folder(root, n_labeled=6, n_unlabeled=4, n_test=3, h=24, w=32, rgb=False, classes=1,
                   mask_suffix="_mask", binary_255=True):
    """root/{images,masks,unlabeled,test_images,test_masks}; image stems like benign_001 / malignant_002.

    Images alternate PNG and JPG (JPG only for greyscale-safe content), masks are PNG ``<stem><mask_suffix>.png``.
    """
    rng = np.random.default_rng(7)
    dirs = {k: os.path.join(root, k) for k in ("images", "masks", "unlabeled", "test_images", "test_masks")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)

    def labeled(img_dir, mask_dir, count, offset):
        for i in range(count):
            stem = f"{'benign' if i % 2 else 'malignant'}_{offset + i:03d}"
            mask = ellipse_mask(h, w, rng, classes)
            ext = ".png" if (i % 2 or rgb) else ".jpg"
            save_image(os.path.join(img_dir, stem + ext), mask, rng, rgb)
            stored = mask * 255 if (binary_255 and classes == 1) else mask
            Image.fromarray(stored.astype(np.uint8)).save(os.path.join(mask_dir, stem + mask_suffix + ".png"))

    labeled(dirs["images"], dirs["masks"], n_labeled, 0)
    for i in range(n_unlabeled):
        stem = f"{'benign' if i % 2 else 'malignant'}_{100 + i:03d}"
        save_image(os.path.join(dirs["unlabeled"], stem + ".png"), ellipse_mask(h, w, rng, classes), rng, rgb)
    labeled(dirs["test_images"], dirs["test_masks"], n_test, 200)
    return dirs


@pytest.fixture
def make_2d_folder():
    """make_2d_folder(root, ...) -> {name: folder}; see _make_2d_folder."""
    return _make_2d_folder
