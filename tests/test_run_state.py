"""Run state that must never be silently wrong (issue 21, part B): non-finite weights, old or edited run
records, the epoch log across an interruption, SIGTERM, unwritable run folders, damaged optimizer state.

Tiny runs: tf-tutorial-conv on 24-48 images of a PNG image tree whose decoded arrays are cached once per module.
Cases that involve a signal run ``python -m localconv`` as a real process.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifar_fixtures import make_arrays, write_image_tree
from localconv.cli.main import main
from localconv.data import load_cifar10
from localconv.training.checkpoint import read_meta

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run-state-data")
    data = write_image_tree(root / "data", make_arrays(n_train=120, n_test=60, seed=5))
    cache = root / "cache"
    load_cifar10(data, cache_dir=cache, progress=False)
    return data, cache


def train_args(dataset: tuple[Path, Path], out: Path, *extra: str, images: int = 24, epochs: float = 1) -> list[str]:
    data, cache = dataset
    return ["train", "--model", "tf-tutorial-conv", "--data", str(data), "--cache-dir", str(cache), "--out", str(out),
            "--limit-train", str(images), "--batch-size", "24", "--limit-test", "20", "--epochs", str(epochs),
            "--device", "cpu", "--no-progress", "--seed", "3", *extra]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if ": error:" in line]


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ 4: non-finite weights after a finite loss


def test_a_step_to_infinite_weights_exits_3_without_done(dataset, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    # one step: its loss is finite, the update (lr 1e308) makes every weight Inf/NaN
    assert main(train_args(dataset, run, "--lr", "1e308")) == 3
    err = capsys.readouterr().err
    assert "done" not in err and "accuracy" not in err, err
    line, = error_lines(err)
    assert re.search(r"weights became non-finite by step 1 \(tensor '[\w.]+' holds NaN or Inf\); no checkpoint",
                     line), line
    assert not run.exists()  # nothing committed: the failed run removed what it created


@pytest.mark.slow
def test_non_finite_weights_keep_the_last_good_checkpoint(dataset, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    # epoch 1 is sane (checkpoint at step 1); epoch 2's update takes the weights to Inf with a finite loss
    assert main(train_args(dataset, run, "--schedule", "1:1,1:1e308", epochs=2)) == 3
    line = one_error(capsys)
    assert "weights became non-finite by step 2" in line and "the last good checkpoint (step 1) is kept" in line
    meta = read_meta(run)
    assert meta["step"] == 1 and not meta["complete"]
    from localconv.training.checkpoint import load_run

    load_run(run)  # the kept checkpoint holds finite weights


# ------------------------------------------------------------------ 5, 14, 15: old, edited or damaged run records


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-step run (tf-tutorial-conv, original recipe: averaged weights kept); copy before editing."""
    run = tmp_path_factory.mktemp("run-state-trained") / "run"
    assert main(train_args(dataset, run)) == 0
    return run


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def edit_meta(run: Path, change) -> None:  # noqa: ANN001
    meta = json.loads((run / "run.json").read_text())
    change(meta)
    (run / "run.json").write_text(json.dumps(meta))


def replace_checkpoint_file(run: Path, key: str, write) -> None:  # noqa: ANN001
    """Rewrite the checkpoint's ``key`` file with ``write(path)`` and record its new checksum, as a careful
    hand-edit would: only the content is wrong."""
    from localconv.training.checkpoint import sha256_file

    meta = json.loads((run / "run.json").read_text())
    path = run / meta["files"][key]
    write(path)
    meta["sha256"][key] = sha256_file(path)
    (run / "run.json").write_text(json.dumps(meta))


