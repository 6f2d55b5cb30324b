"""Malformed input to every CLI entry point: one clear error line, exit code 2, nothing written.

Each case runs the real CLI (``main([...])`` in process; a few as ``python -m localconv``
subprocesses) and checks that

* the exit code is 2 (argparse's usage errors exit 2 as well, after its usage lines),
* stderr holds exactly one ``localconv <command>: error: ...`` line, naming the file or field at
  fault, and no traceback,
* the files under the test's folders are untouched: a failing ``train`` leaves no run folder, a
  refused archive member is never written anywhere, a malicious pickle never runs.

The readers' own unit tests (test_data_formats, test_safe_pickle, test_cfg_*) test the same
inputs at the API level; here they go through the entry points a user types. The table of cases
and messages is in docs/bad_input.md.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from cifar_fixtures import (add_tar_member, encode_image, make_arrays, python_batch, tar_folder,
                            write_binary_release, write_image_tarballs, write_image_tree, write_python_release)
from localconv.cli.main import main
from localconv.data import load_cifar10
from test_cfg_builder import LAYERS, PARAMS

# --------------------------------------------------------------------------- the world every case starts from


@dataclass
class World:
    root: Path     # module-wide folder: good data, its cache, a finished run, a photo
    data: Path
    cache: Path
    run: Path
    photo: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("bad-input")
    data = write_image_tree(root / "data", make_arrays(n_train=40, n_test=20, seed=3))
    cache = root / "cache"
    load_cifar10(data, cache_dir=cache, progress=False)  # warm: later loads of this data write nothing
    run = root / "run"
    assert main(["train", "--model", "tf-tutorial-conv", "--data", str(data), "--cache-dir", str(cache),
                 "--out", str(run), "--epochs", "1", "--batch-size", "20", "--device", "cpu", "--no-progress"]) == 0
    photo = root / "photo.png"
    photo.write_bytes(encode_image(np.full((3, 50, 40), 128, np.uint8)))
    return World(root, data, cache, run, photo)


@pytest.fixture(autouse=True)
def _cache_env(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALCONV_CACHE", str(world.cache))  # never ~/.cache


def snapshot(*roots: Path) -> dict[str, object]:
    """Every folder and file (size, mtime) under ``roots``."""
    state: dict[str, object] = {}
    for root in roots:
        for folder, _, files in os.walk(root):
            state[folder] = "dir"
            for name in files:
                st = os.lstat(os.path.join(folder, name))
                state[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns)
    return state


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = exc.code
    captured = capsys.readouterr()
    return rc, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_error(command: str, rc: int, lines: list[str], needles: tuple[str, ...]) -> str:
    assert rc == 2, lines
    assert not any("Traceback" in line for line in lines), lines
    errors = [line for line in lines if line.startswith(f"localconv {command}: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    usage = lines[0].startswith("usage:")  # argparse prints its usage lines first
    assert usage or len(lines) == 1, lines
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


# --------------------------------------------------------------------------- builders of bad inputs


def train_argv(world: World, tmp: Path, data: Path | str | None = None, *extra: str) -> list[str]:
    return ["train", "--model", "tf-tutorial-conv", "--data", str(data or world.data), "--cache-dir",
            str(tmp / "cache"), "--out", str(tmp / "run"), "--epochs", "1", "--batch-size", "10", "--device", "cpu",
            "--no-progress", *extra]


def good_argv(world: World, tmp: Path, *extra: str) -> list[str]:
    """Train on the module's (cached) good data: only the CLI values are bad."""
    argv = train_argv(world, tmp, world.data, *extra)
    argv[argv.index("--cache-dir") + 1] = str(world.cache)
    return argv


def resume_argv(world: World, tmp: Path, *extra: str) -> list[str]:
    """Continue the run copied to ``tmp/run``: only the options --resume accepts, and ``extra``."""
    return ["train", "--resume", "--out", str(tmp / "run"), "--data", str(world.data), "--cache-dir",
            str(world.cache), "--epochs", "2", "--device", "cpu", "--no-progress", *extra]


