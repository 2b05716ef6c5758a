"""The challenge path of documentation/challenge_submission.md, end to end, with the commands a user types: two
trainers (one staged) x two folds with --npz -> nnUNetv2_find_best_configuration -> semi_nnUNet_predict with the
chosen models -> nnUNetv2_apply_postprocessing -> nnUNetv2_export_model_to_zip -> install the zips elsewhere ->
the same prediction from the installed models gives the same labels. The page lists exactly these commands."""
import os
import shutil
import subprocess

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json

pytestmark = pytest.mark.slow  # six short trainings, validations and predictions: a few minutes on two cores
BASELINE, STAGED = "nnUNetTrainer_2epochs_2it", "SemiCervixTrainer_2epochs_2it"


def _run(env, *command):
    r = subprocess.run([shutil.which(command[0]), *command[1:]], env=env, capture_output=True, text=True)
    assert r.returncode == 0, " ".join(command) + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _labels(folder):
    from PIL import Image
    return {f: np.asarray(Image.open(join(folder, f))) for f in sorted(os.listdir(folder)) if f.endswith(".png")}


def test_the_documented_challenge_path(nnunet_paths, tmp_path):
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
    from semi_nnunet.trainers.lookup import ext_trainer_path
    raw = make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 986, dim=2, num_labeled=6, num_unlabeled=3,
                                 num_test=3, shape=(32, 32))
    env = {**os.environ, "nnUNet_n_proc_DA": "0", "nnUNet_extTrainer": ext_trainer_path()}
    images, work = join(raw, "imagesTs"), str(tmp_path)
    # 1. train the candidates, with --npz
    _run(env, "semi_nnUNet_plan_and_preprocess", "-d", "986", "-c", "2d", "-np", "1")
    _run(env, "semi_nnUNet_train", "986", "2d", BASELINE, "0", "1", "--npz", "-device", "cpu")
    _run(env, "semi_nnUNet_train", "986", "2d", STAGED, "0", "1", "--stages", "1", "--npz", "-device", "cpu")
    # 2. choose on the cross-validation with nnU-Net's tool
    _run(env, "nnUNetv2_find_best_configuration", "986", "-c", "2d", "-tr", BASELINE, f"{STAGED}_stage1",
         "-f", "0", "1", "-np", "1")
    results = join(nnunet_paths["nnUNet_results"], "Dataset986_Synthetic2D")
    best = load_json(join(results, "inference_information.json"))["best_model_or_ensemble"]
    chosen = [m["trainer"] for m in best["selected_model_or_models"]]
    assert chosen and set(chosen) <= {BASELINE, f"{STAGED}_stage1"}
    # 3. predict with the chosen model(s), 4. post-process as chosen
    predict = ["semi_nnUNet_predict", "-i", images, "-d", "986", "-c", "2d", "-tr", *chosen, "-f", "0", "1",
               "-device", "cpu"]
    _run(env, *predict, "-o", join(work, "pred"))
    postprocess = ["nnUNetv2_apply_postprocessing", "-pp_pkl_file", best["postprocessing_file"],
                   "-plans_json", best["some_plans_file"], "-np", "1"]
    _run(env, *postprocess, "-i", join(work, "pred"), "-o", join(work, "pred_pp"))
    submitted = _labels(join(work, "pred_pp"))
    assert sorted(submitted) == [f"test{i:03d}.png" for i in range(3)]
    # 7. export the chosen models, install them elsewhere, predict again: the same labels
    for trainer in chosen:
        _run(env, "nnUNetv2_export_model_to_zip", "-d", "986", "-o", join(work, f"{trainer}.zip"), "-c", "2d",
             "-tr", trainer, "-f", "0", "1")
    elsewhere = {**env, "nnUNet_results": join(work, "installed")}
    os.makedirs(elsewhere["nnUNet_results"])
    for trainer in chosen:
        _run(elsewhere, "nnUNetv2_install_pretrained_model_from_zip", join(work, f"{trainer}.zip"))
    _run(elsewhere, *predict, "-o", join(work, "pred_installed"))
    for name, labels in _labels(join(work, "pred")).items():
        assert np.array_equal(labels, _labels(join(work, "pred_installed"))[name]), name
    # the staged trainer's folds really have what find_best_configuration scored: validation probabilities
    for f in (0, 1):
        validation = join(results, f"{STAGED}_stage1__nnUNetPlans__2d", f"fold_{f}", "validation")
        assert any(n.endswith(".npz") for n in os.listdir(validation))
