"""The label-efficiency benchmark: does a semi-supervised trainer beat nnU-Net trained on the same labels?

The benchmark is a **grid of independent jobs**: subsets x trainers x training seeds.

1. **Subsets** (:class:`Subset`, one per ``--labeled`` entry, made by :func:`prepare_subset`): under
   ``<workdir>/n<n>_subset<s>/nnUNet_raw`` the first ``n`` labeled cases of one permutation seeded by the *subset
   seed* ``s`` (``--seed``; nested: the 5 are among the 20) keep their labels; every other labeled case of the source
   becomes unlabeled (its label is not copied), next to the source's own unlabeled images. ``all`` keeps every label
   (the supervised ceiling). The source's test set (``imagesTs``/``labelsTs``) is every run's test set. Planned and
   preprocessed like any dataset, so the baseline gets nnU-Net's configuration for ``n`` cases.
2. **Jobs** (:class:`Job`, run by :func:`run_job`): one trainer on one subset with one *training seed* (``--repeats
   R``: seeds ``0..R-1``; Python, numpy and torch are seeded before the trainer is built). Fold ``all`` (every labeled
   case trains), the same budget for every trainer (``--epochs`` x ``--iterations``: a generated
   ``<Trainer>_<E>epochs_<I>it`` variant, which also keeps a snapshot at half the budget), then the test set is
   predicted (nnU-Net's predictor, mirroring on) and evaluated with
   :func:`semi_nnunet.evaluation.evaluate_api.evaluate` (what ``semi_nnUNet_evaluate`` runs). The supervised
   baseline's half-way snapshot is evaluated too: the convergence check. Only the baseline trains on ``all``. A staged
   trainer (Semi-CervixSeg) runs its stages (``--stages``) and its last stage is the model evaluated. Each training
   seed has its own ``nnUNet_results`` (``<subset>/seed<t>/``); a job's result file (``<subset>/seed<t>/jobs/
   <trainer>.json``) means it is done.
3. **Report** (:mod:`semi_nnunet.benchmarking.report`, rewritten after every job): mean ± std over seeds, paired
   differences to the baseline of the same seed with bootstrap intervals, gap recovery against the ``all`` ceiling,
   the convergence flag, time per iteration, training time (:mod:`semi_nnunet.benchmarking.statistics`).

Before anything trains the grid's cost is estimated (:mod:`semi_nnunet.benchmarking.timing`) and printed.

Time per iteration is the median epoch duration (from nnU-Net's own epoch timestamps in the checkpoint, pooled over a
staged trainer's stages) divided by iterations per epoch; an epoch also holds its validation iterations (one per five
training iterations in a budget variant) and nnU-Net's per-epoch bookkeeping, the same for every trainer, so the ratio
is a slight underestimate of the pure training-step ratio (``benchmarks/step_time.py`` measures that). A worker runs
its jobs one after the other, so with one worker on an otherwise idle machine the baseline and a method are measured
under the same conditions; jobs run by several workers at once, or on different days, carry those conditions too.
Training time is the sum of the epoch durations (startup and final validation excluded), so it survives resuming.

Resumable: a subset, a preprocessing, a trained model (its final checkpoint), a prediction (per case), an evaluation
and a job that exist are reused; an interrupted training continues from its latest checkpoint. Adding a seed, an
``n`` or a trainer later runs only what is missing.
"""
import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Union

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json, maybe_mkdir_p

from semi_nnunet.dataset_conversion.common import choose_labeled
from semi_nnunet.utilities.errors import InputError
from semi_nnunet.utilities.environment import nnunet_paths
from semi_nnunet.tasks.executors import ExecutorOptions, run_graph
from semi_nnunet.tasks.graph import Graph, Task

BASELINE = "nnUNetTrainer"
DEFAULT_TRAINERS = ("MeanTeacherTrainer", "SemiCervixTrainer", "HermesTrainer")
ALL = "all"


class BenchmarkError(InputError):
    """Bad input to the benchmark. The message names the file or argument and the fix."""


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


