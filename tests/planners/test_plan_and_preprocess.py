"""semi_nnUNet_plan_and_preprocess: plans equal stock nnU-Net's, unlabeled cases preprocessed into their own folder."""
import os
import shutil

import blosc2
import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import get_unlabeled_folder, plan_and_preprocess
from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER


def _ids(folder):
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".b2nd") and not f.endswith("_seg.b2nd"))


def _array(folder, case, suffix=".b2nd"):
    return np.asarray(blosc2.open(join(folder, case + suffix), mode="r")[:])


@pytest.fixture(scope="module")
def planned_2d(module_paths):
    """Dataset 901 (8 labeled + 6 unlabeled) through our pipeline; 902 = the same labeled cases through stock
    nnU-Net."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    raw = module_paths["nnUNet_raw"]
    ours = make_synthetic_dataset(raw, 901, dim=2, num_labeled=8, num_unlabeled=6, name="Semi")
    stock = join(raw, "Dataset902_Semi")
    shutil.copytree(ours, stock)
    shutil.rmtree(join(stock, UNLABELED_FOLDER))
    dj = load_json(join(stock, "dataset.json"))
    del dj["numUnlabeled"]
    save_json(dj, join(stock, "dataset.json"))

    summary = plan_and_preprocess(901, ["2d"], num_processes=1, show_progress=False)
    extract_fingerprints([902], num_processes=1, show_progress_bar=False)
    plan_experiments([902])
    preprocess([902], configurations=["2d"], num_processes=[1], show_progress_bar=False)
    pre = module_paths["nnUNet_preprocessed"]
    return {"summary": summary, "ours": join(pre, "Dataset901_Semi"), "stock": join(pre, "Dataset902_Semi"),
            "raw": ours}


def test_plans_are_stock_nnunet_plans(planned_2d):
    ours = load_json(join(planned_2d["ours"], "nnUNetPlans.json"))
    stock = load_json(join(planned_2d["stock"], "nnUNetPlans.json"))
    assert ours.pop("dataset_name") == "Dataset901_Semi" and stock.pop("dataset_name") == "Dataset902_Semi"
    assert ours == stock
    assert load_json(join(planned_2d["ours"], "dataset_fingerprint.json")) == \
        load_json(join(planned_2d["stock"], "dataset_fingerprint.json"))


def test_every_unlabeled_case_is_preprocessed_in_its_own_folder(planned_2d):
    unl = get_unlabeled_folder("Dataset901_Semi", "nnUNetPlans", "2d")
    assert unl == join(planned_2d["ours"], "nnUNetPlans_2d_unlabeled")
    assert _ids(unl) == [f"unl{i:03d}" for i in range(6)]
    assert _ids(join(planned_2d["ours"], "nnUNetPlans_2d")) == [f"lab{i:03d}" for i in range(8)]


def test_labeled_arrays_equal_stock_preprocessing(planned_2d):
    for case in ("lab000", "lab005"):
        for suffix in (".b2nd", "_seg.b2nd"):
            np.testing.assert_array_equal(_array(join(planned_2d["ours"], "nnUNetPlans_2d"), case, suffix),
                                          _array(join(planned_2d["stock"], "nnUNetPlans_2d"), case, suffix))


def test_unlabeled_case_equals_nnunet_test_case_preprocessing(planned_2d):
    """An unlabeled case is preprocessed exactly like nnU-Net preprocesses an image without a label."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(join(planned_2d["ours"], "nnUNetPlans.json"))
    data, seg, _ = DefaultPreprocessor(verbose=False).run_case(
        [join(planned_2d["raw"], UNLABELED_FOLDER, "unl003_0000.png")], None, pm, pm.get_configuration("2d"),
        join(planned_2d["ours"], "dataset.json"))
    unl = join(planned_2d["ours"], "nnUNetPlans_2d_unlabeled")
    np.testing.assert_array_equal(_array(unl, "unl003"), data)
    # the unlabeled '_seg' holds only nnU-Net's nonzero mask, never a label
    assert set(np.unique(_array(unl, "unl003", "_seg.b2nd"))) <= {-1, 0}


def test_splits_hold_labeled_cases_only(planned_2d):
    splits = load_json(join(planned_2d["ours"], "splits_final.json"))
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == [f"lab{i:03d}" for i in range(8)]
    assert all(not c.startswith("unl") for s in splits for part in s.values() for c in part)
    # the same split nnU-Net would create at training time
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    assert splits == generate_crossval_split([f"lab{i:03d}" for i in range(8)], seed=12345, n_splits=5)


def test_rerun_skips_current_cases_and_redoes_changed_ones(planned_2d):
    again = plan_and_preprocess(901, ["2d"], num_processes=1, show_progress=False)["configurations"]["2d"]
    assert again["labeled"] == {"done": 0, "skipped": 8, "removed": 0}
    assert again["unlabeled"] == {"done": 0, "skipped": 6, "removed": 0}

    changed = join(planned_2d["raw"], UNLABELED_FOLDER, "unl001_0000.png")
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    os.remove(join(planned_2d["raw"], UNLABELED_FOLDER, "unl005_0000.png"))
    dj = load_json(join(planned_2d["raw"], "dataset.json"))
    dj["numUnlabeled"] = 5
    save_json(dj, join(planned_2d["raw"], "dataset.json"))
    third = plan_and_preprocess(901, ["2d"], num_processes=1, show_progress=False)["configurations"]["2d"]
    assert third["unlabeled"] == {"done": 1, "skipped": 4, "removed": 1}
    assert third["labeled"]["done"] == 0
    assert _ids(join(planned_2d["ours"], "nnUNetPlans_2d_unlabeled")) == [f"unl{i:03d}" for i in range(5)]


def test_resenc_planner_works_with_unlabeled_cases(planned_2d):
    summary = plan_and_preprocess(901, ["2d"], planner="nnUNetPlannerResEncM", num_processes=1, show_progress=False)
    assert summary["plans_identifier"] == "nnUNetResEncUNetMPlans"
    plans = load_json(join(planned_2d["ours"], "nnUNetResEncUNetMPlans.json"))
    assert "ResidualEncoderUNet" in plans["configurations"]["2d"]["architecture"]["network_class_name"]
    unl = get_unlabeled_folder("Dataset901_Semi", "nnUNetResEncUNetMPlans", "2d")
    assert len(_ids(unl)) == len(os.listdir(join(planned_2d["raw"], UNLABELED_FOLDER)))


def test_3d_nifti_dataset(nnunet_paths):
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 903, dim=3, num_labeled=5, num_unlabeled=3)
    summary = plan_and_preprocess(903, ["3d_fullres", "2d"], num_processes=1, show_progress=False)
    assert set(summary["configurations"]) == {"3d_fullres", "2d"}
    for c in ("3d_fullres", "2d"):
        unl = get_unlabeled_folder("Dataset903_Synthetic3D", "nnUNetPlans", c)
        assert _ids(unl) == ["unl000", "unl001", "unl002"]
        assert _array(unl, "unl000").ndim == 4  # (c, z, y, x)


def test_dataset_without_unlabeled_images_is_valid(nnunet_paths):
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 904, dim=2, num_labeled=5, num_unlabeled=0)
    summary = plan_and_preprocess(904, ["2d"], num_processes=1, show_progress=False)
    assert summary["num_unlabeled"] == 0
    assert summary["configurations"]["2d"]["labeled"]["done"] == 5
