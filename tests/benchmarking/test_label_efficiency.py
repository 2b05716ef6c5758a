"""semi_nnUNet_benchmark end to end on a tiny synthetic dataset: subsets, seeds, the all-labels ceiling, gap recovery,
the convergence check, table == semi_nnUNet_evaluate, resume (a rerun retrains nothing, an added seed runs alone)."""
import glob
import json
import os

import numpy as np
import pytest
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from semi_nnunet.benchmarking.label_efficiency import (BenchmarkError, make_subset, parse_labeled, plan_grid,
                                                       trainer_names)
from semi_nnunet.dataset_conversion.common import choose_labeled
from semi_nnunet.dataset_conversion.synthetic import make_synthetic_dataset
from semi_nnunet.run.benchmark_entrypoint import main as benchmark_main
from semi_nnunet.run.evaluate_entrypoint import main as evaluate_main

# 2 epochs of 3 iterations: a generated budget variant (it keeps the half-way snapshot after epoch 1)
BUDGET = ["--epochs", "2", "--iterations", "3"]


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


def test_the_grid_is_a_list_of_independent_jobs(tmp_path):
    source = make_synthetic_dataset(str(tmp_path / "raw"), 956, num_labeled=6, num_unlabeled=2, num_test=2)
    names = ["nnUNetTrainer_2epochs_3it", "MeanTeacherTrainer_2epochs_3it"]
    grid = plan_grid(source, "2d", ["2", "4", "all"], names, 3, 0, None, "cpu", str(tmp_path / "b"), 899, 1)
    assert [(s.label, s.n) for s in grid.subsets] == [("2", 2), ("4", 4), ("all", 6)]
    # seeds x (2 subsets x 2 trainers + the baseline alone on every label)
    assert len(grid.jobs) == 3 * (2 * 2 + 1)
    assert [j.describe() for j in grid.jobs[:5]] == [
        "n=2 nnUNetTrainer_2epochs_3it seed 0", "n=2 MeanTeacherTrainer_2epochs_3it seed 0",
        "n=4 nnUNetTrainer_2epochs_3it seed 0", "n=4 MeanTeacherTrainer_2epochs_3it seed 0",
        "n=all nnUNetTrainer_2epochs_3it seed 0"]
    folders = {j.results_folder for j in grid.jobs}
    assert len(folders) == 3 * 3  # one nnUNet_results per subset and training seed: jobs never share outputs
    assert len({j.result_file for j in grid.jobs}) == len(grid.jobs)
    assert all(j.is_baseline == j.trainer.startswith("nnUNetTrainer") for j in grid.jobs)


@pytest.mark.parametrize("argv, message", [
    (["--labeled", "2", "--repeats", "0"], r"--repeats 0: every method needs at least one training"),
    (["--labeled", "5", "all"], r"'all' adds no labeled case: the dataset has 5 labeled cases"),
    (["--labeled", "two"], r"'two' is not a number of labeled cases"),
    (["--labeled", "0"], r"'0' is not a number of labeled cases"),
    (["--labeled", "2", "--epochs", "3"], r"A budget needs both epochs and iterations"),
    (["--labeled", "2", "--iterations", "3"], r"A budget needs both epochs and iterations"),
    (["--labeled", "9"], r"9 labeled cases were asked for but the dataset has 5"),
    (["--labeled", "2", "-tr", "MeanTeecherTrainer"], r"Unknown trainer 'MeanTeecherTrainer'"),
])
def test_bad_arguments_fail_before_anything_is_written(tmp_path, nnunet_paths, capsys, argv, message):
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 957, num_labeled=5, num_unlabeled=1, num_test=2)
    out = str(tmp_path / "b")
    with pytest.raises(SystemExit) as e:
        benchmark_main(["-d", "957", *argv, "-o", out, "-device", "cpu"])
    assert e.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err)
    assert not os.path.exists(out)


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
    assert trainer_names([], "nnUNetTrainer", 3, 4, True) == ["nnUNetTrainer_3epochs_4it"]  # the baseline alone
    # HCO cannot take Semi-CervixSeg's uniform stage sampling: asked for, refused before any training (not when
    # stage 1 starts); added by the HCO default, left out with a note
    with pytest.raises(BenchmarkError, match=r"uniform' leaves most batches without a labeled patch(.|\n)*"
                                             r"where: -tr SemiCervixTrainer_uniform_HCO_3epochs_4it"):
        trainer_names(["SemiCervixTrainer_uniform_HCO"], "nnUNetTrainer", 3, 4, False)
    capsys.readouterr()
    assert trainer_names(["SemiCervixTrainer_uniform", "SemiCervixTrainer"], "nnUNetTrainer", 3, 4, True) == [
        "nnUNetTrainer_3epochs_4it", "SemiCervixTrainer_uniform_3epochs_4it", "SemiCervixTrainer_3epochs_4it",
        "SemiCervixTrainer_3epochs_4it_HCO"]
    assert "Note: no HCO row for SemiCervixTrainer_uniform" in capsys.readouterr().out
    assert parse_labeled(["20", "all", "5", "5"]) == ["5", "20", "all"]