def make_subset(source: str, target_raw: str, dataset_id: int, n: int, seed: int) -> str:
    """Write the subset dataset (``n`` labeled, the rest unlabeled) into ``target_raw``; reused when it exists."""
    import shutil
    from semi_nnunet.utilities.file_ops import copy_atomic, save_json_atomic
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
    save_json_atomic(dataset_json, join(staging, "dataset.json"))
    os.replace(staging, folder)
    return folder


def trainer_names(trainers: Sequence[str], baseline: str, epochs: Optional[int], iterations: Optional[int],
                  hco: bool, dims: int = 2) -> List[str]:
    """The names to train: the baseline, then each trainer (and its ``_HCO`` variant, where HCO can take the
    trainer's settings), with the budget applied. Every name is resolved and its settings checked now, so a typo, a
    2D-only method on a 3D configuration or settings that cannot train fail before anything trains."""
    from semi_nnunet.trainers.lookup import TrainingError, check_trainer_settings, find_trainer_class
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
        if hco and not t.endswith("_HCO"):
            try:
                check_trainer_settings(t + budget + "_HCO")
                names.append(t + budget + "_HCO")
            except TrainingError as e:  # a variant HCO cannot take (uniform stage sampling): compared without it
                print(f"Note: no HCO row for {t}: {e.problem}")
    for name in names:
        try:
            check_trainer_settings(name)
        except TrainingError as e:  # an unknown name, or settings that cannot train: said as -tr's problem
            raise BenchmarkError(e.problem, f"-tr {name}", e.fix) from None
    return list(dict.fromkeys(names))


def parse_labeled(values: Sequence[Union[int, str]]) -> List[str]:
    """``--labeled`` entries as labels: positive integers (sorted) and ``all`` last; anything else is an error."""
    numbers, has_all = set(), False
    for v in values:
        text = str(v).strip().lower()
        if text == ALL:
            has_all = True
        elif text.isdigit() and int(text) >= 1:
            numbers.add(int(text))
        else:
            raise BenchmarkError(f"'{v}' is not a number of labeled cases.", f"--labeled {' '.join(map(str, values))}",
                                 "give positive numbers and optionally 'all', e.g. --labeled 5 20 all.")
    if not numbers and not has_all:
        raise BenchmarkError("No number of labeled cases was given.", "--labeled", "e.g. --labeled 5 20 all.")
    return [str(n) for n in sorted(numbers)] + ([ALL] if has_all else [])


@dataclass(frozen=True)
class Subset:
    """One subset of the source: ``label`` as asked for (``"5"``, ``"all"``), ``n`` labeled cases."""
    label: str
    n: int
    subset_seed: int
    source: str
    workdir: str
    dataset_id: int
    configuration: str

    @property
    def root(self) -> str:
        return join(self.workdir, f"n{self.label}_subset{self.subset_seed}")

    def raw_folder(self) -> str:
        """The subset's raw dataset folder (exists after :func:`prepare_subset`)."""
        raw = join(self.root, "nnUNet_raw")
        found = [d for d in (os.listdir(raw) if isdir(raw) else []) if d.startswith(f"Dataset{self.dataset_id:03d}_")
                 and isfile(join(raw, d, "dataset.json"))]
        if not found:
            raise BenchmarkError(f"The subset n={self.label} was not prepared.", raw, "run the benchmark again.")
        return join(raw, found[0])

    @property
    def dataset_name(self) -> str:
        return os.path.basename(self.raw_folder())


