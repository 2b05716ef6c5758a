"""benchmarks/gpu_check.py keeps working without a GPU: its CPU mode runs every trainer it times on a GPU (2D and a
synthetic 3D set), the HCO ratios and the 5-fold prediction comparison, and writes its Markdown block."""
import json
import math
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks",
                      "gpu_check.py")


@pytest.mark.slow
def test_gpu_check_in_cpu_mode(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, SCRIPT, "-device", "cpu", "--quick", "--synthetic-3d", "--workdir",
                        str(tmp_path / "work"), "-o", str(out)], env=env, capture_output=True, text=True,
                       timeout=2400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = out.read_text()
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert sorted(rows) == ["2d", "3d_fullres"]
    for config, expected in (("2d", 11), ("3d_fullres", 7)):
        assert len(rows[config]) == expected
        assert all(math.isfinite(v["s_per_it"]) and v["s_per_it"] > 0 for v in rows[config].values())
    for name in ("HermesTrainer_HCO", "SynFoCTrainer_randomViTB", "UniMatchTrainer_HCO"):
        assert f"| 2d | {name} |" in text
    assert "| 3d_fullres | SemiCervixTrainer_HCO |" in text
    assert "| semi_nnUNet_predict --average logits |" in text and "identical |" in text
