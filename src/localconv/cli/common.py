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


def plural(count: float, noun: str) -> str:
    """``1 epoch``, ``2 epochs``, ``0.5 epochs`` (a count as ``:g`` prints it)."""
    return f"{count:g} {noun}{'' if count == 1 else 's'}"


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
                       help="TF models: conv2 init std (1e-4: the 2016 init bug; see tf-tutorial-2016)")
    group.add_argument("--softmax-output", action=argparse.BooleanOptionalAction, default=None,
                       help="TF models: a softmax inside the model under the loss's own, the deliberate "
                            "exercise-1 bug (default: on for tf-tutorial-2016 only)")
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

        if getattr(args, "in_chans", None) not in (None, 3):  # train's --in-chans
            raise LocalconvError(f"--in-chans {args.in_chans}: a cfg model's data layer fixes 3 channels")
        return load_cfg_model(args.cfg, args.params, crop=args.crop or 24)
    kwargs: dict[str, Any] = {}
    for key in ("conv1_std", "conv2_std", "softmax_output", "in_chans"):
        if getattr(args, key, None) is not None:
            kwargs[key] = getattr(args, key)
    if args.crop is not None:
        kwargs["crop"] = args.crop
    from ..errors import ModelError

    try:
        return create_model(args.model, **kwargs)
    except ModelError as exc:  # an option of another family ("... got an unexpected keyword argument 'crop'")
        option = next((key for key in kwargs if f"argument '{key}'" in str(exc)), None)
        if option is None:
            raise
        scope = {"crop": "cfg models (--cfg and the cc-* models)"}.get(option, "the tf-tutorial family")
        raise LocalconvError(f"--{option.replace('_', '-')} applies to {scope}, not to --model {args.model}") from None


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
    from ..data.files import is_utf8

    for index, name in enumerate(classes):  # a "\udcff" escape in the JSON; reports write names as UTF-8
        if not is_utf8(name):
            raise CheckpointError(f"{run / 'run.json'}: classes[{index}] = {name!r} is not valid UTF-8; was the "
                                  "file edited?")
    return classes


# Data options that change what is read: recorded in a run's data args and reused by eval/resume.
DATA_OPTION_KEYS = ("dataset", "labels", "resize", "test_split")


def named_path(text: str) -> str:
    """argparse type of --data / --cache-dir: a non-empty path (``''`` would silently mean the current folder,
    as ``--out ''`` is refused for)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file or folder, got an empty path (use . for the current "
                                         "folder)")
    return text


def resolved_path(path: str | Path, option: str) -> str:
    """``path`` made absolute with links resolved (as a run records it); a link loop is one line, not Python's
    RuntimeError."""
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: "Symlink loop from ..." (Python < 3.13)
        raise LocalconvError(f"{option} {path}: cannot read ({exc})") from None


def add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=named_path,
                        help="CIFAR-10 python or binary release, CIFAR-100 python release (.tar.gz or "
                             "folder), an image-folder tree, or a folder with train.tar.gz/test.tar.gz; "
                             "default: download the release named by --dataset")
    parser.add_argument("--dataset", choices=("cifar10", "cifar100"), default=None,
                        help="official release downloaded into the cache when --data is omitted (default cifar10)")
    parser.add_argument("--labels", choices=("fine", "coarse"), default=None,
                        help="CIFAR-100 only: the 100 fine classes (default) or the 20 coarse superclasses")
    parser.add_argument("--resize", choices=("none", "shorter-side"), default=None,
                        help="image trees: 'none' (default) refuses images that are not 32x32; 'shorter-side' "
                             "scales the shorter side to 32 and keeps the centre 32x32 crop")
    parser.add_argument("--test-split", type=_fraction, default=None, metavar="FRACTION",
                        help="a folder of class folders (<class>/*, no train/ and test/): the fraction of each "
                             "class held out as test images, drawn with a fixed seed; the run records it and eval "
                             "uses the same split (default 0.2)")
    parser.add_argument("--cache-dir", type=lambda text: Path(named_path(text)), default=None,
                        help="where decoded images and downloads are cached (default $LOCALCONV_CACHE or "
                             "~/.cache/localconv)")


def data_options(args: argparse.Namespace, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """--dataset/--labels/--resize as given, else as ``recorded`` (a run's data args), else None (defaults)."""
    recorded = recorded or {}
    given, trained = getattr(args, "test_split", None), recorded.get("test_split")
    if given is not None and trained is not None and given != trained:
        # another split of the run's class folders would put some of its training images in the test set
        raise LocalconvError(f"--test-split {given:g}: the run was trained with --test-split {trained:g} (its "
                             "test images are those); omit --test-split")
    return {key: getattr(args, key, None) if getattr(args, key, None) is not None else recorded.get(key)
            for key in DATA_OPTION_KEYS}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.2, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction between 0 and 1 (e.g. 0.2), got {text}")
    return value


def load_data(data: str | None, cache_dir: Path | None, progress: bool = True,
              options: dict[str, Any] | None = None, test_only_for: list[str] | None = None):  # noqa: ANN201
    """The dataset at ``data`` (None: download), read with ``options`` (keys of DATA_OPTION_KEYS, None = default);
    ``test_only_for``: a run's classes, when only the test split is needed (eval: an image tree's training images
    are then not read, data/test_split.py)."""
    from ..data import load_cifar10

    options = options or {}
    if data is not None and options.get("dataset"):  # --dataset cifar100 --data CIFAR10_FOLDER is refused
        from ..data.dataset_option import check_dataset_option

        check_dataset_option(data, options["dataset"], options.get("labels"), options.get("resize"))
    read = {"labels": options.get("labels"), "resize": options.get("resize") or "none",
            "dataset": options.get("dataset") or "cifar10", "test_split": options.get("test_split")}
    if test_only_for is not None:
        from ..data.test_split import load_test_split

        return load_test_split(data, test_only_for, cache_dir, progress, **read)
    return load_cifar10(data, cache_dir=cache_dir, progress=progress, **read)


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