def _checkpoints(out):
    return {p: os.path.getmtime(p) for p in glob.glob(join(out, "**", "checkpoint_final.pth"), recursive=True)}


def _assert_rows_are_evaluate(results, raw, tmp_path):
    """Every per-seed number is semi_nnUNet_evaluate's on that seed's predictions; seed statistics over them."""
    for subset in results["subsets"]:
        for name, row in subset["methods"].items():
            assert row["seeds"] == results["training_seeds"]
            for seed, r in row["per_seed"].items():
                target = str(tmp_path / f"eval_{subset['label']}_{name}_{seed}")
                evaluate_main(["-ref", join(raw, "labelsTs"), "-pred", r["prediction_folder"], "-o", target,
                               "-np", "1"])
                summary = load_json(join(target, "summary.json"))
                assert r["n_test"] == summary["n_cases"] == 4
                for metric in ("Dice", "HD95", "ASD"):
                    assert r[metric]["mean"] == pytest.approx(summary["mean"]["1"][metric], nan_ok=True)
                    assert r[metric]["std"] == pytest.approx(summary["std"]["1"][metric], nan_ok=True)
                assert r["train_time_s"] > 0 and r["epochs_trained"] == 2
            seed_means = [r["Dice"]["mean"] for r in row["per_seed"].values()]
            assert row["Dice"]["mean"] == pytest.approx(np.mean(seed_means))
            assert row["Dice"]["std"] == pytest.approx(np.std(seed_means, ddof=1) if len(seed_means) > 1 else 0.0)


def _synthetic_benchmark(nnunet_paths, monkeypatch, tmp_path, trainers=("MeanTeacherTrainer",)):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    make_synthetic_dataset(nnunet_paths["nnUNet_raw"], 955, num_labeled=5, num_unlabeled=2, num_test=4,
                           shape=(32, 32))
    out = str(tmp_path / "bench")
    return out, ["-d", "955", "-c", "2d", "--labeled", "3", "all", "-tr", *trainers, "--no-hco", *BUDGET,
                 "-o", out, "-device", "cpu", "-np", "1"]


