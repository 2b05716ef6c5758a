"""Shared fixtures: nnU-Net's folders in a temporary directory, tiny synthetic datasets."""
import os

import pytest



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
