"""Run folders through the real CLI: the lock, cleanup after a failure, --resume's options, file modes.

* two real ``localconv train`` processes on one ``--out``: the second gets exit 2 naming the first's pid;
  after ``kill -9`` of the first, the lock is free and ``--resume`` completes the run;
* a failed run (non-finite loss, a crash, a full disk at the checkpoint) in a missing, empty, partial or
  finished run folder never removes or rewrites a file it did not create (names, bytes, mtimes), and
  leaves no folder it created;
* a run's files follow the umask; a checkpoint's cleanup leaves a user's look-alike files alone;
* options given with --resume are applied and recorded (--epochs, --eval-every) or, when equal to the
  run's own, accepted.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cifar_fixtures import make_arrays, write_image_tree
from localconv.cli.main import main
from localconv.data import load_cifar10
from localconv.training import checkpoint as ckpt
from localconv.training.engine import NonFiniteLoss, Trainer
from localconv.training.run_lock import LOCK_FILE, RunLock

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
USER_FILES = {".draft.tmp": "draft", ".tmpABC123": "mine", "notes.txt": "notes",
              ".run.json.abcdefgh.tmpx": "almost ours"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run-folder-data")
    tree = write_image_tree(root / "data", make_arrays(n_train=40, n_test=20, seed=8))
    load_cifar10(tree, cache_dir=root / "cache", progress=False)
    return tree, root / "cache"


def train_argv(data: tuple[Path, Path], out: Path, *extra: str, epochs: str = "1") -> list[str]:
    return ["train", "--model", "tf-tutorial-conv", "--data", str(data[0]), "--cache-dir", str(data[1]),
            "--out", str(out), "--epochs", epochs, "--batch-size", "20", "--device", "cpu", "--no-progress", *extra]


def resume_argv(data: tuple[Path, Path], out: Path, *extra: str, epochs: str = "1") -> list[str]:
    return ["train", "--resume", "--out", str(out), "--data", str(data[0]), "--cache-dir", str(data[1]),
            "--epochs", epochs, "--no-progress", *extra]


@pytest.fixture(scope="module")
def finished(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_argv(data, run)) == 0
    return run


def snapshot(root: Path) -> dict[str, object]:
    """Every folder and file under ``root``: (size, mtime, bytes) of files."""
    state: dict[str, object] = {}
    for folder, _, files in os.walk(root):
        state[folder] = "dir"
        for name in files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            state[path] = (st.st_size, st.st_mtime_ns, Path(path).read_bytes())
    return state


def add_user_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in USER_FILES.items():
        (folder / name).write_text(text)
    old = time.time() - 1000  # an mtime that any rewrite would change
    for name in USER_FILES:
        os.utime(folder / name, (old, old))


# ----------------------------------------------------------------------------- two processes, one folder

# a `localconv train` whose first step waits for the file GO: the test acts while it holds the folder
BLOCKED_TRAIN = """
import os, sys, time
from localconv.training.engine import NonFiniteLoss, Trainer
_step = Trainer.train_step
def train_step(self, x, y):
    while not os.path.exists(os.environ["GO"]):
        time.sleep(0.01)
    return _step(self, x, y)
Trainer.train_step = train_step
from localconv.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_second_train_on_a_locked_folder_is_refused_and_kill_9_frees_the_lock(data, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", BLOCKED_TRAIN, *train_argv(data, run, epochs="2")],
                             env={**ENV, "GO": str(tmp_path / "never")}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / LOCK_FILE).exists() and (run / LOCK_FILE).read_text()):  # the holder has written its pid
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.01)
        before = snapshot(tmp_path)
        for argv in (train_argv(data, run, epochs="2"), resume_argv(data, run, epochs="2")):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("localconv train: error: --out "), err
            assert "in use by another `localconv train`" in err[0] and f"pid {first.pid} on " in err[0], err
        assert snapshot(tmp_path) == before, "the refused run changed the folder"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # the kernel released the dead holder's flock: the same command with --resume takes the folder (no checkpoint
    # was written, so it starts afresh) and finishes the run
    assert main(train_argv(data, run, "--resume", epochs="2")) == 0
    meta = ckpt.read_meta(run)
    assert meta["complete"] and meta["step"] == 4
    assert (run / LOCK_FILE).read_text() == ""  # released: no holder named
    with RunLock(run):
        pass


