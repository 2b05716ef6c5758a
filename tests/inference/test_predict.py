"""semi_nnUNet_predict: in-memory fold ensembling, resume after a kill, bad input, nnU-Net compatibility."""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.inference.models import Member, PredictionError
from semi_nnunet.inference.predict_api import fold_average, load_predictor, predict
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.run.predict_entrypoint import main as predict_main
from semi_nnunet.train_api import train

TRAINER = "MeanTeacherTrainer_2epochs_2it"  # a semi-supervised trainer's results folder


@pytest.fixture(scope="module")
def trained(module_paths):
    """Folds 0 and 1 of a tiny 2D model (validation probabilities saved), a copy of its results folder as a second
    "trainer" (ensembles below pair fold 0 of one with fold 1 of the other, so the members differ), 4 test images."""
    with pytest.MonkeyPatch.context() as mp:  # for this module only: other modules run nnU-Net's stock planner
        mp.setenv("nnUNet_n_proc_DA", "0")
        raw = make_synthetic_dataset(module_paths["nnUNet_raw"], 941, dim=2, num_labeled=6, num_unlabeled=2,
                                     num_test=4)
        plan_and_preprocess(941, ["2d"], num_processes=1, show_progress=False)
        train(941, "2d", TRAINER, [0, 1], device="cpu", export_validation_probabilities=True)
        model = join(module_paths["nnUNet_results"], "Dataset941_Synthetic2D", f"{TRAINER}__nnUNetPlans__2d")
        other = model.replace(TRAINER, "OtherTrainer")
        shutil.copytree(model, other)
        yield {**module_paths, "raw": raw, "model": model, "images": join(raw, "imagesTs")}


def _npz(folder, case="test000"):
    return np.load(join(folder, case + ".npz"))["probabilities"]


def test_two_fold_ensemble_is_the_mean_of_the_single_fold_softmax(trained, tmp_path):
    outs = {}
    for name, folds in (("f0", [0]), ("f1", [1]), ("f01", [0, 1])):
        outs[name] = str(tmp_path / name)
        predict(trained["images"], outs[name], [Member(trained["model"], folds)], device="cpu",
                save_probabilities=True, show_progress=False)
    for case in ("test000", "test003"):
        p0, p1, p01 = _npz(outs["f0"], case), _npz(outs["f1"], case), _npz(outs["f01"], case)
        assert not np.allclose(p0, p1, atol=1e-3), "two different folds predict differently"
        np.testing.assert_allclose(p01, (p0 + p1) / 2, atol=1e-5)
    assert sorted(os.listdir(outs["f01"])) == sorted(
        [f"test{i:03d}{e}" for i in range(4) for e in (".png", ".npz", ".pkl")]
        + ["dataset.json", "ensemble.json", "plans.json"]), \
        "one file set per case, nothing per fold, no staging left"

    # the same in the network's space, straight from the predictor
    predictor = load_predictor(Member(trained["model"], [0, 1]), torch.device("cpu"), use_mirroring=True)
    data = torch.rand(1, 1, 48, 48)  # (channels, 1, x, y): nnU-Net's 2D layout
    both = fold_average(predictor, data)
    singles = []
    for params in list(predictor.list_of_parameters):
        predictor.network.load_state_dict(params)
        singles.append(torch.softmax(predictor.predict_sliding_window_return_logits(data).float(), 0))
    torch.testing.assert_close(both, (singles[0] + singles[1]) / 2, atol=1e-6, rtol=0)


def test_logits_average_reproduces_stock_nnunet_predict(trained, tmp_path):
    ours, stock = str(tmp_path / "ours"), str(tmp_path / "stock")
    predict_main(["-i", trained["images"], "-o", ours, "-d", "941", "-c", "2d", "-tr", TRAINER, "-f", "0", "1",
                  "--average", "logits", "-device", "cpu"])
    from semi_nnunet.demo_api import predict_and_evaluate  # stock nnUNetPredictor.predict_from_files
    predict_and_evaluate(trained["model"], trained["images"], join(trained["raw"], "labelsTs"), stock, "cpu", (0, 1))
    from PIL import Image
    for i in range(4):
        a = np.asarray(Image.open(join(ours, f"test{i:03d}.png")))
        b = np.asarray(Image.open(join(stock, f"test{i:03d}.png")))
        assert np.array_equal(a, b)


