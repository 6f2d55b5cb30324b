"""The cfg reader: syntax, line numbers, typed values, and its ``FILE:LINE: [section]`` errors."""
from __future__ import annotations

import pytest

from localconv.configs import parse_cfg
from localconv.configs.values import SectionValues, parse_neuron
from localconv.errors import ConfigError, LocalconvError

TEXT = """\
# a comment line
; another comment style

[conv1]
type=conv
filterSize = 5   # trailing comment
inputs=data, labels
initW: 0.0001

[Pool_1-a]
sizeX=3
"""


def test_sections_items_case_and_line_numbers() -> None:
    cfg = parse_cfg(TEXT, "layers.cfg")
    assert list(cfg.sections) == ["conv1", "Pool_1-a"]
    conv = cfg.sections["conv1"]
    assert conv.line == 4 and conv.file == "layers.cfg"
    assert list(conv.items) == ["type", "filterSize", "inputs", "initW"]  # case kept, file order
    assert conv.items["filterSize"].value == "5" and conv.items["filterSize"].line == 6
    assert conv.items["inputs"].value == "data, labels"
    assert conv.items["initW"].value == "0.0001" and conv.items["initW"].line == 8
    assert cfg.sections["Pool_1-a"].items["sizeX"].line == 11
    assert cfg.num_lines == 11


def test_crlf_and_blank_file() -> None:
    cfg = parse_cfg("[a]\r\nx=1\r\n\r\n[b]\r\ny = 2\r\n", "f.cfg")
    assert cfg.sections["b"].items["y"].line == 5 and cfg.sections["b"].items["y"].value == "2"
    assert parse_cfg("", "f.cfg").sections == {}


@pytest.mark.parametrize("text,prefix,fragment", [
    ("[a]\nx=1\n[a]\n", "f.cfg:3: [a]", "duplicate section (first defined at line 1)"),
    ("[a]\nx=1\nx=2\n", "f.cfg:3: [a]", "duplicate key 'x' (first set at line 2)"),
    ("x=1\n[a]\n", "f.cfg:1:", "before any [section]"),
    ("[a]\n\n[b\n", "f.cfg:3:", "malformed section header"),
    ("[a]\nfilters 64\n", "f.cfg:2: [a]", "expected 'key=value'"),
    ("[a b]\n", "f.cfg:1:", "invalid section name"),
    ("[]\n", "f.cfg:1:", "invalid section name"),
    ("[a]\n2x=1\n", "f.cfg:2: [a]", "invalid key"),
    ("[a.b]\n", "f.cfg:1:", "invalid section name"),
])
def test_syntax_errors_name_file_line_and_section(text: str, prefix: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cfg(text, "f.cfg")
    message = str(info.value)
    assert message.startswith(prefix + " "), message
    assert fragment in message
    assert "\n" not in message and isinstance(info.value, LocalconvError)


def _values(body: str) -> SectionValues:
    return SectionValues(parse_cfg("[s]\n" + body, "v.cfg").sections["s"])


def test_typed_values() -> None:
    v = _values("i=-3\nf=.75\ne=1e-3\nb1=true\nb0=0\nl=1, 2,3\nn=relu\nt=tanh[1.5,0.5]\n")
    assert v.integer("i") == -3 and v.number("f") == 0.75 and v.number("e") == 0.001
    assert v.boolean("b1") is True and v.boolean("b0") is False
    assert v.integers("l", 3) == [1, 2, 3]
    assert v.numbers("f", 3) == [0.75] * 3  # one value applies to every input
    assert v.integer("missing", default=7) == 7 and v.integers("missing", 2, default=0) == [0, 0]
    assert v.neuron("n") is not None and v.neuron("t").a == 1.5
    assert v.names("l") == ["1", "2", "3"]


@pytest.mark.parametrize("body,call,fragment", [
    ("k=abc\n", lambda v: v.integer("k"), "k: expected a whole number, got 'abc'"),
    ("k=3.0\n", lambda v: v.integer("k"), "expected a whole number"),
    ("k=nan\n", lambda v: v.number("k"), "expected a number, got 'nan'"),
    ("k=1e999\n", lambda v: v.number("k"), "expected a finite number"),
    ("k=1_0\n", lambda v: v.number("k"), "expected a number"),
    ("k=maybe\n", lambda v: v.boolean("k"), "expected 1/0 or true/false"),
    ("k=1,2\n", lambda v: v.integers("k", 3), "2 values for 3 input(s)"),
    ("k=1,x\n", lambda v: v.integers("k", 2), "expected a whole number, got 'x'"),
    ("k=0\n", lambda v: v.integer("k", lo=1), "k=0: must be >= 1"),
    ("k=-0.5\n", lambda v: v.number("k", lo=0.0), "must be >= 0.0"),
    ("k=\n", lambda v: v.text("k"), "empty value"),
    ("k=sum\n", lambda v: v.text("k", choices=("max", "avg")), "expected one of max, avg"),
    ("k=a,,b\n", lambda v: v.names("k"), "empty layer name"),
    ("k=swish\n", lambda v: v.neuron("k"), "unknown neuron type 'swish'"),
    ("k=tanh[1]\n", lambda v: v.neuron("k"), "write tanh[a,b]"),
    ("k=tanh[1,x]\n", lambda v: v.neuron("k"), "expected a number"),
    ("k=relu)\n", lambda v: v.neuron("k"), "malformed neuron"),
])
def test_value_errors_point_at_the_item_line(body: str, call, fragment: str) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError) as info:
        call(_values("other=1\n" + body))
    assert str(info.value).startswith("v.cfg:3: [s] "), str(info.value)
    assert fragment in str(info.value)


def test_missing_key_points_at_the_section_header() -> None:
    with pytest.raises(ConfigError, match=r"^v\.cfg:1: \[s\] missing required key 'filters'$"):
        _values("x=1\n").integer("filters")


def test_unknown_key_check_with_hint() -> None:
    v = _values("type=conv\nweightSource=conv1\n")
    with pytest.raises(ConfigError, match=r"^v\.cfg:3: \[s\] unknown key 'weightSource' for a conv layer \(weight"):
        v.check_keys({"type"}, "a conv layer", {"weightSource": "weight sharing is not supported"})
    with pytest.raises(ConfigError, match=r"expected one of: type$"):
        _values("type=conv\nfiltres=3\n").check_keys({"type"}, "a conv layer")


def test_parse_neuron_forms() -> None:
    assert type(parse_neuron("relu")).__name__ == "ReLU"
    assert type(parse_neuron(" brelu[ 6 ] ")).__name__ == "Hardtanh"
    assert parse_neuron("linear[2,-1]").b == -1.0
