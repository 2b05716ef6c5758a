"""What the benchmark's grid will cost, printed before it starts (so a user sees "about 6 h" before committing).

For every (subset, trainer) pair with jobs still to run, the seconds per training and per validation iteration come
from a finished job of the same pair when there is one (its epoch durations: the most accurate figure, measured on
this machine under the same conditions), otherwise from a few iterations timed now: the trainer is built as nnU-Net
builds it (plans, loaders, augmentation, unlabeled loader), ``warmup`` iterations are run untimed, then ``timed``
training and validation iterations. Nothing of the timed trainer is kept (it writes into a scratch results folder).

The estimate covers the epochs of each job; the stages of a staged trainer are counted at the baseline's speed on
the same subset (a stage is a supervised training on ground truth + pseudo-labels). Start-up, nnU-Net's final
validation, pseudo-labelling and the test-set prediction are added from finished jobs (their wall time minus their
epochs) once one has finished; before that they are not counted, and the estimate says so.
"""
import contextlib
import os
import shutil
import tempfile
import time
from typing import Dict, Tuple

import numpy as np


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_iterations(job, warmup: int = 2, timed: int = 5) -> Tuple[float, float]:
    """Seconds per training iteration and per validation iteration of ``job``'s trainer on its subset."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args

    from semi_nnunet.utilities.environment import nnunet_paths
    from semi_nnunet.trainers.lookup import register_with_nnunet
    from semi_nnunet.trainers.training import seed_everything
    scratch = tempfile.mkdtemp(prefix="semi_nnunet_timing_")
    try:
        with nnunet_paths(job.subset.root, results=scratch), open(os.devnull, "w") as null, \
                contextlib.redirect_stdout(null):
            register_with_nnunet()
            seed_everything(job.train_seed)
            trainer = get_trainer_from_args(job.subset.dataset_name, job.subset.configuration, "all", job.trainer,
                                            device=torch.device(job.device))
            trainer.on_train_start()
            try:
                trainer.on_train_epoch_start()
                for i in range(warmup + timed):
                    if i == warmup:
                        t0 = time.perf_counter()
                    trainer.train_step(next(trainer.dataloader_train))
                train_s = (time.perf_counter() - t0) / timed
                trainer.on_validation_epoch_start()
                with torch.no_grad():
                    next(trainer.dataloader_val)
                    t0 = time.perf_counter()
                    for _ in range(timed):
                        trainer.validation_step(next(trainer.dataloader_val))
                val_s = (time.perf_counter() - t0) / timed
            finally:
                for loader in (trainer.dataloader_train, trainer.dataloader_val,
                               getattr(trainer, "dataloader_unlabeled", None)):
                    if hasattr(loader, "_finish"):
                        loader._finish()
        return train_s, val_s
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _schedule(trainer: str) -> Tuple[int, int, int]:
    from semi_nnunet.trainers.lookup import find_trainer_class
    schedule = getattr(find_trainer_class(trainer), "schedule", {})
    return (int(schedule.get("num_epochs", 1000)), int(schedule.get("num_iterations_per_epoch", 250)),
            int(schedule.get("num_val_iterations_per_epoch", 50)))


def estimate_grid(grid, warmup: int = 2, timed: int = 5) -> dict:
    """The estimated seconds of the grid's unfinished jobs (see the module docstring), with how it was obtained."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    finished = [load_json(j.result_file) for j in grid.jobs if j.done()]
    measured: Dict[Tuple[str, str], float] = {}  # (label, trainer) -> seconds per training iteration, epoch-based
    overheads = []
    for r in finished:
        measured.setdefault((r["label"], r["trainer"]), r["seconds_per_iteration"])
        if r.get("job_wall_time_s_last_call", 0) > r["train_time_s"]:
            overheads.append(r["job_wall_time_s_last_call"] - r["train_time_s"])
    todo = [j for j in grid.jobs if not j.done()]
    timed_now: Dict[Tuple[str, str], float] = {}
    per_pair = {}
    for job in todo:
        key = (job.subset.label, job.trainer)
        if key in measured or key in timed_now:
            continue
        epochs, its, val_its = _schedule(job.trainer)
        train_s, val_s = time_iterations(job, warmup, timed)
        timed_now[key] = (its * train_s + val_its * val_s) / its  # per training iteration, validation included
        print(f"  timed {job.subset.label:>4} labeled, {job.trainer}: {train_s:.3f} s / training iteration")
    speeds = {**timed_now, **measured}
    total = 0.0
    for job in todo:
        epochs, its, _ = _schedule(job.trainer)
        base = next((j.trainer for j in grid.jobs if j.is_baseline and j.subset == job.subset), job.trainer)
        speed = speeds[(job.subset.label, job.trainer)]
        if (job.subset.label, job.trainer) in measured:  # pooled over the stages of a finished staged job already
            seconds = epochs * its * (job.stages + 1) * speed
        else:
            seconds = epochs * its * (speed + job.stages * speeds.get((job.subset.label, base), speed))
        per_pair[f"n={job.subset.label} {job.trainer}"] = per_pair.get(f"n={job.subset.label} {job.trainer}", 0) \
            + seconds
        total += seconds
    overhead = float(np.median(overheads)) if overheads else 0.0
    total += overhead * len(todo)
    how = (f"{len(measured)} trainer/subset pairs from finished jobs, {len(timed_now)} from {timed} timed "
           f"iterations") + (f"; {overhead:.0f} s per job for start-up, final validation and prediction, from "
                             f"finished jobs" if overheads else "; start-up, final validation, pseudo-labelling "
                                                               "and prediction not included yet")
    return {"seconds": total, "jobs_to_run": len(todo), "jobs_done": len(finished), "how": how,
            "seconds_per_job_kind": per_pair, "seconds_per_iteration": {f"n={k[0]} {k[1]}": v
                                                                        for k, v in speeds.items()}}
