"""What ``train --out`` may point at, and the life of a run folder around one training.

A folder is a **run** (of localconv) when it is

* ``missing`` (it will be created, like ``mkdir -p``, but never through a file),
* ``empty``,
* a ``run``: it holds a ``run.json`` of localconv's format (or any ``run.json`` next to our lock file or
  checkpoint files: a damaged run of ours, whose fields ``--resume`` then names), or
* ``partial``: it holds our lock file ``.localconv.lock`` but no ``run.json`` (a run killed before its
  first checkpoint).

Anything else that exists is refused before any work: a file, or a non-empty folder of someone else's
files (exit 2, nothing touched).

:class:`RunFolder` creates the folder and takes its lock only when every check has passed (right before
training), and if the training then fails before committing any checkpoint it removes what it created:
the files it added (only names localconv writes) and the folders it made. A folder that holds a
committed checkpoint is never cleaned up.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from ..errors import LocalconvError
from .checkpoint import CHECKPOINT_FILE, RUN_FILE, RUN_FORMAT, TEMP_FILE
from .run_lock import LOCK_FILE, RunFolderBusy, RunLock

METRICS_FILE = "metrics.jsonl"
# names a training writes into its folder: the only ones a failed run may remove (and only if it created them)
_OURS = re.compile(r"|".join([re.escape(LOCK_FILE), re.escape(METRICS_FILE), CHECKPOINT_FILE.pattern,
                              TEMP_FILE.pattern, r"events\.out\.tfevents\..+"]))


def _is_localconv_run_json(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == RUN_FORMAT


def inspect_out(out: Path) -> str:
    """``missing``, ``empty``, ``run`` or ``partial`` (see module doc); raises for anything else."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise LocalconvError(f"--out {out} exists and is not a folder")
    if not out.exists():
        ancestor = next(p for p in out.absolute().parents if p.exists())
        if not ancestor.is_dir():
            raise LocalconvError(f"--out {out}: {ancestor} is not a folder")
        return "missing"
    try:
        names = sorted(os.listdir(out))
    except OSError as exc:
        raise LocalconvError(f"--out {out}: cannot read the folder ({exc.strerror or exc})") from None
    if not names:
        return "empty"
    # a damaged run.json next to checkpoint files is a damaged run (--resume names the field), not a user's folder
    ours = LOCK_FILE in names or any(CHECKPOINT_FILE.fullmatch(name) for name in names)
    if RUN_FILE in names and (ours or _is_localconv_run_json(out / RUN_FILE)):
        return "run"
    if LOCK_FILE in names and RUN_FILE not in names:
        return "partial"
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise LocalconvError(f"--out {out} is a folder that is not empty and not a localconv run (it holds {shown}); "
                         "choose a new or empty folder")


class RunFolder:
    """Create-and-lock :meth:`open` after all checks; :meth:`close` releases, cleaning up after a failure."""

    def __init__(self, out: Path, lock: bool = True) -> None:
        self.out = Path(out)
        self.state = inspect_out(self.out)
        self._lock = RunLock(self.out) if lock else None
        if self._lock is not None and self.state in ("run", "partial"):
            self._lock.probe()  # a folder in use is named before any other work (taken for real in open())
        self._made_dirs: list[Path] = []   # folders this run created, deepest first
        self._found: set[str] = set()      # names in the folder when this run took it

    def open(self, expect_run_json: bytes | None = None) -> None:
        """Create the folder (and missing parents) and lock it; ``run.json`` must still be ``expect_run_json``
        (None: absent), else another process changed the folder since it was checked."""
        missing = [p for p in [self.out, *self.out.absolute().parents] if not p.exists()]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalconvError(f"cannot create the run folder {self.out}: {exc.strerror or exc}") from None
        self._made_dirs = missing
        try:
            self._check_writable()
        except LocalconvError:
            self._remove_made_dirs()
            raise
        try:
            self._found = set(os.listdir(self.out))
            if self._lock is not None:
                self._lock.acquire()
        except RunFolderBusy:  # the lock file is the holder's (even if it appeared after our listing): keep it
            self._remove_made_dirs()
            raise
        except BaseException:  # undo this run's lock file (if it made it) and folders
            self._remove_created_files()
            self._remove_made_dirs()
            raise
        try:
            current = (self.out / RUN_FILE).read_bytes()
        except FileNotFoundError:
            current = None
        except OSError as exc:
            self.close(failed=False)
            raise LocalconvError(f"{self.out / RUN_FILE}: cannot read ({exc.strerror or exc})") from None
        if current != expect_run_json:
            self.close(failed=False)
            what = "now holds a run" if expect_run_json is None else "was changed by another process"
            raise LocalconvError(f"--out {self.out} {what} since this command started; run it again")

    def _check_writable(self) -> None:
        """Write and remove a temp file as checkpoints do, and open the metrics log for appending: a folder where
        checkpoints cannot be written is refused now, not after an epoch of work."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{RUN_FILE}.", suffix=".tmp", dir=self.out)  # a TEMP_FILE name
            os.close(fd)
            os.unlink(tmp)
            if (self.out / METRICS_FILE).exists():
                with open(self.out / METRICS_FILE, "a"):
                    pass
        except OSError as exc:
            raise LocalconvError(f"--out {self.out}: cannot write in the run folder ({exc.strerror or exc}); "
                                 "checkpoints could not be saved") from None

    def close(self, failed: bool) -> None:
        """Release the lock; after a failure with no committed checkpoint, remove what this run created."""
        try:
            if failed and not (self.out / RUN_FILE).exists():
                self._remove_created_files()
        finally:
            if self._lock is not None:
                self._lock.release()
        if failed and not (self.out / RUN_FILE).exists():
            self._remove_made_dirs()

    def _remove_created_files(self) -> None:
        try:
            names = os.listdir(self.out)
        except OSError:
            return
        for name in names:
            if name in self._found or not _OURS.fullmatch(name):
                continue
            path = self.out / name  # our lock file too, if this run created it (unlinked while still held)
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
            except OSError:
                pass

    def _remove_made_dirs(self) -> None:
        for folder in self._made_dirs:  # deepest first; rmdir removes only empty folders
            try:
                folder.rmdir()
            except OSError:
                return
