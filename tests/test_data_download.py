"""Download of the python release, against a local HTTP server serving a small fixture archive."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cifar_fixtures import make_arrays, tar_folder, write_python_release
from localconv.data import default_cache_dir, load_cifar10
from localconv.errors import DataError

ARCHIVE = "cifar-10-python.tar.gz"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """127.0.0.1 on a random port serving tmp_path/www; /partial/* promises more bytes than it sends."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            requests.append(self.path)
            if self.path.startswith("/partial/"):
                body = (root / self.path.removeprefix("/partial/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])  # then the connection drops
                self.close_connection = True
                return
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}", requests=requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def release(tmp_path: Path, server: SimpleNamespace) -> SimpleNamespace:
    """A small python-release archive on the server, with its md5 and the arrays it holds."""
    arrays = make_arrays(seed=21)
    folder = write_python_release(tmp_path / "build", arrays)
    archive = tar_folder(folder, server.root / ARCHIVE, "cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return SimpleNamespace(arrays=arrays, md5=md5, url=f"{server.url}/{ARCHIVE}")


def cache_listing(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def test_download_verify_and_cache(tmp_path: Path, server: SimpleNamespace, release: SimpleNamespace) -> None:
    cache = tmp_path / "cache"
    data = load_cifar10(None, cache_dir=cache, progress=False, url=release.url, md5=release.md5)
    np.testing.assert_array_equal(data.train_images, release.arrays.train_images)
    np.testing.assert_array_equal(data.test_labels, release.arrays.test_labels)
    assert (cache / ARCHIVE).read_bytes() == (server.root / ARCHIVE).read_bytes()
    assert server.requests == [f"/{ARCHIVE}"]
    assert not [name for name in cache_listing(cache) if "tmp-" in name]

    again = load_cifar10(None, cache_dir=cache, progress=False, url=release.url, md5=release.md5)
    np.testing.assert_array_equal(again.train_images, data.train_images)
    for decoded in (cache / "decoded").iterdir():  # force decoding from the kept archive
        decoded.unlink()
    load_cifar10(None, cache_dir=cache, progress=False, url=release.url, md5=release.md5)
    assert server.requests == [f"/{ARCHIVE}"], "the archive must be downloaded only once"


def test_wrong_md5_keeps_nothing(tmp_path: Path, server: SimpleNamespace, release: SimpleNamespace) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="md5 .* does not match the expected 0123456789abcdef0123456789abcdef"):
        load_cifar10(None, cache_dir=cache, progress=False, url=release.url, md5="0123456789abcdef0123456789abcdef")
    assert cache_listing(cache) == []


def test_interrupted_download_keeps_nothing(tmp_path: Path, server: SimpleNamespace,
                                            release: SimpleNamespace) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=f"{server.url}/partial/{ARCHIVE}"):
        load_cifar10(None, cache_dir=cache, progress=False, url=f"{server.url}/partial/{ARCHIVE}", md5=release.md5)
    assert cache_listing(cache) == []


def test_http_error(tmp_path: Path, server: SimpleNamespace) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        load_cifar10(None, cache_dir=tmp_path / "cache", progress=False, url=f"{server.url}/missing.tar.gz",
                     md5="0" * 32)
    assert cache_listing(tmp_path / "cache") == []


def test_connection_refused_explains_offline_use(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{ARCHIVE}"
    with pytest.raises(DataError) as info:
        load_cifar10(None, cache_dir=tmp_path / "cache", progress=False, url=url, md5="0" * 32)
    message = str(info.value)
    assert url in message and "--data" in message and "$LOCALCONV_CACHE" in message
    assert str(tmp_path / "cache" / ARCHIVE) in message and "\n" not in message
    assert cache_listing(tmp_path / "cache") == []


def test_archive_placed_by_hand_is_checked(tmp_path: Path, release: SimpleNamespace) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ARCHIVE).write_bytes(b"not the release")
    with pytest.raises(DataError, match=f"{cache / ARCHIVE}: md5 .* delete it"):
        load_cifar10(None, cache_dir=cache, progress=False, url="http://127.0.0.1:9/never-used", md5=release.md5)
    assert not (cache / "decoded").exists()


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    release: SimpleNamespace) -> None:
    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    load_cifar10(progress=False, url=release.url, md5=release.md5)
    assert (tmp_path / "env-cache" / ARCHIVE).is_file()
    monkeypatch.delenv("LOCALCONV_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "localconv"


def test_cifar100_download_fine_and_coarse(tmp_path: Path, server: SimpleNamespace) -> None:
    from cifar_fixtures import write_cifar100_release

    arrays = make_arrays(n_train=8, n_test=4, classes=["f0", "f1", "f2", "f3"], seed=4)
    folder = write_cifar100_release(tmp_path / "build", arrays, [0, 0, 1, 1], ["c0", "c1"])
    archive = tar_folder(folder, server.root / "cifar-100-python.tar.gz", "cifar-100-python")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    url = f"{server.url}/cifar-100-python.tar.gz"
    fine = load_cifar10(None, cache_dir=cache, progress=False, url=url, md5=md5, dataset="cifar100")
    assert (cache / "cifar-100-python.tar.gz").is_file() and fine.classes == arrays.classes
    np.testing.assert_array_equal(fine.train_images, arrays.train_images)
    coarse = load_cifar10(None, cache_dir=cache, progress=False, url=url, md5=md5, dataset="cifar100",
                          labels="coarse")
    assert coarse.classes == ["c0", "c1"] and len(server.requests) == 1  # the second read reuses the download
    np.testing.assert_array_equal(coarse.test_labels, np.array([0, 0, 1, 1])[arrays.test_labels])
    with pytest.raises(DataError, match="--dataset must be one of cifar10, cifar100"):
        load_cifar10(None, cache_dir=cache, progress=False, dataset="imagenet")
    with pytest.raises(DataError, match="--labels coarse: only the CIFAR-100 release"):  # refused before downloading
        load_cifar10(None, cache_dir=tmp_path / "other", progress=False, url=url, md5=md5, labels="coarse")
    assert not (tmp_path / "other").exists()
