"""Locks on folders shared by several workers (processes, Ray workers, Slurm jobs, machines on one file system).

A lock is a file created exclusively (``O_EXCL``) that names its owner as JSON: host, pid, the Slurm job id when
there is one, and when it was taken. While it is held a daemon thread touches the file every ``heartbeat_s`` seconds,
so its modification time is the owner's heartbeat. A lock is **stale**, and the next worker takes it over, when its
owner is a process of this host that no longer runs (a killed training, a cancelled job), or when its heartbeat is
older than ``stale_s`` (an owner on another machine that died, or a file left half-written).

Used for a fold's training (a second worker waits until the first is done, then finds the fold trained), a
pseudo-label folder, a benchmark job (a second worker skips it) and the preparation of a benchmark subset.
"""
import json
import os
import socket
import threading
import time
from contextlib import contextmanager, suppress
from typing import Callable, Iterator, Optional

HEARTBEAT_S = float(os.environ.get("SEMI_NNUNET_LOCK_HEARTBEAT_S", 15))
STALE_S = float(os.environ.get("SEMI_NNUNET_LOCK_STALE_S", 120))
_HELD = set()  # absolute paths of the locks this process holds (a lock naming our pid but not here is a leftover)


def owner_record() -> dict:
    """Who takes a lock: this host and process, and the Slurm job when it runs in one."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        record["slurm_job_id"] = job
    return record


def read_owner(lock: str) -> Optional[dict]:
    """The owner a lock file names; None when it is absent; ``{}`` when it cannot be read (half-written, old
    format)."""
    try:
        with open(lock, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except ValueError:
        if ":" in text:  # host:pid, the format of earlier versions
            host, pid = text.rsplit(":", 1)
            return {"host": host, "pid": int(pid)} if pid.isdigit() else {}
        return {}


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # runs, as another user
    return True


def is_stale(lock: str, stale_s: Optional[float] = None, now: Optional[float] = None) -> bool:
    """True when the lock's owner is gone: a dead process of this host, or no heartbeat for ``stale_s`` seconds."""
    stale_s = STALE_S if stale_s is None else stale_s
    owner = read_owner(lock)
    if owner is None:
        return False  # released meanwhile: nothing to take over, try to create it again
    try:
        age = (time.time() if now is None else now) - os.stat(lock).st_mtime
    except FileNotFoundError:
        return False
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if not _process_runs(owner["pid"]):
            return True
        if owner["pid"] == os.getpid():
            # held by this process (another thread), or left by an earlier process that had our pid (pid reuse
            # after a container restart): then its owner is certainly gone
            return os.path.abspath(lock) not in _HELD
    return age > stale_s


def describe_owner(lock: str) -> str:
    owner = read_owner(lock) or {}
    parts = [f"{owner.get('host', '?')} pid {owner.get('pid', '?')}"]
    if owner.get("slurm_job_id"):
        parts.append(f"Slurm job {owner['slurm_job_id']}")
    if owner.get("since"):
        parts.append(f"since {owner['since']}")
    return ", ".join(parts)


class _Heartbeat(threading.Thread):
    def __init__(self, lock: str, every: float):
        super().__init__(daemon=True, name=f"heartbeat {os.path.basename(lock)}")
        self.lock, self.every, self.stopped = lock, every, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            with suppress(OSError):
                os.utime(self.lock)


def _take_over(lock: str, stale_s: Optional[float]) -> None:
    """Remove ``lock`` if it is (still) stale, one worker at a time: two workers that both judged it stale must not
    both remove it (the second would delete the first one's new lock). A guard file created exclusively serialises
    the check and the removal; a guard left by a worker that died in that instant expires after ``stale_s``."""
    guard = lock + ".takeover"
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        with suppress(FileNotFoundError):
            if time.time() - os.stat(guard).st_mtime > (STALE_S if stale_s is None else stale_s):
                os.remove(guard)
        time.sleep(0.05)
        return
    try:
        if is_stale(lock, stale_s):
            with suppress(FileNotFoundError):
                os.remove(lock)
    finally:
        with suppress(FileNotFoundError):
            os.remove(guard)


def _try_create(lock: str) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(owner_record(), f)
    return True


@contextmanager
def claim(lock: str, wait: float = 0, heartbeat_s: Optional[float] = None, stale_s: Optional[float] = None,
          on_wait: Optional[Callable[[str], None]] = None) -> Iterator[bool]:
    """Hold ``lock`` for the block; yields True when held, False when a live owner holds it and ``wait`` is 0.

    ``wait`` > 0: poll every ``wait`` seconds until the owner releases it (or dies) instead; ``on_wait`` is called
    once with a description of the owner when the wait begins. A stale lock (see :func:`is_stale`) is taken over."""
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    told = False
    while not _try_create(lock):
        if is_stale(lock, stale_s):
            _take_over(lock, stale_s)
            continue
        if wait <= 0:
            yield False
            return
        if on_wait is not None and not told:
            on_wait(describe_owner(lock))
            told = True
        time.sleep(wait)
    _HELD.add(os.path.abspath(lock))
    beat = _Heartbeat(lock, heartbeat_s)
    beat.start()
    try:
        yield True
    finally:
        beat.stopped.set()
        beat.join()
        _HELD.discard(os.path.abspath(lock))
        owner = read_owner(lock) or {}
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            with suppress(FileNotFoundError):
                os.remove(lock)
