"""Which code produced a result: the package version and, from a git checkout, its commit (``+dirty`` with local
changes), recorded in benchmark results so a table never mixes code silently."""
import functools
import os
import subprocess
from typing import Dict, Optional


@functools.lru_cache(maxsize=1)
def code_version() -> Dict[str, Optional[str]]:
    import semi_nnunet
    folder = os.path.dirname(os.path.dirname(os.path.abspath(semi_nnunet.__file__)))
    commit = None
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        if commit:
            dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no", "--",
                                    "semi_nnunet"], capture_output=True, text=True, timeout=10).stdout.strip()
            commit += "+dirty" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": semi_nnunet.__version__, "commit": commit}
