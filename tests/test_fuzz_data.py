"""Fuzzing the data readers and the cfg files through the CLI: malformed bytes give a valid dataset
or one ``DataError`` / ``ConfigError`` line naming the file -- never another exception.

Bounded for CI: a few dozen examples per test (``LOCALCONV_FUZZ_EXAMPLES=N`` for more), no deadline,
no example database. The cfg parser and builder have their own fuzzer (test_cfg_fuzz); here its
mutation strategy is reused to drive ``localconv summary --cfg`` with real files, which adds the
file reading and the CLI's error path. Data changed between ``train`` and a later use (images added, removed,
swapped, renamed, re-encoded, touched) must give exactly the run's images or one refusal (data/identity.py).

Found so far (fixed): an unknown codec name in a pickled ``_codecs.encode`` call raised LookupError
(safe_pickle); a gzip stream cut inside its header made tarfile raise TypeError (archive); a damaged
decoded-cache entry made zipfile raise NotImplementedError and numpy tokenize.TokenError (cache).
"""
from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifar_fixtures import (encode_image, make_arrays, swap_keeping_times, tar_folder, write_binary_release,
                            write_image_tree, write_python_release)
from localconv.cli.main import main
from localconv.data import CifarData, read_image
from localconv.data.formats import detect_source
from localconv.errors import DataError
from test_cfg_fuzz import mutated_files

EXAMPLES = int(os.environ.get("LOCALCONV_FUZZ_EXAMPLES", "40"))  # raise it for a longer, local fuzzing run
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutations(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, a cut, an insertion or a run of zeros; or random bytes."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "zero", "random"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "zero":
            data[at:at + draw(st.integers(1, 512))] = bytes(min(512, len(data) - at))
        elif op == "random":
            return draw(st.binary(max_size=4096))
    return bytes(data)


def read_or_refuse(path: Path, named: str) -> CifarData | None:
    """Read the dataset at ``path``: a valid dataset, or a one-line DataError naming the file ``named``,
    or the dataset folder when what is wrong is the whole (e.g. a tar cut at a member boundary reads
    as an archive with fewer members: "no class folders under train/")."""
    try:
        data = detect_source(path).read(progress=False)
    except DataError as exc:
        message = str(exc)
        assert "\n" not in message and (named in message or message.startswith(f"{path}: ")), message
        return None
    data.validate()  # read() validates too; a dataset that comes back must be consistent
    return data


def with_folder(build: Callable[[Path], Path], named: str) -> CifarData | None:
    with tempfile.TemporaryDirectory() as tmp:
        return read_or_refuse(build(Path(tmp)), named)


# --------------------------------------------------------------------------- official releases

ARRAYS = make_arrays(n_train=10, n_test=4, seed=11)


def _release_bytes(writer: Callable, name: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return (writer(Path(tmp), ARRAYS) / name).read_bytes()


PY_BATCH = _release_bytes(write_python_release, "data_batch_2")
PY_META = _release_bytes(write_python_release, "batches.meta")
BIN_BATCH = _release_bytes(write_binary_release, "data_batch_2.bin")


@FUZZ
@given(st.sampled_from(["data_batch_2", "batches.meta"]).flatmap(
    lambda name: st.tuples(st.just(name), mutations(PY_BATCH if name == "data_batch_2" else PY_META))))
def test_mutated_python_release_file(case: tuple[str, bytes]) -> None:
    name, raw = case

    def build(tmp: Path) -> Path:
        folder = write_python_release(tmp, ARRAYS)
        (folder / name).write_bytes(raw)
        return folder

    data = with_folder(build, name)
    if data is not None and name == "data_batch_2":
        assert data.train_images.shape[1:] == (3, 32, 32)


@FUZZ
@given(mutations(BIN_BATCH))
def test_mutated_binary_batch(raw: bytes) -> None:
    def build(tmp: Path) -> Path:
        folder = write_binary_release(tmp, ARRAYS)
        (folder / "data_batch_2.bin").write_bytes(raw)
        return folder

    data = with_folder(build, "data_batch_2.bin")
    if data is not None:  # a mutation that keeps whole records: labels must still be in range
        assert len(raw) % 3073 == 0 and data.train_labels.max() < len(data.classes)


# --------------------------------------------------------------------------- PNGs inside tarballs


def _tarball_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = write_image_tree(Path(tmp) / "tree", make_arrays(n_train=10, n_test=10, seed=12))
        archive = tar_folder(tree / "train", Path(tmp) / "train.tar", "train")
        with tarfile.open(archive) as tar:
            return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


MEMBERS = _tarball_members()
PNG_INDEXES = [i for i, (m, _) in enumerate(MEMBERS) if m.isfile()]


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], gz: bool) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as tar:
        for original, content in members:
            info = tarfile.TarInfo(original.name)
            info.type, info.mode = original.type, original.mode
            info.size = len(content) if content is not None else 0
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def _test_tarball(folder: Path) -> None:
    tree = write_image_tree(folder / "tree", make_arrays(n_train=10, n_test=10, seed=12))
    tar_folder(tree / "test", folder / "test.tar.gz", "test")