def tree(tmp: Path, n_train: int = 20, n_test: int = 10) -> Path:
    return write_image_tree(tmp / "data", make_arrays(n_train=n_train, n_test=n_test, seed=4))


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    raw = encode_image(np.zeros((3, 1, 1), np.uint8))
    ihdr = raw[16:29]
    ihdr = struct.pack(">II", width, height) + ihdr[8:]
    return raw[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + raw[33:]


def copy_run(world: World, tmp: Path) -> Path:
    return Path(shutil.copytree(world.run, tmp / "run"))


def edit_meta(run: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((run / "run.json").read_text())
    edit(meta)
    (run / "run.json").write_text(json.dumps(meta))


def rewrite_file(run: Path, key: str, transform: Callable[[bytes], bytes], fix_checksum: bool) -> None:
    meta = json.loads((run / "run.json").read_text())
    path = run / meta["files"][key]
    path.write_bytes(transform(path.read_bytes()))
    if fix_checksum:  # a corrupt file whose checksum was recomputed: the reader itself must cope
        edit_meta(run, lambda m: m["sha256"].update({key: hashlib.sha256(path.read_bytes()).hexdigest()}))


class RunsShell:
    """Plain ``pickle.load`` would run ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return os.system, (f"touch {self.marker}",)


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    id: str
    command: str
    make: Callable[[World, Path], list[str]]  # builds the bad input under the test's folder, returns argv
    needles: tuple[str, ...]                  # what the error line must name


def _truncated_png(w: World, t: Path) -> list[str]:
    root = tree(t)
    victim = root / "train" / "cat" / "0003.png"
    victim.write_bytes(victim.read_bytes()[:200])
    return train_argv(w, t, root)


def _oversized_png(w: World, t: Path) -> list[str]:
    root = tree(t)
    (root / "train" / "dog" / "0005.png").write_bytes(encode_image(np.zeros((3, 64, 64), np.uint8)))
    return train_argv(w, t, root)


def _bomb_png(w: World, t: Path) -> list[str]:
    root = tree(t)
    (root / "test" / "dog" / "0005.png").write_bytes(png_with_size(40000, 40000))
    return train_argv(w, t, root)


def _text_in_class_folder(w: World, t: Path) -> list[str]:
    root = tree(t)
    (root / "train" / "bird" / "notes.txt").write_text("not an image")
    return train_argv(w, t, root)


def _class_only_in_test(w: World, t: Path) -> list[str]:
    root = tree(t)
    (root / "test" / "unicorn").mkdir()
    shutil.copy(root / "test" / "cat" / "0003.png", root / "test" / "unicorn" / "0000.png")
    return train_argv(w, t, root)


def _file_instead_of_class_folder(w: World, t: Path) -> list[str]:
    root = tree(t)
    (root / "train" / "labels.csv").write_text("0,cat\n")
    return train_argv(w, t, root)


def _python_label_out_of_range(w: World, t: Path) -> list[str]:
    arrays = make_arrays(n_train=20, n_test=10)
    arrays.train_labels[7] = 12
    return train_argv(w, t, write_python_release(t / "src", arrays))


def _binary_label_out_of_range(w: World, t: Path) -> list[str]:
    arrays = make_arrays(n_train=20, n_test=10)
    arrays.test_labels[3] = 200
    return train_argv(w, t, write_binary_release(t / "src", arrays))


def _truncated_python_batch(w: World, t: Path) -> list[str]:
    folder = write_python_release(t / "src", make_arrays(n_train=20, n_test=10))
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:1000])
    return train_argv(w, t, folder)


def _python_batch_wrong_shape(w: World, t: Path) -> list[str]:
    folder = write_python_release(t / "src", make_arrays(n_train=20, n_test=10))
    images = np.zeros((4, 3, 16, 16), np.uint8)  # 768 bytes per row instead of 3072
    (folder / "data_batch_3").write_bytes(python_batch(images, np.zeros(4, np.int64), "bad"))
    return train_argv(w, t, folder)


def _malicious_pickle(w: World, t: Path) -> list[str]:
    folder = write_python_release(t / "src", make_arrays(n_train=20, n_test=10))
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": RunsShell(t / "pwned"), b"labels": [0]}, protocol=2))
    return train_argv(w, t, folder)


def _pickle_unknown_codec(w: World, t: Path) -> list[str]:
    """``_codecs.encode`` (allowed for latin-1 only) asked for a codec that does not exist (found by fuzzing)."""
    folder = write_python_release(t / "src", make_arrays(n_train=20, n_test=10))
    raw = (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x0a\x00\x00\x00nope-codec\x86R.")
    (folder / "data_batch_1").write_bytes(raw)
    return train_argv(w, t, folder)


def _gzip_header_cut(w: World, t: Path) -> list[str]:
    """A gzip stream cut inside its header (tarfile fails with a TypeError; found by fuzzing)."""
    folder = write_image_tarballs(t / "jpeg", make_arrays(n_train=20, n_test=10), t / "scratch")
    (folder / "train.tar.gz").write_bytes(b"\x1f\x8b\x08")
    shutil.rmtree(t / "scratch")
    return train_argv(w, t, folder)


def _binary_batch_wrong_size(w: World, t: Path) -> list[str]:
    folder = write_binary_release(t / "src", make_arrays(n_train=20, n_test=10))
    batch = folder / "data_batch_1.bin"
    batch.write_bytes(batch.read_bytes() + b"\x00" * 100)
    return train_argv(w, t, folder)


def _truncated_tarball(w: World, t: Path) -> list[str]:
    folder = write_image_tarballs(t / "jpeg", make_arrays(n_train=20, n_test=10), t / "scratch")
    archive = folder / "train.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    shutil.rmtree(t / "scratch")
    return train_argv(w, t, folder)


def _traversal_member(member: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        folder = write_image_tarballs(t / "jpeg", make_arrays(n_train=20, n_test=10), t / "scratch")
        add_tar_member(folder / "train.tar.gz", member.format(tmp=t), encode_image(np.zeros((3, 32, 32), np.uint8)))
        return train_argv(w, t, folder)

    return make


def _symlink_member(w: World, t: Path) -> list[str]:
    folder = write_image_tarballs(t / "jpeg", make_arrays(n_train=20, n_test=10), t / "scratch")
    add_tar_member(folder / "test.tar.gz", "test/cat/link.png", b"", kind=tarfile.SYMTYPE, link="/etc/passwd")
    return train_argv(w, t, folder)


def _traversal_in_release_archive(w: World, t: Path) -> list[str]:
    folder = write_python_release(t / "src", make_arrays(n_train=20, n_test=10))
    archive = tar_folder(folder, t / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    add_tar_member(archive, "cifar-10-batches-py/../../../escaped", b"evil")
    shutil.rmtree(t / "src")
    return train_argv(w, t, archive)


def _random_bytes_archive(w: World, t: Path) -> list[str]:
    (t / "cifar.tar.gz").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return train_argv(w, t, t / "cifar.tar.gz")


def _empty_folder(w: World, t: Path) -> list[str]:
    (t / "empty").mkdir()
    return train_argv(w, t, t / "empty")


def _missing_data(w: World, t: Path) -> list[str]:
    return train_argv(w, t, t / "no-such-data")


# checkpoints and run folders

def _truncated_weights(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    rewrite_file(run, "ema", lambda b: b[: len(b) // 2], fix_checksum=False)
    return ["eval", str(run), "--json"]


def _truncated_weights_checksum_fixed(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    rewrite_file(run, "ema", lambda b: b[: len(b) // 2], fix_checksum=True)
    return ["eval", str(run), "--json"]


def _garbage_weights_header(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    rewrite_file(run, "model", lambda b: struct.pack("<Q", 10**12) + b[8:], fix_checksum=True)
    return ["predict", str(run), "--weights", "raw", str(w.photo)]


def _corrupt_optimizer_state(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    rewrite_file(run, "optimizer", lambda b: b[:100], fix_checksum=True)
    return resume_argv(w, t)


def _run_json_not_json(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    (run / "run.json").write_text('{"format": "localconv-run/1", ')
    return ["eval", str(run), "--json"]


def _old_run_json_not_json_resumed(w: World, t: Path) -> list[str]:
    """A run written before run folders had a lock file, its run.json damaged: still a run, named precisely."""
    run = copy_run(w, t)
    (run / ".localconv.lock").unlink()
    (run / "run.json").write_text('{"format": "localconv-run/1", ')
    return resume_argv(w, t)


def _run_json_wrong_format(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    edit_meta(run, lambda m: m.update(format="something-else/9"))
    return ["predict", str(run), str(w.photo)]


def _run_json_edited_field(field: str, value: object, command: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        run = copy_run(w, t)
        edit_meta(run, lambda m: m.update({field: value}))
        if command == "train":
            return resume_argv(w, t)
        return ["eval", str(run), "--json"]

    return make


def _run_json_bad_options(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    edit_meta(run, lambda m: m["options"].update(batch_size="lots"))
    return resume_argv(w, t)


def _run_json_file_traversal(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    edit_meta(run, lambda m: m["files"].update(ema="../../photo.png"))
    return ["eval", str(run), "--json"]


def _weights_of_another_model(command: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        run = copy_run(w, t)
        edit_meta(run, lambda m: m.update(model={"name": "tf-tutorial", "kwargs": {}}))
        if command == "train":  # the run's own (edited) model spec, no --model
            return ["train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]
        return ["predict", str(run), str(w.photo)]

    return make


def _resume_with_another_model(w: World, t: Path) -> list[str]:
    copy_run(w, t)
    return resume_argv(w, t, "--model", "tf-tutorial")


def _resume_with(*extra: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        copy_run(w, t)
        return resume_argv(w, t, *extra)

    return make


def _resume_on_other_data(classes: list[str], n_train: int) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        copy_run(w, t)
        other = write_image_tree(t / "other", make_arrays(n_train=n_train, n_test=20, classes=classes))
        load_cifar10(other, cache_dir=w.cache, progress=False)  # valid data: its cache may be written, beforehand
        argv = resume_argv(w, t)
        argv[argv.index("--data") + 1] = str(other)
        return argv

    return make


def _run_json_edit(edit: Callable[[dict], None], command: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        run = copy_run(w, t)
        edit_meta(run, edit)
        if command == "train":
            return resume_argv(w, t)
        if command == "predict":
            return ["predict", str(run), str(w.photo)]
        if command == "compare":
            return ["compare", str(w.run), str(run), "--out", str(t / "report")]
        return ["eval", str(run), "--json"]

    return make


def _compare_metrics_line(line: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        run = copy_run(w, t)
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write(line + "\n")
        return ["compare", str(w.run), str(run), "--out", str(t / "report")]

    return make


def _not_a_run_folder(w: World, t: Path) -> list[str]:
    """A user's folder that happens to hold names localconv writes: refused, nothing deleted or rewritten."""
    folder = t / "mine"
    folder.mkdir()
    for name in (".draft.tmp", ".tmpABC123", "model-000000001.safetensors", "notes.txt"):
        (folder / name).write_text(f"the user's {name}")
    (folder / "metrics.jsonl").write_text('{"step": 99, "mine": true}\n')
    argv = good_argv(w, t)
    argv[argv.index("--out") + 1] = str(folder)
    return argv


def _unknown_model_in_run(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    edit_meta(run, lambda m: m.update(model={"name": "resnet-9000", "kwargs": {}}))
    return ["eval", str(run), "--json"]


def _existing_run_without_resume(w: World, t: Path) -> list[str]:
    copy_run(w, t)
    return train_argv(w, t)


def _folder_not_a_run(command: str) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        return [command, str(w.data), *([str(w.photo)] if command == "predict" else ["--json"])]

    return make


def _missing_run(w: World, t: Path) -> list[str]:
    return ["predict", str(t / "no-such-run"), str(w.photo)]


def _eval_data_with_other_classes(w: World, t: Path) -> list[str]:
    arrays = make_arrays(n_train=20, n_test=10, classes=[f"c{i}" for i in range(10)])
    other = write_image_tree(t / "other", arrays)
    load_cifar10(other, cache_dir=t / "cache", progress=False)  # valid data: its cache may be written, beforehand
    return ["eval", str(w.run), "--data", str(other), "--cache-dir", str(t / "cache"), "--json"]


def _compare_bad_metrics(w: World, t: Path) -> list[str]:
    run = copy_run(w, t)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "epoch", "step": \n')
    return ["compare", str(w.run), str(run), "--out", str(t / "report")]


def _doctor(*extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, t: ["doctor", "--model", "tf-tutorial-conv", "--data", str(w.data), "--cache-dir", str(w.cache),
                         "--device", "cpu", *[x.format(tmp=t) for x in extra]]


# cfg files

def _cfg_files(t: Path, layers: str, params: str | None = PARAMS) -> list[str]:
    (t / "layers.cfg").write_text(layers)
    argv = ["--cfg", str(t / "layers.cfg")]
    if params is not None:
        (t / "params.cfg").write_text(params)
        argv += ["--params", str(t / "params.cfg")]
    return argv


def _cfg_train(layers: str, params: str | None = PARAMS) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        argv = good_argv(w, t)
        i = argv.index("--model")
        return argv[:i] + _cfg_files(t, layers, params) + argv[i + 2:]

    return make


def _cfg_summary(layers: str) -> Callable[[World, Path], list[str]]:
    return lambda w, t: ["summary", *_cfg_files(t, layers, None)]


def _cfg_not_utf8(w: World, t: Path) -> list[str]:
    (t / "layers.cfg").write_bytes(b"[conv1]\ntype=conv\xff\xfe\n")
    return ["summary", "--cfg", str(t / "layers.cfg")]


def _cfg_and_model(w: World, t: Path) -> list[str]:
    return good_argv(w, t, *_cfg_files(t, LAYERS))


# absurd CLI values

def _good(*extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, t: good_argv(w, t, *extra)


def _out(where: Callable[[Path], Path]) -> Callable[[World, Path], list[str]]:
    def make(w: World, t: Path) -> list[str]:
        argv = good_argv(w, t)
        argv[argv.index("--out") + 1] = str(where(t))
        return argv

    return make


def _a_file(t: Path) -> Path:
    (t / "a-file").write_text("x")
    return t / "a-file"


def _predict(path: Callable[[World, Path], Path], *extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, t: ["predict", str(w.run), str(path(w, t)), *extra]


def _write(name: str, data: bytes) -> Callable[[World, Path], Path]:
    def make(w: World, t: Path) -> Path:
        (t / name).write_bytes(data)
        return t / name

    return make


def _eval(*extra: str) -> Callable[[World, Path], list[str]]:
    return lambda w, t: ["eval", str(w.run), "--json", *[x.format(tmp=t) for x in extra]]


BAD_CFG_SYNTAX = LAYERS.replace("[conv1]", "[conv1", 1)
BAD_CFG_TYPE = LAYERS.replace("type=conv", "type=convolution", 1)
BAD_CFG_VALUE = LAYERS.replace("filterSize=5", "filterSize=five", 1)
BAD_CFG_INPUT = LAYERS.replace("inputs=conv1", "inputs=conv9", 1)
BAD_PARAMS = PARAMS.replace("epsW=", "epsW=fast#", 1)

CASES = [
    # data folders and archives (train --data)
    Case("tree-truncated-png", "train", _truncated_png, ("0003.png",)),
    Case("tree-oversized-image", "train", _oversized_png, ("0005.png", "64x64", "expected 32x32")),
    Case("tree-decompression-bomb-header", "train", _bomb_png, ("0005.png",)),
    Case("tree-text-file-in-class-folder", "train", _text_in_class_folder, ("notes.txt", "not a readable image")),
    Case("tree-class-only-in-test", "train", _class_only_in_test, ("unicorn", "different class folders")),
    Case("tree-file-among-class-folders", "train", _file_instead_of_class_folder, ("labels.csv", "unexpected file")),
    Case("python-label-out-of-range", "train", _python_label_out_of_range, ("data_batch_", "= 12", "out of range")),
    Case("binary-label-out-of-range", "train", _binary_label_out_of_range, ("test_batch.bin", "200", "out of range")),
    Case("python-truncated-batch", "train", _truncated_python_batch, ("data_batch_2", "truncated")),
    Case("python-batch-wrong-shape", "train", _python_batch_wrong_shape, ("data_batch_3", "'data'", "3072")),
    Case("python-malicious-pickle", "train", _malicious_pickle, ("data_batch_1", "posix.system", "refusing")),
    Case("python-pickle-unknown-codec", "train", _pickle_unknown_codec, ("data_batch_1", "nope-codec")),
    Case("tarball-gzip-header-cut", "train", _gzip_header_cut, ("train.tar.gz", "truncated")),
    Case("binary-batch-wrong-size", "train", _binary_batch_wrong_size, ("data_batch_1.bin", "3073-byte records")),
    Case("tarball-truncated", "train", _truncated_tarball, ("train.tar.gz", "truncated")),
    Case("tar-member-dotdot", "train", _traversal_member("train/cat/../../../escaped.png"),
         ("train.tar.gz", "unsafe member path")),
    Case("tar-member-absolute", "train", _traversal_member("{tmp}/escaped.png"), ("train.tar.gz", "unsafe member path")),
    Case("tar-member-symlink", "train", _symlink_member, ("test/cat/link.png", "not a regular file")),
    Case("release-archive-dotdot", "train", _traversal_in_release_archive,
         ("cifar-10-python.tar.gz", "unsafe member path")),
    Case("random-bytes-archive", "train", _random_bytes_archive, ("cifar.tar.gz", "not a tar archive")),
    Case("empty-data-folder", "train", _empty_folder, ("empty", "folder is empty")),
    Case("missing-data", "train", _missing_data, ("no-such-data", "no such file or folder")),
    Case("eval-data-other-classes", "eval", _eval_data_with_other_classes, ("classes", "differ")),
    # checkpoints and run folders
    Case("truncated-weights", "eval", _truncated_weights, ("ema-", "checksum mismatch")),
    Case("truncated-weights-checksum-fixed", "eval", _truncated_weights_checksum_fixed,
         ("ema-", "unreadable weights")),
    Case("garbage-weights-header", "predict", _garbage_weights_header, ("model-", "unreadable weights")),
    Case("corrupt-optimizer-state", "train", _corrupt_optimizer_state, ("optim-", "unreadable optimizer state")),
    Case("run-json-not-json", "eval", _run_json_not_json, ("run.json", "unreadable run metadata")),
    Case("run-json-not-json-resume-old-run", "train", _old_run_json_not_json_resumed,
         ("run.json", "unreadable run metadata")),
    Case("run-json-other-format", "predict", _run_json_wrong_format, ("run.json", "not a localconv-run/1 file")),
    Case("run-json-step-edited", "train", _run_json_edited_field("step", "many", "train"),
         ("run.json: step: expected an integer >= 0, got 'many'",)),
    Case("run-json-files-removed", "eval", _run_json_edited_field("files", None, "eval"),
         ("run.json: files: expected an object, got None",)),
    Case("run-json-options-edited", "train", _run_json_bad_options, ("run.json: options.batch_size:", "'lots'")),
    Case("run-json-file-outside-run", "eval", _run_json_file_traversal, ("photo.png", "not a file of the run folder")),
    Case("weights-of-another-model-eval", "predict", _weights_of_another_model("predict"),
         ("ema-", "do not fit this model")),
    Case("weights-of-another-model-resume", "train", _weights_of_another_model("train"), ("do not fit this model",)),
    Case("resume-with-another-model", "train", _resume_with_another_model, ("tf-tutorial-conv", "--resume")),
    Case("unknown-model-in-run", "eval", _unknown_model_in_run, ("run.json", "resnet-9000")),
    Case("resume-other-batch-size", "train", _resume_with("--batch-size", "10"), ("--batch-size 10", "(the run's: 20)")),
    Case("resume-other-lr", "train", _resume_with("--lr", "5"), ("--lr 5.0", "--resume")),
    Case("resume-other-lr-scale", "train", _resume_with("--lr-scale", "2"), ("--lr-scale 2.0",)),
    Case("resume-other-seed", "train", _resume_with("--seed", "7"), ("--seed 7", "(the run's: 0)")),
    Case("resume-other-limit-train", "train", _resume_with("--limit-train", "30"), ("--limit-train 30",)),
    Case("resume-other-limit-test", "train", _resume_with("--limit-test", "10"), ("--limit-test 10",)),
    Case("resume-other-val-split", "train", _resume_with("--val-split", "10"), ("--val-split 10",)),
    Case("resume-other-schedule", "train", _resume_with("--schedule", "1:0"), ("--schedule 1:0",)),
    Case("resume-other-recipe", "train", _resume_with("--recipe", "fast"), ("--recipe fast",)),
    Case("resume-amp", "train", _resume_with("--amp"), ("--amp/--no-amp",)),
    Case("resume-recipe-set", "train", _resume_with("--recipe-set", "nesterov=true", "--recipe-set", "ema_decay=null"),
         ("--recipe-set nesterov=true ema_decay=null:", "(the run's: not set)")),
    Case("resume-skip-nonfinite", "train", _resume_with("--skip-nonfinite"), ("--skip-nonfinite",)),
    Case("resume-model-option-without-model", "train", _resume_with("--conv2-std", "1e-4"),
         ("--conv2-std", "own model")),
    Case("resume-fewer-epochs", "train", _resume_with("--epochs", "0.5"), ("--epochs 0.5", "1 epochs")),
    Case("resume-data-other-classes", "train", _resume_on_other_data([f"c{i}" for i in range(10)], 40),
         ("--data", "classes", "differ")),
    Case("resume-data-other-size", "train",
         _resume_on_other_data(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck"], 30), ("--data", "30 training images", "40")),
    Case("run-json-seed-not-int", "eval", _run_json_edit(lambda m: m["options"].update(seed="x"), "eval"),
         ("run.json: options.seed: expected an integer in 0..9223372036854775807, got 'x'",)),
    Case("run-json-seed-too-large-resume", "train", _run_json_edit(lambda m: m["options"].update(seed=2**70), "train"),
         ("run.json: options.seed:",)),
    Case("run-json-device-not-str", "train", _run_json_edit(lambda m: m["options"].update(device=5), "train"),
         ("run.json: options.device:", "got 5")),
    Case("run-json-log-every-str", "train", _run_json_edit(lambda m: m["options"].update(log_every="x"), "train"),
         ("run.json: options.log_every:",)),
    Case("run-json-schedule-number", "train", _run_json_edit(lambda m: m["options"].update(schedule=3), "train"),
         ("run.json: options.schedule: expected a string or null, got 3",)),
    Case("run-json-model-kwargs-list", "predict", _run_json_edit(lambda m: m["model"].update(kwargs=[1]), "predict"),
         ("run.json: model.kwargs: expected an object",)),
    Case("run-json-data-args-string", "eval", _run_json_edit(lambda m: m["data"].update(args="x"), "eval"),
         ("run.json: data.args: expected an object",)),
    Case("run-json-data-limit-test-str", "eval",
         _run_json_edit(lambda m: m["data"]["args"].update(limit_test="5"), "eval"), ("run.json: data.args.limit_test:",)),
    Case("run-json-classes-not-strings", "predict", _run_json_edit(lambda m: m.update(classes=[1, 2]), "predict"),
         ("run.json: classes[0]: expected a non-empty string, got 1",)),
    Case("run-json-classes-duplicate", "eval", _run_json_edit(lambda m: m["classes"].__setitem__(1, m["classes"][0]),
                                                              "eval"), ("run.json: classes[1]: duplicate",)),
    Case("run-json-temperature-string", "predict", _run_json_edit(lambda m: m.update(temperature="hot"), "predict"),
         ("run.json: temperature:",)),
    Case("run-json-bad-in-compare", "compare", _run_json_edit(lambda m: m.update(train_time_s="long"), "compare"),
         ("run.json: train_time_s:",)),
    Case("compare-metrics-line-not-object", "compare", _compare_metrics_line("[1, 2]"),
         ("metrics.jsonl:", "not a JSON object")),
    Case("compare-metrics-field-not-number", "compare", _compare_metrics_line('{"kind": "epoch", "epoch": "one"}'),
         ("metrics.jsonl:", "'epoch'", "expected a number")),
    Case("compare-metrics-epoch-missing", "compare", _compare_metrics_line('{"kind": "step", "step": 3}'),
         ("metrics.jsonl:", "'epoch': missing")),
    Case("out-not-a-run", "train", _not_a_run_folder, ("--out", "mine", "not a localconv run")),
    Case("out-empty-string", "train", lambda w, t: [*good_argv(w, t), "--out", ""], ("--out", "empty path")),
    Case("seed-too-large", "train", _good("--seed", str(2**70)), ("--seed", "2**63-1")),
    Case("seed-negative", "train", _good("--seed", "-1"), ("--seed", "-1")),
    Case("existing-run-without-resume", "train", _existing_run_without_resume, ("already holds a run", "--resume")),
    Case("eval-folder-not-a-run", "eval", _folder_not_a_run("eval"), ("data", "no run.json")),
    Case("predict-folder-not-a-run", "predict", _folder_not_a_run("predict"), ("data", "no run.json")),
    Case("predict-missing-run", "predict", _missing_run, ("no-such-run", "does not exist")),
    Case("compare-folder-not-a-run", "compare", lambda w, t: ["compare", str(w.run), str(w.data), "--out",
                                                              str(t / "report")], ("data", "no run.json")),
    Case("compare-bad-metrics-line", "compare", _compare_bad_metrics, ("metrics.jsonl:", "not a JSON line")),
    Case("compare-out-through-a-file", "compare",
         lambda w, t: ["compare", str(w.run), "--out", str(_a_file(t) / "report")], ("--out", "a-file")),
    Case("doctor-missing-data", "doctor", _doctor("--data", "{tmp}/no-such-data"), ("no-such-data",)),
    Case("doctor-unknown-model", "doctor", _doctor("--model", "resnet"), ("unknown model 'resnet'",)),
    Case("doctor-steps-0", "doctor", _doctor("--steps", "0"), ("--steps",)),
    Case("doctor-batch-larger-than-data", "doctor", _doctor("--limit-train", "20", "--batch-size", "30"),
         ("--batch-size 30",)),
    Case("doctor-seed-too-large", "doctor", _doctor("--seed", str(2**64)), ("--seed", "2**63-1")),
    Case("doctor-device-unknown", "doctor", _doctor("--device", "tpu"), ("--device", "'tpu'")),
    # cfg files
    Case("cfg-bad-section-header", "train", _cfg_train(BAD_CFG_SYNTAX), ("layers.cfg:", "section header")),
    Case("cfg-unknown-layer-type", "train", _cfg_train(BAD_CFG_TYPE), ("layers.cfg:", "[conv1]", "convolution")),
    Case("cfg-bad-number", "train", _cfg_train(BAD_CFG_VALUE), ("layers.cfg:", "[conv1]", "filterSize")),
    Case("cfg-unknown-input", "summary", _cfg_summary(BAD_CFG_INPUT), ("layers.cfg:", "conv9")),
    Case("cfg-bad-params-value", "train", _cfg_train(LAYERS, BAD_PARAMS), ("params.cfg:", "epsW")),
    Case("cfg-missing-params", "train", _cfg_train(LAYERS, None), ("params",)),
    Case("cfg-not-utf8", "summary", _cfg_not_utf8, ("layers.cfg", "UTF-8")),
    Case("cfg-missing-file", "summary", lambda w, t: ["summary", "--cfg", str(t / "nope.cfg")], ("nope.cfg",)),
    Case("cfg-and-model", "train", _cfg_and_model, ("--model", "--cfg")),
    # absurd CLI values
    Case("batch-size-0", "train", _good("--batch-size", "0"), ("--batch-size",)),
    Case("epochs-negative", "train", _good("--epochs", "-1"), ("--epochs",)),
    Case("epochs-nan", "train", _good("--epochs", "nan"), ("--epochs",)),
    Case("lr-inf", "train", _good("--lr", "inf"), ("--lr",)),
    Case("limit-train-0", "train", _good("--limit-train", "0"), ("--limit-train",)),
    Case("limit-train-too-many", "train", _good("--limit-train", "41"), ("--limit-train 41", "40")),
    Case("limit-test-too-many", "train", _good("--limit-test", "21"), ("--limit-test 21",)),
    Case("val-split-larger-than-data", "train", _good("--val-split", "40"), ("--val-split 40",)),
    Case("val-split-leaves-too-few", "train", _good("--val-split", "35"), ("--batch-size 10", "5 training images")),
    Case("batch-size-larger-than-data", "train", _good("--batch-size", "41"), ("--batch-size 41",)),
    Case("checkpoint-every-0", "train", _good("--checkpoint-every", "0"), ("--checkpoint-every",)),
    Case("schedule-garbage", "train", _good("--schedule", "fast"), ("--schedule", "'fast'")),
    Case("seed-not-a-number", "train", _good("--seed", "one"), ("--seed",)),
    Case("device-unknown", "train", _good("--device", "tpu"), ("--device", "'tpu'")),
    Case("device-cuda-without-gpu", "train", _good("--device", "cuda"), ("--device cuda",)),
    Case("crop-not-allowed", "train", _good("--crop", "28"), ("--crop",)),
    Case("step-graph-on-cpu", "train", _good("--step", "graph", "--device", "cpu"), ("--step graph", "CUDA")),
    Case("step-fused-with-skip-nonfinite", "train", _good("--step", "fused", "--skip-nonfinite"),
         ("--step fused", "--skip-nonfinite", "--step eager")),
    Case("step-fused-with-watch", "train", _good("--step", "fused", "--watch"), ("--step fused", "WatchCallback")),
    Case("step-unknown", "train", _good("--step", "turbo"), ("--step", "'turbo'")),
    Case("out-two-levels-through-a-file", "train", _out(lambda t: _a_file(t) / "sub" / "run"),
         ("--out", "a-file", "not a folder")),
    Case("out-through-a-file", "train", _out(lambda t: _a_file(t) / "run"), ("--out", "a-file", "not a folder")),
    Case("out-is-a-file", "train", _out(_a_file), ("--out", "a-file", "not a folder")),
    Case("unknown-model", "train", lambda w, t: [*good_argv(w, t)[:1], "--model", "resnet", *good_argv(w, t)[3:]],
         ("unknown model 'resnet'",)),
    Case("no-model", "train", lambda w, t: [good_argv(w, t)[0], *good_argv(w, t)[3:]], ("no model",)),
    Case("summary-unknown-model", "summary", lambda w, t: ["summary", "--model", "resnet"], ("unknown model",)),
    Case("predict-non-image", "predict", _predict(_write("notes.png", b"plain text, not a PNG")),
         ("notes.png", "not a readable image")),
    Case("predict-truncated-image", "predict",
         _predict(_write("half.png", encode_image(np.full((3, 32, 32), 9, np.uint8))[:60])), ("half.png",)),
    Case("predict-bomb-header", "predict", _predict(_write("bomb.png", png_with_size(40000, 40000))), ("bomb.png",)),
    Case("predict-missing-image", "predict", _predict(lambda w, t: t / "nope.jpg"), ("nope.jpg", "cannot read")),
    Case("predict-a-folder", "predict", _predict(lambda w, t: t), ("cannot read image file",)),
    Case("predict-top-k-0", "predict", _predict(lambda w, t: w.photo, "--top-k", "0"), ("--top-k",)),
    Case("eval-limit-test-0", "eval", _eval("--limit-test", "0"), ("--limit-test",)),
    Case("eval-limit-test-too-many", "eval", _eval("--limit-test", "500"), ("--limit-test 500",)),
    Case("eval-val-split-without-one", "eval", _eval("--split", "val"), ("--split val", "--val-split")),
    Case("eval-confusion-bad-suffix", "eval", _eval("--confusion", "{tmp}/cm.txt"), ("--confusion", ".csv")),
    Case("eval-confusion-missing-folder", "eval", _eval("--confusion", "{tmp}/no/cm.csv"), ("--confusion", "no")),
    Case("unknown-command", "", lambda w, t: ["fit"], ("invalid choice: 'fit'",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error(case: Case, world: World, tmp_path: Path, capsys) -> None:
    argv = case.make(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    rc, lines = run_cli(argv, capsys)
    if case.command:
        assert_one_error(case.command, rc, lines, case.needles)
    else:  # no subcommand: argparse names the program only
        assert rc == 2 and lines[-1].startswith("localconv: error:") and case.needles[0] in lines[-1], lines
    assert snapshot(world.root, tmp_path) == before, "the filesystem changed"
    assert not (tmp_path / "pwned").exists()
    if "tar" in case.id or "archive" in case.id:  # a member path escaping upwards, from anywhere
        assert not list(tmp_path.parent.rglob("escaped*"))
        assert not any((folder / "escaped.png").exists() for folder in (Path.cwd(), *Path.cwd().parents))


# --------------------------------------------------------------------------- real processes


SUBPROCESS_CASES = ["python-malicious-pickle", "truncated-weights", "run-json-step-edited", "predict-non-image",
                    "cfg-bad-section-header", "batch-size-0"]


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_real_process_exits_2_without_traceback(case_id: str, world: World, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    argv = case.make(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    env = {**os.environ, "LOCALCONV_CACHE": str(world.cache), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "localconv", *argv], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert_one_error(case.command, proc.returncode, lines, case.needles)
    assert snapshot(world.root, tmp_path) == before
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- optional dependencies


MISSING_DEPENDENCY_CASES = {
    "compare-without-matplotlib": (("matplotlib", "matplotlib.pyplot"), "compare",
                                   lambda w, t: ["compare", str(w.run), "--out", str(t / "report")],
                                   ("localconv compare", "matplotlib", "pip install matplotlib")),
    "eval-confusion-png-without-matplotlib": (("matplotlib", "matplotlib.pyplot"), "eval",
                                              lambda w, t: ["eval", str(w.run), "--confusion", str(t / "cm.png")],
                                              ("--confusion", "cm.png", "matplotlib")),
    "train-tensorboard-without-tensorboard": (("tensorboard", "torch.utils.tensorboard"), "train",
                                              lambda w, t: good_argv(w, t, "--tensorboard"),
                                              ("--tensorboard", "pip install tensorboard")),
}


@pytest.mark.parametrize("case_id", list(MISSING_DEPENDENCY_CASES))
def test_missing_optional_dependency_is_one_line_and_creates_nothing(case_id: str, world: World, tmp_path: Path,
                                                                     capsys, monkeypatch) -> None:
    """The package is made unimportable (a None entry in sys.modules makes `import` fail, as if absent)."""
    modules, command, make, needles = MISSING_DEPENDENCY_CASES[case_id]
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    argv = make(world, tmp_path)
    before = snapshot(world.root, tmp_path)
    rc, lines = run_cli(argv, capsys)
    assert_one_error(command, rc, lines, needles)
    assert snapshot(world.root, tmp_path) == before, "the filesystem changed"
