"""benchmarks/gpu_suite.sh must keep working: CI runs it with --smoke on the CPU (tiny settings)."""
import json
import os
import subprocess

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_gpu_suite_smoke_runs_every_stage(shared_jpeg, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke", "--out", str(tmp_path), "--data",
                           str(shared_jpeg)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    merged = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [s["stage"] for s in merged["stages"]] == ["env", "local", "tf", "cc", "cc-orig", "speed"]
    assert all(s["rc"] == 0 for s in merged["stages"])
    assert merged["tf_fast"]["runs"][0]["model"] == "tf-tutorial"
    assert merged["cc_fast"]["runs"][0]["test_10view"] >= 0
    assert merged["train_speed"][0]["speedup"] > 0