@FUZZ
@given(st.sampled_from(PNG_INDEXES).flatmap(lambda i: st.tuples(st.just(i), mutations(MEMBERS[i][1]))))
def test_mutated_png_inside_a_tarball(case: tuple[int, bytes]) -> None:
    index, png = case

    def build(tmp: Path) -> Path:
        members = list(MEMBERS)
        members[index] = (MEMBERS[index][0], png)
        (tmp / "train.tar.gz").write_bytes(_tar_bytes(members, gz=True))
        _test_tarball(tmp)
        return tmp

    with_folder(build, "train.tar.gz:train/")


ARCHIVE_BYTES = {".tar": _tar_bytes(MEMBERS, gz=False), ".tar.gz": _tar_bytes(MEMBERS, gz=True)}


@FUZZ
@given(st.sampled_from(sorted(ARCHIVE_BYTES)).flatmap(
    lambda suffix: st.tuples(st.just(suffix), mutations(ARCHIVE_BYTES[suffix]))))
def test_mutated_tarball_bytes(case: tuple[str, bytes]) -> None:
    """Mutations of the archive itself: tar headers (uncompressed .tar) and the gzip stream."""
    suffix, raw = case

    def build(tmp: Path) -> Path:
        (tmp / f"train{suffix}").write_bytes(raw)
        _test_tarball(tmp)
        return tmp

    with_folder(build, f"train{suffix}")


# --------------------------------------------------------------------------- images given to predict

IMAGES = {"png": encode_image(ARRAYS.train_images[0]), "jpeg": encode_image(ARRAYS.train_images[1], "JPEG")}


@FUZZ
@given(st.sampled_from(sorted(IMAGES)).flatmap(lambda kind: mutations(IMAGES[kind])))
def test_mutated_image_for_predict(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "picture.img"
        path.write_bytes(raw)
        try:
            image = read_image(path)
        except DataError as exc:
            assert "\n" not in str(exc) and "picture.img" in str(exc), str(exc)
            return
        assert image.shape == (3, 32, 32) and image.dtype == np.uint8


# --------------------------------------------------------------------------- data changed since the run was made

CHANGE_CLASSES = ["ant", "bee", "cow", "doe"]
CHANGE_ARRAYS = make_arrays(n_train=12, n_test=4, classes=CHANGE_CLASSES, seed=5)


@st.composite
def data_changes(draw: st.DrawFn) -> list[tuple]:
    """What happens to a dataset between ``train`` and a later ``eval`` / ``--resume``: images added, removed,
    swapped (same-size files, old mtimes kept, as when extracted from one tarball), renamed, re-encoded
    (losslessly: the same pixels; or as JPEG: other pixels), touched; or nothing."""
    ops = []
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["add", "remove", "swap", "rename", "reencode-png", "reencode-jpeg", "touch"]))
        ops.append((op, draw(st.integers(0, 10_000)), draw(st.integers(0, 10_000))))
    return ops


def _apply(root: Path, op: str, a: int, b: int) -> None:
    files = [f for c in CHANGE_CLASSES for f in sorted((root / "train" / c).iterdir())]
    first, second = files[a % len(files)], files[b % len(files)]
    if op == "add":
        image = np.random.default_rng(a).integers(0, 256, (3, 32, 32), dtype=np.uint8)
        (root / "train" / CHANGE_CLASSES[b % 4] / f"new{a}.bmp").write_bytes(encode_image(image, "BMP"))
    elif op == "remove" and len(files) > 4 and len(list(first.parent.iterdir())) > 1:
        first.unlink()
    elif op == "swap":
        swap_keeping_times(first, second)
    elif op == "rename":
        first.rename(first.with_name(f"{b:05d}.bmp"))
    elif op.startswith("reencode"):
        pixels = read_image(first)
        first.write_bytes(encode_image(pixels, "PNG" if op == "reencode-png" else "JPEG"))
    elif op == "touch":
        os.utime(first, ns=(a * 10**9, a * 10**9))


