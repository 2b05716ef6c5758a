"""Shared fixtures: nnU-Net's folders in a temporary directory, tiny synthetic datasets."""
import os

# nnU-Net sizes its process pools (validation export, prediction, fingerprinting) by nnUNet_def_n_proc, read once at
# import: its default of 8 spawns 8 interpreters per pool, each importing torch, for a handful of 48 px test cases on
# a 2-core CI machine. One worker keeps every pool (and the code paths through it) at a fraction of the cost.
os.environ.setdefault("nnUNet_def_n_proc", "1")

import pytest
from slurm_fixture import slurm_cluster  # noqa: F401,E402 (a real single-node Slurm, started on demand)


def pytest_configure(config):
    config.addinivalue_line("markers", "progress_png: the test reads progress.png, so it is drawn")
    config.addinivalue_line("markers", "slow: minutes of CPU; not in the default run, `-m slow` runs them (.ci/run "
                                       "runs both suites)")


def pytest_collection_modifyitems(config, items):
    """The default run leaves the ``slow`` suite out (deselected, not skipped); any ``-m`` expression decides itself."""
    if config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(autouse=True)
def _no_progress_png(request, monkeypatch):
    """nnU-Net redraws a 30x54-inch progress.png after every epoch (seconds each on a CPU); tests of a few
    iterations skip it unless they are marked ``progress_png``."""
    if request.node.get_closest_marker("progress_png") is None:
        from nnunetv2.training.logging.nnunet_logger import LocalLogger
        monkeypatch.setattr(LocalLogger, "plot_progress_png", lambda self, output_folder: None)



def _point_paths(root, mp):
    paths = {}
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        paths[k] = str(root / k)
        os.makedirs(paths[k], exist_ok=True)
        mp.setenv(k, paths[k])
    return paths


@pytest.fixture
def nnunet_paths(tmp_path, monkeypatch):
    """nnUNet_raw / nnUNet_preprocessed / nnUNet_results inside tmp_path (function scope)."""
    return _point_paths(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def module_paths(tmp_path_factory):
    """The same for a whole test module (for expensive set-ups shared by several tests)."""
    with pytest.MonkeyPatch.context() as mp:
        yield _point_paths(tmp_path_factory.mktemp("nnunet"), mp)
