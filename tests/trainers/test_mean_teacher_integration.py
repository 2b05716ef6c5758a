"""Mean Teacher end to end on CPU: plan -> train 2 epochs -> checkpoint has the teacher -> resume -> predict."""
import os
import shutil
import subprocess

import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
from semi_nnunet.trainers.lookup import ext_trainer_path
from semi_nnunet.run.train_entrypoint import main as train_main
from semi_nnunet.trainers.variants import MeanTeacherTrainer_2epochs_2it

TRAINER = "MeanTeacherTrainer_2epochs_2it"


class MeanTeacherTrainer_3epochs_2it(MeanTeacherTrainer_2epochs_2it):
    """The same run, one epoch longer: what a resumed run continues into."""
    schedule = {**MeanTeacherTrainer_2epochs_2it.schedule, "num_epochs": 3}


def _trained(paths, dataset_id, dim, config):
    make_synthetic_dataset(paths["nnUNet_raw"], dataset_id, dim=dim, num_labeled=5, num_unlabeled=3, num_test=2)
    plan_and_preprocess(dataset_id, [config], num_processes=1, show_progress=False)
    train_main([str(dataset_id), config, TRAINER, "0", "-device", "cpu"])
    name = f"Dataset{dataset_id}_Synthetic{dim}D"
    return name, join(paths["nnUNet_results"], name, f"{TRAINER}__nnUNetPlans__{config}")


@pytest.fixture
def env(nnunet_paths, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    return nnunet_paths


def _state_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.mark.progress_png
def test_2d_train_resume_predict(env):
    name, model = _trained(env, 961, 2, "2d")
    final = join(model, "fold_0", "checkpoint_final.pth")
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and ckpt["semi_global_step"] == 4
    assert ckpt["teacher_weights"].keys() == ckpt["network_weights"].keys()
    assert not _state_equal(ckpt["teacher_weights"], ckpt["network_weights"])  # the teacher lags the student
    assert len(ckpt["logging"]["consistency"]) == 2 and len(ckpt["logging"]["unsup_loss"]) == 2
    from PIL import Image
    width, height = Image.open(join(model, "fold_0", "progress.png")).size
    assert height > 5400  # nnU-Net's three panels (54 inches at 100 dpi) plus our panel of semi-supervised curves

    # stock nnUNetv2_predict finds our trainer through nnUNet_extTrainer
    out = join(env["nnUNet_results"], "pred_stock")
    raw = join(env["nnUNet_raw"], name)
    r = subprocess.run([shutil.which("nnUNetv2_predict"), "-i", join(raw, "imagesTs"), "-o", out,
                    "-d", "961", "-c", "2d", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                    "--disable_tta"], env={**os.environ, "nnUNet_extTrainer": ext_trainer_path()},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["test000.png", "test001.png"]

    # resume (what --c does) into a longer schedule: equal weights, epoch count and step count continue
    from nnunetv2.run.run_training import maybe_load_checkpoint
    pre = join(env["nnUNet_preprocessed"], name)
    plans = {**load_json(join(pre, "nnUNetPlans.json")), "continue_training": True}
    trainer = MeanTeacherTrainer_3epochs_2it(plans, "2d", 0, load_json(join(pre, "dataset.json")),
                                             torch.device("cpu"))
    trainer.output_folder = join(model, "fold_0")  # the class name differs; point it at the trained run
    maybe_load_checkpoint(trainer, True, False, None)
    assert trainer.current_epoch == 2 and trainer.global_step == 4
    assert _state_equal(trainer.network.state_dict(), ckpt["network_weights"])
    assert _state_equal(trainer.teacher.state_dict(), ckpt["teacher_weights"])
    trainer.run_training()
    resumed = torch.load(final, map_location="cpu", weights_only=False)
    assert resumed["current_epoch"] == 3 and resumed["semi_global_step"] == 6
    assert len(resumed["logging"]["consistency"]) == 3 and len(resumed["logging"]["train_losses"]) == 3

def test_3d_train_and_predict(env):
    from semi_nnunet.demo_api import predict_and_evaluate
    name, model = _trained(env, 962, 3, "3d_fullres")
    ckpt = torch.load(join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["teacher_weights"] is not None and ckpt["trainer_name"] == TRAINER
    raw = join(env["nnUNet_raw"], name)
    dice = predict_and_evaluate(model, join(raw, "imagesTs"), join(raw, "labelsTs"),
                                join(env["nnUNet_results"], "pred3d"), folds=(0,))
    assert 0.0 <= dice <= 1.0


def test_semi_trainer_without_unlabeled_cases_says_how_to_make_them(env, capsys):
    make_synthetic_dataset(env["nnUNet_raw"], 963, dim=2, num_labeled=5, num_unlabeled=0)
    plan_and_preprocess(963, ["2d"], num_processes=1, show_progress=False)
    with pytest.raises(SystemExit) as e:
        train_main(["963", "2d", TRAINER, "0", "-device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "needs unlabeled cases" in err and "imagesUnlabeled/" in err
    assert "semi_nnUNet_plan_and_preprocess -d 963" in err
    assert not os.path.exists(join(env["nnUNet_results"], "Dataset963_Synthetic2D"))


def test_unknown_trainer_on_the_command_line(env, capsys):
    with pytest.raises(SystemExit):
        train_main(["963", "2d", "MeanTeacherTrainr"])
    assert "close matches: MeanTeacherTrainer" in capsys.readouterr().err
