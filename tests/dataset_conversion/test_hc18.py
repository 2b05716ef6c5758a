"""HC18 converter on a tiny synthetic HC18-style folder (12 patients, 17 images, 64x48)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from semi_nnunet.dataset_conversion.common import grouped_split
from semi_nnunet.dataset_conversion.hc18 import convert_hc18, fill_outline
from semi_nnunet.run.conversion_entrypoints import convert_hc18_entry
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, check_semi_dataset

N_IMAGES = 17


def _info(folder):
    with open(os.path.join(folder, "conversion_info.json")) as f:
        return json.load(f)


def _read(path):
    return np.array(Image.open(path))


@pytest.fixture(scope="module")
def converted(hc18_source, tmp_path_factory):
    source, _ = hc18_source
    out = str(tmp_path_factory.mktemp("hc18_out"))
    return convert_hc18(source, dataset_id=501, num_labeled=4, num_test=5, seed=0, output_root=out, verbose=False)


def test_counts_and_format(converted):
    ds = check_semi_dataset(converted, read_pixels=True)
    assert len(ds.labeled) == 4 and len(ds.unlabeled) == N_IMAGES - 4 - 5
    dj = json.load(open(os.path.join(converted, "dataset.json")))
    assert dj["numTraining"] == 4 and dj["numUnlabeled"] == N_IMAGES - 9
    assert dj["labels"] == {"background": 0, "head": 1}
    assert dj["channel_names"] == {"0": "US"} and dj["file_ending"] == ".png"
    assert len(os.listdir(os.path.join(converted, "imagesTs"))) == 5
    assert len(os.listdir(os.path.join(converted, "labelsTs"))) == 5
    assert os.path.basename(converted) == "Dataset501_HC18"
    info = _info(converted)
    assert info["counts"] == {"labeled": 4, "unlabeled": N_IMAGES - 9, "test": 5}
    assert len(info["cases"]) == N_IMAGES


def test_masks_are_filled_ellipses(converted, hc18_source):
    _, ellipses = hc18_source
    info = _info(converted)
    checked = 0
    for case, entry in info["cases"].items():
        if entry["split"] == "unlabeled":
            continue
        sub = "labelsTr" if entry["split"] == "labeled" else "labelsTs"
        mask = _read(os.path.join(converted, sub, case + ".png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) == {0, 1}
        image = _read(os.path.join(converted, "imagesTr" if sub == "labelsTr" else "imagesTs", case + "_0000.png"))
        assert image.shape == mask.shape == (48, 64)
        r, c, rr, cr = ellipses[entry["source_image"]]
        yy, xx = np.mgrid[:48, :64]
        inside = ((yy - r) / rr) ** 2 + ((xx - c) / cr) ** 2 <= 0.8
        outside = ((yy - r) / rr) ** 2 + ((xx - c) / cr) ** 2 >= 1.3
        assert mask[inside].all(), f"{case}: interior not filled"
        assert not mask[outside].any(), f"{case}: foreground outside the ellipse"
        checked += 1
    assert checked == 9


def test_no_patient_across_splits(converted):
    info = _info(converted)
    split_of_patient = {}
    for entry in info["cases"].values():
        split_of_patient.setdefault(entry["patient"], set()).add(entry["split"])
    assert all(len(s) == 1 for s in split_of_patient.values())
    assert len(split_of_patient) == 12


def test_unlabeled_have_no_labels_anywhere(converted, all_files):
    info = _info(converted)
    unlabeled = {c for c, e in info["cases"].items() if e["split"] == "unlabeled"}
    assert unlabeled
    for rel in all_files(converted):
        name = os.path.basename(rel)
        case = name[:-len("_0000.png")] if name.endswith("_0000.png") else name[:-len(".png")]
        if case in unlabeled:
            assert rel.startswith(UNLABELED_FOLDER + os.sep), rel
    assert sorted(os.listdir(os.path.join(converted, UNLABELED_FOLDER))) == sorted(c + "_0000.png" for c in unlabeled)
    for entry in info["cases"].values():
        if entry["split"] == "unlabeled":
            assert "source_annotation" not in entry


def test_cut_ellipse_is_filled(hc18_source, tmp_path):
    source, _ = hc18_source
    folder = convert_hc18(source, dataset_id=510, num_labeled=N_IMAGES, num_test=0, num_unlabeled=0,
                          output_root=str(tmp_path), verbose=False)
    mask = _read(os.path.join(folder, "labelsTr", "011_HC.png"))  # ellipse centre (6, 32), radii 16 x 20
    assert mask[6, 32] == 1 and mask[0, 32] == 1 and mask[2, 20] == 1
    assert mask[40, 5] == 0 and mask[0, 2] == 0 and mask[0, 60] == 0
    assert check_semi_dataset(folder).dataset_json["numUnlabeled"] == 0


def test_fill_outline_cut_by_border():
    from skimage.draw import ellipse_perimeter
    outline = np.zeros((48, 64), bool)
    rr, cc = ellipse_perimeter(6, 32, 16, 20, shape=outline.shape)
    outline[rr, cc] = True
    filled = fill_outline(outline)
    assert filled[6, 32] and filled[0, 32] and not filled[40, 5] and not filled[0, 2]
    with pytest.raises(DatasetError, match="no outline"):
        fill_outline(np.zeros((10, 10), bool), "x_Annotation.png")


def test_skipped_files_are_noted(hc18_source, tmp_path, capsys):
    source, _ = hc18_source
    convert_hc18(source, dataset_id=502, num_labeled=2, num_test=2, num_unlabeled=3, output_root=str(tmp_path))
    out = capsys.readouterr().out
    assert "900_HC.png" in out and "901_HC_Annotation.png" in out


def test_source_untouched_and_parent_folder_accepted(hc18_source, tmp_path, snapshot):
    source, _ = hc18_source
    before = snapshot(source)
    folder = convert_hc18(os.path.dirname(source), dataset_id=503, num_labeled=2, num_test=2, num_unlabeled=2,
                          output_root=str(tmp_path), verbose=False)
    assert snapshot(source) == before
    assert _info(folder)["counts"] == {"labeled": 2, "unlabeled": 2, "test": 2}
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def test_seed_reproducible_and_changes_split(hc18_source, tmp_path):
    source, _ = hc18_source
    a = convert_hc18(source, dataset_id=511, num_labeled=3, num_test=3, seed=5, output_root=str(tmp_path / "a"),
                     verbose=False)
    b = convert_hc18(source, dataset_id=511, num_labeled=3, num_test=3, seed=5, output_root=str(tmp_path / "b"),
                     verbose=False)
    c = convert_hc18(source, dataset_id=511, num_labeled=3, num_test=3, seed=6, output_root=str(tmp_path / "c"),
                     verbose=False)
    split = lambda f: {k: v["split"] for k, v in _info(f)["cases"].items()}  # noqa: E731
    assert split(a) == split(b)
    assert split(a) != split(c)
    for name in os.listdir(os.path.join(a, "labelsTr")):
        assert np.array_equal(_read(os.path.join(a, "labelsTr", name)), _read(os.path.join(b, "labelsTr", name)))


def test_grouped_split_properties():
    patients = {f"img{i:02d}": f"p{i // 3}" for i in range(30)}  # 10 patients x 3 images
    s0 = grouped_split(patients, 6, None, 9, seed=0)
    assert grouped_split(patients, 6, None, 9, seed=0) == s0
    assert grouped_split(patients, 6, None, 9, seed=1) != s0
    assert [len(s0[k]) for k in ("labeled", "unlabeled", "test")] == [6, 15, 9]
    for a in s0:
        for b in s0:
            if a != b:
                assert not {patients[x] for x in s0[a]} & {patients[x] for x in s0[b]}
    # the test set does not depend on the number of labeled cases
    assert grouped_split(patients, 3, None, 9, seed=0)["test"] == s0["test"]
    with pytest.raises(DatasetError, match="exactly"):
        grouped_split(patients, 4, None, 9, seed=0)  # 4 is no multiple of 3
    with pytest.raises(DatasetError, match="only 30"):
        grouped_split(patients, 20, 10, 9, seed=0)


def test_downsampling(hc18_source, tmp_path):
    source, ellipses = hc18_source
    folder = convert_hc18(source, dataset_id=504, num_labeled=4, num_test=0, num_unlabeled=2, max_size=32,
                          output_root=str(tmp_path), verbose=False)
    info = _info(folder)
    for case in os.listdir(os.path.join(folder, "labelsTr")):
        mask = _read(os.path.join(folder, "labelsTr", case))
        image = _read(os.path.join(folder, "imagesTr", case[:-4] + "_0000.png"))
        assert mask.shape == image.shape == (24, 32) and mask.dtype == np.uint8 and image.dtype == np.uint8
        assert set(np.unique(mask).tolist()) == {0, 1}
        r, c, _, _ = ellipses[info["cases"][case[:-4]]["source_image"]]
        assert mask[r // 2, c // 2] == 1
    assert not os.path.exists(os.path.join(folder, "imagesTs"))
    half = convert_hc18(source, dataset_id=505, num_labeled=2, num_test=0, num_unlabeled=0, downsample=0.5,
                        output_root=str(tmp_path), verbose=False)
    assert _read(os.path.join(half, "imagesTr", os.listdir(os.path.join(half, "imagesTr"))[0])).shape == (24, 32)


def test_errors(hc18_source, tmp_path):
    source, _ = hc18_source
    with pytest.raises(DatasetError, match="only 17"):
        convert_hc18(source, num_labeled=10, num_test=10, output_root=str(tmp_path), verbose=False)
    with pytest.raises(DatasetError, match="does not exist"):
        convert_hc18(str(tmp_path / "nope"), output_root=str(tmp_path), verbose=False)
    with pytest.raises(DatasetError, match="inside a source folder"):
        convert_hc18(source, num_labeled=2, num_test=2, output_root=os.path.join(source, "out"), verbose=False)
    folder = convert_hc18(source, dataset_id=520, num_labeled=2, num_test=2, num_unlabeled=2,
                          output_root=str(tmp_path), verbose=False)
    with pytest.raises(DatasetError, match="already exists") as e:
        convert_hc18(source, dataset_id=520, num_labeled=2, num_test=2, output_root=str(tmp_path), verbose=False)
    assert folder in str(e.value)
    with pytest.raises(DatasetError, match="already uses id 520"):
        convert_hc18(source, dataset_id=520, dataset_name="Other", num_labeled=2, num_test=2,
                     output_root=str(tmp_path), verbose=False)
    again = convert_hc18(source, dataset_id=520, num_labeled=3, num_test=2, output_root=str(tmp_path), overwrite=True,
                         verbose=False)
    assert again == folder and _info(folder)["counts"]["labeled"] == 3
    assert sorted(os.listdir(tmp_path)) == ["Dataset520_HC18"]


def test_default_output_root_is_nnunet_raw(hc18_source, nnunet_paths):
    source, _ = hc18_source
    folder = convert_hc18(source, dataset_id=530, num_labeled=2, num_test=2, num_unlabeled=2, verbose=False)
    assert os.path.dirname(folder) == os.path.abspath(nnunet_paths["nnUNet_raw"])


def test_entry_point(hc18_source, tmp_path, capsys):
    source, _ = hc18_source
    convert_hc18_entry(["-i", source, "-d", "540", "--num-labeled", "3", "--num-test", "2", "--num-unlabeled", "4",
                        "--max-size", "32", "--seed", "1", "-o", str(tmp_path)])
    folder = os.path.join(tmp_path, "Dataset540_HC18")
    assert check_semi_dataset(folder).dataset_json["numUnlabeled"] == 4
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        convert_hc18_entry(["-i", source, "--num-labeled", "30", "-o", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "only 17" in err and source in err and "Traceback" not in err
