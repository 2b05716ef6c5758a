"""The README's first command, on a 2-iteration budget: bundled data -> preprocess -> train -> predict -> Dice."""
import math
import os

import pytest

from semi_nnunet.demo_api import DEMO_DATA, run_demo


def test_demo_runs_end_to_end_and_resumes(tmp_path, monkeypatch, capsys):
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, "unset-by-test")  # restored after the test; run_demo points them into its folder
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    workdir = tmp_path / "demo"
    scores = run_demo(str(workdir), trainers=("nnUNetTrainer_2epochs_2it",), num_processes=1)
    dice = scores["nnUNetTrainer_2epochs_2it"]
    assert math.isfinite(dice) and 0.0 <= dice <= 1.0
    predictions = workdir / "predictions" / "nnUNetTrainer_2epochs_2it"
    assert len([f for f in os.listdir(predictions) if f.endswith(".png")]) == \
        len(os.listdir(os.path.join(DEMO_DATA, "test", "images")))
    assert (predictions / "summary.json").is_file()
    unlabeled = workdir / "nnUNet_preprocessed" / "Dataset990_HC18Demo" / "nnUNetPlans_2d_unlabeled"
    assert len([f for f in os.listdir(unlabeled) if f.endswith(".pkl")]) == \
        len(os.listdir(os.path.join(DEMO_DATA, "unlabeled")))
    captured = capsys.readouterr()
    assert f"Results are in {workdir}" in captured.out and "Test Dice" in captured.out  # the closing table
    assert "nnUNetTrainer_2epochs_2it fold all" in captured.err  # one progress bar per training ...
    assert "Epoch 1" not in captured.out and "train_loss" not in captured.out  # ... not nnU-Net's epoch log

    again = run_demo(str(workdir), trainers=("nnUNetTrainer_2epochs_2it",), num_processes=1)
    assert again == scores
    assert "already trained" in capsys.readouterr().out


def test_the_demo_trains_the_benchmarks_best_method_and_prints_the_benchmark():
    """The demo's method is the one its packaged benchmark summary shows best; both packaged summaries (the converged
    benchmark, and the benchmark at the demo's own budget and labeled subset) are the ones their source results.json
    give (no number in them typed by hand), and the demo's budget is the one that benchmark measured."""
    from batchgenerators.utilities.file_and_folder_operations import load_json

    from semi_nnunet.benchmarking.report import best_method, reliably_ahead, summary
    from semi_nnunet.demo_api import BENCHMARK_SUMMARY, DEFAULT_TRAINERS, DEMO_BUDGET_SUMMARY, benchmark_context
    from semi_nnunet.trainers.variants import nnUNetTrainer_demo
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    packaged, demo = load_json(BENCHMARK_SUMMARY), load_json(DEMO_BUDGET_SUMMARY)
    for summ in (packaged, demo):
        assert {"source": summ["source"], **summary(load_json(os.path.join(repo, summ["source"])))} == summ
    best = best_method(packaged, packaged["rows"][0]["labeled"])
    assert DEFAULT_TRAINERS == ("nnUNetTrainer_demo", f"{best}_demo" if best else "nnUNetTrainer_demo")
    schedule = nnUNetTrainer_demo.schedule
    assert (demo["budget"]["epochs"], demo["budget"]["iterations_per_epoch"]) == \
        (schedule["num_epochs"], schedule["num_iterations_per_epoch"])
    assert demo["rows"][0]["labeled"] == str(len(os.listdir(os.path.join(DEMO_DATA, "labeled", "images"))))
    text = benchmark_context({"nnUNetTrainer_demo": 0.8, f"{best}_demo": 0.81})
    assert "ONE training" in text and f"Best in this benchmark: {best}" in text
    row = next(r for r in packaged["rows"] if r["method"] == best)
    demo_row = next(r for r in demo["rows"] if r["method"] == best)
    assert f"{row['delta']:+.4f}" in text and f"{demo_row['delta']:+.4f}" in text
    assert ("At the demo's budget " + best + (" is ahead" if reliably_ahead(demo, demo_row) else " is NOT ahead")) \
        in text


def test_every_method_ahead_in_every_seed_is_called_ahead_not_only_the_best(tmp_path, monkeypatch):
    """The demo's verdict on each of its methods at its budget: ahead when that row is ahead in every seed with an
    interval above zero, even where another method is ahead by more."""
    import semi_nnunet.demo_api as demo_api
    from semi_nnunet.utilities.file_ops import save_json_atomic

    def row(method, delta, ahead, low):
        return {"labeled": "5", "method": method, "evaluated_model": method, "baseline": delta is None, "seeds": 3,
                "dice": 0.9 + (delta or 0), "dice_std": 0.0, "delta": delta, "ahead": ahead,
                "delta_ci95": None if delta is None else [low, low + 0.01], "gap_recovery": None,
                "gap_recovery_ci95": None, "time_per_iteration_ratio": 1.0}
    summ = {"source": "documentation/benchmarks/x/results.json", "dataset": "D", "date": "2026-12-07",
            "command": None, "budget": {"epochs": 20, "iterations_per_epoch": 50, "stages": None},
            "configuration": "2d", "training_seeds": [0, 1, 2], "converged": True, "jobs_done": 12, "jobs_total": 12,
            "trainings": 12, "baseline": "B",
            "rows": [row("B", None, None, 0), row("A", 0.008, 3, 0.003), row("C", 0.007, 3, 0.002),
                     row("D", 0.005, 2, -0.001)]}
    save_json_atomic(summ, str(tmp_path / "summary.json"))
    monkeypatch.setattr(demo_api, "DEMO_BUDGET_SUMMARY", str(tmp_path / "summary.json"))
    monkeypatch.setattr(demo_api, "BENCHMARK_SUMMARY", str(tmp_path / "summary.json"))
    text = demo_api.benchmark_context({"nnUNetTrainer_demo": 0.9, "A_demo": 0.91, "C_demo": 0.9, "D_demo": 0.9,
                                       "E_demo": 0.9})
    assert "At the demo's budget A is ahead" in text and "At the demo's budget C is ahead" in text
    assert "At the demo's budget D is NOT ahead" in text and "E was not measured" in text
    assert "Best in this benchmark: A" in text


@pytest.mark.slow  # three trainings (baseline, stage 0, stage 1) and a pseudo-labelling pass on the bundled data
def test_the_demo_with_a_staged_method_trains_its_stages_and_scores_the_last(tmp_path, monkeypatch, capsys):
    """A staged method as the demo's method (Semi-CervixSeg, self-training): stage 0, pseudo-labels, stage 1, and the
    Dice printed is the last stage's model's."""
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(k, "unset-by-test")
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    workdir = tmp_path / "demo"
    scores = run_demo(str(workdir), trainers=("SelfTrainingTrainer_2epochs_2it",), num_processes=1)
    assert math.isfinite(scores["SelfTrainingTrainer_2epochs_2it"])
    results = workdir / "nnUNet_results" / "Dataset990_HC18Demo"
    for stage in ("SelfTrainingTrainer_2epochs_2it", "SelfTrainingTrainer_2epochs_2it_stage1"):
        assert (results / f"{stage}__nnUNetPlans__2d" / "fold_all" / "checkpoint_final.pth").is_file()
    assert "then 1 pseudo-label stage(s)" in capsys.readouterr().out
    again = run_demo(str(workdir), trainers=("SelfTrainingTrainer_2epochs_2it",), num_processes=1)
    assert again == scores and "already trained" in capsys.readouterr().out
