"""The restricted unpickler: CIFAR batches load, anything that could run code is refused."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cifar_fixtures import make_arrays, pickle_batch, write_python_release
from localconv.data import load_cifar10
from localconv.data.safe_pickle import safe_load
from localconv.errors import DataError


class RunsShell:
    """Unpickling this with plain pickle would run a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CallsEval:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return eval, (f"open({str(self.marker)!r}, 'w').close()",)


def test_plain_pickle_would_run_the_payload(tmp_path: Path) -> None:
    """Guards the tests below: the payload really is live, so its absence there means refusal."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(RunsShell(marker), protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("payload", [RunsShell, CallsEval])
def test_malicious_pickle_is_refused(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    raw = pickle.dumps({b"data": payload(marker), b"labels": [0]}, protocol=2)
    with pytest.raises(DataError, match=r"evil_batch: not a plain CIFAR batch pickle .* is not allowed"):
        safe_load(raw, "evil_batch")
    assert not marker.exists()


def test_malicious_batch_through_load_cifar10(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    folder = write_python_release(tmp_path / "src", make_arrays())
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": RunsShell(marker)}, protocol=2))
    with pytest.raises(DataError) as info:
        load_cifar10(folder, cache_dir=tmp_path / "cache", progress=False)
    assert str(folder / "data_batch_2") in str(info.value)
    assert "os" in str(info.value) and "not allowed" in str(info.value)
    assert not marker.exists()
    assert not (tmp_path / "cache" / "decoded").exists() or not any((tmp_path / "cache" / "decoded").iterdir())


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load"),
                                          ("numpy.lib.npyio", "load"), ("posix", "system")])
def test_other_globals_are_refused(module: str, name: str) -> None:
    raw = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(DataError, match=f"'{module}.{name}' is not allowed"):
        safe_load(raw, "batch")


def test_codecs_encode_limited_to_latin1() -> None:
    # Protocol-2 pickles of bytes call _codecs.encode(text, 'latin1'); other codecs are refused.
    assert safe_load(pickle.dumps(b"\x00\xffab", protocol=2), "ok") == b"\x00\xffab"
    raw = pickle.dumps(b"x", protocol=2).replace(b"latin1", b"rot13_")
    with pytest.raises(DataError, match="refusing _codecs.encode"):
        safe_load(raw, "batch")


@pytest.mark.parametrize("py2_style", [False, True])
def test_plain_containers_and_arrays_load(py2_style: bool) -> None:
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3], b"name": b"batch",
           "text": "unicode", b"ints": np.array([1, 2], dtype=np.int64), b"set": {1, 2}, b"tuple": (1.5, None)}
    loaded = safe_load(pickle_batch(obj, py2_style), "batch")
    key = (lambda k: k.decode()) if py2_style else (lambda k: k)  # Python-2 str keys arrive as str
    np.testing.assert_array_equal(loaded[key(b"data")], obj[b"data"])
    assert loaded[key(b"data")].dtype == np.uint8
    assert loaded[key(b"labels")] == [1, 2, 3] and loaded[key(b"set")] == {1, 2}
    assert loaded[key(b"tuple")] == (1.5, None) and loaded["text"] == "unicode"
    np.testing.assert_array_equal(loaded[key(b"ints")], [1, 2])


def test_truncated_and_garbage_pickles() -> None:
    raw = pickle.dumps({b"data": np.zeros((10, 3072), np.uint8)}, protocol=2)
    with pytest.raises(DataError, match="data_batch_1: truncated"):
        safe_load(raw[: len(raw) // 2], "data_batch_1")
    with pytest.raises(DataError, match="junk: "):
        safe_load(b"this is not a pickle at all", "junk")
