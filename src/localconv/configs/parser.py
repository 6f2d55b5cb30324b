"""Reader for cuda-convnet's INI-style files that keeps case, file order and line numbers.

``configparser`` lower-cases keys and forgets where things were written; cuda-convnet keys are
camelCase (``filterSize``) and every diagnostic here names ``FILE:LINE``. Syntax accepted::

    # a comment (also after a value), ; a comment line
    [section]
    key=value        (or key: value; blanks around either are ignored)

Any problem raises :class:`~localconv.errors.ConfigError`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError

QUOTE_LIMIT = 60  # characters of a file's text quoted in a message; a 50 MB value is not printed whole


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` as quoted in an error message: its first ``limit`` characters, then ``...(N chars)``."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


MAX_NAME = 100  # longest section name or key accepted (cuda-convnet's are a few characters)
SECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")
KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class CfgItem:
    key: str
    value: str
    line: int


@dataclass
class CfgSection:
    name: str
    line: int
    file: str
    items: dict[str, CfgItem] = field(default_factory=dict)

    def get(self, key: str) -> CfgItem | None:
        return self.items.get(key)

    def error(self, message: str, item: CfgItem | None = None) -> ConfigError:
        """A ConfigError at ``item``'s line, or at the section header without one."""
        return ConfigError(message, file=self.file, line=item.line if item else self.line, section=self.name)


@dataclass
class CfgFile:
    name: str
    sections: dict[str, CfgSection]
    num_lines: int


def parse_cfg(text: str, file: str) -> CfgFile:
    """Parse ``text`` (the contents of ``file``, used in messages) into sections in file order."""
    if not isinstance(text, str):
        raise ConfigError(f"expected text, got {type(text).__name__}", file=file, line=0)
    sections: dict[str, CfgSection] = {}
    current: CfgSection | None = None
    lines = text.split("\n")
    for number, raw in enumerate(lines, start=1):
        raw = raw.removesuffix("\r")
        bad = next((c for c in raw if c < " " and c != "\t" or c == "\x7f"), None)
        if bad is not None:
            raise ConfigError(f"control character {bad!r} in the line; the file must be plain text",
                              file=file, line=number, section=current.name if current else None)
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ConfigError(f"malformed section header {clip(line)!r}: expected [name]", file=file, line=number)
            name = line[1:-1].strip()
            if len(name) > MAX_NAME:  # a name is quoted in every message about its section: keep it short
                raise ConfigError(f"section name {clip(name)!r} is {len(name)} characters long; use at most "
                                  f"{MAX_NAME}", file=file, line=number)
            if not SECTION_NAME.fullmatch(name):
                raise ConfigError(f"invalid section name {clip(name)!r}: use letters, digits, '_' and '-'",
                                  file=file, line=number)
            if name in sections:
                raise ConfigError(f"duplicate section (first defined at line {sections[name].line})",
                                  file=file, line=number, section=name)
            current = sections[name] = CfgSection(name, number, file)
            continue
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        if cut < 0:
            raise ConfigError(f"expected 'key=value', '[section]' or a # comment, got {clip(line)!r}",
                              file=file, line=number, section=current.name if current else None)
        key, value = line[:cut].strip(), line[cut + 1:].strip()
        if current is None:
            raise ConfigError(f"'{key}' appears before any [section]", file=file, line=number)
        if not KEY_NAME.fullmatch(key) or len(key) > MAX_NAME:
            raise ConfigError(f"invalid key {clip(key)!r}", file=file, line=number, section=current.name)
        if key in current.items:
            raise ConfigError(f"duplicate key '{key}' (first set at line {current.items[key].line})",
                              file=file, line=number, section=current.name)
        current.items[key] = CfgItem(key, value, number)
    return CfgFile(file, sections, max(1, len(lines) - (lines[-1] == "")))
