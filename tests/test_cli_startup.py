"""The command line answers --help and usage errors without importing torch (issue 13: under 1 s).

Startup *time* is measured by benchmarks/cli_startup.py, not here; these tests check the cause (which
modules get imported), which does not depend on how busy the machine is.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "torch._dynamo", "numpy")


def _modules_after(code: str) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter and report which heavy modules it left in sys.modules."""
    probe = code + "\nimport json, sys\nprint(json.dumps({m: m in sys.modules for m in %r}))" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_torch() -> None:
    loaded = _modules_after("from localconv.cli.main import build_parser\nbuild_parser()")
    assert loaded == {m: False for m in HEAVY}


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["doctor", "--help"], ["--version"],
                                  ["train", "--no-such-option"], ["predict", "run", "x.png", "--top-k", "0"],
                                  ["doctor", "--device", "cpu"], ["doctor", "--model", "m", "--cfg", "c.cfg"],
                                  ["summary"]])
def test_help_version_and_usage_errors_import_no_torch(argv: list[str]) -> None:
    code = ("import sys\nfrom localconv.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
    loaded = _modules_after(code)
    assert not loaded["torch"], f"localconv {' '.join(argv)} imported torch"


def test_import_localconv_and_its_layers_do_not_import_dynamo() -> None:
    # torch._dynamo costs about a second on import; only torch.compile users should pay for it
    loaded = _modules_after("import localconv\nlocalconv.LocallyConnected2d\nlocalconv.create_model('tf-tutorial')\n"
                            "import localconv.nn, localconv.models, localconv.configs, localconv.training.engine, "
                            "localconv.diagnostics.doctor")
    assert loaded["torch"]  # the probe did reach the layers
    assert not loaded["torch._dynamo"]


def test_import_localconv_is_lazy() -> None:
    assert _modules_after("import localconv") == {m: False for m in HEAVY}
