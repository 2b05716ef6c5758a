"""Bad raw datasets: each gives a clear error naming the file and the fix, before anything is written."""
import os

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from PIL import Image

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.run.plan_and_preprocess_entrypoint import main as plan_main
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, DatasetError, check_semi_dataset


def _edit_json(folder, **changes):
    dj = load_json(join(folder, "dataset.json"))
    for k, v in changes.items():
        if v is None:
            dj.pop(k, None)
        else:
            dj[k] = v
    save_json(dj, join(folder, "dataset.json"))


def rgb_unlabeled(d):
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(join(d, UNLABELED_FOLDER, "unl001_0000.png"))


def extra_channel_file(d):
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(join(d, UNLABELED_FOLDER, "unl002_0001.png"))


def corrupt_png(d):
    with open(join(d, UNLABELED_FOLDER, "unl003_0000.png"), "wb") as f:
        f.write(b"this is not a png")


def id_collision(d):
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(join(d, UNLABELED_FOLDER, "lab001_0000.png"))
    _edit_json(d, numUnlabeled=5)


def wrong_num_unlabeled(d):
    _edit_json(d, numUnlabeled=7)


def missing_num_unlabeled(d):
    _edit_json(d, numUnlabeled=None)


def wrong_num_training(d):
    _edit_json(d, numTraining=9)


def unknown_file_ending(d):
    with open(join(d, UNLABELED_FOLDER, "unl009_0000.jpg"), "wb") as f:
        f.write(b"jpeg bytes")


def unsupported_dataset_ending(d):
    _edit_json(d, file_ending=".jpg")


def no_channel_suffix(d):
    os.rename(join(d, UNLABELED_FOLDER, "unl000_0000.png"), join(d, UNLABELED_FOLDER, "unl000.png"))


def class_for_unknown_case(d):
    _edit_json(d, class_names={"0": "benign", "1": "malignant"}, image_classes={"lab000": 0, "ghost042": 1})


def class_id_not_in_class_names(d):
    _edit_json(d, class_names={"0": "benign", "1": "malignant"}, image_classes={"lab000": 5})


def classes_without_names(d):
    _edit_json(d, image_classes={"lab000": 0})


def missing_label(d):
    os.remove(join(d, "labelsTr", "lab002.png"))


def missing_dataset_json(d):
    os.remove(join(d, "dataset.json"))


def broken_dataset_json(d):
    with open(join(d, "dataset.json"), "w") as f:
        f.write("{ not json")


# (corruption, fragment of the problem, file or key the message must name, fragment of the fix)
CASES = [
    (rgb_unlabeled, "has 3 channel(s)", "unl001_0000.png", "channel_names"),
    (extra_channel_file, "channel files [0, 1]", "unl002_0001.png", "exactly the channels"),
    (corrupt_png, "cannot be read", "unl003_0000.png", "intact copy"),
    (id_collision, "used by a labeled and an unlabeled case", "lab001_0000.png", "rename the unlabeled case"),
    (wrong_num_unlabeled, "numUnlabeled is 7", "dataset.json", '"numUnlabeled": 6'),
    (missing_num_unlabeled, "no 'numUnlabeled'", "dataset.json", '"numUnlabeled": 6'),
    (wrong_num_training, "numTraining is 9", "dataset.json", '"numTraining": 5'),
    (unknown_file_ending, "unexpected ending", "unl009_0000.jpg", "convert it to .png"),
    (unsupported_dataset_ending, "not one nnU-Net can read", "dataset.json", "convert it to PNG"),
    (no_channel_suffix, "4-digit channel suffix", "unl000.png", "CASE_0000.png"),
    (class_for_unknown_case, "'ghost042'", "dataset.json", "remove the entry"),
    (class_id_not_in_class_names, "class 5", "dataset.json", "class_names keys"),
    (classes_without_names, "only one of 'class_names'", "dataset.json", "give both"),
    (missing_label, "no label file", "lab002.png", "imagesUnlabeled"),
    (missing_dataset_json, "dataset.json is missing", "dataset.json", "write it"),
    (broken_dataset_json, "not valid JSON", "dataset.json", "fix the JSON"),
]


@pytest.mark.parametrize("corrupt, problem, where, fix", CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_dataset_fails_before_writing(nnunet_paths, capsys, corrupt, problem, where, fix):
    folder = make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 905, dim=2, num_labeled=5, num_unlabeled=6)
    corrupt(folder)
    with pytest.raises(SystemExit) as e:
        plan_main(["-d", "905", "-c", "2d", "-np", "1", "--no_progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert problem in err and where in err and "fix: " in err and fix in err, err
    assert not os.path.exists(join(nnunet_paths["nnUNet_preprocessed"], "Dataset905_Synthetic2D"))


def test_nan_in_unlabeled_image_found_by_pixel_check(tmp_path):
    """NaNs survive in .mha (SimpleITK's NIfTI reader turns them into 0); the pixel check reports the file."""
    import SimpleITK as sitk
    from semi_nnunet.utilities.raw_dataset import write_dataset_json
    folder = str(tmp_path / "Dataset906_Nan")
    for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER):
        os.makedirs(join(folder, sub))
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)  # not blank: the pixel check refuses those
    sitk.WriteImage(sitk.GetImageFromArray(arr), join(folder, "imagesTr", "a_0000.mha"))
    sitk.WriteImage(sitk.GetImageFromArray((arr > 50).astype(np.uint8)), join(folder, "labelsTr", "a.mha"))
    arr[1, 2, 3] = np.nan
    bad = join(folder, UNLABELED_FOLDER, "u_0000.mha")
    sitk.WriteImage(sitk.GetImageFromArray(arr), bad)
    write_dataset_json(folder, {0: "MRI"}, {"background": 0, "fg": 1}, 1, ".mha", 1)
    check_semi_dataset(folder)  # headers are fine
    with pytest.raises(DatasetError, match="NaN") as e:
        check_semi_dataset(folder, read_pixels=True)
    assert e.value.where == bad


def test_unknown_dataset_id(nnunet_paths, capsys):
    with pytest.raises(SystemExit):
        plan_main(["-d", "977", "-np", "1"])
    assert "No dataset with id 977" in capsys.readouterr().err


def test_valid_dataset_passes_with_classes(nnunet_paths):
    folder = make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 907, dim=2, num_labeled=3, num_unlabeled=2,
                                    num_test=2, image_classes=True)
    ds = check_semi_dataset(folder, read_pixels=True)
    assert sorted(ds.labeled) == ["lab000", "lab001", "lab002"] and sorted(ds.unlabeled) == ["unl000", "unl001"]
    assert set(ds.dataset_json["image_classes"]) == {"lab000", "lab001", "lab002", "unl000", "unl001",
                                                     "test000", "test001"}