def test_baseline_curve_matches_evaluate_and_a_rerun_retrains_nothing(tmp_path, nnunet_paths, monkeypatch, capsys):
    """The default suite's end-to-end run: the baseline alone (-tr with no name) on 3 and on every label."""
    out, args = _synthetic_benchmark(nnunet_paths, monkeypatch, tmp_path, trainers=())
    benchmark_main(args)
    assert "2 jobs, 2 to run. Estimated time on this machine: about" in capsys.readouterr().out
    results = load_json(join(out, "results.json"))
    _assert_rows_are_evaluate(results, join(nnunet_paths["nnUNet_raw"], "Dataset955_Synthetic2D"), tmp_path)
    for subset in results["subsets"]:
        conv = subset["methods"]["nnUNetTrainer_2epochs_3it"]["convergence"]
        assert np.isfinite(conv["half"]) and conv["half_epoch"] == 1
        from semi_nnunet.utilities.provenance import code_version
        seeds = subset["methods"]["nnUNetTrainer_2epochs_3it"]["per_seed"].values()
        assert all(r["code"] == (code_version()["commit"] or "not recorded") for r in seeds)  # which code ran it
    assert "| code |" in open(join(out, "results.md")).read()
    before = _checkpoints(out)
    for checkpoint in before:  # the half-way snapshot beside it; nnU-Net's final validation of fold all left out
        fold = os.path.dirname(checkpoint)
        assert os.path.isfile(join(fold, "checkpoint_epoch1.pth")) and not os.path.exists(join(fold, "validation"))
    benchmark_main(args)
    assert "2 jobs, 0 to run" in capsys.readouterr().out and _checkpoints(out) == before


@pytest.mark.slow  # 9 trainings, predictions and evaluations: about 3 min on 2 cores
def test_benchmark_with_seeds_and_the_ceiling_matches_evaluate_and_resumes(tmp_path, nnunet_paths, monkeypatch,
                                                                          capsys):
    out, args = _synthetic_benchmark(nnunet_paths, monkeypatch, tmp_path)
    # two seeds first, then a third: adding a seed trains only that seed
    benchmark_main(args + ["--repeats", "2"])
    captured = capsys.readouterr()
    assert "6 jobs, 6 to run. Estimated time on this machine: about" in captured.out
    assert "n=3 MeanTeacherTrainer_2epochs_3it seed 1" in captured.err  # the per-training progress bar
    first = _checkpoints(out)
    assert len(first) == 6
    benchmark_main(args + ["--repeats", "3"])
    assert "9 jobs, 3 to run" in capsys.readouterr().out
    after = _checkpoints(out)
    assert len(after) == 9 and all(after[p] == t for p, t in first.items())

    results = load_json(join(out, "results.json"))
    assert results["trainers"] == ["nnUNetTrainer_2epochs_3it", "MeanTeacherTrainer_2epochs_3it"]
    assert results["training_seeds"] == [0, 1, 2] and results["jobs_done"] == results["jobs_total"] == 9
    small, ceiling = results["subsets"]
    assert (small["label"], small["n_labeled"], ceiling["label"], ceiling["n_labeled"]) == ("3", 3, "all", 5)
    assert list(ceiling["methods"]) == ["nnUNetTrainer_2epochs_3it"]  # only the baseline trains on every label
    base, mt = small["methods"]["nnUNetTrainer_2epochs_3it"], small["methods"]["MeanTeacherTrainer_2epochs_3it"]
    _assert_rows_are_evaluate(results, join(nnunet_paths["nnUNet_raw"], "Dataset955_Synthetic2D"), tmp_path)
    # paired differences, seeds ahead, the interval and gap recovery against the ceiling
    d = mt["difference_vs_baseline"]
    per_seed = {s: mt["per_seed"][s]["Dice"]["mean"] - base["per_seed"][s]["Dice"]["mean"] for s in ("0", "1", "2")}
    assert d["per_seed"] == pytest.approx(per_seed) and d["mean"] == pytest.approx(np.mean(list(per_seed.values())))
    assert d["ahead"] == sum(v > 0 for v in per_seed.values())
    assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    g = mt["gap_recovery"]
    ceiling_dice = ceiling["methods"]["nnUNetTrainer_2epochs_3it"]["Dice"]["mean"]
    assert g["gap"] == pytest.approx(ceiling_dice - base["Dice"]["mean"], abs=1e-9)
    assert g["value"] == pytest.approx(d["mean"] / g["gap"], rel=1e-6)
    assert len(g["ci95"]) == 2 and base["gap_recovery"] is None
    assert mt["wilcoxon_first_seed"]["seed"] == 0 and 0 <= mt["wilcoxon_first_seed"]["Dice"]["p_value"] <= 1
    # the convergence check: the baseline's half-way snapshot (epoch 1 of 2) evaluated on the test set
    conv = base["convergence"]
    half = [base["per_seed"][s]["half_budget_dice"] for s in ("0", "1", "2")]
    assert conv["half"] == pytest.approx(np.mean(half)) and conv["half_epoch"] == 1
    assert conv["converged"] is (abs(conv["full"] - conv["half"]) <= 0.005)
    assert results["converged"] is (conv["converged"] and ceiling["methods"]["nnUNetTrainer_2epochs_3it"]
                                    ["convergence"]["converged"])

    table = open(join(out, "results.md")).read()
    assert "## Headline: gap recovery" in table and "Per training seed:" in table
    assert f"{mt['Dice']['mean']:.4f} ± {mt['Dice']['std']:.4f}" in table
    assert f"| MeanTeacherTrainer_2epochs_3it | 2 | {mt['per_seed']['2']['Dice']['mean']:.4f}" in table
    assert f"{d['ahead']} of 3" in table
    assert ("Not converged" in table) is (results["converged"] is False)
    for png in ("dice_n3.png", "dice_nall.png", "dice_vs_labeled.png"):
        assert os.path.getsize(join(out, png)) > 1000

    # rerun: nothing retrained or repredicted, same numbers
    benchmark_main(args + ["--repeats", "3"])
    assert "9 jobs, 0 to run" in capsys.readouterr().out
    assert _checkpoints(out) == after
    again = load_json(join(out, "results.json"))["subsets"][0]["methods"]["MeanTeacherTrainer_2epochs_3it"]
    assert again["Dice"] == mt["Dice"] and again["difference_vs_baseline"] == d


