"""Tasks and their graph.

A task is idempotent: its ``outputs`` (files) all existing means it is done, and every executor skips a done task,
so running a graph again continues where it stopped. A task without outputs (a report) always runs.
``skipped_if``: files any one of which means the task is not needed (done without outputs: a later stage after an
early stop). Functions are
named by dotted path (``"package.module:function"``) and called with keyword arguments, so a task can be pickled to
another process or machine and run there.
"""
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from semi_nnunet.utilities.environment import environment
from semi_nnunet.utilities.errors import InputError

#: the environment variables a task carries to the process that runs it (nnU-Net's folders and settings, ours)
CARRIED_ENVIRONMENT_PREFIXES = ("nnUNet_", "SEMI_NNUNET_", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def carried_environment(environ=None) -> Dict[str, str]:
    """The part of the environment a task takes along (see :data:`CARRIED_ENVIRONMENT_PREFIXES`)."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if k.startswith(CARRIED_ENVIRONMENT_PREFIXES)}


def resolve(path: str) -> Callable:
    """``"package.module:function"`` -> the function."""
    module, _, name = path.partition(":")
    if not name:
        raise ValueError(f"A task function is named 'package.module:function', not '{path}'.")
    return getattr(importlib.import_module(module), name)


@dataclass
class Task:
    """One unit of work. ``key``: unique in its graph; ``fn``: ``"package.module:function"``; ``deps``: keys of the
    tasks that must finish first; ``outputs``: the files that mean done; ``cpus``/``gpus``: what it needs (Ray's
    ``num_cpus``/``num_gpus``, Slurm's CPUs per task and GPUs); ``cost``: a relative duration, for the critical path
    and ``--dry-run``; ``env``: environment variables set in the process that runs it; ``fresh_process``: Ray runs
    it in a new worker process (a training: GPU memory and nnU-Net's module state start clean), else in a reused one
    (short tasks); ``skipped_if``: files any of which means the task is not needed."""
    key: str
    fn: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    deps: List[str] = field(default_factory=list)
    outputs: List[str] = field(default_factory=list)
    label: str = ""
    cpus: int = 1
    gpus: int = 0
    cost: float = 1.0
    env: Dict[str, str] = field(default_factory=carried_environment)
    fresh_process: bool = True
    skipped_if: List[str] = field(default_factory=list)

    def done(self) -> bool:
        if any(os.path.isfile(f) for f in self.skipped_if):
            return True
        return bool(self.outputs) and all(os.path.isfile(o) for o in self.outputs)

    def run(self) -> Any:
        """Run the task here (in this process), with its environment."""
        with environment(self.env):
            return resolve(self.fn)(**self.kwargs)

    def describe(self) -> str:
        return self.label or self.key


class Graph:
    """Tasks in the order they were added, with their dependencies. ``add`` checks that dependencies exist, so the
    order of addition is a topological order and the graph has no cycle."""

    def __init__(self, name: str = ""):
        self.name = name
        self.tasks: Dict[str, Task] = {}

    def add(self, task: Task) -> Task:
        if task.key in self.tasks:
            raise ValueError(f"Task '{task.key}' is in the graph twice.")
        missing = [d for d in task.deps if d not in self.tasks]
        if missing:
            raise ValueError(f"Task '{task.key}' depends on {missing}, which are not in the graph (add them first).")
        self.tasks[task.key] = task
        return task

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, key: str) -> Task:
        return self.tasks[key]

    def dependents(self, key: str) -> List[Task]:
        return [t for t in self if key in t.deps]

    def todo(self) -> List[Task]:
        """The tasks that are not done, in order."""
        return [t for t in self if not t.done()]

    def critical_path(self, costs: Optional[Dict[str, float]] = None) -> Tuple[float, List[str]]:
        """The longest chain of dependent tasks by cost (``costs`` by key, else each task's ``cost``): no executor
        can finish the graph faster, however many workers it has."""
        finish: Dict[str, float] = {}
        before: Dict[str, Optional[str]] = {}
        for t in self:
            start, prev = max(((finish[d], d) for d in t.deps), default=(0.0, None))
            finish[t.key] = start + (costs[t.key] if costs is not None else t.cost)
            before[t.key] = prev
        if not finish:
            return 0.0, []
        end = max(reversed(list(finish)), key=finish.get)  # on a tie, the later task (it ends the chain)
        path = [end]
        while before[path[-1]] is not None:
            path.append(before[path[-1]])
        return finish[end], path[::-1]

    def describe(self) -> List[str]:
        """One line per task: done or to do, what it is, what it waits for (``--dry-run`` prints these)."""
        lines = []
        for t in self:
            after = f"  (after: {', '.join(self.tasks[d].describe() for d in t.deps)})" if t.deps else ""
            lines.append(f"[{'done' if t.done() else 'to do'}] {t.describe()}{after}")
        return lines

    def print(self, title: str = "") -> None:
        todo = len(self.todo())
        print(f"{title or self.name}: {len(self)} tasks, {todo} to do, {len(self) - todo} done")
        for line in self.describe():
            print("  " + line)


def check_graph(graph: Graph) -> None:
    """Every task function can be imported (a typo fails before anything runs)."""
    for task in graph:
        try:
            resolve(task.fn)
        except (ImportError, AttributeError, ValueError) as e:
            raise InputError(f"Task '{task.key}' names a function that cannot be found ({e}).", task.fn,
                             "this is a bug in the code that built the graph; please report it.") from None
