"""The task graph: order, done-ness, the critical path, the dry-run listing, the local executor, option checks."""
import os

import pytest

from semi_nnunet.tasks.executors import ExecutorOptions, check_options, run_graph, slurm_minutes, slurm_parameters
from semi_nnunet.tasks.graph import Graph, Task, check_graph
from semi_nnunet.utilities.errors import InputError

SLEEP = "standins:sleep_and_record"


@pytest.fixture(autouse=True)
def _standins_importable(monkeypatch):
    import sys
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(__file__)] + sys.path))


def _task(key, tmp_path, deps=(), cost=1.0, seconds=0.0):
    out = str(tmp_path / f"{key.replace('/', '_')}.done")
    return Task(key, SLEEP, dict(seconds=seconds, key=key, log=str(tmp_path / "log.jsonl"), output=out),
                deps=list(deps), outputs=[out], cost=cost, label=f"task {key}")


def test_dependencies_must_exist_and_keys_be_unique(tmp_path):
    g = Graph()
    g.add(_task("a", tmp_path))
    with pytest.raises(ValueError, match="depends on \\['b'\\]"):
        g.add(_task("c", tmp_path, deps=["b"]))
    with pytest.raises(ValueError, match="twice"):
        g.add(_task("a", tmp_path))


def test_critical_path_is_the_longest_chain_by_cost(tmp_path):
    g = Graph()
    g.add(_task("a0", tmp_path, cost=3))
    g.add(_task("b0", tmp_path, cost=1))
    g.add(_task("a1", tmp_path, ["a0"], cost=1))
    g.add(_task("b1", tmp_path, ["b0"], cost=4))
    g.add(_task("end", tmp_path, ["a1", "b1"], cost=0.5))
    length, path = g.critical_path()
    assert (length, path) == (5.5, ["b0", "b1", "end"])
    assert g.critical_path({"a0": 10, "b0": 1, "a1": 1, "b1": 1, "end": 0}) == (11, ["a0", "a1", "end"])


def test_local_executor_runs_in_order_skips_done_tasks_and_reruns_nothing(tmp_path):
    from standins import read_log
    g = Graph("demo")
    g.add(_task("a", tmp_path))
    g.add(_task("b", tmp_path, ["a"]))
    g.add(_task("c", tmp_path, ["b"]))
    open(g["a"].outputs[0], "w").close()  # done before the run
    seen = []
    run_graph(g, on_done=lambda t: seen.append(t.key))
    assert seen == ["b", "c"] and set(read_log(str(tmp_path / "log.jsonl"))) == {"b", "c"}
    assert g.todo() == []
    run_graph(g, on_done=lambda t: seen.append(t.key))
    assert seen == ["b", "c"]  # a second run: everything done


def test_a_task_without_outputs_always_runs_and_carries_its_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", "/somewhere")
    t = Task("env", "os:getenv", dict(key="nnUNet_results"))
    assert t.env["nnUNet_results"] == "/somewhere" and not t.done()
    monkeypatch.setenv("nnUNet_results", "/elsewhere")
    assert t.run() == "/somewhere" and os.environ["nnUNet_results"] == "/elsewhere"  # put back afterwards


def test_dry_run_listing_says_done_and_to_do_with_dependencies(tmp_path, capsys):
    g = Graph("pipeline")
    g.add(_task("a", tmp_path))
    g.add(_task("b", tmp_path, ["a"]))
    open(g["a"].outputs[0], "w").close()
    g.print()
    out = capsys.readouterr().out
    assert "pipeline: 2 tasks, 1 to do, 1 done" in out
    assert "[done] task a" in out and "[to do] task b  (after: task a)" in out


def test_a_misnamed_function_fails_before_anything_runs(tmp_path):
    g = Graph()
    g.add(Task("x", "semi_nnunet.tasks.graph:no_such_function"))
    with pytest.raises(InputError, match="no_such_function"):
        check_graph(g)


@pytest.mark.parametrize("value, minutes", [
    ("90", 90), ("01:30:00", 90), ("1-00:00:00", 1440), ("2-6", 2 * 1440 + 360), ("1-01:30", 1440 + 90),
    ("10:30", 11), ("0:0:1", 1),
])
def test_slurm_time_formats(value, minutes):
    assert slurm_minutes(value) == minutes


