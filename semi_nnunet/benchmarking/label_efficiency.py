"""The label-efficiency benchmark: does a semi-supervised trainer beat nnU-Net trained on the same labels?

For every number of labeled cases ``n`` (``--labeled 5 10 50``) and one ``seed``:

1. A **subset dataset** under ``<workdir>/n<n>_seed<seed>/nnUNet_raw``: the first ``n`` labeled cases of one seeded
   permutation (so the subsets are nested: the 5 are among the 10) keep their labels; every other labeled case of the
   source becomes unlabeled (its label is not copied), next to the source's own unlabeled images. The source's test
   set (``imagesTs``/``labelsTs``) is the test set of every run. Planned and preprocessed like any dataset, so the
   supervised baseline gets nnU-Net's configuration for ``n`` cases.
2. **Training**, fold ``all`` (every labeled case trains; nothing is held out for validation), of the supervised
   baseline (``nnUNetTrainer``) and of each trainer with and without HCO, all on the same budget: ``--epochs`` x
   ``--iterations`` (a generated ``<Trainer>_<E>epochs_<I>it`` variant), or each trainer's own schedule. By default
   the methods are Mean Teacher, Semi-CervixSeg and Hermes (Hermes only in 2D). A staged
   trainer (Semi-CervixSeg) runs its stages (``--stages``), and its last stage is the model evaluated.
3. **Prediction** of the test set (nnU-Net's predictor, mirroring on) and **evaluation** with
   :func:`semi_nnunet.evaluation.evaluate_api.evaluate` (what ``semi_nnUNet_evaluate`` runs).
4. **Report**: ``results.json`` and ``results.md`` (per method: Dice, HD95, ASD as mean and std over the test cases of
   the per-case foreground mean, paired two-sided Wilcoxon p against the baseline, time per iteration as a ratio to
   the baseline, training time), a per-case Dice box plot per ``n`` and, with several ``n``, Dice vs labeled cases.

Time per iteration is the median epoch duration (from nnU-Net's own epoch timestamps in the checkpoint, pooled over a
staged trainer's stages) divided by iterations per epoch; an epoch also holds its validation iterations (one per five
training iterations in a budget variant) and nnU-Net's per-epoch bookkeeping, the same for every trainer, so the ratio
is a slight underestimate of the pure training-step ratio (``benchmarks/step_time.py`` measures that). Training time
is the sum of the epoch durations (startup and final validation excluded), so it survives resuming.

Resumable: a subset, a preprocessing, a trained model (its final checkpoint), a prediction (per case) and an
evaluation that exist are reused; an interrupted training continues from its latest checkpoint.
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p

from semi_nnunet.utilities.errors import InputError

BASELINE = "nnUNetTrainer"
DEFAULT_TRAINERS = ("MeanTeacherTrainer", "SemiCervixTrainer", "HermesTrainer")
NNUNET_PATH_VARIABLES = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


class BenchmarkError(InputError):
    """Bad input to the benchmark. The message names the file or argument and the fix."""


@dataclass
class Run:
    """One trainer of one subset: what was trained, where, and which model is evaluated."""
    name: str  # the trainer as trained (budget and optimizer suffixes included)
    stages: int  # pseudo-label stages after stage 0 (0: not a staged trainer)
    dataset_name: str
    configuration: str
    prediction_folder: str

    @property
    def final_trainer(self) -> str:
        """The trainer whose model is evaluated (a staged trainer's last stage)."""
        from semi_nnunet.inference.models import stage_trainer_name
        return stage_trainer_name(self.name, self.stages)

    def model_folder(self, trainer: Optional[str] = None) -> str:
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        return get_output_folder(self.dataset_name, trainer or self.name, "nnUNetPlans", self.configuration)

    def epoch_times(self) -> List[float]:
        """Durations of every epoch of the trainer and of its stages, from nnU-Net's logging in the checkpoints."""
        from semi_nnunet.inference.models import stage_trainer_name
        from semi_nnunet.utilities.checkpoints import load_checkpoint_file
        durations = []
        for k in range(self.stages + 1):
            checkpoint = join(self.model_folder(stage_trainer_name(self.name, k)), "fold_all", "checkpoint_final.pth")
            log = load_checkpoint_file(checkpoint, mmap=True)["logging"]
            durations += [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
        return durations


@contextlib.contextmanager
def nnunet_paths(root: str) -> Iterator[Dict[str, str]]:
    """nnU-Net's three folders inside ``root`` for the duration (nnU-Net reads them lazily from the environment)."""
    old = {k: os.environ.get(k) for k in NNUNET_PATH_VARIABLES}
    paths = {k: join(root, k) for k in NNUNET_PATH_VARIABLES}
    try:
        for k, v in paths.items():
            maybe_mkdir_p(v)
            os.environ[k] = v
        yield paths
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def source_dataset(dataset) -> str:
    """The raw folder of ``dataset`` (id or name under ``$nnUNet_raw``, or a path), checked to have a test set."""
    from semi_nnunet.utilities.raw_dataset import check_semi_dataset, list_cases
    if isinstance(dataset, str) and isdir(dataset):
        folder = os.path.abspath(dataset)
    else:
        from semi_nnunet.planners.plan_and_preprocess_api import find_dataset_name
        from nnunetv2.paths import nnUNet_raw
        folder = join(str(nnUNet_raw), find_dataset_name(dataset))
    ds = check_semi_dataset(folder, read_headers=False)
    ending, n_ch = ds.dataset_json["file_ending"], ds.num_channels
    test = list_cases(join(folder, "imagesTs"), ending, n_ch) if isdir(join(folder, "imagesTs")) else {}
    missing = [c for c in test if not isfile(join(folder, "labelsTs", c + ending))]
    if not test or missing:
        raise BenchmarkError(
            "The benchmark needs a labeled test set: " + (f"{len(missing)} test images have no label (e.g. "
                                                           f"{missing[0]}{ending})." if missing else "no test images."),
            join(folder, "labelsTs" if missing else "imagesTs"),
            "put test images into imagesTs/ and their masks into labelsTs/ (the converters do this with --num-test).")
    return folder


def choose_labeled(labeled_ids: Sequence[str], n: int, seed: int) -> List[str]:
    """The first ``n`` of one seeded permutation of the labeled ids: nested subsets for growing ``n``."""
    order = np.random.default_rng(seed).permutation(sorted(labeled_ids))
    return sorted(str(c) for c in order[:n])


def make_subset(source: str, target_raw: str, dataset_id: int, n: int, seed: int) -> str:
    """Write the subset dataset (``n`` labeled, the rest unlabeled) into ``target_raw``; reused when it exists."""
    import shutil
    from semi_nnunet.utilities.file_ops import copy_atomic
    from semi_nnunet.utilities.raw_dataset import UNLABELED_FOLDER, check_semi_dataset
    ds = check_semi_dataset(source, read_headers=False)
    if n > len(ds.labeled):
        raise BenchmarkError(f"{n} labeled cases were asked for but the dataset has {len(ds.labeled)}.",
                             f"--labeled {n}", f"use at most {len(ds.labeled)}.")
    name = f"{ds.dataset_json.get('name', 'Benchmark')}L{n}"
    folder = join(target_raw, f"Dataset{dataset_id:03d}_{name}")
    if isfile(join(folder, "dataset.json")):
        return folder
    chosen = set(choose_labeled(list(ds.labeled), n, seed))
    staging = folder + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", UNLABELED_FOLDER):
        maybe_mkdir_p(join(staging, sub))
    for case, files in ds.labeled.items():
        for f in files:
            copy_atomic(f, join(staging, "imagesTr" if case in chosen else UNLABELED_FOLDER, os.path.basename(f)))
        if case in chosen:
            copy_atomic(ds.labels[case], join(staging, "labelsTr", os.path.basename(ds.labels[case])))
    for files in ds.unlabeled.values():
        for f in files:
            copy_atomic(f, join(staging, UNLABELED_FOLDER, os.path.basename(f)))
    dataset_json = {**ds.dataset_json, "name": name, "numTraining": n,
                    "numUnlabeled": len(ds.labeled) - n + len(ds.unlabeled),
                    "benchmark_subset": {"source": source, "seed": seed, "labeled": sorted(chosen)}}
    dataset_json.pop("dataset", None)
    from semi_nnunet.utilities.file_ops import save_json_atomic
    save_json_atomic(dataset_json, join(staging, "dataset.json"))
    os.replace(staging, folder)
    return folder


def trainer_names(trainers: Sequence[str], baseline: str, epochs: Optional[int], iterations: Optional[int],
                  hco: bool, dims: int = 2) -> List[str]:
    """The names to train: the baseline, then each trainer (and its ``_HCO`` variant), with the budget applied.
    Every name is resolved now, so a typo or a 2D-only method on a 3D configuration fails before anything trains."""
    from semi_nnunet.run.train_api import find_trainer_class
    budget = "" if not epochs else f"_{epochs}epochs_{iterations}it"
    names = [baseline + budget]
    for t in trainers:
        cls = find_trainer_class(t)
        if not getattr(cls, "requires_labels", True):
            raise BenchmarkError(f"{t} learns without labels, so a label-efficiency comparison does not apply.",
                                 f"-tr {t}", "benchmark it with benchmarks/uslnet_hc18.py (withheld labels).")
        if dims not in getattr(cls, "supported_dims", (2, 3)):
            raise BenchmarkError(f"{t} works on {'/'.join(f'{d}D' for d in cls.supported_dims)} images only, "
                                 f"and the configuration is {dims}D.", f"-tr {t}",
                                 "leave it out, or benchmark the 2d configuration.")
        names.append(t + budget)
        if hco:
            names.append(t + budget + "_HCO")
    for name in names:
        find_trainer_class(name)
    return list(dict.fromkeys(names))


def _describe(values: Dict[str, float]) -> Dict[str, float]:
    v = np.array([x for x in values.values() if np.isfinite(x)], dtype=float)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "std": float(v.std()) if len(v) else float("nan")}


def run_subset(source: str, workdir: str, dataset_id: int, configuration: str, n: int, seed: int,
               names: Sequence[str], stages: Optional[int], device: str, num_processes: int) -> dict:
    """Everything for one ``n``: subset, preprocessing, trainings, predictions, evaluations. Returns its results."""
    from semi_nnunet.evaluation.evaluate_api import evaluate, foreground_per_case, paired_wilcoxon
    from semi_nnunet.inference.models import member_from_names
    from semi_nnunet.inference.predict_api import predict
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.run.train_api import find_trainer_class, train

    root = join(workdir, f"n{n}_seed{seed}")
    with nnunet_paths(root) as paths:
        raw = make_subset(source, paths["nnUNet_raw"], dataset_id, n, seed)
        dataset_name = os.path.basename(raw)
        plans = join(paths["nnUNet_preprocessed"], dataset_name, "nnUNetPlans.json")
        if not isfile(plans) or configuration not in load_json(plans)["configurations"]:
            print(f"[n={n}] planning and preprocessing {dataset_name}")
            plan_and_preprocess(dataset_id, [configuration], num_processes=num_processes, show_progress=False)
        runs = []
        for name in names:
            staged = getattr(find_trainer_class(name), "num_stages", 0)
            run = Run(name, 0 if not staged else staged if stages is None else stages, dataset_name, configuration,
                      join(root, "predictions", name))
            runs.append(run)
            if isfile(join(run.model_folder(run.final_trainer), "fold_all", "checkpoint_final.pth")):
                print(f"[n={n}] {name}: trained ({run.model_folder(run.final_trainer)})")
                continue
            print(f"[n={n}] training {name} on {n} labeled cases (fold all, {device})")
            train(dataset_id, configuration, name, ["all"], device=device, continue_training=not run.stages,
                  stages=run.stages if staged else None)  # --stages 0: stage 0 only, the model evaluated
        test_images, test_labels = join(source, "imagesTs"), join(source, "labelsTs")
        results, baseline = {}, None
        for run in runs:
            print(f"[n={n}] predicting the test set with {run.final_trainer}")
            member = member_from_names(dataset_name, configuration, run.name, folds=["all"], stage=run.stages or None)
            predict(test_images, run.prediction_folder, [member], device=device, show_progress=True)
            summary = evaluate(test_labels, run.prediction_folder, dataset_json_file=join(raw, "dataset.json"),
                               num_processes=num_processes)
            per_case = {m: foreground_per_case(summary, m) for m in ("Dice", "HD95", "ASD")}
            durations = run.epoch_times()
            debug = load_json(join(run.model_folder(), "fold_all", "debug.json"))  # nnU-Net's record of the trainer
            seconds_per_it = float(np.median(durations)) / int(debug["num_iterations_per_epoch"])
            row = {"trainer": run.name, "evaluated_model": run.final_trainer, "stages": run.stages,
                   "prediction_folder": run.prediction_folder, "summary": join(run.prediction_folder, "summary.json"),
                   "n_test": summary["n_cases"], "epochs_trained": len(durations),
                   "seconds_per_iteration": seconds_per_it, "train_time_s": float(np.sum(durations)),
                   "per_case_dice": per_case["Dice"]}
            for m, values in per_case.items():
                row[m] = _describe(values)
            if baseline is None:
                baseline = (row, per_case)
            base_row, base_cases = baseline
            row["time_per_iteration_ratio"] = seconds_per_it / base_row["seconds_per_iteration"]
            row["wilcoxon_vs_baseline"] = {m: paired_wilcoxon(base_cases[m], per_case[m]) for m in per_case} \
                if run.name != base_row["trainer"] else None
            results[run.name] = row
    return {"n_labeled": n, "seed": seed, "dataset": dataset_name, "root": root, "methods": results}


def run_label_efficiency(dataset, configuration: str = "2d", num_labeled: Sequence[int] = (5, 10),
                         trainers: Optional[Sequence[str]] = None, seed: int = 0, epochs: Optional[int] = None,
                         iterations: Optional[int] = None, hco: bool = True, stages: Optional[int] = None,
                         baseline: str = BASELINE, device: str = "cuda", workdir: str = "semi_nnunet_benchmark",
                         subset_dataset_id: int = 899, num_processes: int = 2, command: Optional[str] = None) -> dict:
    """Run the whole benchmark (see the module docstring); writes ``results.json``, ``results.md`` and the plots into
    ``workdir`` and returns the results."""
    from semi_nnunet.benchmarking.report import write_report
    source = source_dataset(dataset)  # every check before anything is trained
    if epochs and not iterations:
        raise BenchmarkError("A budget needs both epochs and iterations per epoch.", f"--epochs {epochs}",
                             "add --iterations N (nnU-Net's default is 250).")
    dims = 2 if configuration.startswith("2d") else 3
    if trainers is None:  # the default methods that apply to this configuration
        from semi_nnunet.run.train_api import find_trainer_class
        trainers = [t for t in DEFAULT_TRAINERS if dims in getattr(find_trainer_class(t), "supported_dims", (2, 3))]
    names = trainer_names(trainers, baseline, epochs, iterations, hco, dims)
    if not num_labeled or min(num_labeled) < 1:
        raise BenchmarkError("Every number of labeled cases must be at least 1.", f"--labeled {list(num_labeled)}",
                             "give positive numbers, e.g. --labeled 5 10.")
    workdir = os.path.abspath(workdir)
    maybe_mkdir_p(workdir)
    start = time.time()
    results = {"source": source, "configuration": configuration, "seed": seed, "device": device,
               "budget": {"epochs": epochs, "iterations_per_epoch": iterations, "stages": stages},
               "baseline": names[0], "trainers": names, "command": command or " ".join(sys.argv),
               "date": time.strftime("%Y-%m-%d"), "subsets": []}
    for n in sorted(set(num_labeled)):  # the report is rewritten after every subset, so a long run shows progress
        results["subsets"].append(run_subset(source, workdir, subset_dataset_id, configuration, n, seed, names, stages,
                                             device, num_processes))
        results["wall_time_s_this_call"] = time.time() - start
        write_report(results, workdir)
    return results
