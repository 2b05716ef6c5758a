"""semi_nnUNet_benchmark end to end on a tiny synthetic dataset: subsets, table == semi_nnUNet_evaluate, resume."""
import json
import os

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.benchmarking.label_efficiency import BenchmarkError, choose_labeled, make_subset, trainer_names
from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.run.benchmark_entrypoint import main as benchmark_main
from semi_nnunet.run.evaluate_entrypoint import main as evaluate_main

BUDGET = ["--epochs", "2", "--iterations", "2"]


def test_subsets_are_nested_and_never_copy_a_withheld_label(tmp_path):
    source = make_synthetic_dataset(str(tmp_path / "raw"), 951, num_labeled=6, num_unlabeled=2, num_test=2)
    small, large = choose_labeled([f"lab{i:03d}" for i in range(6)], 2, 3), \
        choose_labeled([f"lab{i:03d}" for i in range(6)], 4, 3)
    assert set(small) < set(large)
    folder = make_subset(source, str(tmp_path / "sub"), 952, 2, 3)
    ds = load_json(join(folder, "dataset.json"))
    assert ds["numTraining"] == 2 and ds["numUnlabeled"] == 6 and ds["benchmark_subset"]["labeled"] == small
    assert sorted(os.listdir(join(folder, "labelsTr"))) == [c + ".png" for c in small]
    unlabeled = sorted(f[:-len("_0000.png")] for f in os.listdir(join(folder, "imagesUnlabeled")))
    assert unlabeled == sorted({f"lab{i:03d}" for i in range(6)} - set(small)) + ["unl000", "unl001"]
    assert not os.path.exists(folder + ".partial")
    with pytest.raises(BenchmarkError, match=r"7 labeled cases were asked for but the dataset has 6"):
        make_subset(source, str(tmp_path / "sub2"), 953, 7, 0)


def test_bad_benchmark_input_fails_before_training(tmp_path, nnunet_paths, capsys):
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 954, num_labeled=3, num_unlabeled=1)  # no test set
    with pytest.raises(SystemExit) as e:
        benchmark_main(["-d", "954", "--labeled", "2", "-o", str(tmp_path / "b"), "-device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "needs a labeled test set" in err and "imagesTs" in err
    with pytest.raises(BenchmarkError, match="learns without labels"):
        trainer_names(["USLNetTrainer"], "nnUNetTrainer", 2, 2, False)
    with pytest.raises(Exception, match=r"Unknown trainer 'MeanTeecherTrainer' \(close matches: MeanTeacherTrainer"):
        trainer_names(["MeanTeecherTrainer"], "nnUNetTrainer", 2, 2, False)
    assert trainer_names(["MeanTeacherTrainer"], "nnUNetTrainer", 3, 4, True) == [
        "nnUNetTrainer_3epochs_4it", "MeanTeacherTrainer_3epochs_4it", "MeanTeacherTrainer_3epochs_4it_HCO"]


def test_benchmark_end_to_end_matches_evaluate_and_resumes(tmp_path, nnunet_paths, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 955, num_labeled=5, num_unlabeled=2, num_test=4,
                           shape=(32, 32))
    out = str(tmp_path / "bench")
    args = ["-d", "955", "-c", "2d", "--labeled", "3", "-tr", "MeanTeacherTrainer", "--no-hco", *BUDGET,
            "-o", out, "-device", "cpu", "-np", "1"]
    benchmark_main(args)
    results = load_json(join(out, "results.json"))
    assert results["trainers"] == ["nnUNetTrainer_2epochs_2it", "MeanTeacherTrainer_2epochs_2it"]
    (subset,) = results["subsets"]
    assert subset["n_labeled"] == 3
    for name, row in subset["methods"].items():
        # the table's numbers are semi_nnUNet_evaluate's on the same predictions
        evaluate_main(["-ref", join(nnunet_paths["nnUNet_raw"], "Dataset955_Synthetic2D", "labelsTs"),
                       "-pred", row["prediction_folder"], "-o", str(tmp_path / f"eval_{name}"), "-np", "1"])
        summary = load_json(join(str(tmp_path / f"eval_{name}"), "summary.json"))
        assert row["n_test"] == summary["n_cases"] == 4
        for metric in ("Dice", "HD95", "ASD"):
            assert row[metric]["mean"] == pytest.approx(summary["mean"]["1"][metric], nan_ok=True)
            assert row[metric]["std"] == pytest.approx(summary["std"]["1"][metric], nan_ok=True)
        assert row["train_time_s"] > 0 and row["epochs_trained"] == 2
    base, mt = subset["methods"].values()
    assert base["wilcoxon_vs_baseline"] is None and base["time_per_iteration_ratio"] == 1.0
    assert mt["wilcoxon_vs_baseline"]["Dice"]["n"] <= 4 and 0 <= mt["wilcoxon_vs_baseline"]["Dice"]["p_value"] <= 1
    table = open(join(out, "results.md")).read()
    assert f"{mt['Dice']['mean']:.4f} ± {mt['Dice']['std']:.4f}" in table and "dice_n3.png" in table
    assert os.path.getsize(join(out, "dice_n3.png")) > 1000

    # rerun: nothing retrained or repredicted, same numbers
    checkpoint = join(subset["root"], "nnUNet_results", subset["dataset"],
                      "MeanTeacherTrainer_2epochs_2it__nnUNetPlans__2d", "fold_all", "checkpoint_final.pth")
    before = os.path.getmtime(checkpoint)
    capsys.readouterr()
    benchmark_main(args)
    assert os.path.getmtime(checkpoint) == before
    assert "MeanTeacherTrainer_2epochs_2it: trained" in capsys.readouterr().out
    again = load_json(join(out, "results.json"))["subsets"][0]["methods"]
    assert json.dumps(again["MeanTeacherTrainer_2epochs_2it"]["Dice"]) == json.dumps(mt["Dice"])
    assert np.isfinite(mt["seconds_per_iteration"])


def test_two_d_only_method_on_a_three_d_configuration_fails_before_training():
    with pytest.raises(BenchmarkError, match=r"HermesTrainer works on 2D images only, and the configuration is 3D"):
        trainer_names(["MeanTeacherTrainer", "HermesTrainer"], "nnUNetTrainer", 2, 2, False, dims=3)
