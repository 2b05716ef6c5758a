"""semi_nnUNet_evaluate on hand-made masks: every number below is computed by hand in the comments."""
import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json

from semi_nnunet.evaluation.evaluate_api import compare, evaluate
from semi_nnunet.inference.models import PredictionError
from semi_nnunet.run.evaluate_entrypoint import main as evaluate_main

SPACING_XYZ = (0.5, 1.0, 2.0)  # SimpleITK order; numpy axes (z, y, x) have spacing (2.0, 1.0, 0.5)


def _nifti(array, path):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, path)


@pytest.fixture
def folders_3d(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    # case "far": reference voxel (z,y,x) = (1,2,2); predicted voxels (1,2,5) and (3,2,2)
    r, p = np.zeros((4, 8, 8)), np.zeros((4, 8, 8))
    r[1, 2, 2] = 1
    p[1, 2, 5] = p[3, 2, 2] = 1
    _nifti(r, str(ref / "far.nii.gz"))
    _nifti(p, str(pred / "far.nii.gz"))
    # case "near": reference = 2x2 block in one slice; prediction = the block + one voxel next to it along x
    r, p = np.zeros((4, 8, 8)), np.zeros((4, 8, 8))
    r[2, 3:5, 3:5] = 1
    p[2, 3:5, 3:5] = 1
    p[2, 3, 5] = 1
    # class 2: present in the reference only (prediction empty) -> the diagonal
    r[0, 0, 0] = 2
    _nifti(r, str(ref / "near.nii.gz"))
    _nifti(p, str(pred / "near.nii.gz"))
    dataset_json = str(tmp_path / "dataset.json")
    save_json({"labels": {"background": 0, "a": 1, "b": 2}, "file_ending": ".nii.gz",
               "channel_names": {"0": "CT"}}, dataset_json)
    return str(ref), str(pred), dataset_json


def test_anisotropic_3d_values_equal_hand_computed(folders_3d):
    ref, pred, dataset_json = folders_3d
    summary = evaluate(ref, pred, dataset_json_file=dataset_json, num_processes=1)
    per_case = {c["prediction_file"].rsplit("/", 1)[-1]: c["metrics"] for c in summary["metric_per_case"]}
    far, near = per_case["far.nii.gz"]["1"], per_case["near.nii.gz"]["1"]
    # far: pred->ref distances: (1,2,5): 3 voxels along x * 0.5 mm = 1.5; (3,2,2): 2 along z * 2.0 mm = 4.0
    #      ref->pred: min(1.5, 4.0) = 1.5.  HD95 = 95th percentile of [1.5, 1.5, 4.0] (linear) = 1.5 + 0.9 * 2.5
    assert far["Dice"] == 0 and far["IoU"] == 0
    assert far["HD95"] == pytest.approx(3.75)
    assert far["ASD"] == pytest.approx((1.5 + 4.0) / 2)  # prediction surface -> reference surface
    assert far["ASSD"] == pytest.approx((1.5 + 4.0 + 1.5) / 3)  # mean over both directions' surface voxels
    # near: TP 4, FP 1 -> Dice 8/9, IoU 4/5; the extra voxel is 0.5 mm from the block, all others 0
    #       HD95 of [0]*8 + [0.5] = 0.6 * 0.5 = 0.3; ASD = 0.5 / 5; ASSD = 0.5 / (5 + 4 surface voxels)
    assert near["Dice"] == pytest.approx(8 / 9) and near["IoU"] == pytest.approx(4 / 5)
    assert near["HD95"] == pytest.approx(0.3) and near["ASD"] == pytest.approx(0.1)
    assert near["ASSD"] == pytest.approx(0.5 / 9)
    # class 2: reference-only voxel in "near" -> Dice 0, distances = image diagonal sqrt((4*2)^2 + (8*1)^2 + (8*.5)^2)
    only_ref = per_case["near.nii.gz"]["2"]
    assert only_ref["Dice"] == 0 and only_ref["HD95"] == pytest.approx(12.0) and only_ref["ASD"] == pytest.approx(12)
    # class 2 in "far": both empty -> NaN, left out of the mean
    both_empty = per_case["far.nii.gz"]["2"]
    assert math.isnan(both_empty["Dice"]) and math.isnan(both_empty["HD95"])
    assert summary["mean"]["2"]["HD95"] == pytest.approx(12.0) and summary["mean"]["2"]["Dice"] == 0
    assert summary["empty_cases"]["2"] == {"both_empty": 1, "only_reference_empty": 0, "only_prediction_empty": 1}
    assert summary["mean"]["1"]["Dice"] == pytest.approx(4 / 9)
    assert summary["std"]["1"]["Dice"] == pytest.approx(4 / 9)  # population std of {0, 8/9}
    assert summary["foreground_mean"]["Dice"] == pytest.approx((4 / 9 + 0) / 2)

    saved = load_json(join(pred, "summary.json"))
    assert saved["mean"]["1"]["HD95"] == pytest.approx((3.75 + 0.3) / 2)
    with open(join(pred, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {r["case"] for r in rows} == {"far", "near"}
    assert float(next(r for r in rows if r["case"] == "near" and r["class"] == "1")["HD95"]) == pytest.approx(0.3)


def test_2d_png_uses_the_in_plane_surface(tmp_path):
    """A 2D PNG is read as a 1-slice volume; the singleton axis is dropped, so the surface is the 8 border pixels
    of a 3x3 square (not all 9)."""
    from PIL import Image
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    r, p = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    r[2:5, 2:5] = 1
    p[2:5, 3:6] = 1  # shifted one column
    Image.fromarray(r).save(ref / "a.png")
    Image.fromarray(p).save(pred / "a.png")
    dj = str(tmp_path / "dataset.json")
    save_json({"labels": {"background": 0, "fg": 1}, "file_ending": ".png", "channel_names": {"0": "x"}}, dj)
    m = evaluate(str(ref), str(pred), dataset_json_file=dj, num_processes=1)["metric_per_case"][0]["metrics"]["1"]
    # TP 6, FP 3, FN 3 -> Dice 12/18. Border pixels of pred vs border of ref: distances 0,0,1,1,1,0,0,1 each way
    assert m["Dice"] == pytest.approx(2 / 3)
    assert m["ASD"] == pytest.approx(0.5) and m["ASSD"] == pytest.approx(0.5)
    assert m["HD95"] == pytest.approx(1.0)  # 95th percentile of eight 0s and eight 1s


def test_paired_wilcoxon_by_hand():
    def summary(values):
        return {"mean": {"1": {}}, "metric_per_case": [
            {"prediction_file": f"c{i}.png", "metrics": {"1": {"Dice": v, "HD95": 1.0, "ASD": 1.0}}}
            for i, v in enumerate(values)]}
    a = summary([0.5, 0.6, 0.7, 0.8, 0.9])
    b = summary([0.6, 0.8, 0.71, 0.85, 0.93])  # B better on all 5 cases
    result = compare(a, b)["1"]
    # exact two-sided signed-rank test, n = 5, all differences positive: W- = 0, p = 2 * (1/2^5) = 0.0625
    assert result["Dice"]["statistic"] == 0 and result["Dice"]["p_value"] == pytest.approx(0.0625)
    assert result["Dice"]["mean_difference"] == pytest.approx((0.1 + 0.2 + 0.01 + 0.05 + 0.03) / 5)
    assert result["HD95"]["p_value"] == 1.0 and result["HD95"]["n"] == 5  # identical: no difference


def test_compare_and_classes_from_the_command_line(folders_3d, tmp_path, capsys):
    ref, pred, dataset_json = folders_3d
    same = tmp_path / "same"
    same.mkdir()
    for case in ("far", "near"):
        sitk.WriteImage(sitk.ReadImage(join(ref, case + ".nii.gz")), str(same / (case + ".nii.gz")))
    with open(join(pred, "classes.csv"), "w") as f:
        f.write("case,predicted_class,p_0,p_1\nfar,0,0.9,0.1\nnear,1,0.2,0.8\n")
    ref_classes = tmp_path / "classes.csv"
    ref_classes.write_text("case,class\nfar,1\nnear,1\n")
    evaluate_main(["-ref", ref, "-pred", pred, "--dataset_json", dataset_json, "--compare", str(same),
                   "--ref_classes", str(ref_classes), "-np", "1"])
    out = capsys.readouterr().out
    assert "classification accuracy 0.5000 (2 cases)" in out
    comparison = json.load(open(join(pred, "comparison.json")))
    assert comparison["1"]["Dice"]["mean_b"] == 1.0 and comparison["1"]["Dice"]["n"] == 2
    assert comparison["1"]["Dice"]["mean_difference"] == pytest.approx(1 - 4 / 9)
    summary = load_json(join(pred, "summary.json"))
    assert summary["classification"]["recall_per_class"] == {"1": 0.5}


def test_errors_name_the_file_and_the_fix(folders_3d, tmp_path, capsys):
    ref, pred, dataset_json = folders_3d
    import os
    os.remove(join(pred, "near.nii.gz"))
    with pytest.raises(SystemExit) as e:
        evaluate_main(["-ref", ref, "-pred", pred, "--dataset_json", dataset_json])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "1 reference case(s) have no prediction" in err and "near.nii.gz" in err
    assert "--chill" in err
    assert evaluate(ref, pred, dataset_json_file=dataset_json, chill=True, num_processes=1)["n_cases"] == 1
    _nifti(np.zeros((4, 8, 9)), join(pred, "near.nii.gz"))
    with pytest.raises(PredictionError, match=r"shape \(4, 8, 9\) differs from the reference's \(4, 8, 8\)"):
        evaluate(ref, pred, dataset_json_file=dataset_json, num_processes=1)
    with pytest.raises(PredictionError, match="Cannot tell which labels(.|\n)*-d DATASET"):
        evaluate(ref, pred)


@pytest.mark.parametrize("rule, dice_mean", [("nan", 0.25), ("one", 0.5)])
def test_empty_case_rule_and_false_positives_on_normal_images(tmp_path, capsys, rule, dice_mean):
    """Three PNG cases: a lesion half found (Dice 0.5), a normal image predicted normal, a normal image with a stray
    pixel (Dice 0). nnU-Net's rule leaves the second out of the mean; the challenge rule scores it 1."""
    from PIL import Image
    from semi_nnunet.run.evaluate_entrypoint import main as evaluate_main
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    lesion_r, lesion_p = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)
    lesion_r[0:2, 0:4] = 1  # 8 pixels
    lesion_p[0:2, 0:2] = 1
    lesion_p[6:8, 6:8] = 1  # TP 4, FP 4, FN 4 -> Dice 8 / 16 = 0.5
    normal = np.zeros((8, 8), np.uint8)
    stray = normal.copy()
    stray[5, 5] = 1
    for name, r, p in (("a", lesion_r, lesion_p), ("b", normal, normal), ("c", normal, stray)):
        Image.fromarray(r).save(ref / f"{name}.png")
        Image.fromarray(p).save(pred / f"{name}.png")
    dj = str(tmp_path / "dataset.json")
    save_json({"labels": {"background": 0, "fg": 1}, "file_ending": ".png", "channel_names": {"0": "x"}}, dj)
    summary = evaluate(str(ref), str(pred), dataset_json_file=dj, num_processes=1, empty_rule=rule)
    per_case = {os.path.basename(c["prediction_file"]): c["metrics"]["1"]["Dice"] for c in summary["metric_per_case"]}
    assert per_case["a.png"] == pytest.approx(0.5) and per_case["c.png"] == 0.0
    assert np.isnan(per_case["b.png"]) if rule == "nan" else per_case["b.png"] == 1.0
    assert summary["mean"]["1"]["Dice"] == pytest.approx(dice_mean)
    assert summary["empty_reference"]["1"] == {"cases": 2, "false_positive_images": 1, "false_positive_rate": 0.5}
    assert summary["distance_unit"] == "px" and summary["empty_rule"] == rule
    evaluate_main(["-ref", str(ref), "-pred", str(pred), "--dataset_json", dj, "--empty", rule, "-np", "1"])
    out = capsys.readouterr().out
    assert "HD95 (px)" in out and "1 of 2" in out and f"--empty {rule}" in out