# ----------------------------------------------------------------------------- failures


def _nonfinite(monkeypatch: pytest.MonkeyPatch) -> tuple[object, int]:
    def nan_step(self, x, y):  # noqa: ANN001, ANN202 (the step's own way out on a NaN loss)
        raise NonFiniteLoss("loss became nan at step 0 (simulated)")

    monkeypatch.setattr(Trainer, "train_step", nan_step)
    return None, 3


def _crash(monkeypatch: pytest.MonkeyPatch) -> tuple[object, int]:
    def boom(self, x, y):  # noqa: ANN001, ANN202
        raise RuntimeError("simulated crash inside a step")

    monkeypatch.setattr(Trainer, "train_step", boom)
    return RuntimeError, 0


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> tuple[object, int]:
    def full(tensors, path):  # noqa: ANN001, ANN202
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full)
    return None, 2


FAILURES = {"nonfinite": _nonfinite, "crash": _crash, "disk-full": _disk_full}
STATES = ("missing", "empty", "partial", "finished")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failed_run_never_removes_or_rewrites_a_file_it_did_not_create(
        failure: str, state: str, data, finished: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "parent" / "run"
    argv = train_argv(data, run)
    if state == "missing":
        (tmp_path / "parent").mkdir()
    elif state == "empty":
        run.mkdir(parents=True)
    elif state == "partial":  # killed before its first checkpoint, then the user added files
        add_user_files(run)
        (run / LOCK_FILE).write_text("")
    else:
        shutil.copytree(finished, run)
        add_user_files(run)
        argv = resume_argv(data, run, epochs="2")
    log_before = (run / "metrics.jsonl").read_bytes() if (run / "metrics.jsonl").exists() else None
    before = {k: v for k, v in snapshot(tmp_path).items() if not k.endswith("metrics.jsonl")}
    raises, rc = FAILURES[failure](monkeypatch)
    if raises:
        with pytest.raises(raises):
            main(argv)
    else:
        assert main(argv) == rc
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err) and err[-1].startswith("localconv train: error: "), err
    after = snapshot(tmp_path)
    if log_before is not None:  # the finished run's log: a failed resume may only append to it
        log_after = (run / "metrics.jsonl").read_bytes()
        assert log_after.startswith(log_before)
    after = {k: v for k, v in after.items() if not k.endswith("metrics.jsonl")}
    assert after == before, "a failed run removed, added or rewrote files"
    if state == "missing":
        assert not run.exists()


def test_out_that_is_not_a_run_is_refused_before_any_work(data, tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    add_user_files(mine)
    (mine / "model-000000001.safetensors").write_text("mine")
    (mine / "metrics.jsonl").write_text('{"step": 5}\n')
    before = snapshot(tmp_path)
    for argv in (train_argv(data, mine), resume_argv(data, mine)):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"localconv train: error: --out {mine} is a folder that is not empty and not a "
                              "localconv run"), err
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- success


def test_run_files_follow_the_umask_and_cleanup_spares_look_alikes(data, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    old = os.umask(0o002)
    try:
        assert main(train_argv(data, run)) == 0
    finally:
        os.umask(old)
    for name in os.listdir(run):
        mode = (run / name).stat().st_mode & 0o777
        assert mode == 0o664, f"{name} has mode {oct(mode)}, the umask gives 0o664"
    assert {LOCK_FILE, "run.json", "metrics.jsonl"} <= set(os.listdir(run))

    # a user's files in a run folder survive the next checkpoint's removal of older checkpoints and temp files
    add_user_files(run)
    users = {k: v for k, v in snapshot(run).items() if Path(k).name in USER_FILES}
    # (the best-evaluated weights stay while no later evaluation beats them)
    old_files = {name for key, name in ckpt.read_meta(run)["files"].items() if key != "best"}
    # options equal to the run's own are accepted; --epochs and --eval-every are applied and recorded
    assert main(resume_argv(data, run, "--batch-size", "20", "--seed", "0", "--eval-every", "2", epochs="2")) == 0
    meta = ckpt.read_meta(run)
    assert meta["options"]["epochs"] == 2 and meta["options"]["eval_every"] == 2 and meta["step"] == 4
    assert not old_files & set(os.listdir(run))  # the older checkpoint was removed
    assert {k: v for k, v in snapshot(run).items() if Path(k).name in USER_FILES} == users
    capsys.readouterr()