@dataclass(frozen=True)
class Job:
    """One training of the grid: ``trainer`` (as trained, budget included) on ``subset`` with ``train_seed``,
    then prediction and evaluation of the test set. Independent of every other job once its subset is prepared."""
    subset: Subset
    trainer: str
    train_seed: int
    stages: int = 0  # pseudo-label stages after stage 0 (0: not a staged trainer)
    is_baseline: bool = False
    device: str = "cpu"
    num_processes: int = 2
    empty_rule: str = "nan"  # semi_nnUNet_evaluate's --empty: a case with empty reference and prediction

    @property
    def folder(self) -> str:
        return join(self.subset.root, f"seed{self.train_seed}")

    @property
    def results_folder(self) -> str:
        return join(self.folder, "nnUNet_results")

    @property
    def result_file(self) -> str:
        return join(self.folder, "jobs", f"{self.trainer}.json")

    @property
    def lock_file(self) -> str:
        """Held while a worker runs the job (:func:`run_grid`)."""
        return join(self.folder, "jobs", f"{self.trainer}.lock")

    @property
    def log_file(self) -> str:
        return join(self.folder, "logs", f"{self.trainer}.log")

    @property
    def final_trainer(self) -> str:
        """The trainer whose model is evaluated (a staged trainer's last stage)."""
        from semi_nnunet.inference.models import stage_trainer_name
        return stage_trainer_name(self.trainer, self.stages)

    def describe(self) -> str:
        return f"n={self.subset.label} {self.trainer} seed {self.train_seed}"

    def done(self) -> bool:
        return isfile(self.result_file)

    def model_folder(self, trainer: Optional[str] = None) -> str:
        from nnunetv2.utilities.file_path_utilities import get_output_folder
        return get_output_folder(self.subset.dataset_name, trainer or self.trainer, "nnUNetPlans",
                                 self.subset.configuration)

    def epoch_times(self) -> List[float]:
        """Durations of every epoch of the trainer and of its stages, from nnU-Net's logging in the checkpoints."""
        from semi_nnunet.inference.models import stage_trainer_name
        from semi_nnunet.utilities.checkpoints import load_checkpoint_file
        durations = []
        for k in range(self.stages + 1):
            checkpoint = join(self.model_folder(stage_trainer_name(self.trainer, k)), "fold_all",
                              "checkpoint_final.pth")
            log = load_checkpoint_file(checkpoint, mmap=True)["logging"]
            durations += [e - s for s, e in zip(log["epoch_start_timestamps"], log["epoch_end_timestamps"])]
        return durations


@dataclass
class Grid:
    """Everything the benchmark runs: the subsets (prepared first) and the jobs (independent of each other)."""
    subsets: List[Subset]
    jobs: List[Job]
    trainers: List[str]
    repeats: int
    budget_tag: str = ""  # the budget suffix every trainer name carries ("_40epochs_50it"), "" without a budget
    meta: dict = field(default_factory=dict)


def plan_grid(source: str, configuration: str, labeled: Sequence[str], names: Sequence[str], repeats: int,
              subset_seed: int, stages: Optional[int], device: str, workdir: str, dataset_id: int,
              num_processes: int, empty_rule: str = "nan") -> Grid:
    """The subsets and the jobs, in the order the local run takes them: seed by seed, so the first seed of every
    method is reported before the second starts; within a seed, subset by subset (the baseline first)."""
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.utilities.raw_dataset import check_semi_dataset
    n_labeled = len(check_semi_dataset(source, read_headers=False).labeled)
    numbers = [int(x) for x in labeled if x != ALL]
    if numbers and max(numbers) > n_labeled:
        raise BenchmarkError(f"{max(numbers)} labeled cases were asked for but the dataset has {n_labeled}.",
                             f"--labeled {max(numbers)}", f"use at most {n_labeled}.")
    if ALL in labeled and numbers and max(numbers) >= n_labeled:
        raise BenchmarkError(f"'all' adds no labeled case: the dataset has {n_labeled} labeled cases and "
                             f"--labeled already asks for {max(numbers)}.", f"--labeled {' '.join(labeled)}",
                             "drop 'all', or use a dataset with more labeled cases than the largest n (the converters "
                             "take --num-labeled).")
    subsets = [Subset(x, n_labeled if x == ALL else int(x), subset_seed, source, workdir, dataset_id, configuration)
               for x in labeled]
    jobs = []
    for seed in range(repeats):
        for subset in subsets:
            for i, name in enumerate(names):
                if subset.label == ALL and i > 0:
                    continue  # the ceiling: the supervised baseline on every label
                staged = getattr(find_trainer_class(name), "num_stages", 0)
                jobs.append(Job(subset, name, seed, 0 if not staged else staged if stages is None else stages,
                                i == 0, device, num_processes, empty_rule))
    import re
    tag = re.search(r"_\d+epochs_\d+it", names[0])
    return Grid(subsets, jobs, list(names), repeats, tag.group(0) if tag else "")