def test_two_d_only_method_on_a_three_d_configuration_fails_before_training():
    with pytest.raises(BenchmarkError, match=r"HermesTrainer works on 2D images only, and the configuration is 3D"):
        trainer_names(["MeanTeacherTrainer", "HermesTrainer"], "nnUNetTrainer", 2, 2, False, dims=3)


def _job_result(label, trainer, seed, dice, half=None, n=3, seconds_per_it=0.5):
    cases = {f"case{i}.png": d for i, d in enumerate(dice)}
    return {"label": label, "trainer": trainer, "train_seed": seed, "n_labeled": n, "n_test": len(dice),
            "evaluated_model": trainer, "per_case": {"Dice": cases, "HD95": {c: 2.0 for c in cases},
                                                     "ASD": {c: 1.0 for c in cases}},
            "half_budget": None if half is None else {"epoch": 5, "of": 10, "Dice": {c: half for c in cases}},
            "epochs_trained": 10, "seconds_per_iteration": seconds_per_it, "train_time_s": 60.0,
            "prediction_folder": f"/p/{label}/{trainer}/{seed}"}


def test_report_from_job_results_without_training(tmp_path):
    """aggregate + write_report on hand-made job results: seed rows, gap recovery, the not-converged banner."""
    from semi_nnunet.benchmarking.report import aggregate, write_report
    meta = {"source": "/data/X", "configuration": "2d", "subset_seed": 0, "training_seeds": [0, 1, 2],
            "device": "cpu", "budget": {"epochs": 10, "iterations_per_epoch": 5, "stages": None},
            "baseline": "B", "trainers": ["B", "M"], "labeled": ["3", "all"], "jobs_total": 9,
            "command": "semi_nnUNet_benchmark -d X --labeled 3 all -tr M -o /some/where/bench", "date": "2026-12-02"}
    results = []
    for s in range(3):
        # half-way 0.748 .. 0.752, full 0.75: converged
        results.append(_job_result("3", "B", s, [0.70, 0.80], half=0.75 + 0.002 * (s - 1)))
        results.append(_job_result("all", "B", s, [0.90, 0.90], half=0.80, n=5, seconds_per_it=1.0))
    results += [_job_result("3", "M", 0, [0.75, 0.85], seconds_per_it=1.0),
                _job_result("3", "M", 1, [0.80, 0.90], seconds_per_it=1.0)]  # seed 2 still running
    results.append(_job_result("3", "E", 0, [0.70, 0.80]))  # an earlier command's trainer in the same folder
    out = aggregate(meta, results)
    mt = out["subsets"][0]["methods"]["M"]
    assert mt["seeds"] == [0, 1] and mt["Dice"]["mean"] == pytest.approx(0.825)
    assert mt["difference_vs_baseline"]["per_seed"] == {"0": pytest.approx(0.05), "1": pytest.approx(0.1)}
    assert mt["difference_vs_baseline"]["ahead"] == 2
    # gap: ceiling 0.9 - baseline 0.75 = 0.15; the method closes 0.075 of it. Both cases gain 0.075 (seed mean), so
    # the difference interval is a point; resampling case 0 twice gives 0.075 / 0.2, case 1 twice 0.075 / 0.1
    assert mt["gap_recovery"]["value"] == pytest.approx(0.5) and mt["gap_recovery"]["gap"] == pytest.approx(0.15)
    assert mt["time_per_iteration_ratio"] == pytest.approx(2.0)
    assert out["subsets"][0]["methods"]["B"]["convergence"]["converged"] is True
    assert out["subsets"][1]["methods"]["B"]["convergence"]["converged"] is False  # 0.80 -> 0.90
    assert out["converged"] is False and out["jobs_done"] == 8 and out["results_in_folder"] == 9  # E: not this call's
    assert "E" in out["subsets"][0]["methods"]
    write_report(out, str(tmp_path), quiet=True)
    md = open(tmp_path / "results.md").read()
    assert md.startswith("> **Not converged:**") and "n = all" in md
    assert "Jobs of this command done: 8 of 9 (the report also holds 1 results of earlier commands" in md
    # no path of this machine in what is committed: the output folder as its name, the source as the dataset's
    assert "-o bench`" in md and "/some/where" not in md and "Label efficiency on `X`" in md
    assert ("| 3 | M | 2 of 3 | 0.8250 ± 0.0354 | +0.0750 [+0.0750, +0.0750] | 2 of 2 | +0.50 [+0.38, +0.75] | 2.00 |"
            in md)
    assert "| M | 1 | 0.8500 ± 0.0500 | +0.1000 |" in md
    assert "| all | 0.8000 (epoch 5) | 0.9000 | +0.1000 | **no** |" in md
    for png in ("gap_recovery.png", "dice_vs_labeled.png", "dice_n3.png", "dice_nall.png"):
        assert os.path.getsize(tmp_path / png) > 1000
    summ = load_json(str(tmp_path / "summary.json"))  # the few numbers the demo prints, taken from the rows
    m_row = next(r for r in summ["rows"] if r["labeled"] == "3" and r["method"] == "M")
    assert m_row["delta"] == pytest.approx(0.075) and m_row["ahead"] == 2 and m_row["seeds"] == 2
    assert m_row["gap_recovery"] == pytest.approx(0.5) and summ["converged"] is False and summ["dataset"] == "X"
    assert "per_case" not in json.dumps(summ)


