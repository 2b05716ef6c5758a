"""Atomic file writes: a reader never sees a half-written file.

Everything is written to a temporary file in the destination folder and moved into place with ``os.replace``, which
is atomic on POSIX and Windows file systems when source and target share a folder.
"""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from contextlib import suppress as contextlib_suppress
from typing import Any, Iterator


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: str) -> Iterator[str]:
    """Yield a temporary path next to ``target``; on success it is renamed onto ``target``, on error removed.
    The file gets the permissions a plain ``open`` would give it (``mkstemp`` makes it owner-only), unless the
    writer set others (``shutil.copy2`` copies the source's)."""
    folder = os.path.dirname(os.path.abspath(target))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.basename(target)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        if os.path.isfile(tmp) and os.stat(tmp).st_mode & 0o777 == 0o600:
            os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json_atomic(obj: Any, target: str, indent: int = 2) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, sort_keys=False)


def copy_atomic(source: str, target: str) -> None:
    """Copy ``source`` to ``target`` (with its modification time), atomically."""
    with atomic_path(target) as tmp:
        shutil.copy2(source, tmp)


def is_same_copy(source: str, target: str) -> bool:
    """True when ``target`` exists with the size and modification time ``copy_atomic`` gave it from ``source``."""
    if not os.path.isfile(target):
        return False
    s, t = os.stat(source), os.stat(target)
    return s.st_size == t.st_size and int(s.st_mtime) == int(t.st_mtime)


def _lock_holder_alive(lock: str) -> bool:
    """True when the lock file names a process of this host that still runs (a lock left by a killed run is stale)."""
    import socket
    try:
        with open(lock, encoding="utf-8") as f:
            host, pid = f.read().strip().rsplit(":", 1)
        if host != socket.gethostname():
            return True  # another machine's process: cannot tell, so respect it
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return False  # unreadable or half-written: treat as stale
    return True


@contextmanager
def claim(lock: str, wait: float = 0) -> Iterator[bool]:
    """Hold ``lock`` (a file naming ``host:pid``) for the block; yields False when a live process holds it.

    So several workers started on one grid of tasks share it: each task is taken by one of them (``wait=0``: skip it
    when taken), or a shared preparation step runs once while the others wait (``wait`` > 0: poll every ``wait``
    seconds until the holder is done). A lock whose process died (a killed run) is taken over."""
    import socket
    import time
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    me = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _lock_holder_alive(lock):
                with contextlib_suppress(FileNotFoundError):
                    os.remove(lock)
                continue
            if wait <= 0:
                yield False
                return
            time.sleep(wait)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(me)
        break
    try:
        yield True
    finally:
        with contextlib_suppress(FileNotFoundError):
            os.remove(lock)