def test_trainers_ensemble_and_spec(trained, tmp_path):
    out = str(tmp_path / "two_trainers")
    spec = str(tmp_path / "spec.json")
    save_json([{"dataset": 941, "configuration": "2d", "trainer": TRAINER, "folds": [0]},
               {"model": trained["model"].replace(TRAINER, "OtherTrainer"), "folds": [1]}], spec)
    predict_main(["-i", trained["images"], "-o", out, "--spec", spec, "-device", "cpu", "--save_probabilities"])
    record = load_json(join(out, "ensemble.json"))
    assert [m["folds"] for m in record["members"]] == [["0"], ["1"]]
    single = str(tmp_path / "single")
    predict(trained["images"], single, [Member(trained["model"], [0])], device="cpu", save_probabilities=True,
            show_progress=False)
    other = str(tmp_path / "other")
    predict(trained["images"], other, [Member(record["members"][1]["folder"], [1])], device="cpu",
            save_probabilities=True, show_progress=False)
    assert not np.allclose(_npz(single), _npz(other), atol=1e-3)
    np.testing.assert_allclose(_npz(out), (_npz(single) + _npz(other)) / 2, atol=1e-5)


def test_rerun_skips_finished_cases_and_refuses_another_ensemble(trained, tmp_path):
    out = str(tmp_path / "out")
    assert len(predict(trained["images"], out, [Member(trained["model"], [0])], device="cpu",
                       show_progress=False)) == 4
    os.remove(join(out, "test002.png"))
    assert predict(trained["images"], out, [Member(trained["model"], [0])], device="cpu", show_progress=False) \
        == ["test002"]
    with pytest.raises(PredictionError, match="another ensemble.*\n.*ensemble.json\n.*new output folder"):
        predict(trained["images"], out, [Member(trained["model"], [0, 1])], device="cpu", show_progress=False)
    assert len(predict(trained["images"], out, [Member(trained["model"], [0, 1])], device="cpu", overwrite=True,
                       show_progress=False)) == 4


def test_parts_split_the_cases_as_nnunet_and_together_equal_one_run(trained, tmp_path, capsys):
    whole = str(tmp_path / "whole")
    predict(trained["images"], whole, [Member(trained["model"], [0])], device="cpu", show_progress=False)
    parts = str(tmp_path / "parts")
    done = [predict(trained["images"], parts, [Member(trained["model"], [0])], device="cpu", show_progress=False,
                    num_parts=3, part_id=i) for i in range(3)]
    assert done == [["test000", "test003"], ["test001"], ["test002"]]  # sorted cases, every 3rd from part_id
    from PIL import Image
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(join(whole, f"test{i:03d}.png"))),
                              np.asarray(Image.open(join(parts, f"test{i:03d}.png"))))
    assert not any(n.startswith(".") for n in os.listdir(parts))  # no staging folder of any part left
    # every part as a task (local executor: one after the other), through the command
    tasks = str(tmp_path / "tasks")
    predict_main(["-i", trained["images"], "-o", tasks, "-m", trained["model"], "-f", "0", "-num_parts", "2",
                  "-device", "cpu"])
    assert "Predicted 2 part(s)" in capsys.readouterr().out
    assert sorted(n for n in os.listdir(tasks) if n.endswith(".png")) == [f"test{i:03d}.png" for i in range(4)]
    err = _run(["-i", trained["images"], "-o", str(tmp_path / "bad"), "-m", trained["model"], "-num_parts", "2",
                "-part_id", "2", "-device", "cpu"], capsys)
    assert "-part_id 2 of -num_parts 2" in err and "-part_id 0..N-1" in err