def test_a_variant_is_compared_with_the_trainer_it_modifies(tmp_path):
    """X_HCO against X (paired by seed, the same bootstrap), the longest base that the name extends, budget suffix
    removed; a name that merely starts with another's letters is no variant, and the baseline is no base."""
    from semi_nnunet.benchmarking.report import aggregate, markdown
    tag = "_10epochs_5it"
    names = ["B", "M", "M_HCO", "MX", "M_uniform", "M_uniform_HCO", "B_lrx2"]
    meta = {"source": "/data/X", "configuration": "2d", "subset_seed": 0, "training_seeds": [0, 1], "device": "cpu",
            "budget": {"epochs": 10, "iterations_per_epoch": 5, "stages": None}, "baseline": "B" + tag,
            "trainers": [n + tag for n in names], "labeled": ["3"], "jobs_total": 14,
            "command": "semi_nnUNet_benchmark -d X --labeled 3 -tr M -o b", "date": "2026-12-07"}
    dice = {"B": ([0.7, 0.8], [0.7, 0.8]), "M": ([0.75, 0.85], [0.8, 0.9]), "M_HCO": ([0.8, 0.9], [0.8, 0.9]),
            "MX": ([0.7, 0.7], [0.7, 0.7]), "M_uniform": ([0.7, 0.8], [0.7, 0.8]),
            "M_uniform_HCO": ([0.6, 0.8], [0.7, 0.8]), "B_lrx2": ([0.7, 0.8], [0.7, 0.8])}
    results = [_job_result("3", n + tag, s, dice[n][s]) for n in names for s in range(2)]
    variants = {v["variant"][:-len(tag)]: v for v in aggregate(meta, results)["subsets"][0]["variants"]}
    assert {k: v["base"][:-len(tag)] for k, v in variants.items()} == {
        "M_HCO": "M", "M_uniform": "M", "M_uniform_HCO": "M_uniform"}
    hco = variants["M_HCO"]["difference"]
    assert hco["per_seed"] == {"0": pytest.approx(0.05), "1": pytest.approx(0.0)} and hco["ahead"] == 1
    assert hco["mean"] == pytest.approx(0.025) and hco["ci95"] == [pytest.approx(0.025)] * 2
    assert variants["M_uniform_HCO"]["difference"]["mean"] == pytest.approx(-0.025)
    md = markdown(aggregate(meta, results))
    assert "## Variants against the trainer they modify" in md
    assert f"| 3 | M_HCO{tag} | M{tag} | 2 | +0.0250 [+0.0250, +0.0250] | 1 of 2 | +0.0500, +0.0000 |" in md
    only_base = [r for r in results if r["trainer"] in ("B" + tag, "M" + tag)]
    assert "## Variants" not in markdown(aggregate({**meta, "trainers": ["B" + tag, "M" + tag]}, only_base))


