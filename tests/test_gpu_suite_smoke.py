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
    assert [s["stage"] for s in merged["stages"]] == ["env", "local", "steps", "tf", "cc", "cc-orig", "tf-orig", "speed"]
    assert all(s["rc"] == 0 for s in merged["stages"])
    assert merged["tf_fast"]["runs"][0]["model"] == "tf-tutorial"
    assert merged["cc_fast"]["runs"][0]["test_10view"] >= 0
    assert merged["tf_original"]["runs"][0]["recipe"] == "original"
    assert merged["train_speed"][0]["speedup"] > 0
    steps = merged["step_profile"]["models"]["cc-11pct"]
    assert steps["parity"]["fused"]["ok"] and steps["throughput"]["fused"]["images_per_s"] > 0
    assert steps["profile"][0]["busy_ms_per_step"] > 0 and steps["profile"][0]["top"]
    assert merged["step_profile"]["best_step"]["cc-11pct"] in ("eager", "fused")


def test_gpu_suite_optional_long_stage(shared_jpeg, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--smoke", "--only", "long", "--out", str(tmp_path),
                           "--data", str(shared_jpeg)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    merged = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [s["stage"] for s in merged["stages"]] == ["long"]
    assert {r["model"] for r in merged["long"]["runs"]} == {"cc-11pct", "tf-tutorial"}
