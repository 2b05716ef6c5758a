"""A real single-node Slurm for the tests: the session-scoped fixture ``slurm_cluster``.

Use it from a test module or a conftest::

    from slurm_fixture import slurm_cluster  # noqa: F401  (pytest finds the fixture by name)

    def test_something(slurm_cluster):
        partition = slurm_cluster.partition

The fixture returns at once when ``sinfo`` shows a usable node. Otherwise, when running as root and
``SEMI_NNUNET_SLURM_SETUP`` is not ``"0"``, it runs ``.ci/slurm_setup.sh`` (installs and starts munge, slurmctld and
slurmd) and checks again. When Slurm is still not there, the test fails if ``SEMI_NNUNET_CI=1`` (CI must run the
Slurm tests) and is skipped otherwise, with a message saying how to start Slurm (``sudo .ci/slurm_setup.sh``).

Only the standard library and pytest.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_ROOT / ".ci" / "slurm_setup.sh"
# "idle", "mixed", "allocated", "completing", optionally with a state flag, but not "not responding" ("idle*")
_USABLE = re.compile(r"^(idle|mixed|allocated|completing)[^*]*$")


@dataclass(frozen=True)
class SlurmCluster:
    partition: str  # the default partition (pass it as ``sbatch -p``; it is also the default)
    nodes: Tuple[str, ...]  # node names
    cpus: int  # CPUs in the default partition

    def __getitem__(self, key: str):  # dict-style access as well: slurm_cluster["partition"]
        return getattr(self, key)


def _run(cmd: List[str], timeout: float = 20) -> Optional[str]:
    """stdout of cmd, or None when it is missing, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_status() -> Optional[SlurmCluster]:
    """The cluster when ``sinfo`` lists a usable node, else None."""
    out = _run(["sinfo", "-h", "-o", "%P|%T|%N|%C"])  # partition|state|nodes|CPUs alloc/idle/other/total
    if not out:
        return None
    default = None
    parts = {}  # partition -> (nodes, cpus), in sinfo's order
    for line in out.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 4 or not _USABLE.match(fields[1]):
            continue
        part = fields[0].rstrip("*")
        if fields[0].endswith("*"):
            default = part
        nodes, cpus = parts.setdefault(part, ([], [0]))
        nodes.extend(n for n in fields[2].split(",") if n and n not in nodes)
        try:
            cpus[0] += int(fields[3].split("/")[-1])
        except ValueError:
            pass
    if not parts:
        return None
    part = default if default in parts else next(iter(parts))
    nodes, cpus = parts[part]
    return SlurmCluster(partition=part, nodes=tuple(nodes), cpus=cpus[0])


def _start_slurm() -> str:
    """Run .ci/slurm_setup.sh; returns the tail of its output (for messages)."""
    try:
        proc = subprocess.run(["bash", str(SETUP_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=900, cwd=str(REPO_ROOT))
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return f"{SETUP_SCRIPT} timed out after 900 s:\n{out[-3000:]}"
    return f"{SETUP_SCRIPT} exited with {proc.returncode}:\n{proc.stdout[-3000:]}"


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = slurm_status()
    detail = "sinfo shows no idle/mixed/allocated node"
    if cluster is None:
        if hasattr(os, "geteuid") and os.geteuid() == 0 and os.environ.get("SEMI_NNUNET_SLURM_SETUP", "1") != "0":
            detail = _start_slurm()
            cluster = slurm_status()
        elif os.environ.get("SEMI_NNUNET_SLURM_SETUP", "1") == "0":
            detail += " (SEMI_NNUNET_SLURM_SETUP=0: not starting it)"
        else:
            detail += " (not root: not starting it)"
    if cluster is None:
        msg = (f"no running Slurm: {detail}\n"
               f"Start a single-node Slurm with: sudo {SETUP_SCRIPT.relative_to(REPO_ROOT)} "
               f"(stop it with: sudo .ci/slurm_teardown.sh)")
        pytest.fail(msg, pytrace=False)  # the Slurm tests (slow suite) need a real Slurm: never skipped
    yield cluster
