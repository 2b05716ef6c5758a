"""The Ray executor on a local instance (2 CPUs) with stand-in tasks: dependencies, a killed task retried, a failing
task reported, and the makespan of a staged graph against its critical path and against a barrier per stage."""
import os
import sys

import pytest

from semi_nnunet.tasks.executors import ExecutorOptions, TaskFailed, run_graph
from semi_nnunet.tasks.graph import Graph, Task

pytestmark = pytest.mark.slow  # a local Ray instance and about 30 s of stand-in tasks
HERE = os.path.dirname(__file__)
SLEEP = "standins:sleep_and_record"


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the module (the executor leaves an instance it did not start running)."""
    import ray  # in the [test] extra
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE] + sys.path)  # the workers import standins
    sys.path.insert(0, HERE)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
        sys.path.remove(HERE)
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _sleeper(graph, key, seconds, log, tmp_path, deps=()):
    out = str(tmp_path / f"{key.replace('/', '_')}.done")
    return graph.add(Task(key, SLEEP, dict(seconds=seconds, key=key, log=log, output=out), deps=list(deps),
                          outputs=[out], cost=seconds, fresh_process=False))


# two folds x three stages (train, then the next stage's pseudo-labels), unequal durations: fold 0 long-short-long,
# fold 1 short-long-short, so a barrier per stage always waits for the slower fold
DURATIONS = {0: (3.0, 0.8, 3.0), 1: (0.8, 3.0, 0.8)}
PSEUDO = 0.3


def _staged(tmp_path, log, barrier: bool) -> Graph:
    g = Graph("staged stand-in")
    for k in range(3):
        for f in (0, 1):
            deps = [f"train/stage{k - 1}/fold_{f}"] if k else []
            if k and barrier:
                deps = [f"barrier/stage{k - 1}"]
            if k:
                _sleeper(g, f"pseudo/stage{k}/fold_{f}", PSEUDO, log, tmp_path, deps)
                deps = [f"pseudo/stage{k}/fold_{f}"]
            _sleeper(g, f"train/stage{k}/fold_{f}", DURATIONS[f][k], log, tmp_path, deps)
        if barrier:
            _sleeper(g, f"barrier/stage{k}", 0.0, log, tmp_path, [f"train/stage{k}/fold_{f}" for f in (0, 1)])
    return g


def test_makespan_follows_the_critical_path_not_a_barrier_per_stage(ray_local, tmp_path):
    from standins import read_log
    results = {}
    for barrier in (False, True):
        log = str(tmp_path / f"log_{barrier}.jsonl")
        (tmp_path / str(barrier)).mkdir()
        g = _staged(tmp_path / str(barrier), log, barrier)
        run_graph(g, ExecutorOptions("ray"))
        rows = read_log(log)
        assert set(rows) == set(g.tasks)
        for t in g:  # every task started after its dependencies ended
            assert all(rows[t.key]["start"] >= rows[d]["end"] - 0.01 for d in t.deps)
        makespan = max(r["end"] for r in rows.values()) - min(r["start"] for r in rows.values())
        critical, _ = g.critical_path({k: r["end"] - r["start"] for k, r in rows.items()})
        results[barrier] = makespan, critical
    makespan, critical = results[False]
    barrier_makespan, _ = results[True]
    print(f"\nmakespan {makespan:.2f} s, critical path {critical:.2f} s (ratio {makespan / critical:.3f}); "
          f"with a barrier per stage {barrier_makespan:.2f} s ({barrier_makespan / makespan:.2f}x)")
    assert makespan <= 1.05 * critical
    # the barrier waits for the slower fold at every stage: 3 + 0.3 + 3 + 0.3 + 3 against 3 + 0.3 + 0.8 + 0.3 + 3
    assert barrier_makespan >= 1.2 * makespan


def test_a_killed_task_is_retried_and_its_dependents_run_after_it(ray_local, tmp_path):
    from standins import read_log
    log, marker = str(tmp_path / "log.jsonl"), str(tmp_path / "killed_once")
    g = Graph("retry")
    g.add(Task("dies_once", "standins:die_once", dict(marker=marker, key="dies_once", log=log),
               outputs=[str(tmp_path / "dies_once.done")], fresh_process=True))
    _sleeper(g, "after", 0.1, log, tmp_path, ["dies_once"])
    run_graph(g, ExecutorOptions("ray", max_retries=2))
    rows = read_log(log)
    assert os.path.isfile(marker) and set(rows) == {"dies_once", "after"}  # the first attempt left only its marker
    assert rows["after"]["start"] >= rows["dies_once"]["end"]


def test_a_failing_task_is_reported_its_dependents_do_not_run_the_others_finish(ray_local, tmp_path):
    from standins import read_log
    log = str(tmp_path / "log.jsonl")
    g = Graph("failure")
    g.add(Task("bad", "standins:fail", dict(message="no such case"), fresh_process=False, label="the bad task"))
    _sleeper(g, "after_bad", 0.1, log, tmp_path, ["bad"])
    _sleeper(g, "independent", 0.5, log, tmp_path)
    with pytest.raises(TaskFailed, match=r"2 of 3 tasks failed(.|\n)*the bad task: .*no such case"):
        run_graph(g, ExecutorOptions("ray", max_retries=0))
    assert set(read_log(log)) == {"independent"}