def test_rewrite_report_rebuilds_a_folder_from_its_job_files_with_this_code(tmp_path):
    """rewrite_report: the job files copied elsewhere (a repository) and the recorded command are enough to write the
    report again; the trainers and n of the command are 'this command', the rest of the folder is reported too."""
    from semi_nnunet.benchmarking.label_efficiency import rewrite_report
    from semi_nnunet.benchmarking.report import aggregate
    from semi_nnunet.utilities.file_ops import save_json_atomic
    tag = "_10epochs_5it"
    meta = {"source": "/data/X", "configuration": "2d", "subset_seed": 0, "training_seeds": [0, 1],
            "device": "cpu", "budget": {"epochs": 10, "iterations_per_epoch": 5, "stages": None},
            "baseline": "B" + tag, "trainers": ["B" + tag, "M" + tag], "labeled": ["3", "all"], "jobs_total": 6,
            "command": "semi_nnUNet_benchmark -d 1 --labeled 3 all -tr M --no-hco --epochs 10 --iterations 5 "
                       "--repeats 2 -o /x/b", "date": "2026-12-03"}
    jobs = tmp_path / "jobs"
    results = []
    for s in range(2):
        results += [_job_result("3", "B" + tag, s, [0.70, 0.80], half=0.75),
                    _job_result("all", "B" + tag, s, [0.90, 0.90], half=0.90, n=5),
                    _job_result("3", "M" + tag, s, [0.75, 0.85])]
    results.append(_job_result("3", "E" + tag, 0, [0.7, 0.7]))  # an earlier command
    results.append(_job_result("3", "M_20epochs_5it", 0, [0.9, 0.9]))  # another budget: not part of this report
    for r in results:
        save_json_atomic(r, str(jobs / f"n{r['label']}_subset0" / f"seed{r['train_seed']}" / "jobs"
                                / f"{r['trainer']}.json"))
    save_json_atomic({**meta, "trainers": meta["trainers"] + ["E" + tag], "jobs_done": 99},
                     str(tmp_path / "results.json"))
    out = rewrite_report(str(tmp_path), str(jobs))
    expected = aggregate(meta, results[:-1])
    assert out["subsets"] == expected["subsets"] and out["jobs_done"] == 6 and out["results_in_folder"] == 7
    assert "Jobs of this command done: 6 of 6 (the report also holds 1 results" in open(tmp_path / "results.md").read()
    one = rewrite_report(str(tmp_path), str(jobs), repeats=1)  # the seed-0 view of the same folder
    assert one["training_seeds"] == [0] and one["subsets"][0]["methods"]["M" + tag]["seeds"] == [0]
    assert one["jobs_total"] == 3 and one["jobs_done"] == 3  # the command's grid for one seed


