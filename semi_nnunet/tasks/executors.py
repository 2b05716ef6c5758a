"""Executors: run a :class:`~semi_nnunet.tasks.graph.Graph` here, on Ray or on Slurm.

- ``local`` (default, no extra dependency): every task in this process, in the graph's order.
- ``ray``: each task a Ray task (``num_cpus``/``num_gpus`` from the task, a fresh worker process each), dependencies
  passed as object references, so a task starts the moment its own dependencies finish (no barrier per stage). Without
  ``ray_address`` a local instance is started (one machine; Ray hands each GPU task one of the GPUs that
  ``CUDA_VISIBLE_DEVICES`` lists, or all GPUs when it is not set, and never others); with it, the cluster is joined. A
  task whose process dies is retried ``max_retries`` times; the retry resumes from what the dead attempt left on disk
  (a training continues from its latest checkpoint).
- ``slurm``: one job per task through submitit, with ``afterok`` dependencies on the jobs of its dependencies
  (``kill-on-invalid-dep``: a failed task's dependents are cancelled, not left pending). Jobs get
  ``--signal=USR1@<grace>``; our trainers answer SIGUSR1 by saving ``checkpoint_latest.pth`` after the current
  iteration, and submitit requeues the job, which continues from it.

``parallel`` > 1 with ``local`` is a local Ray instance with that many slots (CPU tasks: that many at a time; GPU
tasks: that many GPUs).
"""
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from semi_nnunet.tasks.graph import Graph, Task
from semi_nnunet.utilities.errors import InputError

EXECUTORS = ("local", "ray", "slurm")
EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}  # executor -> (module, extra that installs it)


class TaskFailed(RuntimeError):
    """One or more tasks of a graph failed (the others ran to the end; rerunning continues)."""


@dataclass
class ExecutorOptions:
    """How to run a graph (the ``--executor`` options of train, benchmark and predict)."""
    executor: str = "local"
    parallel: int = 1
    ray_address: Optional[str] = None
    max_retries: int = 3
    slurm_partition: Optional[str] = None
    slurm_time: Optional[str] = None  # minutes, HH:MM:SS or D-HH:MM:SS; default one day
    slurm_cpus: Optional[int] = None  # CPUs per task; default: what each task asks for
    slurm_gpus: Optional[int] = None  # GPUs per task; default: what each task asks for (1 for CUDA trainings)
    slurm_options: Dict[str, str] = field(default_factory=dict)  # more sbatch options, e.g. {"mem": "32G"}
    slurm_folder: Optional[str] = None  # submitit's job files and logs; default ./semi_nnunet_slurm
    slurm_signal_s: int = 120  # USR1 this many seconds before the time limit
    poll_s: float = 5.0

    @property
    def engine(self) -> str:
        return "ray" if self.executor == "local" and self.parallel > 1 else self.executor


def require(executor: str):
    """Import the engine of ``executor``; fails, naming the extra to install, when it is missing."""
    module, extra = EXTRAS[executor]
    try:
        return __import__(module)
    except ImportError:
        raise InputError(f"--executor {executor} needs the Python package '{module}', which is not installed.",
                         f"--executor {executor}" + (" (--parallel uses a local Ray)" if executor == "ray" else ""),
                         f"pip install 'semi_nnunet[{extra}]'") from None


def check_options(options: ExecutorOptions) -> None:
    """Bad executor options fail before anything runs."""
    if options.executor not in EXECUTORS:
        raise InputError(f"Unknown executor '{options.executor}'.", "--executor",
                         f"choose one of {', '.join(EXECUTORS)}.")
    if options.parallel < 1:
        raise InputError(f"--parallel {options.parallel}: at least one task must run at a time.", "--parallel",
                         "give --parallel 1 or more.")
    if options.parallel > 1 and options.executor == "slurm":
        raise InputError("--parallel is for one machine; Slurm decides how many jobs run at once.", "--parallel",
                         "drop --parallel with --executor slurm.")
    if options.ray_address and options.engine != "ray":
        raise InputError("--ray-address joins a Ray cluster, which only --executor ray uses.", "--ray-address",
                         "add --executor ray, or drop --ray-address.")
    if options.slurm_time is not None:
        slurm_minutes(options.slurm_time)
    if options.engine != "local":
        require(options.engine)


