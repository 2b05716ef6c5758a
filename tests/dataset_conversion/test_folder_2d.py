"""Generic 2D folder converter on tiny PNG/JPG folders, and the shipped HC18 demo data."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import semi_nnunet
from semi_nnunet.dataset_conversion.common import choose_labeled
from semi_nnunet.dataset_conversion.folder_2d import convert_2d_folder
from semi_nnunet.run.conversion_entrypoints import convert_2d_folder_entry
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, check_semi_dataset


def _json(folder, name="dataset.json"):
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


def _read(path):
    return np.array(Image.open(path))


def _convert(dirs, out, dataset_id=600, name="Folder", **kw):
    return convert_2d_folder(dirs["images"], dirs["masks"], dataset_id, name, unlabeled_dir=dirs["unlabeled"],
                             test_images_dir=dirs["test_images"], test_masks_dir=dirs["test_masks"],
                             output_root=str(out), verbose=False, **kw)


@pytest.fixture
def grey_dirs(tmp_path, make_2d_folder):
    return make_2d_folder(str(tmp_path / "src"))


def test_greyscale_binary(grey_dirs, tmp_path, all_files, snapshot):
    before = snapshot(str(tmp_path / "src"))
    folder = _convert(grey_dirs, tmp_path / "out")
    assert snapshot(str(tmp_path / "src")) == before
    ds = check_semi_dataset(folder, read_pixels=True)
    assert len(ds.labeled) == 6 and len(ds.unlabeled) == 4
    dj = _json(folder)
    assert dj["channel_names"] == {"0": "image"} and dj["labels"] == {"background": 0, "foreground": 1}
    assert dj["numTraining"] == 6 and dj["numUnlabeled"] == 4 and dj["numTest"] == 3
    assert "class_names" not in dj
    for sub in ("labelsTr", "labelsTs"):
        for f in os.listdir(os.path.join(folder, sub)):
            mask = _read(os.path.join(folder, sub, f))
            assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
            image = _read(os.path.join(folder, sub.replace("labels", "images"), f[:-4] + "_0000.png"))
            assert image.ndim == 2 and image.shape == mask.shape == (24, 32)
    # the JPG images became PNG; case ids are the stems
    assert "malignant_000_0000.png" in os.listdir(os.path.join(folder, "imagesTr"))
    unlabeled = {c for c, e in _json(folder, "conversion_info.json")["cases"].items() if e["split"] == "unlabeled"}
    assert len(unlabeled) == 4
    for rel in all_files(folder):
        if any(os.path.basename(rel).startswith(c) for c in unlabeled):
            assert rel.startswith(UNLABELED_FOLDER + os.sep)
    assert len(os.listdir(os.path.join(folder, "labelsTs"))) == 3


def test_class_ids_kept(tmp_path, make_2d_folder):
    dirs = make_2d_folder(str(tmp_path / "src"), classes=2, mask_suffix="_seg", n_test=0)
    folder = convert_2d_folder(dirs["images"], dirs["masks"], 601, "Multi", unlabeled_dir=dirs["unlabeled"],
                               label_names=["background", "liver", "tumour"], output_root=str(tmp_path / "out"),
                               verbose=False)
    assert _json(folder)["labels"] == {"background": 0, "liver": 1, "tumour": 2}
    values = set()
    for f in os.listdir(os.path.join(folder, "labelsTr")):
        values |= set(np.unique(_read(os.path.join(folder, "labelsTr", f))).tolist())
    assert values == {0, 1, 2}
    assert not os.path.exists(os.path.join(folder, "imagesTs"))
    check_semi_dataset(folder)
    default = convert_2d_folder(dirs["images"], dirs["masks"], 602, "Multi2", output_root=str(tmp_path / "out"),
                                verbose=False)
    assert _json(default)["labels"] == {"background": 0, "class_1": 1, "class_2": 2}


def test_rgb(tmp_path, make_2d_folder):
    dirs = make_2d_folder(str(tmp_path / "src"), rgb=True, n_unlabeled=2, n_test=1)
    folder = _convert(dirs, tmp_path / "out")
    dj = _json(folder)
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    check_semi_dataset(folder, read_pixels=True)
    img = _read(os.path.join(folder, "imagesTr", os.listdir(os.path.join(folder, "imagesTr"))[0]))
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8


def test_rgb_file_with_grey_content_counts_as_grey(grey_dirs, tmp_path):
    path = os.path.join(grey_dirs["unlabeled"], "benign_101.png")
    grey = _read(path)
    Image.fromarray(np.stack([grey] * 3, -1)).save(path)
    folder = _convert(grey_dirs, tmp_path / "out")
    assert _json(folder)["channel_names"] == {"0": "image"}
    assert _read(os.path.join(folder, UNLABELED_FOLDER, "benign_101_0000.png")).ndim == 2
    check_semi_dataset(folder, read_pixels=True)


def test_mixed_rgb_and_grey_is_an_error(grey_dirs, tmp_path):
    path = os.path.join(grey_dirs["unlabeled"], "malignant_100.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    with pytest.raises(DatasetError, match="mixes greyscale") as e:
        _convert(grey_dirs, tmp_path / "out")
    assert path in str(e.value)
    assert not os.path.exists(tmp_path / "out" / "Dataset600_Folder")


def test_missing_mask_is_an_error(grey_dirs, tmp_path):
    os.remove(os.path.join(grey_dirs["masks"], "benign_003_mask.png"))
    with pytest.raises(DatasetError, match="no mask") as e:
        _convert(grey_dirs, tmp_path / "out")
    assert "benign_003.png" in str(e.value)
    assert not os.path.exists(tmp_path / "out" / "Dataset600_Folder")


def test_size_mismatch_is_an_error(grey_dirs, tmp_path):
    path = os.path.join(grey_dirs["test_masks"], "benign_201_mask.png")
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(path)
    with pytest.raises(DatasetError, match="differs") as e:
        _convert(grey_dirs, tmp_path / "out")
    assert path in str(e.value)


def test_bad_mask_values_are_an_error(grey_dirs, tmp_path):
    path = os.path.join(grey_dirs["masks"], "malignant_002_mask.png")
    mask = _read(path)
    mask[0, 0] = 128
    Image.fromarray(mask).save(path)
    with pytest.raises(DatasetError, match="neither binary") as e:
        _convert(grey_dirs, tmp_path / "out")
    assert path in str(e.value)


def test_classes_from_csv(grey_dirs, tmp_path):
    csv_path = str(tmp_path / "classes.csv")
    stems = [os.path.splitext(f)[0] for d in ("images", "unlabeled", "test_images") for f in os.listdir(grey_dirs[d])]
    with open(csv_path, "w") as f:
        f.write("filename,class\n")
        for s in stems:
            f.write(f"{s}.png,{s.split('_')[0]}\n")
        f.write("not_an_image.png,benign\n")
    folder = _convert(grey_dirs, tmp_path / "out", class_csv=csv_path)
    dj = _json(folder)
    assert dj["class_names"] == {"0": "benign", "1": "malignant"}
    assert len(dj["image_classes"]) == 13
    assert dj["image_classes"]["benign_001"] == 0 and dj["image_classes"]["malignant_000"] == 1
    assert dj["image_classes"]["malignant_100"] == 1 and dj["image_classes"]["benign_201"] == 0
    check_semi_dataset(folder)


def test_classes_from_pattern_with_names(grey_dirs, tmp_path):
    folder = _convert(grey_dirs, tmp_path / "out", class_pattern=r"^(?P<class>benign|malignant)_",
                      class_names={0: "malignant", 1: "benign"})
    dj = _json(folder)
    assert dj["class_names"] == {"0": "malignant", "1": "benign"}
    assert dj["image_classes"]["benign_001"] == 1 and dj["image_classes"]["malignant_000"] == 0
    assert len(dj["image_classes"]) == 13
    with pytest.raises(DatasetError, match="named group"):
        _convert(grey_dirs, tmp_path / "out2", class_pattern=r"^(benign|malignant)_")
    with pytest.raises(DatasetError, match="neither a name nor an id"):
        _convert(grey_dirs, tmp_path / "out3", class_pattern=r"^(?P<class>[a-z]+)_", class_names=["benign"])


def test_masks_in_image_folder_and_id_collisions(tmp_path):
    src = tmp_path / "src"
    os.makedirs(src / "data")
    os.makedirs(src / "unl")
    rng = np.random.default_rng(1)
    for stem in ("scan 1", "scan-2"):
        mask = (rng.random((16, 16)) > 0.5).astype(np.uint8)
        Image.fromarray(mask * 60 + 50).save(src / "data" / f"{stem}.png")
        Image.fromarray(mask * 255).save(src / "data" / f"{stem}_Annotation.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(src / "unl" / "scan_1.bmp")  # collides with "scan 1"
    folder = convert_2d_folder(str(src / "data"), str(src / "data"), 603, "Same", unlabeled_dir=str(src / "unl"),
                               output_root=str(tmp_path / "out"), verbose=False)
    ds = check_semi_dataset(folder)
    assert sorted(ds.labeled) == ["scan-2", "scan_1"]
    assert sorted(ds.unlabeled) == ["scan_1_2"]


def test_entry_point(grey_dirs, tmp_path, capsys):
    convert_2d_folder_entry(["--images", grey_dirs["images"], "--masks", grey_dirs["masks"], "--unlabeled-dir",
                             grey_dirs["unlabeled"], "--test-images", grey_dirs["test_images"], "--test-masks",
                             grey_dirs["test_masks"], "--class-pattern", "^(?P<class>[a-z]+)_", "-d", "610",
                             "-n", "Cli", "-o", str(tmp_path / "out")])
    assert _json(os.path.join(tmp_path, "out", "Dataset610_Cli"))["class_names"] == {"0": "benign", "1": "malignant"}
    os.remove(os.path.join(grey_dirs["masks"], "benign_001_mask.png"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        convert_2d_folder_entry(["--images", grey_dirs["images"], "--masks", grey_dirs["masks"], "-d", "611",
                                 "-n", "Cli2", "-o", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "benign_001.png" in err and "Traceback" not in err


# --------------------------------------------------------------------------------------------------- demo data
DEMO = os.path.join(os.path.dirname(semi_nnunet.__file__), "demo_data", "HC18_demo")


def test_demo_data_complete():
    counts = {}
    for part in ("labeled", "test"):
        images = sorted(os.listdir(os.path.join(DEMO, part, "images")))
        masks = sorted(os.listdir(os.path.join(DEMO, part, "masks")))
        assert images == masks
        counts[part] = len(images)
        for f in images:
            image = _read(os.path.join(DEMO, part, "images", f))
            mask = _read(os.path.join(DEMO, part, "masks", f))
            assert image.dtype == mask.dtype == np.uint8 and image.ndim == 2
            assert image.shape == mask.shape and max(image.shape) == 64
            assert set(np.unique(mask).tolist()) == {0, 1}
    unlabeled = sorted(os.listdir(os.path.join(DEMO, "unlabeled")))
    counts["unlabeled"] = len(unlabeled)
    assert counts == {"labeled": 5, "unlabeled": 295, "test": 100}
    patients = {part: {f.split("_")[0] for f in os.listdir(os.path.join(DEMO, part, "images"))}
                for part in ("labeled", "test")}
    patients["unlabeled"] = {f.split("_")[0] for f in unlabeled}
    # no test patient in training; a labeled image's patient may have other images among the unlabeled ones (the
    # benchmark's subsets turn the pooled labeled images they do not choose into unlabeled images)
    assert not (patients["labeled"] & patients["test"]) and not (patients["test"] & patients["unlabeled"])
    # the benchmark's HC18 setting: its 5-label subset 0 of the pooled split, the other pooled labeled images unlabeled
    info = json.load(open(os.path.join(DEMO, "demo_info.json"), encoding="utf-8"))
    pool_labeled = [f[:-4] for f in info["pool"]["labeled"]]
    assert sorted(f[:-4] for f in info["splits"]["labeled"]) == choose_labeled(pool_labeled, 5, 0) == \
        sorted(f[:-4] for f in os.listdir(os.path.join(DEMO, "labeled", "images")))
    assert sorted(info["splits"]["unlabeled"]) == unlabeled == \
        sorted(set(info["pool"]["labeled"]) - set(info["splits"]["labeled"]) | set(info["pool"]["unlabeled"]))
    text = open(os.path.join(DEMO, "ATTRIBUTION.md"), encoding="utf-8").read()
    assert "CC BY 4.0" in text and "van den Heuvel" in text and "PLoS ONE" in text
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(DEMO) for f in fs)
    assert size < 3_000_000


def test_demo_data_converts(tmp_path):
    folder = convert_2d_folder(os.path.join(DEMO, "labeled", "images"), os.path.join(DEMO, "labeled", "masks"), 620,
                               "HC18Demo", unlabeled_dir=os.path.join(DEMO, "unlabeled"),
                               test_images_dir=os.path.join(DEMO, "test", "images"),
                               test_masks_dir=os.path.join(DEMO, "test", "masks"), label_names=["background", "head"],
                               output_root=str(tmp_path), verbose=False)
    ds = check_semi_dataset(folder, read_pixels=True)
    assert len(ds.labeled) == 5 and len(ds.unlabeled) == 295
    assert len(os.listdir(os.path.join(folder, "labelsTs"))) == 100
    shutil.rmtree(folder)
