"""Arguments and helpers shared by several subcommands (model choice, data, device)."""
from __future__ import annotations

import argparse
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


def check_model_choice(args: argparse.Namespace) -> None:
    """Exactly one of --model and --cfg; torch-free, so that a command can refuse this before its imports."""
    if args.model and args.cfg:
        raise LocalconvError("give either --model or --cfg, not both")
    if not args.model and not args.cfg:
        raise LocalconvError("no model: give --model NAME (see `localconv models`) or --cfg LAYERS.cfg")


def model_from_args(args: argparse.Namespace) -> Classifier:
    """Build the model named by --model (with options) or by --cfg/--params."""
    check_model_choice(args)
    from ..models.registry import create_model

    if args.cfg:
        from ..configs import load_cfg_model

        return load_cfg_model(args.cfg, args.params, crop=args.crop or 24)
    kwargs: dict[str, Any] = {}
    for key in ("conv1_std", "conv2_std"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    if args.crop is not None:
        kwargs["crop"] = args.crop
    return create_model(args.model, **kwargs)


def fit_model_to_classes(model: Classifier, classes: list[str]) -> None:
    """Give ``model`` the data's classes: a built-in model's head follows their count
    (``reset_classifier``); a cfg file's output layer must already match (ConfigError at its line)."""
    if len(classes) < 2:
        raise LocalconvError(f"the data has {len(classes)} class(es) ({', '.join(classes)}); a classifier "
                             "needs 2 or more")
    if getattr(model, "model_name", None):
        if model.num_classes != len(classes):
            model.reset_classifier(len(classes))
    else:
        model.check_classes(classes)
    model.classes = list(classes)


def run_classes(model: Classifier, meta: dict[str, Any], run: Path) -> list[str]:
    """The class names of a run, checked against its model's outputs (a hand-edited run.json may differ)."""
    from ..errors import CheckpointError

    classes = list(meta.get("classes") or [])
    if len(classes) != model.num_classes:
        raise CheckpointError(f"{run / 'run.json'}: field 'classes' names {len(classes)} classes but the model "
                              f"gives {model.num_classes} scores; was the file edited?")
    return classes


# Data options that change what is read: recorded in a run's data args and reused by eval/resume.
DATA_OPTION_KEYS = ("dataset", "labels", "resize")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="CIFAR-10 python or binary release, CIFAR-100 python release (.tar.gz or "
                                       "folder), an image-folder tree, or a folder with train.tar.gz/test.tar.gz; "
                                       "default: download the release named by --dataset")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default=None,
                        help="official release downloaded into the cache when --data is omitted (default cifar10)")
    parser.add_argument("--labels", choices=("fine", "coarse"), default=None,
                        help="CIFAR-100 only: the 100 fine classes (default) or the 20 coarse superclasses")
    parser.add_argument("--resize", choices=("none", "shorter-side"), default=None,
                        help="image trees: 'none' (default) refuses images that are not 32x32; 'shorter-side' "
                             "scales the shorter side to 32 and keeps the centre 32x32 crop")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where decoded images and downloads are cached (default $LOCALCONV_CACHE or "
                             "~/.cache/localconv)")


def data_options(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """--dataset/--labels/--resize as given, else as ``recorded`` (a run's data args), else None (defaults)."""
    recorded = recorded or {}
    return {key: getattr(args, key, None) if getattr(args, key, None) is not None else recorded.get(key)
            for key in DATA_OPTION_KEYS}


def load_data(data: str | None, cache_dir: Path | None, progress: bool = True,
              options: dict[str, Any] | None = None):  # noqa: ANN201
    """The dataset at ``data`` (None: download), read with ``options`` (keys of DATA_OPTION_KEYS, None = default)."""
    from ..data import load_cifar10

    options = options or {}
    return load_cifar10(data, cache_dir=cache_dir, progress=progress, labels=options.get("labels"),
                        resize=options.get("resize") or "none", dataset=options.get("dataset") or "cifar10")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