def prepare_subset(subset: Subset, num_processes: int = 2) -> str:
    """Write, plan and preprocess the subset (reused when done). Returns its raw folder."""
    from semi_nnunet.planners.plan_and_preprocess_api import plan_and_preprocess
    from semi_nnunet.tasks.locks import claim
    maybe_mkdir_p(subset.root)
    with claim(join(subset.root, "prepare.lock"), wait=5), nnunet_paths(subset.root) as paths:
        raw = make_subset(subset.source, paths["nnUNet_raw"], subset.dataset_id, subset.n, subset.subset_seed)
        plans = join(paths["nnUNet_preprocessed"], os.path.basename(raw), "nnUNetPlans.json")
        if not isfile(plans) or subset.configuration not in load_json(plans)["configurations"]:
            print(f"[n={subset.label}] planning and preprocessing {os.path.basename(raw)}")
            with open(join(subset.root, "plan_and_preprocess.log"), "a") as log, contextlib.redirect_stdout(log):
                plan_and_preprocess(subset.dataset_id, [subset.configuration], num_processes=num_processes,
                                    show_progress=False)
    return raw


@contextlib.contextmanager
def _epoch_progress(job: Job, num_epochs: int) -> Iterator[None]:
    """A tqdm bar over the job's epochs (every stage of a staged trainer), fed by the trainers' epoch listener."""
    from tqdm import tqdm
    from semi_nnunet.trainers.schedule import EPOCH_LISTENERS
    bar = tqdm(total=num_epochs * (job.stages + 1), desc=job.describe(), unit="epoch", leave=True)

    def listener(trainer) -> None:  # the bar's position from the trainer's: a resumed training starts where it was
        import re
        stage = re.search(r"_stage(\d+)$", type(trainer).__name__)
        bar.n = min(bar.total, (int(stage.group(1)) if stage else 0) * num_epochs + trainer.current_epoch)
        bar.refresh()
        loss = trainer.logger.get_value("train_losses", step=-1) if hasattr(trainer, "logger") else None
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.3f}")
    EPOCH_LISTENERS.append(listener)
    try:
        yield
    finally:
        EPOCH_LISTENERS.remove(listener)
        bar.close()


def _evaluate_member(job: Job, member, prediction_folder: str, raw: str) -> dict:
    from semi_nnunet.evaluation.evaluate_api import evaluate, foreground_per_case
    from semi_nnunet.inference.predict_api import predict
    predict(join(job.subset.source, "imagesTs"), prediction_folder, [member], device=job.device, show_progress=False)
    summary = evaluate(join(job.subset.source, "labelsTs"), prediction_folder,
                       dataset_json_file=join(raw, "dataset.json"), num_processes=job.num_processes,
                       empty_rule=job.empty_rule)
    out = {m: foreground_per_case(summary, m) for m in ("Dice", "HD95", "ASD")}
    out["n_test"] = summary["n_cases"]
    return out


