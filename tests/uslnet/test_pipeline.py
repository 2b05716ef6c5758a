"""The whole USL-Net pipeline on CPU, with no label given: bright blobs on noise, every image unlabeled.

Chance level: the blobs cover a fraction f of each image (about 0.10 here). A prediction that ignores the image and
marks a fraction p of pixels at random has expected Dice 2pf / (p + f), at most 2f / (1 + f) (p = 1: everything
foreground), about 0.2. We require the final model's test Dice to exceed max(0.6, 2.5 x that bound): three times
chance, a margin no image-independent output reaches. (Measured: about 0.8.)
"""
import os
import shutil
import time

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from PIL import Image

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.uslnet.data import withhold_labels

TRAINER = "USLNetTrainer_tiny"


@pytest.fixture(scope="module")
def run(module_paths, tmp_path_factory):
    """Ten 32x32 images (labels moved out of the dataset), four test images; the full pipeline, once."""
    raw = make_synthetic_dataset(module_paths["nnUNet_raw"], 994, dim=2, num_labeled=10, num_unlabeled=0,
                                 num_test=4, shape=(32, 32))
    withheld = str(tmp_path_factory.mktemp("withheld"))
    withhold_labels(raw, withheld)
    from semi_nnunet.uslnet.cycles import run_uslnet
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_n_proc_DA", "0")
        start = time.time()
        report = run_uslnet(994, "2d", TRAINER, device="cpu", eval_labels=withheld, num_processes=1)
        yield {"report": report, "raw": raw, "withheld": withheld, "seconds": time.time() - start, **module_paths}


def test_no_label_reaches_training(run):
    raw, pre = run["raw"], join(run["nnUNet_preprocessed"], "Dataset994_Synthetic2D")
    assert not os.listdir(join(raw, "labelsTr")) and not os.listdir(join(raw, "imagesTr"))
    assert load_json(join(raw, "dataset.json"))["numTraining"] == 0
    assert not os.listdir(join(pre, "gt_segmentations")) and not os.listdir(join(pre, "nnUNetPlans_2d"))
    # each cycle trained on its pseudo-label folder, nothing else
    work = run["report"]["work_folder"]
    for k in (1, 2):
        debug = load_json(join(work, f"cycle_{k}", "model", "fold_all", "debug.json"))
        assert debug["preprocessed_dataset_folder"] == join(work, f"cycle_{k}", "pseudo_labels")


def test_final_prediction_is_well_above_chance(run):
    from semi_nnunet.inference.models import Member
    from semi_nnunet.inference.predict_api import predict
    raw = run["raw"]
    # the trainer's own results folder holds the final cycle's model: the ordinary prediction API works on it
    model = run["report"]["results_folder"]
    assert load_json(join(model, "fold_all", "uslnet_cycle.json"))["cycle"] == 2
    out = join(run["nnUNet_results"], "final_predictions")
    predict(join(raw, "imagesTs"), out, [Member(model, ["all"])], use_mirroring=False, device="cpu",
            show_progress=False)  # as the pipeline scores its cycles
    dices, fractions = [], []
    for name in sorted(os.listdir(join(raw, "labelsTs"))):
        truth = np.asarray(Image.open(join(raw, "labelsTs", name))) > 0
        pred = np.asarray(Image.open(join(out, name))) > 0
        dices.append(2 * (truth & pred).sum() / (truth.sum() + pred.sum()))
        fractions.append(truth.mean())
    f = float(np.mean(fractions))
    chance = 2 * f / (1 + f)
    assert float(np.mean(dices)) > max(0.6, 2.5 * chance), (dices, chance)
    assert run["report"]["cycles"][-1]["prediction"]["test_dice"] == pytest.approx(np.mean(dices), abs=1e-6)