@pytest.mark.parametrize("rows, best", [
    ([("A", 0.02, 3, 3, 0.01), ("C", 0.03, 2, 3, 0.01)], "A"),   # C is larger but behind in one seed
    ([("A", 0.02, 3, 3, -0.01), ("C", 0.01, 3, 3, 0.002)], "C"),  # A's interval crosses zero
    ([("A", -0.01, 0, 3, -0.02)], None),
    ([("A", 0.02, 3, 3, 0.01), ("C", 0.05, 1, 1, 0.01)], "A"),   # C is ahead in its only seed: not finished
])
def test_best_method_is_ahead_in_every_seed_with_an_interval_above_zero(rows, best):
    from semi_nnunet.benchmarking.report import best_method
    summ = {"training_seeds": [0, 1, 2],
            "rows": [{"labeled": "5", "method": "B", "baseline": True, "delta": None, "ahead": None, "seeds": 3}] +
            [{"labeled": "5", "method": m, "baseline": False, "delta": d, "ahead": a, "seeds": n,
              "delta_ci95": [lo, lo + 0.05]} for m, d, a, n, lo in rows]}
    assert best_method(summ, "5") == best


def test_two_workers_on_one_grid_run_each_job_once(tmp_path, monkeypatch):
    """The local executor with a job another live worker holds: it is skipped (not run twice), the rest run."""
    import socket
    from semi_nnunet.benchmarking import label_efficiency as le
    source = make_synthetic_dataset(str(tmp_path / "raw"), 957, num_labeled=4, num_unlabeled=2, num_test=2)
    names = ["nnUNetTrainer_2epochs_3it", "MeanTeacherTrainer_2epochs_3it"]
    grid = plan_grid(source, "2d", ["2"], names, 2, 0, None, "cpu", str(tmp_path / "b"), 898, 1)
    held = grid.jobs[1]
    os.makedirs(os.path.dirname(held.lock_file))
    with open(held.lock_file, "w") as f:  # the other worker: this test's parent process, alive
        f.write(f"{socket.gethostname()}:{os.getppid()}")
    ran = []
    monkeypatch.setattr(le, "prepare_subset", lambda subset, num_processes=2: None)  # the fake run needs none
    monkeypatch.setattr(le, "run_job", lambda job: ran.append(job.describe()))
    le.run_grid(grid)
    assert ran == [j.describe() for j in grid.jobs if j is not held]
    assert os.path.isfile(held.lock_file)  # still the other worker's
    assert not any(os.path.exists(j.lock_file) for j in grid.jobs if j is not held)


