"""An exclusive lock on a run folder, held by one ``localconv train`` for its whole run.

``fcntl.flock`` on ``RUN/.localconv.lock``: the kernel releases it when the process ends in any way
(exit, exception, ``kill -9``), so a lock is never stale and needs no pid check. The holder writes
its pid, host and start time into the file so that a second process can name it; the file stays in
the folder (removing a lock file while others may open it invites two holders) and is emptied on
release. Only one process per run folder is ever the writer; readers (eval, predict, compare) do not
lock, because every file of a checkpoint is replaced atomically.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from ..errors import LocalconvError

LOCK_FILE = ".localconv.lock"


class RunFolderBusy(LocalconvError):
    """Another process holds the run folder's lock."""


class RunLock:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._was_empty = False
        self._times = (0, 0)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunFolderBusy` naming the holder; never waits."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # 0o666 & ~umask
        except OSError as exc:
            raise LocalconvError(f"--out {self.folder}: cannot create the lock file {LOCK_FILE} "
                                 f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"--out {self.folder} is in use by another `localconv train` ({holder}); wait for "
                                "it to end or choose another --out") from None
        except OSError as exc:  # a file system without flock support
            os.close(fd)
            raise LocalconvError(f"--out {self.folder}: cannot lock {LOCK_FILE} ({exc.strerror or exc})") from None
        self._fd = fd
        st = os.fstat(fd)  # an empty lock file is given back as it was found, times included
        self._was_empty = st.st_size == 0
        self._times = (st.st_atime_ns, st.st_mtime_ns)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        except OSError:  # the lock is what matters; the holder's name is a courtesy
            pass

    def probe(self) -> None:
        """Raise :class:`RunFolderBusy` if another process holds the lock now; creates and changes nothing
        (so a busy folder is reported before any other work or error)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # no lock file (yet): nobody holds it
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise RunFolderBusy(f"--out {self.folder} is in use by another `localconv train` ({_read_holder(fd)}); "
                                "wait for it to end or choose another --out") from None
        except OSError:
            pass  # no flock here: acquire() reports it
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no holder any more
            if self._was_empty:  # a run that changed nothing else leaves no trace (see tests/test_run_folder.py)
                os.utime(fd, ns=self._times)
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown"
