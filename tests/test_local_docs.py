"""The examples of docs/local_layer.md and of the README's locally connected section run and hold.

Each ``python`` block carries its claims as asserts; the blocks of one file run in order in one
namespace (later blocks use earlier names).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def readme_local_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("## Locally connected layers")
    return text[start:text.index("\n## ", start + 3)]


@pytest.mark.parametrize("source", ["docs/local_layer.md", "README.md"])
def test_examples_run(source: str, capsys: pytest.CaptureFixture) -> None:
    text = readme_local_section() if source == "README.md" else (REPO / source).read_text()
    blocks = python_blocks(text)
    assert blocks, f"no python example in {source}"
    torch._dynamo.reset()
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, source, "exec"), namespace)  # noqa: S102 (our own documentation)
    if source != "README.md":
        assert "init_std must be a finite number >= 0, got -1" in capsys.readouterr().out
