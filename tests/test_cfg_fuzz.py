"""Fuzzing the cfg parser and builder: whatever the files say, the result is a working model or
one ``ConfigError`` (``FILE:LINE: ...`` on one line) -- never another exception. A model that
builds must also run forward to ``[N, 10]`` logits, so the builder cannot accept what the
modules cannot compute."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localconv.configs import build_cfg_model
from localconv.configs.layers import LAYER_KEYS, PARAM_KEYS
from localconv.errors import ConfigError
from localconv.models.cfg_models import shipped_cfg_text

from test_cfg_builder import FEATURE_PARAMS, FEATURES, LAYERS, PARAMS

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MESSAGE = re.compile(r"^(layers|params)\.cfg:\d+: (\[[A-Za-z0-9_\-]+\] )?\S")

BASES = [(LAYERS, PARAMS, 24), (FEATURES, FEATURE_PARAMS, 24), (*shipped_cfg_text("cc-80sec"), 32),
         (*shipped_cfg_text("cc-11pct"), 24)]
KEYS = sorted(set().union(*LAYER_KEYS.values(), *PARAM_KEYS.values())) + ["junk", "Type", "weightSource"]
VALUES = ["0", "1", "2", "3", "4", "5", "9", "16", "64", "-1", "0.5", "1e-3", "", "abc", "true", "false", "nan",
          "1e999", "1,2", "2,2,2", "relu", "tanh[1,2]", "tanh[1]", "brelu[0]", "sqrt", "max", "avg", "data",
          "labels", "conv1", "fc10", "probs", "data,data", "labels,probs", "probs,labels", "conv", "local", "fc",
          "pool", "cmrnorm", "rnorm", "cnorm", "neuron", "softmax", "eltsum", "eltmax", "cost.logreg", "[x]", "=",
          "ü", "10"]


def declared_classes(layers: str, default: int) -> int:
    """The ``outputs`` of the layer the softmax reads, as the (valid) layer file says; ``default`` where that
    layer declares none (the softmax reads a conv or pool layer)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in layers.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip()
    softmax = [s for s in sections.values() if s.get("type") == "softmax"]
    if len(softmax) != 1:
        return default
    source = sections.get(softmax[0].get("inputs", ""), {})
    return int(source["outputs"]) if "outputs" in source else default


def check(layers: str, params: str | None, crop: int) -> None:
    try:
        model = build_cfg_model(layers, params, "layers.cfg", "params.cfg", crop=crop)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and MESSAGE.match(message), message
        return
    with torch.no_grad():
        logits = model(torch.randn(2, 3, crop, crop))
    # a file that builds may declare another class count (a mutated "outputs" of the softmax's fc layer: a valid
    # 2-class network); training refuses it on 10-class data (CfgNet.check_classes)
    assert logits.shape == (2, declared_classes(layers, default=model.num_classes))
    assert logits.shape == (2, model.num_classes)
    if params is not None:
        groups = model.param_groups()
        assert sum(len(g.params) for g in groups) == len(list(model.parameters()))


@st.composite
def mutated_files(draw: st.DrawFn) -> tuple[str, str | None, int]:
    layers_text, params_text, crop = draw(st.sampled_from(BASES))
    files = {"layers": layers_text.split("\n"), "params": params_text.split("\n")}
    for _ in range(draw(st.integers(1, 3))):
        lines = files[draw(st.sampled_from(["layers", "layers", "params"]))]
        if not lines:
            continue
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "value", "value", "swap", "insert", "rename", "key"]))
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "insert":
            lines.insert(i, f"{draw(st.sampled_from(KEYS))}={draw(st.sampled_from(VALUES))}")
        elif op == "rename" and lines[i].startswith("["):
            lines[i] = f"[{draw(st.sampled_from(['data', 'labels', 'conv1', 'probs', 'x', 'fc10', 'forward']))}]"
        elif "=" in lines[i]:
            key, value = lines[i].split("=", 1)
            if op == "key":
                lines[i] = f"{draw(st.sampled_from(KEYS))}={value}"
            else:
                other = draw(st.sampled_from(lines)).split("=", 1)[-1]  # sometimes another line's value
                lines[i] = f"{key}={draw(st.sampled_from(VALUES + [other]))}"
    params = None if draw(st.integers(0, 9)) == 0 else "\n".join(files["params"])
    return "\n".join(files["layers"]), params, crop


@FUZZ
@given(mutated_files())
def test_mutated_valid_files_build_or_raise_config_error(case: tuple[str, str | None, int]) -> None:
    check(*case)


@FUZZ
@given(st.text(max_size=400), st.one_of(st.none(), st.text(max_size=200)), st.sampled_from([24, 32]))
def test_random_text_raises_only_config_error(layers: str, params: str | None, crop: int) -> None:
    check(layers, params, crop)


@st.composite
def random_sections(draw: st.DrawFn) -> str:
    """Well-formed files of random sections, keys and values: reaches the builder, not just the parser."""
    out = []
    for name in draw(st.lists(st.sampled_from(["data", "labels", "conv1", "pool1", "fc10", "probs", "logprob"]),
                              min_size=1, max_size=7, unique=True)):
        out.append(f"[{name}]")
        out.append(f"type={draw(st.sampled_from(sorted(LAYER_KEYS)))}")
        for _ in range(draw(st.integers(0, 6))):
            out.append(f"{draw(st.sampled_from(KEYS))}={draw(st.sampled_from(VALUES))}")
    return "\n".join(out)


@FUZZ
@given(random_sections(), st.sampled_from([None, PARAMS, ""]))
def test_random_sections_raise_only_config_error(layers: str, params: str | None) -> None:
    check(layers, params, 24)


@pytest.mark.parametrize("layers,params,crop", BASES)
def test_fuzz_bases_are_valid(layers: str, params: str, crop: int) -> None:
    model = build_cfg_model(layers, params, "layers.cfg", "params.cfg", crop=crop)
    assert model(torch.randn(1, 3, crop, crop)).shape == (1, 10)
