"""The unlabeled loader reads images only, through nnU-Net's own data loader."""
import builtins
import os
import shutil

import blosc2
import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.unlabeled_data import UnlabeledDataset, unlabeled_identifiers

UNLABELED_IDS = ["unl000", "unl001", "unl002", "unl003"]
SHAPE = (48, 48)  # make_synthetic_dataset's default 2D shape


@pytest.fixture(scope="module")
def prepared(module_paths):
    raw = make_synthetic_dataset(module_paths["nnUNet_raw"], 941, dim=2, num_labeled=5, num_unlabeled=4)
    summary = plan_and_preprocess(941, ["2d"], num_processes=1, show_progress=False)
    pre = join(module_paths["nnUNet_preprocessed"], summary["dataset_name"])
    return {"raw": raw, "pre": pre, "unlabeled": join(pre, "nnUNetPlans_2d_unlabeled"),
            "labeled": join(pre, "nnUNetPlans_2d")}


def _loader_parts(pre):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(join(pre, "nnUNetPlans.json"))
    patch = tuple(int(p) for p in pm.get_configuration("2d").patch_size)
    lm = pm.get_label_manager(load_json(join(pre, "dataset.json")))
    return patch, lm


def test_lists_exactly_the_unlabeled_cases(prepared):
    ds = UnlabeledDataset(prepared["unlabeled"])
    assert ds.identifiers == UNLABELED_IDS
    assert sorted(unlabeled_identifiers(prepared["unlabeled"])) == UNLABELED_IDS  # order: os.listdir's
    assert UnlabeledDataset(prepared["unlabeled"], ["unl002", "unl000"]).identifiers == ["unl000", "unl002"]


def test_unlabeled_identifiers_of_a_missing_folder_is_empty(tmp_path):
    assert unlabeled_identifiers(str(tmp_path / "nope")) == []


@pytest.mark.parametrize("case", UNLABELED_IDS)
def test_load_case(prepared, case):
    data, seg, seg_prev, properties = UnlabeledDataset(prepared["unlabeled"]).load_case(case)
    expected = np.asarray(blosc2.open(join(prepared["unlabeled"], case + ".b2nd"), mode="r")[:])
    # one channel, a pseudo-3D 2D case: (C, 1, H, W) of the 48 x 48 image (spacing 1, no resampling)
    assert data.shape == expected.shape == (1, 1, *SHAPE)
    np.testing.assert_array_equal(np.asarray(data[:]), expected)
    assert seg.shape == (1, *data.shape[1:])
    assert not np.asarray(seg).any()
    assert np.issubdtype(seg.dtype, np.integer)
    assert seg_prev is None
    assert properties["class_locations"] == {} or not any(len(v) for v in properties["class_locations"].values())


def test_loader_never_opens_a_label(prepared, tmp_path, monkeypatch):
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    patch, lm = _loader_parts(prepared["pre"])
    folder = str(tmp_path / "nnUNetPlans_2d_unlabeled")
    shutil.copytree(prepared["unlabeled"], folder)
    segs = [f for f in os.listdir(folder) if f.endswith("_seg.b2nd")]
    assert segs  # preprocessing writes them (nnU-Net's nonzero mask); the loader must not need them
    for f in segs:
        os.remove(join(folder, f))
    for f in os.listdir(prepared["unlabeled"]):  # the original unlabeled folder too
        if f.endswith("_seg.b2nd"):
            os.remove(join(prepared["unlabeled"], f))
    shutil.rmtree(join(prepared["raw"], "labelsTr"))

    opened = []
    real_open, real_blosc2_open, real_np_load = builtins.open, blosc2.open, np.load

    def rec_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def rec_blosc2_open(urlpath, *a, **k):
        opened.append(str(urlpath))
        return real_blosc2_open(urlpath, *a, **k)

    def rec_np_load(file, *a, **k):
        opened.append(str(file))
        return real_np_load(file, *a, **k)

    monkeypatch.setattr(builtins, "open", rec_open)
    monkeypatch.setattr(blosc2, "open", rec_blosc2_open)
    monkeypatch.setattr(np, "load", rec_np_load)

    np.random.seed(0)
    for ds_folder in (folder, prepared["unlabeled"]):
        loader = nnUNetDataLoader(UnlabeledDataset(ds_folder), 2, patch, patch, lm,
                                  oversample_foreground_percent=0.0, transforms=None)
        for _ in range(4):
            batch = loader.generate_train_batch()
            assert tuple(batch["data"].shape) == (2, 1, *patch)
            assert tuple(batch["target"].shape) == (2, 1, *patch)
            assert set(np.unique(batch["target"].numpy())) <= {0, -1}  # zeros (and nnU-Net's -1 padding)
            assert set(batch["keys"]) <= set(UNLABELED_IDS)
            assert np.isfinite(batch["data"].numpy()).all()

    assert any(p.endswith(".b2nd") for p in opened)  # the recorder does see the image reads
    assert any(p.endswith(".pkl") for p in opened)
    labels_tr = join(prepared["raw"], "labelsTr")
    for p in opened:
        assert not p.endswith("_seg.b2nd"), p
        assert labels_tr not in p and "labelsTr" not in p, p
        assert not p.startswith(prepared["labeled"] + os.sep), p


def test_batches_hold_the_image_pixels(prepared):
    """With a patch as large as the image, each batch entry is the whole preprocessed image of its key."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    _, lm = _loader_parts(prepared["pre"])
    loader = nnUNetDataLoader(UnlabeledDataset(prepared["unlabeled"]), 2, SHAPE, SHAPE, lm,
                              oversample_foreground_percent=0.0, transforms=None)
    np.random.seed(1)
    for _ in range(3):
        batch = loader.generate_train_batch()
        for j, key in enumerate(batch["keys"]):
            image = np.asarray(blosc2.open(join(prepared["unlabeled"], key + ".b2nd"), mode="r")[:])
            np.testing.assert_array_equal(batch["data"][j].numpy(), image[:, 0].astype(np.float32))
            assert not batch["target"][j].numpy().any()
