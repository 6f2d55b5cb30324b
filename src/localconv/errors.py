"""User-facing errors.

Anything a user can cause (bad data, a bad config line, an unknown model name, a
checkpoint from another model) raises a subclass of :class:`LocalconvError`.
The CLI prints its message as one line and exits with code 2; no traceback.
"""
from __future__ import annotations


class LocalconvError(Exception):
    """An error caused by the user's input; the message names the file/field at fault."""

    exit_code = 2


class DataError(LocalconvError):
    """Missing, unreadable or malformed dataset files."""


class ConfigError(LocalconvError):
    """A malformed cuda-convnet layer or parameter file.

    Formatted as ``FILE:LINE: [section] message`` like a compiler diagnostic.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 section: str | None = None) -> None:
        self.file, self.line, self.section, self.detail = file, line, section, message
        where = f"{file or '<cfg>'}:{line if line is not None else 0}:"
        sect = f" [{section}]" if section else ""
        super().__init__(f"{where}{sect} {message}")


class CheckpointError(LocalconvError):
    """A missing, corrupt or mismatched checkpoint / run folder."""


class ModelError(LocalconvError):
    """An unknown model name or invalid model options."""
