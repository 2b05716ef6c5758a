"""Atomic writes: the result replaces the target whole and has the permissions a plain open() would give."""
import os

import pytest

from semi_nnunet.utilities.file_ops import atomic_path, save_json_atomic, umask


def test_atomic_file_gets_umask_permissions_not_mkstemp_owner_only(tmp_path):
    target = str(tmp_path / "summary.json")
    save_json_atomic({"a": 1}, target)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("x")
    assert os.stat(target).st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777 == 0o666 & ~umask()


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp, open(tmp, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]


def test_code_version_names_the_commit_of_a_checkout(tmp_path):
    import subprocess
    from semi_nnunet.utilities.provenance import code_version
    v = code_version()
    import semi_nnunet
    assert v["version"] == semi_nnunet.__version__
    top = os.path.dirname(os.path.dirname(semi_nnunet.__file__))
    head = subprocess.run(["git", "-C", top, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's clean clone is one): its commit, "+dirty" with local changes
        assert v["commit"].split("+")[0] == head.stdout.strip()
    else:
        assert v["commit"] is None