def run_job(job: Job) -> dict:
    """Train (or continue), predict, evaluate one job and write its result file; reuse it when it exists."""
    from semi_nnunet.inference.models import member_from_names
    from semi_nnunet.trainers.lookup import find_trainer_class
    from semi_nnunet.train_api import train
    from semi_nnunet.trainers.schedule import snapshot_name
    from semi_nnunet.utilities.file_ops import save_json_atomic
    from semi_nnunet.utilities.provenance import code_version
    if job.done():
        return load_json(job.result_file)
    start = time.time()
    raw = job.subset.raw_folder()
    maybe_mkdir_p(os.path.dirname(job.log_file))
    with nnunet_paths(job.subset.root, results=job.results_folder):
        cls = find_trainer_class(job.trainer)
        epochs = int(getattr(cls, "schedule", {}).get("num_epochs", 1000))
        staged = getattr(cls, "num_stages", 0)
        final = join(job.model_folder(job.final_trainer), "fold_all", "checkpoint_final.pth")
        if not isfile(final):
            with _epoch_progress(job, epochs), open(job.log_file, "a") as log, contextlib.redirect_stdout(log):
                train(job.subset.dataset_id, job.subset.configuration, job.trainer, ["all"], device=job.device,
                      continue_training=not job.stages, stages=job.stages if staged else None,
                      seed=job.train_seed, final_validation=False)
        predictions = join(job.folder, "predictions")
        member = member_from_names(job.subset.dataset_name, job.subset.configuration, job.trainer, folds=["all"],
                                   stage=job.stages or None)
        scores = _evaluate_member(job, member, join(predictions, job.trainer), raw)
        half = None
        snapshots = tuple(getattr(cls, "schedule", {}).get("snapshot_epochs", ()))
        if job.is_baseline and snapshots and isfile(join(job.model_folder(), "fold_all", snapshot_name(snapshots[0]))):
            member.checkpoint = snapshot_name(snapshots[0])
            half = {"epoch": snapshots[0], "of": epochs,
                    "Dice": _evaluate_member(job, member, join(predictions, f"{job.trainer}_epoch{snapshots[0]}"),
                                             raw)["Dice"]}
        durations = job.epoch_times()
        debug = load_json(join(job.model_folder(), "fold_all", "debug.json"))  # nnU-Net's record of the trainer
    result = {"job": {**asdict(job), "subset": asdict(job.subset)}, "trainer": job.trainer,
              "evaluated_model": job.final_trainer, "train_seed": job.train_seed, "label": job.subset.label,
              "n_labeled": job.subset.n, "n_test": scores.pop("n_test"), "per_case": scores,
              "half_budget": half, "epochs_trained": len(durations),
              "iterations_per_epoch": int(debug["num_iterations_per_epoch"]),
              "seconds_per_iteration": float(np.median(durations)) / int(debug["num_iterations_per_epoch"]),
              "train_time_s": float(np.sum(durations)), "job_wall_time_s_last_call": time.time() - start,
              "prediction_folder": join(predictions, job.trainer), "date": time.strftime("%Y-%m-%d %H:%M"),
              "code": code_version()}
    save_json_atomic(result, job.result_file)
    return result


def load_results(grid: Grid) -> List[dict]:
    """The result files of the grid's finished jobs, and of the jobs an earlier call ran in the same folder with the
    same subset seed, budget and a training seed within ``repeats`` (e.g. more trainers at one n): the report
    describes everything measured there under these conditions."""
    own = [j.result_file for j in grid.jobs]
    found = [f for j, f in zip(grid.jobs, own) if j.done()]
    if grid.subsets:
        s = grid.subsets[0]
        found += sorted(set(result_files(s.workdir, s.subset_seed, grid.repeats, grid.budget_tag)) - set(own))
    return [load_json(f) for f in found]


def result_files(folder: str, subset_seed: int, repeats: int, budget_tag: str) -> List[str]:
    """Every job result under ``folder`` (``n<label>_subset<seed>/seed<t>/jobs/*.json``) with this subset seed, a
    training seed below ``repeats`` and this budget."""
    import glob
    found = []
    for f in sorted(glob.glob(join(folder, f"n*_subset{subset_seed}", "seed*", "jobs", "*.json"))):
        seed = os.path.basename(os.path.dirname(os.path.dirname(f)))[len("seed"):]
        if seed.isdigit() and int(seed) < repeats and budget_tag in os.path.basename(f):
            found.append(f)
    return found


def _command_values(command: str, flag: str) -> List[str]:
    """The values after ``flag`` in a recorded command line (up to the next option)."""
    tokens, values = command.split(), []
    if flag in tokens:
        for t in tokens[tokens.index(flag) + 1:]:
            if t.startswith("-") and not t.lstrip("-").replace(".", "").isdigit():
                break
            values.append(t)
    return values


