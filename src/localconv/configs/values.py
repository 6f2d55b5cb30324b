"""Typed values of one cfg section: ints, floats, booleans, comma lists and neuron specs.

Every conversion error is a :class:`~localconv.errors.ConfigError` at the item's line.
Numbers are parsed strictly (ASCII decimal; finite floats) so that ``nan``, ``1_0`` or ``3.0`` for an
int are reported rather than accepted.
"""
from __future__ import annotations

import math
import re
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..nn.neurons import NEURON_FORMULAS, make_neuron
from .parser import CfgItem, CfgSection, clip

INT = re.compile(r"[+-]?[0-9]{1,12}")
FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
NEURON = re.compile(r"([A-Za-z_]+)\s*(?:\[([^\[\]]*)\])?")
BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
REQUIRED: Any = object()


def parse_int(text: str) -> int:
    if not INT.fullmatch(text):
        raise ValueError(f"expected a whole number, got {clip(text)!r}")
    return int(text)


def parse_float(text: str) -> float:
    if not FLOAT.fullmatch(text):
        raise ValueError(f"expected a number, got {clip(text)!r}")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {clip(text)!r}")
    return value


def parse_bool(text: str) -> bool:
    try:
        return BOOLS[text.lower()]
    except KeyError:
        raise ValueError(f"expected 1/0 or true/false, got {clip(text)!r}") from None


def parse_neuron(text: str) -> nn.Module:
    """``relu``, ``tanh[a,b]``, ``brelu[a]``... -> the activation module (ValueError if malformed)."""
    m = NEURON.fullmatch(text.strip())
    if not m:
        raise ValueError(f"malformed neuron {clip(text)!r}: expected NAME or NAME[a,b]")
    kind, inside = m.group(1), m.group(2)
    if kind not in NEURON_FORMULAS:
        known = ", ".join(NEURON_FORMULAS)
        raise ValueError(f"unknown neuron type {clip(kind)!r}; known: {known}")
    params = [] if inside is None or not inside.strip() else [parse_float(v.strip()) for v in inside.split(",")]
    return make_neuron(kind, params)


class SectionValues:
    """Typed, line-aware access to the items of ``section``."""

    def __init__(self, section: CfgSection) -> None:
        self.section = section

    def has(self, key: str) -> bool:
        return key in self.section.items

    def item(self, key: str) -> CfgItem | None:
        return self.section.get(key)

    def error(self, message: str, key: str | None = None) -> ConfigError:
        return self.section.error(message, self.section.get(key) if key else None)

    def _get(self, key: str, default: Any, convert: Any, check: Any = None) -> Any:
        item = self.section.get(key)
        if item is None:
            if default is REQUIRED:
                raise self.section.error(f"missing required key '{key}'")
            return default
        try:
            value = convert(item.value)
        except ValueError as exc:
            raise self.section.error(f"{key}: {exc}", item) from None
        if check is not None:
            problem = check(value)
            if problem:
                raise self.section.error(f"{key}={clip(item.value)}: {problem}", item)
        return value

    def text(self, key: str, default: Any = REQUIRED, choices: tuple[str, ...] | None = None) -> str:
        def check(v: str) -> str | None:
            if not v:
                return "empty value"
            if choices and v not in choices:
                return f"expected one of {', '.join(choices)}"
            return None

        return self._get(key, default, str, check)

    def integer(self, key: str, default: Any = REQUIRED, lo: int | None = None, hi: int | None = None) -> int:
        return self._get(key, default, parse_int, lambda v: _range_problem(v, lo, hi))

    def number(self, key: str, default: Any = REQUIRED, lo: float | None = None) -> float:
        return self._get(key, default, parse_float, lambda v: _range_problem(v, lo, None))

    def boolean(self, key: str, default: Any = REQUIRED) -> bool:
        return self._get(key, default, parse_bool)

    def _list(self, key: str, count: int, default: Any, convert: Any, lo: Any = None) -> list[Any]:
        """A comma list of ``count`` values; a single value applies to all ``count``."""

        def convert_list(text: str) -> list[Any]:
            values = [convert(v.strip()) for v in text.split(",")]
            if len(values) == 1:
                values = values * count
            if len(values) != count:
                raise ValueError(f"{len(values)} values for {count} input(s)")
            return values

        def check(values: list[Any]) -> str | None:
            return next((p for p in (_range_problem(v, lo, None) for v in values) if p), None)

        if default is not REQUIRED and not isinstance(default, list):
            default = [default] * count
        return self._get(key, default, convert_list, check)

    def integers(self, key: str, count: int, default: Any = REQUIRED, lo: int | None = None) -> list[int]:
        return self._list(key, count, default, parse_int, lo)

    def numbers(self, key: str, count: int, default: Any = REQUIRED, lo: float | None = None) -> list[float]:
        return self._list(key, count, default, parse_float, lo)

    def booleans(self, key: str, count: int, default: Any = REQUIRED) -> list[bool]:
        return self._list(key, count, default, parse_bool)

    def names(self, key: str) -> list[str]:
        """A comma list of layer names (``inputs=labels,probs``)."""

        def convert(text: str) -> list[str]:
            names = [n.strip() for n in text.split(",")]
            if not all(names):
                raise ValueError(f"empty layer name in {clip(text)!r}")
            return names

        return self._get(key, REQUIRED, convert)

    def neuron(self, key: str = "neuron", required: bool = False) -> nn.Module | None:
        return self._get(key, REQUIRED if required else None, parse_neuron)

    def check_keys(self, allowed: set[str], what: str, hints: dict[str, str] | None = None) -> None:
        """Raise at the first key not in ``allowed`` (``hints`` explain known-but-unsupported keys)."""
        for key, item in self.section.items.items():
            if key not in allowed:
                hint = (hints or {}).get(key)
                message = f"unknown key '{key}' for {what}"
                message += f" ({hint})" if hint else f"; expected one of: {', '.join(sorted(allowed))}"
                raise self.section.error(message, item)


def _range_problem(value: Any, lo: Any, hi: Any) -> str | None:
    if lo is not None and value < lo:
        return f"must be >= {lo}"
    if hi is not None and value > hi:
        return f"must be <= {hi}"
    return None