def test_per_cycle_report(run):
    rows = run["report"]["cycles"]
    assert [r["cycle"] for r in rows] == [1, 2]
    first, second = rows[0]["pseudo_labels"], rows[1]["pseudo_labels"]
    assert first["source"] == "CCAM saliency" and second["source"] == "cycle 1 prediction"
    for part in (first, second):
        assert 0 < part["foreground_fraction"] < 0.5 and 0 < part["uncertain_fraction"] < 0.5
        assert part["foreground_fraction"] + part["uncertain_fraction"] + part["background_fraction"] == \
            pytest.approx(1.0)
        assert part["dice"] > 0.5 and part["certain_accuracy"] > 0.8  # against the withheld labels
    assert first["change_foreground_dice"] is None and 0 < second["change_foreground_dice"] <= 1
    assert 0 < second["change_fraction"] < 1
    work = run["report"]["work_folder"]
    assert load_json(join(work, "report.json"))["cycles"] == rows
    for k in (1, 2):
        assert isfile(join(work, f"cycle_{k}", "overlays.png"))
        assert Image.open(join(work, f"cycle_{k}", "overlays.png")).size[1] > 300  # one row per sampled case
    assert isfile(join(work, "report.png"))


def test_rerun_skips_everything(run, monkeypatch, capsys):
    """The command again: every stage and cycle is found done; nothing trains, nothing is predicted."""
    from semi_nnunet.run.uslnet_entrypoint import main
    from semi_nnunet.trainers.uslnet import USLNetTrainer

    def forbidden(*args, **kwargs):
        raise AssertionError("a finished step ran again")
    monkeypatch.setattr(USLNetTrainer, "run_training", forbidden)
    monkeypatch.setattr("semi_nnunet.uslnet.ccam.saliency_maps", forbidden)
    monkeypatch.setattr("semi_nnunet.uslnet.ccam.train_ccam", forbidden)
    monkeypatch.setattr("semi_nnunet.uslnet.moco.train_moco", forbidden)
    monkeypatch.setattr("semi_nnunet.inference.predict_api.fold_average", forbidden)
    main(["994", "-c", "2d", "-tr", TRAINER, "-device", "cpu", "--eval_labels", run["withheld"]])
    out = capsys.readouterr().out
    assert "[done] saliency stage" in out and "[done] cycle 2: training" in out


def test_changed_settings_are_refused(run):
    from semi_nnunet.trainers.uslnet import USLNetError
    from semi_nnunet.uslnet.cycles import run_uslnet
    with pytest.raises(USLNetError, match="other settings.*moco_checkpoint"):
        run_uslnet(994, "2d", TRAINER, device="cpu", moco_checkpoint=__file__)


def test_an_interrupted_cycle_resumes_from_its_latest_checkpoint(run, monkeypatch):
    """Kill cycle 2 after its first epoch (checkpoint_latest written), rerun: it continues at epoch 1."""
    from semi_nnunet.trainers.uslnet import USLNetTrainer
    from semi_nnunet.uslnet.cycles import run_uslnet
    work = run["report"]["work_folder"]
    cycle2 = join(work, "cycle_2")
    shutil.rmtree(join(cycle2, "model"))
    for name in ("predictions.json", "test_dice.json"):
        os.remove(join(cycle2, name))
    original = USLNetTrainer.on_epoch_end

    def killed_after_first_epoch(self):
        original(self)
        raise KeyboardInterrupt("killed")
    monkeypatch.setattr(USLNetTrainer, "on_epoch_end", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_uslnet(994, "2d", TRAINER, device="cpu", num_processes=1)
    fold = join(cycle2, "model", "fold_all")
    assert isfile(join(fold, "checkpoint_latest.pth")) and not isfile(join(fold, "checkpoint_final.pth"))
    monkeypatch.setattr(USLNetTrainer, "on_epoch_end", original)
    report = run_uslnet(994, "2d", TRAINER, device="cpu", num_processes=1)
    final = torch.load(join(fold, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["pseudo_loss"]) == 2
    assert report["cycles"][1]["prediction"]["test_dice"] is not None


def test_3d_configuration_is_refused(module_paths):
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.trainers.uslnet import USLNetError
    from semi_nnunet.uslnet.cycles import run_uslnet
    make_synthetic_dataset(module_paths["nnUNet_raw"], 995, dim=3, num_labeled=0, num_unlabeled=2, shape=(8, 16, 16))
    plan_and_preprocess(995, ["3d_fullres"], num_processes=1, show_progress=False)
    with pytest.raises(USLNetError, match=r"2D only.*'3d_fullres'.*-c 2d"):
        run_uslnet(995, "3d_fullres", TRAINER, device="cpu")