def rewrite_report(folder: str, jobs: Optional[str] = None, repeats: Optional[int] = None) -> dict:
    """results.json/results.md/plots of a benchmark folder again, from its job result files (under ``jobs``, default
    ``folder``), with this code: for a grid whose jobs ran on an older commit, or job results copied into a
    repository (``benchmarks/label_efficiency_grids.sh save``). What the command chose is read from the recorded
    command; nothing is trained or predicted. ``repeats``: report training seeds 0..repeats-1 (default: the recorded
    command's), e.g. when the last command in the folder added one seed of a new method to a 3-seed grid."""
    from semi_nnunet.benchmarking.report import aggregate, write_report
    old = load_json(join(folder, "results.json"))
    budget = old["budget"]
    tag = f"_{budget['epochs']}epochs_{budget['iterations_per_epoch']}it" if budget.get("epochs") else ""
    baseline = old["baseline"][:-len(tag)] if tag and old["baseline"].endswith(tag) else old["baseline"]
    command = old.get("command", "")
    meta = {k: old[k] for k in ("source", "configuration", "subset_seed", "empty_rule", "training_seeds", "device",
                                "budget", "baseline", "jobs_total", "command", "date", "estimate",
                                "wall_time_s_this_call") if k in old}
    if repeats:
        recorded = len(meta["training_seeds"]) or 1
        meta["training_seeds"] = list(range(repeats))
        if "jobs_total" in meta:  # the command's grid is the same for each seed
            meta["jobs_total"] = meta["jobs_total"] * repeats // recorded
    given = _command_values(command, "--labeled")
    meta["labeled"] = parse_labeled(given) if given else old["labeled"]
    chosen = _command_values(command, "-tr")
    meta["trainers"] = list(dict.fromkeys([baseline + tag] + [t + tag for t in chosen] + (
        [] if "--no-hco" in command.split() else [t + tag + "_HCO" for t in chosen if not t.endswith("_HCO")])))
    files = result_files(jobs or folder, meta["subset_seed"], len(meta["training_seeds"]), tag)
    results = aggregate(meta, [load_json(f) for f in files])
    write_report(results, folder, quiet=True)
    return results


def run_job_once(job: Job, wait: float = 0) -> Optional[dict]:
    """Task: run ``job`` unless another live worker holds its lock (then skip it; None).

    ``wait`` > 0 (a Ray or Slurm task: its retry may land while the lock of the attempt that died still looks
    alive): wait for the lock instead, then run the job unless its holder finished it meanwhile."""
    from semi_nnunet.tasks.locks import claim
    with claim(job.lock_file, wait=wait,
               on_wait=lambda owner: print(f"{job.describe()}: held by {owner}; waiting", flush=True)) as mine:
        if not mine:
            print(f"{job.describe()}: another worker runs it, skipped")
            return None
        if job.done():
            return load_json(job.result_file)
        return run_job(job)


def grid_graph(grid: Grid, run: str = "semi_nnunet.benchmarking.label_efficiency:run_job_once",
               wait: float = 0) -> Graph:
    """The grid as tasks: each subset's preparation, then every job of the subset (independent of each other; one
    GPU each on CUDA), in the grid's order (seed by seed). ``wait``: passed to :func:`run_job_once`."""
    graph = Graph("benchmark jobs")
    num_processes = grid.jobs[0].num_processes if grid.jobs else 2
    for subset in grid.subsets:
        graph.add(Task(f"prepare/n{subset.label}", "semi_nnunet.benchmarking.label_efficiency:prepare_subset",
                       dict(subset=subset, num_processes=num_processes), cost=0.01,
                       label=f"prepare the subset n={subset.label}"))
    for job in grid.jobs:
        graph.add(Task(f"job/n{job.subset.label}/seed{job.train_seed}/{job.trainer}", run,
                       dict(job=job, **({"wait": wait} if wait else {})),
                       deps=[f"prepare/n{job.subset.label}"], outputs=[job.result_file],
                       gpus=1 if job.device == "cuda" else 0, label=job.describe()))
    return graph


def run_grid(grid: Grid, on_progress: Optional[Callable[[Grid], None]] = None,
             run: str = "semi_nnunet.benchmarking.label_efficiency:run_job_once",
             executor: Optional[ExecutorOptions] = None) -> List[dict]:
    """Run the grid's jobs that are not done with ``executor`` (default: here, one after the other; ``on_progress``
    after each one, e.g. to rewrite the report). A job's result on disk means done, so a rerun continues where it
    stopped.

    Several workers may run the same grid at once (the same command started once per core or per machine sharing
    the folder): a worker holds a job's lock file (``jobs/<trainer>.lock``) while it runs it and skips jobs another
    live worker holds; a subset is prepared by one worker while the others wait."""
    remote = executor is not None and executor.engine != "local"
    graph = grid_graph(grid, run, wait=30 if remote else 0)
    if on_progress is not None:
        on_progress(grid)
    run_graph(graph, executor, on_done=None if on_progress is None else lambda task: on_progress(grid))
    return load_results(grid)