KILL_SCRIPT = """
import os, sys, time
from semi_nnunet.inference import predict_api
original = predict_api._export
def slow_export(*args, **kwargs):
    original(*args, **kwargs)
    with open(os.path.join(sys.argv[2], "..", "exported.log"), "a") as f:
        f.write(args[0] + "\\n")
    time.sleep(3)
predict_api._export = slow_export
from semi_nnunet.inference.models import Member
predict_api.predict(sys.argv[1], sys.argv[2], [Member(sys.argv[3], [0])], device="cpu", show_progress=False)
"""


def test_killed_prediction_resumes_without_redoing_finished_cases(trained, tmp_path):
    script = tmp_path / "predict_slowly.py"
    script.write_text(KILL_SCRIPT)
    out = str(tmp_path / "out")
    log = tmp_path / "exported.log"
    proc = subprocess.Popen([sys.executable, str(script), trained["images"], out, trained["model"]],
                            env=os.environ.copy())
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_text().split()) >= 2) and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(f[:-4] for f in os.listdir(out) if f.endswith(".png"))
    assert 2 <= len(finished) < 4, finished
    assert all(f.startswith(".semi_nnunet_staging") or f.endswith((".png", ".json")) for f in os.listdir(out))
    assert not any(f.startswith(".tmp") for f in os.listdir(out)), "no half-written file"
    redone = predict(trained["images"], out, [Member(trained["model"], [0])], device="cpu", show_progress=False)
    assert sorted(redone) == sorted(set(f"test{i:03d}" for i in range(4)) - set(finished))
    reference = str(tmp_path / "reference")
    predict(trained["images"], reference, [Member(trained["model"], [0])], device="cpu", show_progress=False)
    from PIL import Image
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(join(out, f"test{i:03d}.png"))),
                              np.asarray(Image.open(join(reference, f"test{i:03d}.png"))))
    assert not os.path.exists(join(out, ".semi_nnunet_staging"))


