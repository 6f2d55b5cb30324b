"""The ``localconv`` command: train, evaluate, diagnose and compare classic CIFAR-10 convnets.

Each subcommand lives in ``localconv.cli.<name>_cmd`` with ``add_parser(subparsers)`` and ``run(args)``.
The parser is built without importing torch (the modules import it inside ``run``), so ``--help``,
``--version`` and usage errors answer at once; tests/test_cli_startup.py keeps it that way.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from .. import __version__
from ..errors import LocalconvError
from .common import HelpFormatter

# Subcommand modules (localconv.cli.<name>_cmd); each defines add_parser(subparsers) and run(args) -> int.
COMMANDS = [
    "models",
    "train",
    "eval",
    "predict",
    "summary",
    "doctor",
    "compare",
]

DESCRIPTION = ("Classic CIFAR-10 convnets (the TensorFlow tutorial model, cuda-convnet networks with\n"
               "locally connected layers): train them faithfully, evaluate and use them, and find out\n"
               "why one does not learn.")
EPILOG = ("examples:\n"
          "  localconv models\n"
          "  localconv train --model tf-tutorial --data DATA --out runs/tf1\n"
          "  localconv eval runs/tf1 --data DATA\n"
          "  localconv predict runs/tf1 cat.png\n"
          "  localconv doctor --model tf-tutorial --conv2-std 1e-4 --data DATA\n"
          "\n'localconv COMMAND --help' describes each command.")


class _CommandParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localconv", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # every subcommand shows its options' defaults, once (see common.HelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"localconv.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LocalconvError as exc:
        print(f"localconv {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
