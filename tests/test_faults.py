"""Faults during training, through the real CLI: kill -9, Ctrl-C, a full disk, a non-finite loss.

Every training run here is a real ``python -m localconv train`` subprocess on a tiny image-folder
dataset (96 training images, 4 steps per epoch), single-threaded so that runs are bit-reproducible.
After a fault the run folder must hold the last complete checkpoint (verified by its checksums),
and ``--resume`` must end with exactly the weights, counters and evaluation log of an
uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from cifar_fixtures import make_arrays, write_image_tree
from localconv.cli.main import main
from localconv.data import load_cifar10
from localconv.training.checkpoint import TEMP_FILE, load_optimizer_state, load_run, read_meta
from localconv.training.run_lock import LOCK_FILE

EPOCHS = 8
STEPS_PER_EPOCH = 4  # 96 images / batch 24
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}

# Slows the fsync of two temp files of every checkpoint by 0.25 s: the weights (.model-*.tmp) and the
# replacement of run.json (.run.json.*.tmp), so that a kill lands while a checkpoint is half written
# (files written, not yet renamed) or at its commit point, even on a loaded machine. Only timing changes.
SLOW_DISK = """
import os, sys, time
_fsync = os.fsync
def _slow_fsync(fd):
    name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    if name.endswith(".tmp") and name.startswith((".model-", ".run.json.")):
        time.sleep(0.25)
    _fsync(fd)