def snapshot(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def test_a_run_record_without_recipe_is_not_resumed(dataset, trained: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(trained, tmp_path)
    edit_meta(run, lambda m: m.pop("recipe"))
    before = snapshot(run)
    assert main(train_args(dataset, run, "--resume", epochs=2)) == 2
    line = one_error(capsys)
    assert "run.json: no 'recipe' record" in line and "cannot be resumed exactly" in line, line
    assert snapshot(run) == before  # the averaged weights are still there, nothing rewritten


def test_averaged_weights_without_ema_in_the_recipe_are_not_dropped(dataset, trained: Path, tmp_path: Path,
                                                                    capsys) -> None:
    run = copy_run(trained, tmp_path)
    edit_meta(run, lambda m: m["recipe"].update(ema_decay=None))
    before = snapshot(run)
    assert main(train_args(dataset, run, "--resume", epochs=2)) == 2
    assert "holds averaged weights but its recipe record keeps none" in one_error(capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.float64])
def test_weights_of_the_wrong_dtype_are_refused(trained: Path, tmp_path: Path, capsys, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file, save_file

    run = copy_run(trained, tmp_path)

    def retype(path: Path) -> None:
        state = load_file(str(path))
        state["conv1.weight"] = state["conv1.weight"].to(dtype)
        save_file(state, str(path))

    replace_checkpoint_file(run, "ema", retype)
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    line = one_error(capsys)
    want = str(dtype).replace("torch.", "")
    assert f"tensor 'conv1.weight' is {want}, the model wants float32" in line, line


def test_a_temperature_that_breaks_the_softmax_is_refused(trained: Path, tmp_path: Path, capsys) -> None:
    run = copy_run(trained, tmp_path)
    edit_meta(run, lambda m: m.update(temperature=1e-300))
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    assert main(["predict", str(run), str(image), "--device", "cpu"]) == 2
    assert "temperature: expected a number in [0.001, 1000], got 1e-300" in one_error(capsys)


@pytest.mark.parametrize("text", ['{"a": ' * 100_000 + "1" + "}" * 100_000,  # json's decoder recurses
                                  json.dumps({"deep": json.loads("[" * 40 + "]" * 40)})],
                         ids=["beyond-the-json-decoder", "a-deep-field"])
def test_a_deeply_nested_run_record_gives_one_line(trained: Path, tmp_path: Path, capsys, text: str) -> None:
    run = copy_run(trained, tmp_path)
    if text.startswith('{"deep"'):  # a valid record with one deep field added
        meta = json.loads((run / "run.json").read_text())
        text = json.dumps({**meta, **json.loads(text)})
    (run / "run.json").write_text(text)
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    line = one_error(capsys)
    assert "run.json: " in line and "nested" in line, line


def _mutate_optimizer(change):  # noqa: ANN001, ANN202
    def write(path: Path) -> None:
        state = torch.load(path, weights_only=True)
        change(state)
        torch.save(state, path)
    return write


OPTIMIZER_DAMAGE = {
    "missing-key": (lambda s: s.pop("optimizer"), "no 'optimizer' record"),
    "rng-wrong-size": (lambda s: s.update(torch_rng=s["torch_rng"][:100]), "'torch_rng' must be a uint8 tensor"),
    "rng-wrong-type": (lambda s: s.update(torch_rng=[1, 2, 3]), "'torch_rng' must be a uint8 tensor"),
    "groups-a-string": (lambda s: s["optimizer"].update(param_groups="x"), "'param_groups' must be a list"),
    "lr-a-string": (lambda s: s["optimizer"]["param_groups"][0].update(lr="fast"), "'lr' must be a finite number"),
    "momentum-wrong-shape": (lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(3)),
                             "momentum of parameter 0 is (3,) float32"),
    "momentum-a-list": (lambda s: s["optimizer"]["state"][0].update(momentum_buffer=[0.0]),
                        "momentum of parameter 0 is list"),
    "state-of-unknown-param": (lambda s: s["optimizer"]["state"].update({999: {}}), "parameter 999"),
}


@pytest.mark.parametrize("damage", list(OPTIMIZER_DAMAGE))
def test_a_structurally_wrong_optimizer_state_is_named(trained: Path, damage: str) -> None:
    from localconv.errors import CheckpointError
    from localconv.training.checkpoint import check_optimizer_state, load_optimizer_state, load_run
    from localconv.training.recipes import RecipeSettings, build_optimizer

    model, meta = load_run(trained, which="raw")
    optimizer = build_optimizer(RecipeSettings(**{k: v for k, v in meta["recipe"].items()}), model, None, 1.0, 24)
    state = load_optimizer_state(trained, meta)
    check_optimizer_state(state, optimizer, "optim.pt")  # what localconv wrote fits
    change, message = OPTIMIZER_DAMAGE[damage]
    change(state)
    with pytest.raises(CheckpointError) as info:
        check_optimizer_state(state, optimizer, "optim.pt")
    assert str(info.value).startswith("optim.pt: optimizer state does not fit this run (") and message in str(
        info.value), info.value


def test_a_wrong_optimizer_state_stops_resume_before_any_step(dataset, trained: Path, tmp_path: Path,
                                                              capsys) -> None:
    change, message = OPTIMIZER_DAMAGE["momentum-wrong-shape"]  # torch would fail inside optimizer.step()
    run = copy_run(trained, tmp_path)
    replace_checkpoint_file(run, "optimizer", _mutate_optimizer(change))
    before = snapshot(run)
    assert main(train_args(dataset, run, "--resume", epochs=2)) == 2
    err = capsys.readouterr().err
    line, = error_lines(err)
    assert re.search(r"optim-000000001\.pt: optimizer state does not fit this run", line) and message in line, line
    assert "training 24 images" not in err and snapshot(run) == before  # refused before the folder was taken


# ------------------------------------------------------------------ 6, 7: SIGTERM and the log of a cut epoch

# a `localconv train` that, after step PAUSE_AT, waits for a signal's handler to ask it to stop: the signal then
# lands within an epoch at a known step on any machine
PAUSED_TRAIN = """
import os, sys, time
from pathlib import Path
from localconv.training.engine import Trainer
_step = Trainer.train_step
def train_step(self, x, y):
    loss = _step(self, x, y)
    if self.state.step == int(os.environ["PAUSE_AT"]):
        Path(os.environ["PAUSED"]).touch()
        deadline = time.monotonic() + 60
        while not self.should_stop and time.monotonic() < deadline:
            time.sleep(0.01)
    return loss
Trainer.train_step = train_step
from localconv.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def logged(run: Path) -> list[tuple]:
    """What the log says about learning: kind, step, losses and accuracy of every record (not timings)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss/total"), r.get("loss/cross_entropy"), r.get("accuracy"))
            for r in records]


