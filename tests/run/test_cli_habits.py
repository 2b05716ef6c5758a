"""nnU-Net users' habits on our commands: a table of invocations and what each must do."""
import json
import os

import pytest

from semi_nnunet.run.predict_entrypoint import main as predict_main
from semi_nnunet.run.train_entrypoint import main as train_main

TRAINER = "nnUNetTrainer_2epochs_2it"


@pytest.fixture(scope="module")
def planned(module_paths):
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    make_synthetic_dataset(module_paths["nnUNet_raw"], 987, dim=2, num_labeled=5, num_unlabeled=1, shape=(32, 32))
    plan_and_preprocess(987, ["2d"], num_processes=1, show_progress=False)
    plans_file = os.path.join(module_paths["nnUNet_preprocessed"], "Dataset987_Synthetic2D", "nnUNetPlans.json")
    with open(plans_file) as f:
        plans = json.load(f)
    plans["configurations"]["2d_cascade"] = {"inherits_from": "2d", "previous_stage": "2d"}  # a cascade's 2nd stage
    with open(plans_file, "w") as f:
        json.dump(plans, f)
    # a results folder without any trained fold, for prediction arguments
    model = os.path.join(module_paths["nnUNet_results"], "Dataset987_Synthetic2D", "X__nnUNetPlans__2d")
    os.makedirs(model)
    for name in ("plans.json", "dataset.json"):
        with open(os.path.join(model, name), "w") as f:
            json.dump({}, f)
    return {**module_paths, "model": model}


def _run(main, argv, capsys):
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out + out.err


TRAIN = [
    # (argv, exit code, what the output must say, what it must not)
    (["987", "2d", "0", "-tr", TRAINER, "--dry-run"], 0, [f"train {TRAINER} fold 0"], []),  # nnU-Net's form
    (["987", "2d", "0", "1", "-tr", TRAINER, "--dry_run"], 0, [f"train {TRAINER} fold 1"], []),  # underscore spelling
    (["987", "2d", TRAINER, "all", "--dry-run", "--disable_checkpointing"], 0, [f"train {TRAINER} fold all"], []),
    (["987", "2d", "0"], 2, ["'0' stands where the trainer name goes", "-tr TRAINER"], []),
    (["987", "2d"], 2, ["No trainer given"], []),
    (["987", "2d", "Qwxyzk", "0"], 2, ["semi_nnunet methods: ", "MeanTeacherTrainer"],
     ["SemiSupervisedTrainer", "PseudoLabelTrainer"]),
    (["987", "2d", "0", "x", "-tr", TRAINER], 2, ["'x' is not one"], []),
    (["987", "2d", TRAINER, "0", "--executor", "slurm", "--parallel", "2", "--dry-run"], 2, ["Slurm decides"], []),
    (["987", "2d", TRAINER, "0", "--slurm_time", "soon", "--executor", "slurm"], 2, ["not a Slurm time"], []),
    (["987", "2d", TRAINER, "0", "--stop_agreement", "0.9", "--dry-run"], 2, ["not a staged trainer"], []),
    (["987", "2d_cascade", "MeanTeacherTrainer", "0", "--dry-run"], 2,
     ["second stage of nnU-Net's cascade", "train MeanTeacherTrainer on 3d_fullres or 2d"], []),
]


@pytest.mark.parametrize("argv, code, says, never", TRAIN, ids=[" ".join(t[0]) for t in TRAIN])
def test_train_invocations(planned, capsys, argv, code, says, never):
    got, text = _run(train_main, argv + ["-device", "cpu"], capsys)
    assert got == code, text
    for piece in says:
        assert piece in text, text
    for piece in never:
        assert piece not in text, text
    assert "unrecognized arguments" not in text


