"""Every option of every command explains itself, and states its default once (issue 13)."""
from __future__ import annotations

import argparse

import pytest

from localconv.cli.main import COMMANDS, build_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_command_is_listed() -> None:
    assert set(_subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help(command: str) -> None:
    parser = _subparsers()[command]
    missing = [a.option_strings[0] if a.option_strings else a.dest
               for a in parser._actions if not (a.help and a.help.strip()) and a.help != argparse.SUPPRESS]
    assert not missing, f"localconv {command}: no help text for {missing}"


@pytest.mark.parametrize("command", COMMANDS)
def test_no_default_is_printed_twice(command: str) -> None:
    text = _subparsers()[command].format_help()
    for chunk in text.split("\n  -")[1:]:  # one chunk per option
        assert chunk.count("(default") <= 1, f"localconv {command}: default printed twice in\n  -{chunk}"


def test_top_level_help_describes_the_tool_and_has_version(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "CIFAR-10" in text and "one module per subcommand" not in text
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--version"])
    assert exc.value.code == 0
    from localconv import __version__

    assert capsys.readouterr().out.strip() == f"localconv {__version__}"