def stop_with(sig: signal.Signals, args: list[str], tmp_path: Path, at_step: int) -> tuple[int, str]:
    paused = tmp_path / "paused"
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_TRAIN, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PAUSE_AT": str(at_step), "PAUSED": str(paused)})
    deadline = time.monotonic() + 120
    while not paused.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training never reached step {at_step}: {proc.communicate()[1]}")
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    return proc.returncode, err


@pytest.fixture
def one_thread():
    """In-process runs with the arithmetic of the single-threaded subprocesses (ENV), so that results compare."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_the_resumed_log_reads_like_an_uninterrupted_one(
        dataset, tmp_path: Path, capsys, one_thread, sig: signal.Signals) -> None:
    from safetensors.torch import load_file

    reference, run = tmp_path / "reference", tmp_path / "run"
    assert main(train_args(dataset, reference, images=48, epochs=3)) == 0  # 3 epochs of 2 steps
    rc, err = stop_with(sig, train_args(dataset, run, images=48, epochs=3), tmp_path, at_step=3)  # within epoch 2
    name, code = ("terminated (SIGTERM)", 143) if sig == signal.SIGTERM else ("interrupted", 130)
    assert rc == code, err
    assert f"{name}: checkpoint written at step 3; continue with `localconv train --resume --out {run}`" in err
    meta = read_meta(run)
    assert meta["step"] == 3 and meta["stop_reason"] == name.split()[0] and meta["partial_epoch"]["steps"] == 1
    assert all(step != 3 for kind, step, *_ in logged(run) if kind == "epoch")  # no record for the cut epoch

    capsys.readouterr()
    assert main(train_args(dataset, run, "--resume", images=48, epochs=3)) == 0
    assert logged(run) == logged(reference)  # epoch 2's record averages both of its steps, exactly
    meta, ref = read_meta(run), read_meta(reference)
    assert meta["partial_epoch"] is None and meta["complete"]
    for key in ("model", "ema"):
        got, want = load_file(str(run / meta["files"][key])), load_file(str(reference / ref["files"][key]))
        assert all(torch.equal(got[k], want[k]) for k in want)


# ------------------------------------------------------------------ 10: unwritable folders, failed checkpoints


@pytest.fixture
def read_only_run(trained: Path, tmp_path: Path):  # noqa: ANN201
    """A copy of the trained run in a folder that cannot be written: a read-only tmpfs as root (root ignores
    permissions), a chmod 555 folder otherwise."""
    if os.geteuid() != 0:
        run = copy_run(trained, tmp_path)
        run.chmod(0o555)
        yield run
        run.chmod(0o755)
        return
    mount_point = tmp_path / "ro"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"root, and cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        shutil.copytree(trained, mount_point / "run")
        subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)
        yield mount_point / "run"
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_an_unwritable_run_folder_is_refused_before_any_work(dataset, read_only_run: Path, capsys) -> None:
    before = snapshot(read_only_run)
    assert main(train_args(dataset, read_only_run, "--resume", epochs=2)) == 2
    err = capsys.readouterr().err
    line, = error_lines(err)
    assert f"--out {read_only_run}: cannot" in line, line
    assert "training 24 images" not in err and snapshot(read_only_run) == before


@pytest.mark.slow
def test_a_failed_checkpoint_takes_its_epochs_records_out_of_the_log(dataset, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    import localconv.training.engine as engine
    from localconv.errors import CheckpointError

    real_save, calls = engine.save_checkpoint, []

    def failing_second_save(run_dir, meta, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(meta["step"])
        if len(calls) == 2:  # as a full disk would, after the epoch's records were logged
            raise CheckpointError(f"cannot write checkpoint in {run_dir}: No space left on device; the previous "
                                  "checkpoint is intact")
        return real_save(run_dir, meta, *args, **kwargs)

    monkeypatch.setattr(engine, "save_checkpoint", failing_second_save)
    run = tmp_path / "run"
    assert main(train_args(dataset, run, epochs=3)) == 2
    assert "No space left on device" in one_error(capsys)
    assert read_meta(run)["step"] == 1
    assert {step for _, step, *_ in logged(run)} == {1}  # epoch 2's records went with its checkpoint


# ------------------------------------------------------------------ 13: --tensorboard where it cannot write


@pytest.mark.parametrize("where", ["a-file", "through-a-file"])
def test_tensorboard_at_a_file_is_one_line(dataset, tmp_path: Path, capsys, where: str) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    target = tmp_path / "notes.txt" if where == "a-file" else tmp_path / "notes.txt" / "tb"
    run = tmp_path / "run"
    assert main(train_args(dataset, run, "--tensorboard", str(target))) == 2
    line = one_error(capsys)
    want = "is a file, not a folder" if where == "a-file" else f"{tmp_path / 'notes.txt'} is not a folder"
    assert line.startswith(f"localconv train: error: --tensorboard {target}") and want in line, line
    assert not run.exists() and (tmp_path / "notes.txt").read_text() == "mine"


def test_tensorboard_in_an_unwritable_folder_is_one_line(dataset, read_only_run: Path, tmp_path: Path,
                                                          capsys) -> None:
    run = tmp_path / "run"
    assert main(train_args(dataset, run, "--tensorboard", str(read_only_run / "tb"))) == 2
    assert f"--tensorboard {read_only_run / 'tb'}: cannot write in {read_only_run}" in one_error(capsys)
    assert not run.exists()


# ------------------------------------------------------------------ small ones


@pytest.mark.parametrize("name", ["/etc/passwd", "../run.json", "sub/ema.safetensors"])
def test_a_recorded_file_outside_the_run_folder_is_named_as_such(trained: Path, tmp_path: Path, capsys,
                                                                name: str) -> None:
    run = copy_run(trained, tmp_path)
    edit_meta(run, lambda m: m["files"].update(ema=name))
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    line = one_error(capsys)
    assert f"files.ema = {name!r} is not a file of the run folder" in line and "missing" not in line, line


@pytest.mark.parametrize(("option", "model", "scope"), [("--crop 32", "tf-tutorial", "cfg models"),
                                                         ("--conv2-std 1e-4", "cc-11pct", "the tf-tutorial family")])
def test_an_option_of_another_model_family_is_named(dataset, tmp_path: Path, capsys, option: str, model: str,
                                                    scope: str) -> None:
    args = train_args(dataset, tmp_path / "run", *option.split())
    args[args.index("--model") + 1] = model
    assert main(args) == 2
    assert f"{option.split()[0]} applies to {scope}" in one_error(capsys)


# ------------------------------------------------------------------ 8: readers while a run trains


@pytest.mark.slow
def test_readers_get_a_whole_checkpoint_while_the_run_trains(dataset, tmp_path: Path) -> None:
    """A reader loop (load_run, as eval and predict read a run) against a real training that commits a new
    checkpoint, and removes the previous one's files, at every step."""
    from localconv.training.checkpoint import load_run

    run = tmp_path / "run"
    args = train_args(dataset, run, "--eval-every", "0", epochs=40)  # 1 step per epoch: 40 checkpoints
    proc = subprocess.Popen([sys.executable, "-m", "localconv", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (run / "run.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.005)
    steps, failures = [], []
    while proc.poll() is None:
        try:
            model, meta = load_run(run)
        except Exception as exc:  # noqa: BLE001  # every failure is collected and shown
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        steps.append(meta["step"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not failures, failures[:3]
    assert len(set(steps)) >= 3, steps  # the reads did overlap the training's checkpoints


# ------------------------------------------------------------------ 9: what a failed collective says (unit)


def test_a_failed_collective_becomes_one_line_and_the_timeout_is_stated(monkeypatch) -> None:
    from localconv.errors import LocalconvError
    from localconv.training import distributed as ddp

    ctx = ddp.DistContext(rank=0, world_size=2, local_rank=0)
    reset = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                         "[127.0.0.1]:17285: Connection reset by peer. This is typically caused by a remote peer")
    failure = ddp.as_collective_failure(reset, ctx)
    assert str(failure) == ("rank 0 of 2: another process of the torchrun job ended or lost its connection; training "
                            "stopped (Read error [127.0.0.1]:17285: Connection reset by peer)")
    monkeypatch.setenv(ddp.TIMEOUT_ENV, "7")
    late = ddp.as_collective_failure(RuntimeError("[x.cc:1] Timed out waiting 7000ms for send operation"), ctx)
    assert "did not answer within 7 s (stopped or hung; set LOCALCONV_DDP_TIMEOUT to wait longer)" in str(late)
    assert ddp.as_collective_failure(RuntimeError("shape mismatch"), ctx) is None  # a bug stays a traceback
    assert ddp.as_collective_failure(reset, None) is None  # one process: no collectives
    assert ddp.collective_timeout() == 7.0
    monkeypatch.setenv(ddp.TIMEOUT_ENV, "soon")
    with pytest.raises(LocalconvError, match="LOCALCONV_DDP_TIMEOUT='soon': expected a number of seconds > 0"):
        ddp.collective_timeout()
    monkeypatch.delenv(ddp.TIMEOUT_ENV)
    assert ddp.collective_timeout() == ddp.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize("field, value", [("images_seen", 0), ("best_step", 0), ("best_accuracy", 0.5),
                                          ("evals_since_best", 3), ("last_accuracy", 0.0)])
def test_counters_edited_in_run_json_are_refused_before_a_resume(trained: Path, tmp_path: Path, field: str,
                                                                 value: object) -> None:
    """run.json has no checksum; a counter --resume continues from, hand-edited to a value that still fits the
    schema, would change the resumed log (loss means, best step) silently: the checksummed optim-*.pt holds
    them too (issue 21)."""
    from localconv.errors import CheckpointError
    from localconv.training.checkpoint import load_optimizer_state

    load_optimizer_state(trained, read_meta(trained))  # as written: accepted
    meta = {**read_meta(trained), field: value}
    with pytest.raises(CheckpointError, match=f"{field} is .*, its checkpoint was written with .*was the file edited"):
        load_optimizer_state(trained, meta)


def test_a_second_sigterm_stops_at_once_with_sigterms_exit_code(capsys) -> None:
    """A scheduler that repeats SIGTERM gets exit 143 (128 + SIGTERM), as for one, not Ctrl-C's 130."""
    from types import SimpleNamespace

    from localconv.training.engine import Trainer

    first = SimpleNamespace(_interrupted=False, _finished=False, should_stop=False, stop_reason="", dist=None)
    Trainer.handle_signal(first, signal.SIGTERM, None)
    assert first.should_stop and first.stop_reason == "terminated"
    with pytest.raises(SystemExit) as info:
        Trainer.handle_signal(first, signal.SIGTERM, None)
    assert info.value.code == 143 and "second SIGTERM" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stays Ctrl-C
        Trainer.handle_signal(first, signal.SIGINT, None)
    # once the loop has ended (its last checkpoint records why), a signal changes nothing: the report and
    # run.json must agree (issue 21)
    ended = SimpleNamespace(_interrupted=False, _finished=True, should_stop=False, stop_reason="", dist=None)
    Trainer.handle_signal(ended, signal.SIGTERM, None)
    Trainer.handle_signal(ended, signal.SIGINT, None)
    assert not ended.should_stop and ended.stop_reason == ""