def _selection(data: CifarData, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positions = np.sort(positions)
    return data.train_images[positions], data.train_labels[positions]


@FUZZ
@given(changes=data_changes(), val_split=st.integers(1, 6), layout=st.sampled_from(["tree", "tarballs"]))
def test_data_changed_since_the_run_gives_the_runs_images_or_one_refusal(changes: list[tuple], val_split: int,
                                                                         layout: str) -> None:
    from localconv.data import load_cifar10
    from localconv.data.identity import check_identity, identity_record
    from localconv.data.loader import split_indices

    with tempfile.TemporaryDirectory() as tmp:
        tree = write_image_tree(Path(tmp) / "tree", CHANGE_ARRAYS, fmt="BMP")
        source = tree
        if layout == "tarballs":
            source = Path(tmp) / "tgz"
            source.mkdir()
        cache = Path(tmp) / "cache"

        def pack() -> None:  # the tarballs rewritten with their old mtimes: only their content tells
            for split in ("train", "test") if layout == "tarballs" else ():
                archive = source / f"{split}.tar.gz"
                mtime = archive.stat().st_mtime_ns if archive.exists() else None
                tar_folder(tree / split, archive, split)
                if mtime is not None:
                    os.utime(archive, ns=(mtime, mtime))

        pack()
        made = load_cifar10(source, cache, progress=False)  # what `train` read: recorded, and now cached
        recorded = identity_record(made, val_split)
        train_idx, val_idx = split_indices(len(made.train_labels), val_split)
        for op in changes:
            _apply(tree, *op)
        pack()
        now = load_cifar10(source, cache, progress=False)
        cold = load_cifar10(source, Path(tmp) / "cold-cache", progress=False)
        for field in ("train_images", "train_labels", "test_images", "test_labels"):  # the cache is never stale
            assert np.array_equal(getattr(now, field), getattr(cold, field)), field
        for parts in (("val",), ("train", "val")):  # eval --split val / --calibrate; train --resume
            try:
                check_identity(recorded, now, parts, val_split, shown="DATA", consequence="use the run's data")
            except DataError as exc:
                assert "\n" not in str(exc) and str(exc).startswith("DATA: "), str(exc)
                continue
            now_train, now_val = split_indices(len(now.train_labels), val_split)
            for part, then_idx, now_idx in (("val", val_idx, now_val), ("train", train_idx, now_train)):
                if part in parts:  # accepted: exactly the images and labels the run had
                    for a, b in zip(_selection(made, then_idx), _selection(now, now_idx)):
                        assert np.array_equal(a, b), (part, changes)


def _cached_entry() -> tuple[CifarData, bytes]:
    """A cold read of a small BMP tree and the bytes of the decoded-cache entry it wrote."""
    from localconv.data import load_cifar10

    with tempfile.TemporaryDirectory() as tmp:
        tree = write_image_tree(Path(tmp) / "tree", make_arrays(8, 4, CHANGE_CLASSES, seed=3), fmt="BMP")
        data = load_cifar10(tree, Path(tmp) / "cache", progress=False)
        return data, next((Path(tmp) / "cache" / "decoded").glob("*.npz")).read_bytes()


CACHED_DATA, CACHE_ENTRY = _cached_entry()


@FUZZ
@given(raw=mutations(CACHE_ENTRY))
def test_mutated_cache_entry_gives_the_datas_images(raw: bytes) -> None:
    """Damaged bytes in a decoded-cache entry (copied, truncated, flipped) give exactly the data, read from the
    entry or decoded again after a warning; never another exception (zipfile raised NotImplementedError,
    numpy's header parser tokenize.TokenError)."""
    import warnings

    from localconv.data import load_cifar10

    with tempfile.TemporaryDirectory() as tmp:
        tree = write_image_tree(Path(tmp) / "tree", make_arrays(8, 4, CHANGE_CLASSES, seed=3), fmt="BMP")
        cache = Path(tmp) / "cache"
        load_cifar10(tree, cache, progress=False)
        next((cache / "decoded").glob("*.npz")).write_bytes(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "ignoring unreadable decoded-data cache": expected for most
            data = load_cifar10(tree, cache, progress=False)
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(data, field), getattr(CACHED_DATA, field)), field
    assert data.classes == CACHED_DATA.classes


# --------------------------------------------------------------------------- cfg files through the CLI


def _summary(layers: bytes, params: bytes | None, capsys: pytest.CaptureFixture) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["summary", "--cfg", str(Path(tmp) / "layers.cfg")]
        (Path(tmp) / "layers.cfg").write_bytes(layers)
        if params is not None:
            (Path(tmp) / "params.cfg").write_bytes(params)
            argv += ["--params", str(Path(tmp) / "params.cfg")]
        capsys.readouterr()
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("localconv summary: error: ") and ".cfg:" in err[0], err


CFG_FUZZ = settings(FUZZ, max_examples=max(1, EXAMPLES * 5 // 8), suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])


@CFG_FUZZ
@given(case=mutated_files())
def test_mutated_cfg_files_through_summary(case: tuple[str, str | None, int], capsys) -> None:
    layers, params, _ = case
    _summary(layers.encode(), params.encode() if params is not None else None, capsys)


@CFG_FUZZ
@given(raw=st.binary(max_size=300))
def test_random_bytes_cfg_through_summary(raw: bytes, capsys) -> None:
    _summary(raw, None, capsys)