@pytest.fixture
def bad_inputs(trained, tmp_path):
    images = str(tmp_path / "images")
    shutil.copytree(trained["images"], images)
    return images


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        predict_main(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_bad_input_errors(trained, bad_inputs, tmp_path, capsys):
    out = str(tmp_path / "out")
    base = ["-i", bad_inputs, "-o", out, "-device", "cpu"]
    no_folds = ["-d", "941", "-c", "2d", "-tr", TRAINER]
    model = no_folds + ["-f", "0", "1"]
    empty_model = join(trained["nnUNet_results"], "Dataset941_Synthetic2D", "Empty__nnUNetPlans__2d")
    shutil.copytree(trained["model"], empty_model, ignore=shutil.ignore_patterns("*.pth"))
    cases = [
        # (change to the inputs, argv, expected message pieces)
        (lambda: os.remove(join(bad_inputs, "test001_0000.png")), base + model, None),  # removes a whole case: fine
        (lambda: shutil.copy(join(bad_inputs, "test000_0000.png"), join(bad_inputs, "test000_0001.png")),
         base + model, ["Case 'test000' has channel files", "test000_0001.png", "channel_names"]),
        (lambda: shutil.copy(join(bad_inputs, "test000_0000.png"), join(bad_inputs, "extra.nii.gz")),
         base + model, ["unexpected ending", "extra.nii.gz", "convert it to .png"]),
        (None, base + ["-m", empty_model], ["No fold of this model has checkpoint_final.pth", "Empty__nnUNetPlans",
                                             "-chk"]),
        (None, base + no_folds, ["Fold 2 has no checkpoint_final.pth (no -f: nnU-Net's default folds 0-4)",
                                 "fold_2", "-f 0 1"]),
        (None, base + no_folds + ["-f", "3"], ["Fold 3 has no checkpoint_final.pth", "fold_3", "-f 0 1"]),
        (None, base + ["-m", trained["model"], "-f", "0", "1", "-d", "Dataset999_Other"],
         ["trained on Dataset941_Synthetic2D, not on Dataset999_Other", "-d Dataset941_Synthetic2D"]),
        (None, base + ["-d", "941", "-c", "3d_fullres", "-tr", TRAINER],
         ["model folder does not exist", "3d_fullres", "semi_nnUNet_train"]),
        (None, base + ["-c", "2d", "-tr", TRAINER], ["-c and -tr name models only together with -d"]),
    ]
    for change, argv, expected in cases:
        if change is not None:
            change()
        if expected is None:
            continue
        err = _run(argv, capsys)
        for piece in expected:
            assert piece in err, (piece, err)
        assert not os.path.exists(out), "no output before the input is checked"
        for f in os.listdir(bad_inputs):  # undo the change for the next case
            if f not in {f"test{i:03d}_0000.png" for i in (0, 2, 3)}:
                os.remove(join(bad_inputs, f))


def test_missing_channel_of_a_two_channel_model(trained, tmp_path, capsys):
    """A model trained on two channels given one channel file names the missing file."""
    from semi_nnunet.inference.predict_api import input_cases
    with pytest.raises(PredictionError, match=r"Case 'test000' has 1 channel file\(s\); the model needs 2(.|\n)*"
                                              r"test000_0000.png(.|\n)*CASE_0001.png"):
        input_cases(trained["images"], {"channel_names": {"0": "a", "1": "b"}, "file_ending": ".png"})


def test_members_with_different_plans_are_averaged_on_the_image_grid(trained, tmp_path):
    """Members preprocessed differently (here: other plans) are averaged after resampling back to the image; with
    the same weights in both members the ensemble equals the single model."""
    copy = trained["model"].replace(TRAINER, "CopyTrainer")
    shutil.copytree(trained["model"], copy, dirs_exist_ok=True)
    plans = load_json(join(copy, "plans.json"))
    save_json({**plans, "plans_name": "OtherPlans"}, join(copy, "plans.json"))
    both, single = str(tmp_path / "both"), str(tmp_path / "single")
    predict(trained["images"], both, [Member(trained["model"], [1]), Member(copy, [1])], device="cpu",
            save_probabilities=True, show_progress=False)
    predict(trained["images"], single, [Member(trained["model"], [1])], device="cpu", save_probabilities=True,
            show_progress=False)
    np.testing.assert_allclose(_npz(both), _npz(single), atol=1e-5)
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(join(both, "test000.png"))),
                          np.asarray(Image.open(join(single, "test000.png"))))


