"""Atomic file writes: a reader never sees a half-written file.

Everything is written to a temporary file in the destination folder and moved into place with ``os.replace``, which
is atomic on POSIX and Windows file systems when source and target share a folder.
"""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
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
