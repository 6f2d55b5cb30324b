"""The ``localconv`` command: train, evaluate, diagnose and compare classic CIFAR-10 convnets.

Each subcommand lives in ``localconv.cli.<name>_cmd`` with ``add_parser(subparsers)`` and ``run(args)``.
The parser is built without importing torch (the modules import it inside ``run``), so ``--help``,
``--version`` and usage errors answer at once; tests/test_cli_startup.py keeps it that way.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from .. import __version__
from ..errors import LocalconvError
from .common import HelpFormatter
from .stop_signals import StoppedBeforeTraining

# Subcommand modules (localconv.cli.<name>_cmd); each defines add_parser(subparsers) and run(args) -> int.
COMMANDS = [
    "models",
    "train",
    "eval",
    "predict",
    "export",
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


def _subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[name]


# What a shell reports for a tool stopped by SIGPIPE (128 + 13), e.g. `localconv models | head -1`.
EXIT_STDOUT_CLOSED = 141


def _stdout_closed() -> int:
    """The reader of stdout has gone (``| head``): stop quietly, as other command-line tools do. stdout is
    pointed at /dev/null so that the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to redirect
        pass
    return EXIT_STDOUT_CLOSED


def _tell_torchrun(line: str) -> None:
    """Under torchrun, leave the error line in the worker's error file: torchrun's failure report then shows it
    instead of '<N/A>' (its format: torch.distributed.elastic.multiprocessing.errors)."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path or os.path.exists(path):
        return
    import json
    import time

    try:
        with open(path, "w") as fh:
            json.dump({"message": line, "timestamp": int(time.time())}, fh)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # train --nproc-per-node starts workers with it
    if unknown:  # the subcommand's own usage, not the top-level one, says what it accepts
        _subcommand_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at the interpreter's exit
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except LocalconvError as exc:
        # under torchrun every process meets the same input error: rank 0 says it once (the others' exit codes
        # appear in torchrun's own report); a failed peer is reported by every process that saw it
        line = f"localconv {args.command}: error: {exc}"
        # (under train --nproc-per-node the launcher prints one line for all workers, from their error files)
        if (os.environ.get("RANK", "0") == "0" or getattr(exc, "every_rank", False)) and not (
                os.environ.get("LOCALCONV_LAUNCHER") and os.environ.get("TORCHELASTIC_ERROR_FILE")):
            print(line, file=sys.stderr)
        _tell_torchrun(line)
        return exc.exit_code
    except StoppedBeforeTraining as stop:  # SIGINT/SIGTERM while train read its data: nothing was saved
        if os.environ.get("RANK", "0") == "0":
            print(f"localconv {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