def test_nnunet_tools_work_on_our_results_folders(trained, tmp_path):
    """nnUNetv2_find_best_configuration, nnUNetv2_ensemble and nnUNetv2_apply_postprocessing on our folders; the
    file-based nnUNetv2_ensemble of two of our single-model predictions equals our in-memory ensemble."""
    from semi_nnunet.trainers.lookup import ext_trainer_path
    env = {**os.environ, "nnUNet_extTrainer": ext_trainer_path()}

    def run(*args):
        r = subprocess.run([shutil.which(args[0]), *args[1:]], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    out = run("nnUNetv2_find_best_configuration", "941", "-c", "2d", "-tr", TRAINER, "OtherTrainer", "-f", "0", "1",
              "-np", "1")
    assert "*Best*" in out
    dataset_results = join(trained["nnUNet_results"], "Dataset941_Synthetic2D")
    assert os.path.isfile(join(dataset_results, "inference_information.json"))

    a, b, ours, theirs = (str(tmp_path / n) for n in ("a", "b", "ours", "theirs"))
    other = trained["model"].replace(TRAINER, "OtherTrainer")
    for folder, member in ((a, Member(trained["model"], [0])), (b, Member(other, [1]))):
        predict(trained["images"], folder, [member], device="cpu", save_probabilities=True, show_progress=False)
    predict(trained["images"], ours, [Member(trained["model"], [0]), Member(other, [1])], device="cpu",
            show_progress=False)
    run("nnUNetv2_ensemble", "-i", a, b, "-o", theirs, "-np", "1")
    from PIL import Image
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(join(ours, f"test{i:03d}.png"))),
                              np.asarray(Image.open(join(theirs, f"test{i:03d}.png"))))

    # export as nnU-Net's zip, install elsewhere, predict from the installed copy: same labels
    archive = str(tmp_path / "model.zip")
    run("nnUNetv2_export_model_to_zip", "-d", "941", "-o", archive, "-c", "2d", "-tr", TRAINER, "-f", "0", "1")
    installed_results = str(tmp_path / "installed_results")
    os.makedirs(installed_results)
    env["nnUNet_results"] = installed_results
    run("nnUNetv2_install_pretrained_model_from_zip", archive)
    installed = join(installed_results, "Dataset941_Synthetic2D", f"{TRAINER}__nnUNetPlans__2d")
    from_zip = str(tmp_path / "from_zip")
    predict(trained["images"], from_zip, [Member(installed, [0])], device="cpu", show_progress=False)
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(join(from_zip, f"test{i:03d}.png"))),
                              np.asarray(Image.open(join(a, f"test{i:03d}.png"))))

    pp = join(trained["model"], "crossval_results_folds_0_1")
    run("nnUNetv2_apply_postprocessing", "-i", ours, "-o", str(tmp_path / "pp"), "-pp_pkl_file",
        join(pp, "postprocessing.pkl"), "-plans_json", join(pp, "plans.json"), "-np", "1")
    assert sorted(f for f in os.listdir(tmp_path / "pp") if f.endswith(".png")) == \
        [f"test{i:03d}.png" for i in range(4)]


def test_pseudo_labels_use_the_same_engine_and_save_confidence_and_entropy(trained, tmp_path):
    from semi_nnunet.planners.plan_and_preprocess_api import get_unlabeled_folder
    from semi_nnunet.stages.pseudo_labels import confidence_and_entropy, predict_pseudo_labels
    from semi_nnunet.trainers.unlabeled_data import UnlabeledDataset

    # by hand: p = (0.5, 0.5) -> confidence 0.5, entropy ln 2; p = (1, 0) -> 1 and 0
    conf, ent = confidence_and_entropy(torch.tensor([[0.5, 1.0], [0.5, 0.0]]))
    torch.testing.assert_close(conf, torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(ent, torch.tensor([float(np.log(2)), 0.0]), atol=1e-6, rtol=0)

    unlabeled = get_unlabeled_folder("Dataset941_Synthetic2D", "nnUNetPlans", "2d")
    out = str(tmp_path / "pseudo")
    predict_pseudo_labels(trained["model"], [0, 1], unlabeled, out, {"stage": 1}, save_maps=True)
    case = sorted(f[:-len("_confidence.npy")] for f in os.listdir(out) if f.endswith("_confidence.npy"))[0]
    predictor = load_predictor(Member(trained["model"], [0, 1]), torch.device("cpu"), use_mirroring=False)
    data = torch.from_numpy(np.asarray(UnlabeledDataset(unlabeled, [case]).load_case(case)[0][:], np.float32))
    probabilities = fold_average(predictor, data)
    np.testing.assert_allclose(np.load(join(out, case + "_confidence.npy")), probabilities.max(0).values.numpy(),
                               atol=2e-3)  # float16 on disk
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    seg = np.asarray(nnUNetDatasetBlosc2(out, [case]).load_case(case)[1][:])
    assert np.array_equal(seg[0], probabilities.argmax(0).numpy())
    assert load_json(join(out, "provenance.json"))["maps"] is True


@pytest.mark.parametrize("step", [0.0, 1.5, -0.2])
def test_a_step_size_outside_the_patch_is_refused(step):
    with pytest.raises(PredictionError, match=r"-step_size .* must be in \(0, 1\]"):
        load_predictor(Member("/no/model/needed"), torch.device("cpu"), step_size=step)