def slurm_minutes(value: str) -> int:
    """``"90"``, ``"01:30:00"``, ``"1-12:00:00"`` -> minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise InputError(f"--slurm-time {value} is not a Slurm time.", "--slurm-time",
                         "give minutes (90), HH:MM:SS (01:30:00) or D-HH:MM:SS (1-12:00:00).")
    days, a, b, c = m.groups()
    if b is None:  # minutes, or D-HH
        minutes = int(a) * (60 if days else 1)
    elif c is None:  # MM:SS, or D-HH:MM
        minutes = int(a) * 60 + int(b) if days else int(a) + (int(b) > 0)
    else:
        minutes = int(a) * 60 + int(b) + (int(c) > 0)
    return minutes + int(days or 0) * 24 * 60


def run_graph(graph: Graph, options: Optional[ExecutorOptions] = None,
              on_done: Optional[Callable[[Task], None]] = None) -> None:
    """Run every task of ``graph`` that is not done, with the chosen executor. ``on_done`` is called in this process
    after each task finishes (local and Ray; Slurm: when the job is seen finished)."""
    options = options or ExecutorOptions()
    check_options(options)
    {"local": _run_local, "ray": _run_ray, "slurm": _run_slurm}[options.engine](graph, options, on_done)


def _run_local(graph: Graph, options: ExecutorOptions, on_done) -> None:
    for task in graph:
        if task.done():
            continue
        task.run()
        if on_done is not None:
            on_done(task)


def last_line(error: BaseException) -> str:
    """The last line of an error's message (a remote traceback's is the error itself); its type when it has none."""
    return (str(error).strip().splitlines() or [type(error).__name__])[-1]


def _remote_run(task: Task, *finished_dependencies) -> bool:
    """What a Ray worker runs: the task (its dependencies' results are only waited for)."""
    task.run()
    return True


def device_slots(parallel: int, device: str, environ=None) -> List[Optional[str]]:
    """The GPUs ``parallel`` trainings side by side use on CUDA: those the user or the scheduler listed in
    ``CUDA_VISIBLE_DEVICES`` (never others), else GPUs 0..parallel-1; None (the environment as it is) off CUDA. More
    trainings than listed GPUs is an error."""
    if device != "cuda":
        return [None] * parallel
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        import torch
        count = torch.cuda.device_count()
        if parallel > count:
            raise InputError(f"--parallel {parallel} trains one fold per GPU, but this machine has {count} GPU(s).",
                             "--parallel", f"use --parallel {max(count, 1)}"
                             + (", or -device cpu." if not count else "."))
        return [str(i) for i in range(parallel)]
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    if parallel > len(ids):
        raise InputError(f"--parallel {parallel} trains one fold per GPU, but CUDA_VISIBLE_DEVICES={visible} lists "
                         f"{len(ids)} GPU(s).", "--parallel / CUDA_VISIBLE_DEVICES",
                         f"use --parallel {len(ids)} or list more GPUs.")
    return ids[:parallel]


def _run_ray(graph: Graph, options: ExecutorOptions, on_done) -> None:
    ray = require("ray")
    from tqdm import tqdm
    if options.parallel > 1 and any(t.gpus for t in graph):
        device_slots(options.parallel, "cuda")  # more slots than listed GPUs fails here
        most = max(t.gpus for t in graph)
        if not options.ray_address and most > options.parallel:  # such a task could never be scheduled: a hang
            raise InputError(f"A task needs {most} GPUs, but --parallel {options.parallel} starts Ray with "
                             f"{options.parallel}.", f"--parallel {options.parallel} / -num_gpus {most}",
                             f"use --parallel {most} or more, or fewer GPUs per training.")
    started = not ray.is_initialized()
    if started:
        init = {"include_dashboard": False, "log_to_driver": False}  # the trainings log to their fold folders
        if options.ray_address:
            init["address"] = options.ray_address
        elif options.parallel > 1:
            init["num_cpus"] = options.parallel
            if any(t.gpus for t in graph):
                init["num_gpus"] = options.parallel
        ray.init(**init)
    try:
        remotes = {True: ray.remote(max_calls=1)(_remote_run), False: ray.remote(_remote_run)}
        refs, keys = {}, {}
        for task in graph:
            if task.done():
                continue
            deps = [refs[d] for d in task.deps if d in refs]
            ref = remotes[task.fresh_process].options(
                num_cpus=task.cpus, num_gpus=task.gpus, max_retries=options.max_retries, retry_exceptions=False,
                name=task.key).remote(task, *deps)
            refs[task.key], keys[ref] = ref, task.key
        failed = []
        pending = list(refs.values())
        with tqdm(total=len(pending), desc=f"{graph.name or 'tasks'} (ray)", unit="task", disable=not pending) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                key = keys[ready[0]]
                try:
                    ray.get(ready[0])
                except Exception as e:  # the task's own error, or its dependency's
                    failed.append(f"{graph[key].describe()}: {type(e).__name__}: {last_line(e)}")
                else:
                    if on_done is not None:
                        on_done(graph[key])
                bar.update(1)
        if failed:
            raise TaskFailed(f"{len(failed)} of {len(refs)} tasks failed (rerun the same command to continue):\n  "
                             + "\n  ".join(failed))
    finally:
        if started:
            ray.shutdown()


class SlurmTask:
    """What a Slurm job runs (pickled by submitit). ``checkpoint`` makes it requeueable: on SIGUSR1 (the time limit
    nears, or preemption) the training saves its latest checkpoint, submitit requeues the job, and the task runs again,
    continuing from what is on disk."""

    def __init__(self, task: Task):
        self.task = task

    def __call__(self) -> bool:
        self.task.run()
        return True

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def slurm_parameters(task: Task, options: ExecutorOptions, dependencies: List[str]) -> dict:
    """submitit's ``SlurmExecutor`` parameters for one task (exposed for tests and ``--dry-run``)."""
    extra = {"signal": f"USR1@{options.slurm_signal_s}", **options.slurm_options}
    params = {"job_name": re.sub(r"[^A-Za-z0-9_.-]+", "_", task.key)[:120],
              "time": slurm_minutes(options.slurm_time) if options.slurm_time else 24 * 60,
              "cpus_per_task": options.slurm_cpus or task.cpus, "ntasks_per_node": 1, "nodes": 1,
              "signal_delay_s": options.slurm_signal_s,
              "setup": ["export SUBMITIT_PREEMPT_SIGNAL=USR1"], "additional_parameters": extra}
    gpus = task.gpus if options.slurm_gpus is None else (options.slurm_gpus if task.gpus else 0)
    if gpus:
        params["gpus_per_node"] = gpus
    if options.slurm_partition:
        params["partition"] = options.slurm_partition
    if dependencies:
        params["dependency"] = "afterok:" + ":".join(dependencies)
        extra["kill-on-invalid-dep"] = "yes"
    return params


SQUEUE_RETRIES, SQUEUE_BACKOFF_S = 4, 5.0


def _queued(job_ids: List[str]) -> Dict[str, str]:
    """Job id -> state of the jobs still in Slurm's queue (pending, running, requeued...)."""
    if not job_ids:
        return {}
    for attempt in range(SQUEUE_RETRIES + 1):  # a busy controller times out now and then; the jobs run on
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(job_ids)], capture_output=True,
                             text=True)
        if out.returncode == 0 or "Invalid job id" in out.stderr:
            break
        if attempt == SQUEUE_RETRIES:
            raise RuntimeError(f"squeue failed {SQUEUE_RETRIES + 1} times: {out.stderr.strip()} (the jobs may "
                               f"still run: check squeue before rerunning the command)")
        time.sleep(SQUEUE_BACKOFF_S * 2 ** attempt)
    states = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _run_slurm(graph: Graph, options: ExecutorOptions, on_done) -> None:
    submitit = require("slurm")
    from tqdm import tqdm
    folder = os.path.abspath(options.slurm_folder or "semi_nnunet_slurm")
    jobs = {}
    for task in graph:
        if task.done():
            continue
        deps = [jobs[d].job_id for d in task.deps if d in jobs]
        # a fresh executor per task: update_parameters merges into the previous ones, so a task without
        # dependencies or GPUs would inherit the last task's afterok or GPU request
        executor = submitit.SlurmExecutor(folder=os.path.join(folder, "%j"))
        executor.update_parameters(**slurm_parameters(task, options, deps))
        jobs[task.key] = executor.submit(SlurmTask(task))
        print(f"submitted {task.describe()}: Slurm job {jobs[task.key].job_id}"
              + (f" (afterok:{':'.join(deps)})" if deps else ""), flush=True)
    failed, running = [], dict(jobs)
    with tqdm(total=len(jobs), desc=f"{graph.name or 'tasks'} (slurm)", unit="job", disable=not jobs) as bar:
        while running:
            queued = _queued([j.job_id for j in running.values()])
            for key in [k for k, j in running.items() if j.job_id not in queued]:
                job = running.pop(key)
                if job.paths.result_pickle.exists():
                    try:
                        job.result()
                    except Exception as e:
                        failed.append(f"{graph[key].describe()}: job {job.job_id} failed: "
                                      f"{last_line(e)} (log: {job.paths.stderr})")
                    else:
                        if on_done is not None:
                            on_done(graph[key])
                else:
                    failed.append(f"{graph[key].describe()}: job {job.job_id} ended without a result (cancelled, "
                                  f"killed or a dependency failed; log: {job.paths.stderr})")
                bar.update(1)
            if running:
                time.sleep(options.poll_s)
    if failed:
        raise TaskFailed(f"{len(failed)} of {len(jobs)} Slurm jobs failed (rerun the same command to continue):\n  "
                         + "\n  ".join(failed))
