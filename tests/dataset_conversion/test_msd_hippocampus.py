"""MSD Hippocampus converter on tiny synthetic NIfTI volumes (10 pairs, 16x16x12, labels 0..2)."""
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from semi_nnunet.dataset_conversion.msd_hippocampus import convert_msd_hippocampus
from semi_nnunet.run.conversion_entrypoints import convert_msd_hippocampus_entry
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, check_semi_dataset


def _info(folder):
    with open(os.path.join(folder, "conversion_info.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def converted(hippocampus_source, tmp_path_factory):
    source, _ = hippocampus_source
    out = str(tmp_path_factory.mktemp("hippo_out"))
    return convert_msd_hippocampus(source, dataset_id=504, num_labeled=3, num_test=2, seed=0, output_root=out,
                                   verbose=False)


def test_counts_and_format(converted):
    ds = check_semi_dataset(converted, read_pixels=True)
    assert len(ds.labeled) == 3 and len(ds.unlabeled) == 5
    dj = json.load(open(os.path.join(converted, "dataset.json")))
    assert dj["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert dj["channel_names"] == {"0": "MRI"} and dj["file_ending"] == ".nii.gz"
    assert dj["numTraining"] == 3 and dj["numUnlabeled"] == 5
    assert sorted(os.listdir(os.path.join(converted, "labelsTs"))) == sorted(
        c + ".nii.gz" for c, e in _info(converted)["cases"].items() if e["split"] == "test")
    assert len(os.listdir(os.path.join(converted, "imagesTs"))) == 2


def test_geometry_dtype_and_values_kept(converted, hippocampus_source):
    source, geometry = hippocampus_source
    info = _info(converted)
    assert len(info["cases"]) == 10
    dtypes = set()
    for case, entry in info["cases"].items():
        sub_img = {"labeled": "imagesTr", "unlabeled": UNLABELED_FOLDER, "test": "imagesTs"}[entry["split"]]
        out = sitk.ReadImage(os.path.join(converted, sub_img, case + "_0000.nii.gz"))
        src = sitk.ReadImage(os.path.join(source, "images", case + ".nii.gz"))
        spacing, origin, direction, dtype = geometry[case]
        assert np.allclose(out.GetSpacing(), spacing) and np.allclose(out.GetOrigin(), origin)
        assert np.allclose(out.GetDirection(), direction)
        assert out.GetPixelID() == src.GetPixelID()
        assert sitk.GetArrayFromImage(out).dtype == dtype
        assert np.array_equal(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(src))
        dtypes.add(str(dtype))
        if entry["split"] != "unlabeled":
            sub_lab = "labelsTr" if entry["split"] == "labeled" else "labelsTs"
            mask = sitk.ReadImage(os.path.join(converted, sub_lab, case + ".nii.gz"))
            assert mask.GetPixelID() == sitk.sitkUInt8
            assert np.allclose(mask.GetSpacing(), spacing) and np.allclose(mask.GetOrigin(), origin)
            assert np.allclose(mask.GetDirection(), direction)
            assert set(np.unique(sitk.GetArrayFromImage(mask)).tolist()) == {0, 1, 2}
            assert entry["source_mask"] == os.path.join("masks", case + ".nii.gz")
        assert entry["patient"] == case
    assert dtypes == {"float32", "uint8"}


def test_unlabeled_have_no_labels_anywhere(converted, all_files):
    unlabeled = {c for c, e in _info(converted)["cases"].items() if e["split"] == "unlabeled"}
    for rel in all_files(converted):
        if any(os.path.basename(rel).startswith(c) for c in unlabeled):
            assert rel.startswith(UNLABELED_FOLDER + os.sep), rel


def test_unpaired_files_skipped_with_note(hippocampus_source, tmp_path, capsys):
    source, _ = hippocampus_source
    folder = convert_msd_hippocampus(source, dataset_id=505, num_labeled=2, num_test=2, output_root=str(tmp_path))
    out = capsys.readouterr().out
    assert "hippocampus_118" in out and "hippocampus_281" in out
    cases = _info(folder)["cases"]
    assert "hippocampus_118" not in cases and "hippocampus_281" not in cases and len(cases) == 10


def test_seed(hippocampus_source, tmp_path, snapshot):
    source, _ = hippocampus_source
    before = snapshot(source)
    runs = [convert_msd_hippocampus(source, dataset_id=506, num_labeled=3, num_test=3, num_unlabeled=2, seed=s,
                                    output_root=str(tmp_path / str(i)), verbose=False)
            for i, s in enumerate((1, 1, 2))]
    splits = [{c: e["split"] for c, e in _info(f)["cases"].items()} for f in runs]
    assert splits[0] == splits[1] and splits[0] != splits[2]
    assert len(splits[0]) == 8  # 3 + 3 + 2; the other 2 pairs are left out
    assert snapshot(source) == before


def test_bad_mask_values_and_grid(hippocampus_source, tmp_path):
    source, _ = hippocampus_source
    bad = str(tmp_path / "bad")
    shutil.copytree(source, bad)
    mask_path = os.path.join(bad, "masks", "hippocampus_002.nii.gz")
    mask = sitk.ReadImage(mask_path)
    arr = sitk.GetArrayFromImage(mask)
    arr[0, 0, 0] = 7
    wrong = sitk.GetImageFromArray(arr)
    wrong.CopyInformation(mask)
    sitk.WriteImage(wrong, mask_path)
    with pytest.raises(DatasetError, match=r"values \[7\]") as e:
        convert_msd_hippocampus(bad, num_labeled=10, num_test=0, output_root=str(tmp_path / "o"), verbose=False)
    assert mask_path in str(e.value)
    assert not os.path.exists(tmp_path / "o" / "Dataset504_Hippocampus")  # nothing half-written

    shifted = sitk.GetImageFromArray(sitk.GetArrayFromImage(mask))
    shifted.CopyInformation(mask)
    shifted.SetOrigin((100.0, 0.0, 0.0))
    sitk.WriteImage(shifted, mask_path)
    with pytest.raises(DatasetError, match="grid") as e:
        convert_msd_hippocampus(bad, num_labeled=10, num_test=0, output_root=str(tmp_path / "o"), verbose=False)
    assert mask_path in str(e.value)


def test_entry_point(hippocampus_source, tmp_path, capsys):
    source, _ = hippocampus_source
    convert_msd_hippocampus_entry(["-i", source, "-d", "507", "--num-labeled", "4", "--num-test", "3",
                                   "-o", str(tmp_path)])
    ds = check_semi_dataset(os.path.join(tmp_path, "Dataset507_Hippocampus"))
    assert len(ds.labeled) == 4 and len(ds.unlabeled) == 3
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        convert_msd_hippocampus_entry(["-i", str(tmp_path / "missing"), "-o", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "missing" in err and "Traceback" not in err