@pytest.mark.parametrize("options, message", [
    (ExecutorOptions("dask"), "Unknown executor 'dask'"),
    (ExecutorOptions(parallel=0), "--parallel 0"),
    (ExecutorOptions("slurm", parallel=2), "Slurm decides"),
    (ExecutorOptions(ray_address="auto"), "--ray-address joins a Ray cluster"),
    (ExecutorOptions("slurm", slurm_time="soon"), "not a Slurm time"),
])
def test_bad_executor_options_fail_clearly(options, message):
    with pytest.raises(InputError, match=message):
        check_options(options)


@pytest.mark.parametrize("executor, module, extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_a_missing_engine_names_the_extra_to_install(monkeypatch, executor, module, extra):
    import builtins
    real = builtins.__import__

    def no_engine(name, *args, **kwargs):
        if name == module:
            raise ImportError(f"No module named '{module}'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_engine)
    with pytest.raises(InputError, match=rf"pip install 'semi_nnunet\[{extra}\]'"):
        check_options(ExecutorOptions(executor))


def test_slurm_job_parameters_carry_resources_signal_and_dependencies(tmp_path):
    t = Task("train/stage1/fold_0", "os:getcwd", gpus=1, cpus=2)
    opts = ExecutorOptions("slurm", slurm_partition="gpu", slurm_time="02:00:00", slurm_options={"mem": "32G"},
                           slurm_signal_s=300)
    p = slurm_parameters(t, opts, ["11", "12"])
    assert p["partition"] == "gpu" and p["time"] == 120 and p["cpus_per_task"] == 2 and p["gpus_per_node"] == 1
    assert p["dependency"] == "afterok:11:12" and p["additional_parameters"]["kill-on-invalid-dep"] == "yes"
    assert p["additional_parameters"]["signal"] == "USR1@300" and p["additional_parameters"]["mem"] == "32G"
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR1" in p["setup"] and p["job_name"] == "train_stage1_fold_0"
    cpu_task = slurm_parameters(Task("report", "os:getcwd"), ExecutorOptions("slurm", slurm_gpus=2), [])
    assert "gpus_per_node" not in cpu_task and "dependency" not in cpu_task  # GPUs only for tasks that use one


def test_each_slurm_job_gets_only_its_own_parameters(tmp_path, monkeypatch):
    """submitit's update_parameters merges into the previous job's: a task without dependencies or GPUs submitted
    after one with them must not inherit its afterok (it would wait forever on a failed job) or its GPU request."""
    import types

    from semi_nnunet.tasks import executors
    submitted = []

    class FakeJob:
        def __init__(self, n):
            self.job_id = str(100 + n)
            self.paths = types.SimpleNamespace(result_pickle=tmp_path / "none", stderr="log")

    class FakeExecutor:
        def __init__(self, folder):
            self.parameters = {}

        def update_parameters(self, **kwargs):
            self.parameters.update(kwargs)

        def submit(self, fn):
            submitted.append((fn.task.key, dict(self.parameters)))
            return FakeJob(len(submitted))
    monkeypatch.setattr(executors, "require", lambda engine: types.SimpleNamespace(SlurmExecutor=FakeExecutor))
    monkeypatch.setattr(executors, "_queued", lambda ids: {})
    g = Graph()
    g.add(Task("train/fold_0", "os:getcwd", gpus=1, outputs=[str(tmp_path / "a")]))
    g.add(Task("pseudo/fold_0", "os:getcwd", deps=["train/fold_0"], gpus=1, outputs=[str(tmp_path / "b")]))
    g.add(Task("report", "os:getcwd", outputs=[str(tmp_path / "c")]))
    with pytest.raises(Exception, match="ended without a result"):  # the fake jobs never write one
        run_graph(g, ExecutorOptions("slurm", slurm_folder=str(tmp_path / "slurm")))
    params = dict(submitted)
    assert params["pseudo/fold_0"]["dependency"] == "afterok:101"
    assert "dependency" not in params["report"] and "gpus_per_node" not in params["report"]


def test_a_failed_task_ends_the_cli_with_its_message_not_a_traceback(monkeypatch, capsys):
    """semi_nnUNet_train with an executor whose task failed: exit status 1 and 'rerun the same command' on stderr."""
    import semi_nnunet.train_api as train_api
    from semi_nnunet.run.train_entrypoint import main
    from semi_nnunet.tasks.executors import TaskFailed

    def failing(*args, **kwargs):
        raise TaskFailed("1 of 2 tasks failed (rerun the same command to continue):\n  train fold 0: boom")
    monkeypatch.setattr(train_api, "train", failing)
    with pytest.raises(SystemExit) as e:
        main(["4", "2d", "nnUNetTrainer", "0"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "ERROR: 1 of 2 tasks failed (rerun the same command" in err and "Traceback" not in err