os.fsync = _slow_fsync
from localconv.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An image-folder tree of PNGs and a cache already holding its decoded arrays."""
    root = tmp_path_factory.mktemp("faults-data")
    data = write_image_tree(root / "data", make_arrays(n_train=120, n_test=60, seed=5))
    cache = root / "cache"
    load_cifar10(data, cache_dir=cache, progress=False)
    return data, cache


def train_args(dataset: tuple[Path, Path], out: Path, *extra: str, epochs: int = EPOCHS) -> list[str]:
    data, cache = dataset
    return ["train", "--model", "tf-tutorial-conv", "--data", str(data), "--cache-dir", str(cache),
            "--out", str(out), "--limit-train", "96", "--batch-size", "24", "--limit-test", "50",
            "--epochs", str(epochs), "--device", "cpu", "--no-progress", "--seed", "7", *extra]


def start(args: list[str], slow_disk: bool = False, **popen: object) -> subprocess.Popen:
    prefix = [sys.executable, "-c", SLOW_DISK] if slow_disk else [sys.executable, "-m", "localconv"]
    return subprocess.Popen(prefix + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    assert "Traceback" not in err, err
    return proc.returncode, err


def wait_until(proc: subprocess.Popen, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll ``condition`` every millisecond while ``proc`` runs."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"training ended (rc {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


def committed_step(run: Path) -> int:
    try:
        return json.loads((run / "run.json").read_text())["step"]
    except (OSError, ValueError, KeyError):  # absent, or being replaced right now
        return -1


def temp_files(run: Path, prefix: str = ".") -> list[str]:
    """Temp files of checkpoint writes (ours: ``.NAME.XXXX.tmp``; safetensors' own: ``.tmpXXXXXX``)."""
    try:
        return [n for n in os.listdir(run) if n.startswith(prefix) and TEMP_FILE.fullmatch(n)]
    except FileNotFoundError:
        return []


def assert_intact(run: Path) -> dict:
    """The committed checkpoint loads with verified checksums: raw and averaged weights, optimizer state."""
    meta = read_meta(run)
    load_run(run, which="raw")
    load_run(run, which="ema")
    load_optimizer_state(run, meta)
    assert meta["step"] % STEPS_PER_EPOCH == 0 or meta["stop_reason"] == "interrupted"
    return meta


def weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    meta = read_meta(run)
    return {key: load_file(str(run / meta["files"][key])) for key in ("model", "ema")}


def epoch_log(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss/total"], r.get("accuracy")) for r in records if r["kind"] == "epoch"]


def assert_same_result(run: Path, reference: Path, same_log: bool = True) -> None:
    """Bit-exact final weights (raw and averaged), the same counters, the same files, the same log."""
    got, want = weights(run), weights(reference)
    for key in want:
        assert got[key].keys() == want[key].keys()
        for name, tensor in want[key].items():
            assert torch.equal(got[key][name], tensor), f"{key} tensor {name} differs"
    meta, ref = read_meta(run), read_meta(reference)
    for field in ("step", "total_steps", "images_seen", "ema_updates", "complete", "files", "last_accuracy"):
        assert meta[field] == ref[field], field
    assert sorted(os.listdir(run)) == sorted(os.listdir(reference))  # no orphans, no temp files
    if same_log:
        assert epoch_log(run) == epoch_log(reference)


@pytest.fixture(scope="module")
def reference(dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("faults-reference") / "run"
    rc, err = finish(start(train_args(dataset, run)))
    assert rc == 0, err
    assert read_meta(run)["step"] == TOTAL_STEPS
    return run


# ----------------------------------------------------------------------------- kill -9


def _before_first_checkpoint(run: Path) -> Callable[[], bool]:
    return run.is_dir  # the trainer creates the folder when training starts; run.json comes after 4 steps


def _after_second_checkpoint(run: Path) -> Callable[[], bool]:
    return lambda: committed_step(run) >= 2 * STEPS_PER_EPOCH


def _writing_weights(run: Path) -> Callable[[], bool]:
    # a model-*.safetensors temp file of the third checkpoint is open (written, fsync in progress)
    return lambda: committed_step(run) >= 2 * STEPS_PER_EPOCH and bool(temp_files(run, ".model-"))


def _committing(run: Path) -> Callable[[], bool]:
    # the new weights are renamed into place and run.json's replacement is being written
    return lambda: committed_step(run) >= STEPS_PER_EPOCH and bool(temp_files(run, ".run.json."))


KILL_POINTS = {
    "before-first-checkpoint": _before_first_checkpoint,
    "random-delay-after-second-checkpoint": _after_second_checkpoint,
    "while-writing-weights": _writing_weights,
    "while-committing-run-json": _committing,
}


@pytest.mark.slow
@pytest.mark.parametrize("kill_point", list(KILL_POINTS))
def test_kill_9_then_resume_is_exact(kill_point: str, dataset, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = train_args(dataset, run)
    proc = start(args, slow_disk=True)
    wait_until(proc, KILL_POINTS[kill_point](run), kill_point)
    delay = random.uniform(0.0, 0.3) if kill_point.startswith("random") else 0.0
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill ({kill_point}, delay {delay:.3f})"

    left = sorted(os.listdir(run))
    if kill_point == "before-first-checkpoint":
        assert "run.json" not in left
    else:
        meta = assert_intact(run)
        assert 0 < meta["step"] < TOTAL_STEPS and not meta["complete"]
        if kill_point == "while-writing-weights":
            assert any(n.startswith(".model-") and n.endswith(".tmp") for n in left), left  # killed mid-write
        if kill_point == "while-committing-run-json":
            newer = [n for n in left if n.startswith("model-") and int(n[6:15]) > meta["step"]]
            assert newer, left  # the next checkpoint's files exist, but run.json was not replaced

    rc, err = finish(start(args + ["--resume"]))
    assert rc == 0, err
    assert_same_result(run, reference)


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resume_is_exact(dataset, reference: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = train_args(dataset, run)
    proc = start(args)
    wait_until(proc, _after_second_checkpoint(run), "the second checkpoint")
    delay = random.uniform(0.0, 0.2)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    rc, err = finish(proc)
    assert rc == 130, f"delay {delay:.3f}: {err}"
    match = re.search(r"interrupted: checkpoint written at step (\d+)", err)
    assert match, err
    meta = assert_intact(run)
    assert meta["step"] == int(match.group(1)) and meta["stop_reason"] == "interrupted" and not meta["complete"]
    assert not temp_files(run)

    rc, err = finish(start(args + ["--resume"]))
    assert rc == 0, err
    # Weights, counters and the log are exact: the part-epoch before Ctrl-C logged no record of its own, and the
    # resumed epoch's record averages all of its steps (run.json partial_epoch carried the sums)
    assert_same_result(run, reference)


# A signal at an exact point of the loop, sent by the process to itself (its handler runs at the next bytecode):
# the points where the stop reason in run.json and the CLI's report once disagreed, or an epoch was logged twice.
# $SIGNAL_AT is "POINT:STEP:SIGNAL"; POINT is where, at the first time the loop is at STEP.
SIGNAL_AT = """
import os, signal, sys
from localconv.training import engine
point, at_step, name = os.environ["SIGNAL_AT"].split(":")
at_step, sent = int(at_step), []
def _send(step):
    if step == at_step and not sent:
        sent.append(step)
        signal.raise_signal(getattr(signal, name))
def _wrap(owner, attr, before):
    original = getattr(owner, attr)
    def wrapped(*args, **kwargs):
        if before:
            _send(before(*args))
        result = original(*args, **kwargs)
        if not before:
            _send(args[0].state.step)
        return result
    setattr(owner, attr, wrapped)
if point == "during-save":          # the metadata is made, the files not yet written
    _wrap(engine, "save_checkpoint", lambda run_dir, meta, *rest: meta["step"])
elif point == "after-save":         # the checkpoint is committed, the loop has not yet agreed to stop
    _wrap(engine.Trainer, "save", None)
elif point == "next-epoch":         # the loop went on to the next epoch, which has not taken a step
    _wrap(engine.Trainer, "epoch_plan", lambda trainer, step, seed: step)
elif point == "after-last-agreement":  # the last agreement of the loop said go on (or end)
    _wrap(engine.Trainer, "_agree_to_stop", None)
from localconv.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point,sig", [("during-save", "SIGINT"), ("during-save", "SIGTERM"), ("after-save", "SIGINT"),
                                       ("next-epoch", "SIGINT"), ("after-last-agreement", "SIGINT")])
def test_a_signal_at_the_epoch_end_checkpoint_is_recorded_and_resume_is_exact(point: str, sig: str, dataset,
                                                                               reference: Path,
                                                                               tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = train_args(dataset, run)
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_AT, *args], env={**ENV, "SIGNAL_AT": f"{point}:16:{sig}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, err = finish(proc)
    reason = "interrupted" if sig == "SIGINT" else "terminated"
    assert rc == (130 if sig == "SIGINT" else 143), err
    match = re.search(rf"{reason}( \(SIGTERM\))?: checkpoint written at step (\d+)", err)
    assert match and int(match.group(2)) == 16, err
    meta = assert_intact(run)
    # what the CLI said is what run.json says, and the epoch of step 16 is logged once
    assert meta["step"] == 16 and meta["stop_reason"] == reason and not meta["complete"], meta
    assert [r[0] for r in epoch_log(run)] == [4, 8, 12, 16]
    assert not temp_files(run)
    rc, err = finish(start(args + ["--resume"]))
    assert rc == 0, err
    assert_same_result(run, reference)


@pytest.mark.slow
def test_a_signal_after_the_last_agreement_of_a_finished_run_is_recorded(dataset, reference: Path,
                                                                          tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", SIGNAL_AT, *train_args(dataset, run)],
                            env={**ENV, "SIGNAL_AT": f"after-last-agreement:{TOTAL_STEPS}:SIGINT"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rc, err = finish(proc)
    meta = assert_intact(run)
    # the run is complete; the Ctrl-C came before the loop ended, so the report and run.json both say it
    assert rc == 130 and f"interrupted: checkpoint written at step {TOTAL_STEPS}" in err, err
    assert meta["complete"] and meta["stop_reason"] == "interrupted"
    assert_same_result(run, reference)


# Decodes each image 20 ms slower and creates $DECODING at the first one: a signal can land while the data is read.
SLOW_DECODE = """
import os, sys, time
from pathlib import Path
from localconv.data import image_tree
_decode = image_tree.decode_dataset_image
def _slow_decode(*args, **kwargs):
    Path(os.environ["DECODING"]).touch()
    time.sleep(0.02)
    return _decode(*args, **kwargs)
image_tree.decode_dataset_image = _slow_decode
from localconv.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_data_is_decoded_says_so_and_leaves_nothing(sig: str, dataset, tmp_path: Path) -> None:
    run, cache, marker = tmp_path / "run", tmp_path / "cache", tmp_path / "decoding"
    args = train_args((dataset[0], cache), run)  # an empty cache: the images are decoded first
    proc = subprocess.Popen([sys.executable, "-c", SLOW_DECODE, *args], env={**ENV, "DECODING": str(marker)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(proc, marker.exists, "the decoding")
    proc.send_signal(getattr(signal, sig))
    rc, err = finish(proc, timeout=60)
    assert rc == (143 if sig == "SIGTERM" else 130), err
    what = "terminated (SIGTERM)" if sig == "SIGTERM" else "interrupted"
    assert err.strip().splitlines()[-1] == (f"localconv train: {what} before training started: nothing to save; "
                                            "run the same command again"), err
    assert not run.exists()  # no run folder that --resume would take for a run
    assert not [p.name for p in cache.rglob("*") if p.is_file()]  # no cache entry, whole or half written
    rc, err = finish(start(args + ["--epochs", "1"]))  # and the same command runs
    assert rc == 0, err


# ----------------------------------------------------------------------------- full disk


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("localconv train: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_file_size_limit_during_checkpoint_keeps_the_previous_one(dataset, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes every write past 200 KB fail with EFBIG, a real OS error (no root needed)."""
    run = tmp_path / "run"
    assert main(train_args(dataset, run, epochs=1)) == 0
    before = {name: (run / name).read_bytes() for name in os.listdir(run)}

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = start(train_args(dataset, run, "--resume", epochs=3), preexec_fn=limit_file_size)
    rc, err = finish(proc)
    assert rc == 2, err
    line = _one_error_line(err)
    assert "cannot write checkpoint" in line and "File too large" in line and "previous checkpoint is intact" in line
    after = {name: (run / name).read_bytes() for name in os.listdir(run)}
    assert after == before  # no temp file left, nothing changed, metrics.jsonl without the lost epoch's records
    assert assert_intact(run)["step"] == STEPS_PER_EPOCH


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Path:
    """A 3 MiB tmpfs: room for one checkpoint of tf-tutorial-conv (2.1 MB), not two. Needs root."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


@pytest.mark.slow
def test_disk_full_during_checkpoint_keeps_the_previous_one(dataset, small_tmpfs: Path) -> None:
    run = small_tmpfs / "run"
    rc, err = finish(start(train_args(dataset, run, epochs=3)))
    assert rc == 2, err
    line = _one_error_line(err)
    assert "cannot write checkpoint" in line and "No space left on device" in line
    meta = assert_intact(run)
    assert meta["step"] == STEPS_PER_EPOCH and not meta["complete"]
    # the files of the failed checkpoint that were complete (model-*) are gone too
    assert sorted(os.listdir(run)) == sorted(["run.json", "metrics.jsonl", LOCK_FILE, *meta["files"].values()])


# ----------------------------------------------------------------------------- non-finite loss


def test_nonfinite_loss_stops_with_exit_3_and_keeps_the_last_checkpoint(dataset, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    # one sane epoch (checkpoint at step 4), then a learning rate 1e9 times larger
    assert main(train_args(dataset, run, "--schedule", "1:1,2:1e9", epochs=3)) == 3
    line = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert len(line) == 1 and re.search(r"loss became (nan|inf|-inf) at step \d+", line[0]), line
    assert int(re.search(r"at step (\d+)", line[0]).group(1)) >= STEPS_PER_EPOCH
    meta = assert_intact(run)
    assert meta["step"] == STEPS_PER_EPOCH and not meta["complete"]
    assert not temp_files(run)


def test_nonfinite_loss_before_any_checkpoint(dataset, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(train_args(dataset, run, "--lr", "1e6", epochs=2)) == 3
    assert "at step" in capsys.readouterr().err
    assert not (run / "run.json").exists() and not temp_files(run)


def test_skip_nonfinite_skips_the_batches_and_finishes(dataset, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert main(train_args(dataset, run, "--schedule", "1:1,2:1e9", "--skip-nonfinite", epochs=3)) == 0
    meta = assert_intact(run)
    assert meta["complete"] and meta["step"] == 3 * STEPS_PER_EPOCH
    assert 1 <= meta["skipped_steps"] <= 2 * STEPS_PER_EPOCH