def test_a_retried_remote_job_waits_for_the_lock_and_reuses_what_its_holder_finished(tmp_path, monkeypatch):
    """A Ray/Slurm retry that finds the lock of a live-looking holder waits (instead of reporting a skipped job as
    done), then takes the holder's result if it finished, or runs the job once the lock is free."""
    import json
    import socket
    import threading
    from semi_nnunet.benchmarking import label_efficiency as le
    source = make_synthetic_dataset(str(tmp_path / "raw"), 957, num_labeled=4, num_unlabeled=2, num_test=2)
    grid = plan_grid(source, "2d", ["2"], ["nnUNetTrainer_2epochs_3it"], 2, 0, None, "cpu", str(tmp_path / "b"),
                     898, 1)
    first, second = grid.jobs
    assert "wait" in le.grid_graph(grid, wait=30)[f"job/n2/seed0/{first.trainer}"].kwargs
    assert "wait" not in le.grid_graph(grid)[f"job/n2/seed0/{first.trainer}"].kwargs  # local workers skip
    ran = []
    monkeypatch.setattr(le, "run_job", lambda job: ran.append(job.describe()) or {"ran": True})
    for job, finishes in ((first, True), (second, False)):
        os.makedirs(os.path.dirname(job.lock_file), exist_ok=True)
        with open(job.lock_file, "w") as f:  # a live holder: this test's parent process
            json.dump({"host": socket.gethostname(), "pid": os.getppid()}, f)

        def holder_ends(job=job, finishes=finishes):
            if finishes:
                with open(job.result_file, "w") as f:
                    json.dump({"by": "holder"}, f)
            os.remove(job.lock_file)
        threading.Timer(0.5, holder_ends).start()
        result = le.run_job_once(job, wait=0.1)
        assert result == ({"by": "holder"} if finishes else {"ran": True})
    assert ran == [second.describe()]


@pytest.mark.slow  # two trainings, predictions and evaluations per engine, through Ray workers or Slurm jobs
@pytest.mark.parametrize("engine", ["ray", "slurm"])
def test_the_grid_runs_on_ray_and_on_slurm_and_matches_evaluate(engine, tmp_path, nnunet_paths, monkeypatch, capsys,
                                                                request):
    out, args = _synthetic_benchmark(nnunet_paths, monkeypatch, tmp_path, trainers=())
    executor = ["--executor", engine]
    if engine == "slurm":
        cluster = request.getfixturevalue("slurm_cluster")
        executor += ["--slurm-partition", cluster.partition, "--slurm-time", "20",
                     "--slurm-folder", str(tmp_path / "slurm")]
    benchmark_main(args + executor)
    assert "2 jobs, 2 to run" in capsys.readouterr().out
    results = load_json(join(out, "results.json"))
    _assert_rows_are_evaluate(results, join(nnunet_paths["nnUNet_raw"], "Dataset955_Synthetic2D"), tmp_path)
    before = _checkpoints(out)
    assert len(before) == 2
    benchmark_main(args + executor)  # done: nothing is submitted again
    assert "2 jobs, 0 to run" in capsys.readouterr().out and _checkpoints(out) == before


@pytest.mark.parametrize("events, expected", [
    ([("T_4epochs_2it", 1), ("T_4epochs_2it", 2)], [1, 2]),               # a fresh training
    ([("T_4epochs_2it", 3), ("T_4epochs_2it", 4)], [3, 4]),               # resumed after epoch 2
    ([("T_4epochs_2it", 4), ("T_4epochs_2it_stage1", 1)], [4, 5]),        # stage 1 continues the bar
    ([("T_4epochs_2it_stage1", 3), ("T_4epochs_2it_stage1", 4)], [7, 8]),  # stage 1 resumed: stage 0 counted
])
def test_job_progress_bar_follows_the_trainers_epoch(events, expected, monkeypatch):
    """The per-job bar shows epochs done, also when a training resumes from its checkpoint (it used to restart at 0)."""
    import tqdm as tqdm_module
    from types import SimpleNamespace
    from semi_nnunet.benchmarking.label_efficiency import _epoch_progress
    from semi_nnunet.trainers.schedule import EPOCH_LISTENERS
    seen = []

    class Bar:
        def __init__(self, total, **kwargs):
            self.total, self.n = total, 0

        def refresh(self):
            seen.append(self.n)

        def set_postfix(self, **kwargs):
            pass

        def close(self):
            pass
    monkeypatch.setattr(tqdm_module, "tqdm", Bar)
    with _epoch_progress(SimpleNamespace(stages=1, describe=lambda: "job"), 4):
        for name, epoch in events:
            EPOCH_LISTENERS[-1](type(name, (), {"current_epoch": epoch})())
    assert seen == expected and not EPOCH_LISTENERS