def run_label_efficiency(dataset, configuration: str = "2d", num_labeled: Sequence[Union[int, str]] = (5, 10),
                         trainers: Optional[Sequence[str]] = None, seed: int = 0, epochs: Optional[int] = None,
                         iterations: Optional[int] = None, hco: bool = True, stages: Optional[int] = None,
                         baseline: str = BASELINE, device: str = "cuda", workdir: str = "semi_nnunet_benchmark",
                         subset_dataset_id: int = 899, num_processes: int = 2, command: Optional[str] = None,
                         repeats: int = 1, estimate_only: bool = False, dry_run: bool = False,
                         executor: Optional[ExecutorOptions] = None, empty_rule: str = "nan") -> dict:
    """Run the whole benchmark (see the module docstring); writes ``results.json``, ``results.md`` and the plots into
    ``workdir`` and returns the results. ``estimate_only``: prepare the subsets, print the cost estimate, stop.
    ``dry_run``: print the task graph (what is done, what is to do) without preparing or running anything.
    ``executor``: where the jobs run (default here, one after the other; Ray or Slurm: side by side)."""
    from semi_nnunet.benchmarking.report import aggregate, write_report
    from semi_nnunet.benchmarking.timing import estimate_grid, format_duration
    if repeats is None or repeats < 1:
        raise BenchmarkError(f"--repeats {repeats}: every method needs at least one training.", f"--repeats {repeats}",
                             "give --repeats 1 or more (3 seeds for a comparison to report).")
    if bool(epochs) != bool(iterations):
        raise BenchmarkError("A budget needs both epochs and iterations per epoch.",
                             f"--epochs {epochs} --iterations {iterations}",
                             "give both, e.g. --epochs 40 --iterations 50 (nnU-Net's default is 1000 x 250).")
    from semi_nnunet.tasks.executors import check_options
    check_options(executor or ExecutorOptions())
    labels = parse_labeled(num_labeled)
    source = source_dataset(dataset)  # every check before anything is trained
    dims = 2 if configuration.startswith("2d") else 3
    if trainers is None:  # the default methods that apply to this configuration
        from semi_nnunet.trainers.lookup import find_trainer_class
        trainers = [t for t in DEFAULT_TRAINERS if dims in getattr(find_trainer_class(t), "supported_dims", (2, 3))]
    names = trainer_names(trainers, baseline, epochs, iterations, hco, dims)
    workdir = os.path.abspath(workdir)
    grid = plan_grid(source, configuration, labels, names, repeats, seed, stages, device, workdir,
                     subset_dataset_id, num_processes, empty_rule)
    if dry_run:
        grid_graph(grid).print(f"Label-efficiency grid in {workdir}")
        return {"jobs": [j.describe() for j in grid.jobs]}
    maybe_mkdir_p(workdir)
    grid.meta = {"source": source, "configuration": configuration, "subset_seed": seed, "empty_rule": empty_rule,
                 "training_seeds": list(range(repeats)), "device": device,
                 "budget": {"epochs": epochs, "iterations_per_epoch": iterations, "stages": stages},
                 "baseline": names[0], "trainers": names, "labeled": labels, "jobs_total": len(grid.jobs),
                 "command": command or " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    for subset in grid.subsets:
        prepare_subset(subset, num_processes)
    grid.meta["estimate"] = estimate = estimate_grid(grid)
    print(f"\nThe grid: {len(grid.subsets)} subsets x {len(names)} trainers x {repeats} training seeds = "
          f"{len(grid.jobs)} jobs, {estimate['jobs_to_run']} to run. Estimated time on this machine: about "
          f"{format_duration(estimate['seconds'])} ({estimate['how']}).\n", flush=True)
    if estimate_only:
        return {"estimate": estimate, "jobs": [j.describe() for j in grid.jobs]}
    start = time.time()

    def report(g: Grid) -> None:
        g.meta["wall_time_s_this_call"] = time.time() - start
        write_report(aggregate(g.meta, load_results(g)), workdir, quiet=True)
    run_grid(grid, report, executor=executor)
    results = aggregate(grid.meta, load_results(grid))
    write_report(results, workdir)
    return results

