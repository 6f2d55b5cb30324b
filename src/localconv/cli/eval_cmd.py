"""``localconv eval``: test accuracy (precision@1) of a run, per class, with a confusion matrix."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import LocalconvError
from ..metrics import format_accuracy
from .common import add_data_args, add_device_arg, positive_int

TOP_K = 5  # eval reports top-5 accuracy when the run has more classes than this


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run's averaged weights on the test set")
    p.add_argument("run", type=Path, help="run folder written by `localconv train`")
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--weights", choices=("ema", "raw", "best"), default="ema",
                   help="averaged (default, falls back to raw if the recipe keeps none), raw, or best: the weights "
                        "that evaluated best during training (on its evaluation split: compare on another one)")
    views = p.add_mutually_exclusive_group()
    views.add_argument("--multiview", action="store_true",
                       help="average softmax over 10 views (4 corners + centre, and mirrors)")
    views.add_argument("--flip", action="store_true", help="average softmax over the centre view and its mirror")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="test set, or the run's own validation split")
    p.add_argument("--limit-test", type=positive_int, default=None, help="evaluate on N test images only")
    p.add_argument("--batch-size", type=positive_int, default=1000, help="images per evaluation batch")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: as the run was trained, on CUDA and on CPUs with native bf16 (AMX or "
                        "AVX512-BF16); float32 on other CPUs)")
    p.add_argument("--confusion", type=Path, default=None, help="write the confusion matrix (.csv or .png)")
    p.add_argument("--reliability", type=Path, default=None, help="write a reliability diagram (.png)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit a softmax temperature on the run's validation split and store it in the run, "
                        "so that eval/predict probabilities are calibrated")
    p.add_argument("--json", action="store_true", help='print {"accuracy": ..., "n": ..., ...} only')
    p.set_defaults(func=run)


def write_confusion(path: Path, confusion, classes: list[str]) -> None:  # noqa: ANN001
    if path.suffix.lower() == ".png":
        from ..reports.plots import plot_confusion

        plot_confusion(confusion, classes, path)
        return
    if path.suffix.lower() != ".csv":
        raise LocalconvError(f"--confusion {path}: use a .csv or .png file name")
    lines = ["true\\pred," + ",".join(classes)]
    lines += [classes[i] + "," + ",".join(str(int(v)) for v in row) for i, row in enumerate(confusion.tolist())]
    path.write_text("\n".join(lines) + "\n")


def run(args: argparse.Namespace) -> int:
    from ..data.loader import select_splits
    from ..training.checkpoint import load_run
    from ..training.engine import native_bf16, resolve_device
    from ..training.evaluate import evaluate
    from ..training.precision import eval_amp
    from .common import data_options, load_data, resolved_path, run_classes

    if args.limit_test is not None and args.split == "val":  # it was ignored: the whole split was measured
        raise LocalconvError(f"--limit-test {args.limit_test}: limits the test split; --split val evaluates the "
                             "run's whole validation split")
    if args.confusion is not None:  # a bad output path is reported before the evaluation, not after
        if args.confusion.suffix.lower() not in (".csv", ".png"):
            raise LocalconvError(f"--confusion {args.confusion}: use a .csv or .png file name")
        if not args.confusion.absolute().parent.is_dir():
            raise LocalconvError(f"--confusion {args.confusion}: {args.confusion.parent} is not an existing folder")
    if args.reliability is not None and (args.reliability.suffix.lower() != ".png"
                                         or not args.reliability.absolute().parent.is_dir()):
        raise LocalconvError(f"--reliability {args.reliability}: give a .png file in an existing folder")
    for option, path in (("--confusion", args.confusion), ("--reliability", args.reliability)):
        if path is not None and path.suffix.lower() == ".png":  # plots need matplotlib: checked before any work
            from ..optional_deps import require

            require("matplotlib.pyplot", f"{option} {path}", "matplotlib")
    device = resolve_device(args.device)
    model, meta = load_run(args.run, which=args.weights, device=str(device))
    classes = run_classes(model, meta, args.run)
    data_args = meta.get("data", {}).get("args", {})
    data = load_data(args.data or data_args.get("data"), args.cache_dir,
                     progress=not args.json and sys.stderr.isatty(),  # no bar frames in a log
                     options=data_options(args, data_args),
                     test_only_for=classes if args.split == "test" and not args.calibrate else None)
    from ..data.channels import data_with_channels

    data = data_with_channels(data, getattr(model, "in_chans", 3))  # a --in-chans 1 run reads the images' luma
    shown = args.data or data_args.get("data") or data.source  # without --data: the run's data, or the download
    if list(data.classes) != classes:
        raise LocalconvError(f"{shown}: classes {data.classes} differ from the run's {classes}")
    from ..data.class_folders import DESCRIPTION as CLASS_FOLDERS

    # the run's own held-out images: its validation split, and the test split drawn from its own class folders
    recorded = meta["data"].get("identity")
    val_folder = data_args.get("val_folder") and isinstance(recorded, dict) and recorded.get("val") is not None
    parts = ("val",) if (args.split == "val" or args.calibrate) and (data_args.get("val_split") or val_folder) \
        else ()
    # (--data naming the run's own folder too: images added there since would move into the test split)
    own_folder = not args.data or resolved_path(args.data, "--data") == data_args.get("data")
    if args.split == "test" and own_folder and data.source.startswith(CLASS_FOLDERS):
        parts += ("test",)
    if parts:
        from ..data.identity import check_identity

        held = " and ".join({"val": "validation split", "test": "test split"}[part] for part in parts)
        current = None
        if val_folder and "val" in parts:  # the tree's own val/ images, the run's validation split
            from ..data.identity import identity_record, with_val_folder
            from ..data.val_folder import val_folder_images

            current = with_val_folder(identity_record(data, 0, None, parts=parts[1:]), *val_folder_images(
                args.data or data_args.get("data"), data, data_args.get("resize"), getattr(model, "in_chans", 3),
                args.cache_dir))
        checked = check_identity(recorded, data, parts, data_args.get("val_split") or 0,
                                 data_args.get("limit_train"), shown=shown, current=current,
                                 consequence=f"its {held} would not be the images run {args.run} held out; use the "
                                             "data the run was made with")
        if checked is None:
            print(f"note: {args.run} records no digest of its {held} (a run of an older localconv); those images "
                  "cannot be checked to be the ones it held out", file=sys.stderr)
    data_path = args.data or data_args.get("data")
    if args.split == "val" and data_args.get("val_folder"):  # the tree's own val/ folder (data/val_folder.py)
        import torch

        from ..data.val_folder import val_folder_images

        images, labels = map(torch.from_numpy, val_folder_images(data_path, data, data_args.get("resize"),
                                                                 getattr(model, "in_chans", 3), args.cache_dir))
    elif args.split == "val":
        if not data_args.get("val_split"):
            raise LocalconvError(f"--split val: run {args.run} was trained without --val-split")
        splits = select_splits(data.train_images, data.train_labels, data.test_images, data.test_labels,
                               limit_train=1, val_split=data_args["val_split"])
        images, labels = splits.val_images, splits.val_labels
    else:
        from ..data.val_folder import has_test_folder

        if data_args.get("val_folder") and not has_test_folder(data_path):
            raise LocalconvError(f"{shown}: has no test/ folder; its val/ images are run {args.run}'s validation "
                                 "split: use --split val")
        # one test image stands in for the training images, which a test evaluation does not read
        splits = select_splits(data.test_images[:1], data.test_labels[:1], data.test_images, data.test_labels,
                               limit_test=args.limit_test)
        images, labels = splits.test_images, splits.test_labels
    views = "multiview" if args.multiview else "flip" if args.flip else "single"
    amp = eval_amp(args.amp, meta, device.type, native_bf16(device))
    calibration = None
    if args.calibrate:
        calibration = _calibrate(args, model, data, data_args, device, images, labels, views, amp)
    bar = f"eval {args.split}" if not args.json and sys.stderr.isatty() else None  # no bar in logs
    result = evaluate(model, images.to(device), labels.to(device), views=views, batch_size=args.batch_size, amp=amp,
                      progress=bar)
    per_class = result.per_class_accuracy()
    out = {"accuracy": result.accuracy, "n": result.n, "split": args.split, "views": views,
           "weights": args.weights if args.weights != "ema" or "ema" in meta["files"] else "raw",
           "run": str(args.run),
           "model": meta["model"].get("name") or "cfg", "step": meta["step"], "amp": amp,
           "per_class": dict(zip(classes, per_class))}
    if len(classes) > TOP_K:  # with few classes top-5 says nothing (5 of 5 is always right)
        hits = (result.probs.topk(TOP_K, dim=1).indices == result.labels[:, None]).any(1)
        out["top5_accuracy"] = float(hits.double().mean()) if result.n else float("nan")
    if args.weights == "best":  # the step whose weights these are
        out["step"] = meta.get("best_step")
    from ..reports.calibration import expected_calibration_error

    out["ece"] = expected_calibration_error(result.probs, result.labels)
    out["temperature"] = float(model.temperature)
    if calibration is not None:
        out["calibration"] = calibration
    if args.reliability:
        from ..reports.calibration import calibration_bins
        from ..reports.plots import plot_reliability

        plot_reliability(calibration_bins(result.probs, result.labels), args.reliability, out["ece"],
                         title=f"{out['model']}, {args.split} split")
        out["reliability_file"] = str(args.reliability)
    if args.confusion:
        try:
            write_confusion(args.confusion, result.confusion(len(classes)), classes)
        except OSError as exc:
            raise LocalconvError(f"--confusion {args.confusion}: cannot write ({exc.strerror or exc})") from None
        out["confusion_file"] = str(args.confusion)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.run}: {args.split} precision@1 = {format_accuracy(result.accuracy)} on {result.n} images "
          f"({views} view{'s' if views != 'single' else ''}, {out['weights']} weights, step {out['step']})")
    if "top5_accuracy" in out:
        print(f"  top-5 accuracy {format_accuracy(out['top5_accuracy'])}")
    for name, acc in zip(classes, per_class):
        print(f"  {name:<12} {format_accuracy(acc):>7}")
    if calibration is not None:
        print(f"temperature {calibration['temperature']:.3f} fitted on {calibration['n_val']} validation images "
              f"and stored in {args.run}; expected calibration error {calibration['ece_before']:.4f} -> "
              f"{out['ece']:.4f}")
    else:
        t = f" (temperature {out['temperature']:.3f})" if out["temperature"] != 1.0 else ""
        print(f"expected calibration error: {out['ece']:.4f}{t}")
    if args.reliability:
        print(f"reliability diagram written to {args.reliability}", file=sys.stderr)
    if args.confusion:
        print(f"confusion matrix written to {args.confusion}", file=sys.stderr)
    return 0


def _calibrate(args, model, data, data_args, device, images, labels, views, amp) -> dict:  # noqa: ANN001
    """Fit the temperature on the run's validation split, store it in run.json and set it on ``model``;
    returns the fit and the ECE of the evaluated images before it."""
    from ..data.loader import select_splits
    from ..reports.calibration import centre_view_logits, expected_calibration_error, fit_temperature
    from ..training.checkpoint import update_meta
    from ..training.evaluate import evaluate

    if data_args.get("val_folder"):  # the tree's own val/ folder is the run's validation split
        import torch

        from ..data.val_folder import val_folder_images

        val_images, val_labels = map(torch.from_numpy, val_folder_images(
            args.data or data_args.get("data"), data, data_args.get("resize"), getattr(model, "in_chans", 3),
            args.cache_dir))
    elif not data_args.get("val_split"):
        raise LocalconvError(f"--calibrate: run {args.run} was trained without --val-split (or a val/ folder); the "
                             "temperature is fitted on held-out training images, never on the test set")
    else:
        val = select_splits(data.train_images, data.train_labels, data.test_images[:1], data.test_labels[:1],
                            limit_train=1, val_split=data_args["val_split"])
        val_images, val_labels = val.val_images, val.val_labels
    temperature = fit_temperature(centre_view_logits(model, val_images.to(device)), val_labels)
    model.temperature.fill_(1.0)
    before = evaluate(model, images.to(device), labels.to(device), views=views, batch_size=args.batch_size, amp=amp)
    model.temperature.fill_(temperature)
    update_meta(args.run, temperature=temperature)
    return {"temperature": temperature, "n_val": int(val_labels.numel()),
            "ece_before": expected_calibration_error(before.probs, before.labels)}