def _predict_cases(model):
    base = ["-i", model, "-o", model + "_out", "-device", "cpu", "-m", model]
    return [
        (base + ["-chk", "checkpoint_best.pth"], ["No fold of this model has checkpoint_best.pth"]),  # not -c hk
        (base + ["--chk", "checkpoint_latest.pth"], ["No fold of this model has checkpoint_latest.pth"]),
        (base + ["--save-probabilities", "--disable-tta", "-f", "0"], ["No fold of this model"]),
        (base + ["-num_parts", "2", "-part_id", "2"], ["-part_id 2 of -num_parts 2"]),
        (base + ["--num-parts", "2", "--part-id", "5"], ["-part_id 5 of -num_parts 2"]),
        (base + ["-f", "0", "-step_size", "0.7", "-npp", "3", "-nps", "3", "--disable_progress_bar",
                 "--not_on_device", "--verbose"], ["No fold of this model"]),  # nnUNetv2_predict's flags parse
    ]


@pytest.mark.parametrize("case", range(6))
def test_predict_invocations(planned, capsys, case):
    argv, says = _predict_cases(planned["model"])[case]
    got, text = _run(predict_main, argv, capsys)
    assert got == 2 and "unrecognized arguments" not in text, text
    for piece in says:
        assert piece in text, text


@pytest.mark.slow  # two short trainings (the demo test checks the bar in the default suite)
def test_training_shows_one_progress_bar_and_logs_everything_to_the_file(planned, capfd, monkeypatch):
    """The default console: a bar per training with loss and pseudo-Dice, none of nnU-Net's epoch lines (they are in
    the log file); --verbose gives nnU-Net's output as before."""
    import glob
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    results = os.path.join(planned["nnUNet_results"], "Dataset987_Synthetic2D", f"{TRAINER}__nnUNetPlans__2d")
    for fold, verbose in (("0", False), ("1", True)):
        train_main(["987", "2d", TRAINER, fold, "-device", "cpu"] + (["--verbose"] if verbose else []))
        captured = capfd.readouterr()
        log = "".join(open(f).read() for f in glob.glob(os.path.join(results, f"fold_{fold}", "training_log_*.txt")))
        assert "Epoch 1" in log and "train_loss" in log  # the full log, either way
        if verbose:
            assert "Epoch 1" in captured.out and f"{TRAINER} fold {fold}" not in captured.err
        else:
            assert "Epoch 1" not in captured.out and "train_loss" not in captured.out
            assert f"{TRAINER} fold {fold}" in captured.err and "2/2" in captured.err
            assert "loss=" in captured.err and "pseudo_dice=" in captured.err
    assert "SEMI_NNUNET_PROGRESS" not in os.environ  # set for the command only


def test_plan_invocations(module_paths, capsys):
    from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
    from semi_nnunet.run.plan_and_preprocess_entrypoint import main as plan_main
    make_synthetic_dataset(module_paths["nnUNet_raw"], 984, dim=2, num_labeled=4, num_unlabeled=1, shape=(32, 32))
    fingerprint = os.path.join(module_paths["nnUNet_preprocessed"], "Dataset984_Synthetic2D",
                               "dataset_fingerprint.json")
    code, text = _run(plan_main, ["-d", "984", "-c", "2d", "-np", "1", "-npfp", "1", "--no_pbar"], capsys)
    assert code == 0, text
    before = os.path.getmtime(fingerprint)
    code, text = _run(plan_main, ["-d", "984", "-c", "2d", "-np", "1", "--no_pbar"], capsys)
    assert code == 0 and os.path.getmtime(fingerprint) == before  # current: not extracted again
    code, text = _run(plan_main, ["-d", "984", "-c", "2d", "-np", "1", "--clean", "--no-pbar"], capsys)
    assert code == 0 and os.path.getmtime(fingerprint) > before, text  # --clean: extracted again
    for argv, says in ((["-np", "1", "2"], "-np gives 2 numbers for 1 configurations"),
                       (["-fpe", "MyExtractor"], "Unknown fingerprint extractor 'MyExtractor'"),
                       (["-overwrite_target_spacing", "1", "1"], "-overwrite_target_spacing is not supported")):
        code, text = _run(plan_main, ["-d", "984", "-c", "2d"] + argv, capsys)
        assert code == 2 and says in text and "unrecognized arguments" not in text, text
