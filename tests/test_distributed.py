"""DDP on CPU with the gloo backend and 2 processes, launched by torchrun as users do."""
import json
import os
import subprocess
import sys

import pytest
import torch

import localconv
from cifar_fixtures import Arrays, write_python_release
from conftest import REPO, synthetic_cifar

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    tx, ty, sx, sy = synthetic_cifar(n_train=384, n_test=100, seed=3)
    root = tmp_path_factory.mktemp("ddp")
    classes = [f"c{i}" for i in range(10)]
    return write_python_release(root, Arrays(tx, ty, sx, sy, classes)), root


def run(args, nproc=None, cache=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", LOCALCONV_CACHE=str(cache))
    cmd = [sys.executable, "-m"]
    if nproc:
        cmd += ["torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
    cmd += ["localconv", "train", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def epoch_losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss/total"] for r in lines if r["kind"] == "epoch"]


def test_two_process_run_matches_single_process(dataset, tmp_path):
    data, root = dataset
    common = ["--model", "tf-tutorial-conv", "--data", str(data), "--batch-size", "32", "--epochs", "6",
              "--lr", "0.05", "--device", "cpu", "--no-progress", "--limit-test", "100"]
    singles = []
    for seed in (0, 1, 2):
        run([*common, "--seed", str(seed), "--out", str(tmp_path / f"single{seed}")], cache=root / "cache")
        singles.append(epoch_losses(tmp_path / f"single{seed}"))
    run([*common, "--out", str(tmp_path / "ddp")], nproc=2, cache=root / "cache")
    multi = epoch_losses(tmp_path / "ddp")
    meta = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert meta["world_size"] == 2 and meta["steps_per_epoch"] == 384 // 32
    # Same global batch (32 = 2 x 16) and learning rate, but each rank shuffles its own shard, so the
    # minibatches differ from any single-process run: the curves can agree only up to minibatch noise.
    # Tolerance: at every epoch the distributed loss lies inside the spread of three single-process seeds,
    # widened by 0.25 (seed-to-seed differences on this tiny data set reach 0.3 per epoch, so a sharded run
    # is one more draw from the same distribution); a wrong gradient average or learning rate leaves it.
    for epoch, loss in enumerate(multi):
        lo = min(s[epoch] for s in singles) - 0.25
        hi = max(s[epoch] for s in singles) + 0.25
        assert lo <= loss <= hi, (epoch, loss, singles)
    assert multi[-1] < multi[0] - 0.3  # and it learns
    # only rank 0 wrote: one metrics line per epoch
    assert len(multi) == 6
    # the distributed checkpoint loads in a single process
    model, meta = localconv.load_run(tmp_path / "ddp")
    assert model(torch.zeros(1, 3, 24, 24)).shape == (1, 10)


def test_distributed_run_resumes(dataset, tmp_path):
    data, root = dataset
    common = ["--model", "tf-tutorial-conv", "--data", str(data), "--batch-size", "32", "--lr", "0.05",
              "--device", "cpu", "--no-progress", "--limit-test", "100", "--out", str(tmp_path / "r")]
    run([*common, "--epochs", "1"], nproc=2, cache=root / "cache")
    run([*common, "--epochs", "2", "--resume"], nproc=2, cache=root / "cache")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["step"] == 2 * (384 // 32) and meta["complete"]


# ----------------------------------------------------------------------------- faults under torchrun (issue 21)
# 2 processes on 48 images of the module's data set, many short epochs; each test acts on the job once it has
# committed its first checkpoint. Workers are found through /proc (their RANK and --out).


def start_job(out, cache, *extra, timeout_s="60"):
    import signal as _signal  # noqa: F401  # (the tests below send signals)

    env = dict(os.environ, OMP_NUM_THREADS="1", LOCALCONV_CACHE=str(cache), LOCALCONV_DDP_TIMEOUT=timeout_s)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "localconv",
           "train", *extra, "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def job_args(data):
    return ["--model", "tf-tutorial-conv", "--data", str(data), "--limit-train", "48", "--batch-size", "24",
            "--limit-test", "20", "--eval-every", "0", "--device", "cpu", "--no-progress"]


def wait_for(condition, proc, what, timeout=120):
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} never happened: {proc.communicate()[1][-3000:]}")
        time.sleep(0.01)


def worker_pid(out, rank):
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"torch.distributed.run" not in cmdline and \
                str(out).encode() in cmdline:
            return int(pid)
    return None


def error_lines(err):
    return [line for line in err.splitlines() if line.startswith("localconv train: error:")]


def no_localconv_traceback(err):
    return "localconv/" not in "".join(line for line in err.splitlines() if line.lstrip().startswith("File "))


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_sigterm_checkpoints_under_torchrun_and_resume_with_one_process_says_so(dataset, tmp_path):
    import signal

    data, root = dataset
    out = tmp_path / "r"
    proc = start_job(out, root / "cache", *job_args(data), "--epochs", "200")
    wait_for(lambda: (out / "run.json").exists(), proc, "the first checkpoint")
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to every worker
    _, err = proc.communicate(timeout=120)
    assert "terminated (SIGTERM): checkpoint written at step" in err and not error_lines(err), err[-3000:]
    assert no_localconv_traceback(err), err[-3000:]
    meta = json.loads((out / "run.json").read_text())
    assert meta["stop_reason"] == "terminated" and meta["world_size"] == 2, (meta["step"], meta["complete"], err[-1500:])

    single = run([*job_args(data), "--epochs", str(meta["epoch"] + 1), "--resume", "--out", str(out)],
                 cache=root / "cache")
    assert "note: the run was trained by 2 processes and continues with 1" in single.stderr
    assert "will not end with the weights of an uninterrupted 2-process run" in single.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
@pytest.mark.parametrize("fault", ["kill", "stop"])
def test_a_killed_or_stopped_worker_gives_one_line_on_rank_0(dataset, tmp_path, fault):
    import signal
    import time

    data, root = dataset
    out = tmp_path / "r"
    proc = start_job(out, root / "cache", *job_args(data), "--epochs", "2000", timeout_s="5")
    wait_for(lambda: (out / "run.json").exists() and worker_pid(out, 1) is not None, proc, "the first checkpoint")
    victim, rank0 = worker_pid(out, 1), worker_pid(out, 0)
    os.kill(victim, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
    if fault == "stop":  # rank 0 gives up after the 5 s timeout; then the stopped worker is killed (torchrun
        deadline = time.monotonic() + 120  # itself would wait 30 s for it)
        while worker_pid(out, 0) == rank0 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    lines = error_lines(err)
    assert len(lines) == 1 and "rank 0 of 2: another process of the torchrun job" in lines[0], err[-3000:]
    want = "did not answer within 5 s" if fault == "stop" else "ended or lost its connection"
    assert want in lines[0] and "the last checkpoint" in lines[0] and "--resume" in lines[0], lines[0]
    assert no_localconv_traceback(err), err[-3000:]
    json.loads((out / "run.json").read_text())  # a whole checkpoint is kept


def test_an_input_error_under_torchrun_is_one_line_and_exit_2(dataset, tmp_path):
    data, root = dataset
    proc = start_job(tmp_path / "r", root / "cache", *job_args(tmp_path / "missing"), "--epochs", "1")
    _, err = proc.communicate(timeout=120)
    lines = error_lines(err)
    assert len(lines) == 1 and "missing" in lines[0], err[-3000:]  # once, from rank 0
    # torchrun's own report (and exit status 1) follows; it names the workers' exit code and shows their line
    assert "exitcode  : 2" in err and no_localconv_traceback(err), err[-3000:]
    assert f"traceback : {lines[0]}" in err, err[-3000:]
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- localconv train --nproc-per-node
# The launcher (src/localconv/cli/launch.py) starts the workers with torch's own launcher API and ends as they
# ended: one line and exit 2 for an input error, 130/143 after a checkpointing stop, one line and 1 otherwise.


def launcher_job(out, cache, *extra, timeout_s="60"):
    env = dict(os.environ, OMP_NUM_THREADS="1", LOCALCONV_CACHE=str(cache), LOCALCONV_DDP_TIMEOUT=timeout_s)
    cmd = [sys.executable, "-m", "localconv", "train", "--nproc-per-node", "2", *extra, "--out", str(out)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def no_launcher_report(err):
    """Neither torchrun's multi-line failure report nor a Python traceback (the workers' or the launcher's)."""
    return "Traceback" not in err and "Root Cause" not in err and "ChildFailedError" not in err


@pytest.mark.parametrize("case", ["missing data", "batch not a multiple of the processes"])
def test_an_input_error_through_the_launcher_is_one_line_and_exit_2(dataset, tmp_path, case):
    data, root = dataset
    # the first is found by the launcher before any worker starts; the second only by the workers (their error
    # files carry the line back)
    args = (job_args(tmp_path / "missing") if case == "missing data"
            else [*job_args(data), "--batch-size", "25"])  # the last one given counts
    proc = launcher_job(tmp_path / "r", root / "cache", *args, "--epochs", "1")
    _, err = proc.communicate(timeout=120)
    lines = error_lines(err)
    assert proc.returncode == 2, err[-3000:]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err[-3000:]
    assert ("missing: no such file or folder" if case == "missing data" else "--batch-size 25") in lines[0]
    assert no_launcher_report(err), err[-3000:]
    assert not (tmp_path / "r").exists()


def test_the_launcher_trains_as_torchrun_does(dataset, tmp_path):
    from safetensors.torch import load_file

    data, root = dataset
    args = [*job_args(data), "--epochs", "2", "--seed", "5"]
    proc = launcher_job(tmp_path / "launcher", root / "cache", *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "x 2 processes" in err and "done: step 4" in err, err[-3000:]
    assert no_launcher_report(err) and not error_lines(err), err[-3000:]
    torchrun = start_job(tmp_path / "torchrun", root / "cache", *args)
    _, err_t = torchrun.communicate(timeout=300)
    assert torchrun.returncode == 0, err_t[-3000:]
    metas = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("launcher", "torchrun")]
    assert metas[0]["world_size"] == metas[1]["world_size"] == 2 and metas[0]["step"] == metas[1]["step"] == 4
    # the same seed, processes and threads per process: the same weights, bit for bit
    files = [load_file(tmp_path / name / meta["files"]["model"])
             for name, meta in zip(("launcher", "torchrun"), metas)]
    assert files[0].keys() == files[1].keys()
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
@pytest.mark.parametrize("fault", ["SIGTERM to the launcher", "a worker killed"])
def test_a_stop_or_a_killed_worker_through_the_launcher(dataset, tmp_path, fault):
    import signal

    data, root = dataset
    out = tmp_path / "r"
    proc = launcher_job(out, root / "cache", *job_args(data), "--epochs", "2000")
    wait_for(lambda: (out / "run.json").exists() and worker_pid(out, 1) is not None, proc, "the first checkpoint")
    if fault == "SIGTERM to the launcher":  # forwarded to the workers, which checkpoint
        proc.send_signal(signal.SIGTERM)
    else:
        os.kill(worker_pid(out, 1), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert no_launcher_report(err), err[-3000:]
    resume = f"`localconv train --nproc-per-node 2 --resume --out {out}`"
    if fault == "SIGTERM to the launcher":
        assert proc.returncode == 143 and not error_lines(err), err[-3000:]
        assert "terminated (SIGTERM): checkpoint written at step" in err and resume in err, err[-3000:]
        meta = json.loads((out / "run.json").read_text())
        assert meta["stop_reason"] == "terminated"
        again = launcher_job(out, root / "cache", *job_args(data), "--epochs", str(meta["epoch"] + 1), "--resume")
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0 and "resuming from step" in err, err[-3000:]
    else:
        lines = error_lines(err)
        assert proc.returncode == 1 and len(lines) == 1, err[-3000:]
        assert "rank 1 of 2 was ended by SIGKILL" in lines[0] and resume in lines[0], lines[0]
        json.loads((out / "run.json").read_text())  # a whole checkpoint is kept
