"""Arguments and helpers shared by several subcommands (model choice, data, device)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LocalconvError

if TYPE_CHECKING:  # the parser is built without torch (see cli/main.py); models import it
    from ..models.base import Classifier


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help, once: not when the help already speaks of its default
    ("default: the recipe's"), and not for defaults that say nothing (None, False, an empty value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        says_nothing = default is None or default is False or default == "" or default == argparse.SUPPRESS
        flag_on = action.nargs == 0 and default is True  # store_false: "--no-x" is described by its help
        if "default" in text.lower() or says_nothing or flag_on or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _int_at_least(minimum: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(1, text)


def non_negative_int(text: str) -> int:
    return _int_at_least(0, text)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("model (one of --model or --cfg)")
    group.add_argument("--model", help="built-in model name (see `localconv models`)")
    group.add_argument("--cfg", type=Path, help="cuda-convnet layer-definition file")
    group.add_argument("--params", type=Path, help="cuda-convnet layer-parameter file (with --cfg)")
    group.add_argument("--crop", type=int, choices=(24, 32), default=None,
                       help="input crop side for --cfg models (24 = random 24x24 crops, 32 = whole images)")
    group.add_argument("--conv1-std", type=positive_float, default=None, help="TF models: conv1 init std")
    group.add_argument("--conv2-std", type=positive_float, default=None,
                       help="TF models: conv2 init std (1e-4 reproduces the 2016 init bug)")
    parser.set_defaults(_model_required=required)


def model_from_args(args: argparse.Namespace) -> Classifier:
    """Build the model named by --model (with options) or by --cfg/--params."""
    from ..models.registry import create_model

    if args.model and args.cfg:
        raise LocalconvError("give either --model or --cfg, not both")
    if args.cfg:
        from ..configs import load_cfg_model

        return load_cfg_model(args.cfg, args.params, crop=args.crop or 24)
    if not args.model:
        raise LocalconvError("no model: give --model NAME (see `localconv models`) or --cfg LAYERS.cfg")
    kwargs: dict[str, Any] = {}
    for key in ("conv1_std", "conv2_std"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    if args.crop is not None:
        kwargs["crop"] = args.crop
    return create_model(args.model, **kwargs)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="CIFAR-10: python or binary release (.tar.gz or folder), an image-folder "
                                       "tree, or a folder with train.tar.gz/test.tar.gz; default: download")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where decoded images and downloads are cached (default $LOCALCONV_CACHE or "
                             "~/.cache/localconv)")


def load_data(data: str | None, cache_dir: Path | None, progress: bool = True):  # noqa: ANN201
    from ..data import load_cifar10

    return load_cifar10(data, cache_dir=cache_dir, progress=progress)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
