"""``localconv doctor``: train briefly while watching every layer, then name what is wrong.

Exit code 0 when healthy, 1 when a problem was found, 2 on bad input.
"""
from __future__ import annotations

import argparse
import json

from .common import (add_data_args, add_device_arg, add_model_args, check_model_choice, data_options,
                     fit_model_to_classes, model_from_args, non_negative_int, positive_float, positive_int)
from .train_options import seed_value


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..diagnostics.options import DoctorOptions

    d = DoctorOptions()
    p = sub.add_parser(
        "doctor", help="train briefly while watching every layer; report problems (exit 1) or healthy (exit 0)",
        description="Train a few hundred steps on a subset of the data with the model's own learning parameters, "
                    "watching every layer (activations, dead units, gradients, update sizes), then print a verdict: "
                    "each problem with its layer, a plain-language cause and a fix. Exit code 0: healthy, 1: "
                    "problems found, 2: bad input.")
    add_model_args(p)
    add_data_args(p)
    add_device_arg(p)
    p.add_argument("--steps", type=positive_int, default=d.steps, help="training steps to watch")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="minibatch size")
    p.add_argument("--limit-train", type=positive_int, default=d.limit_train, help="training images used")
    p.add_argument("--val-images", type=non_negative_int, default=d.val_images,
                   help="training images held out to report an accuracy")
    p.add_argument("--every", type=positive_int, default=d.every, help="record layer statistics every N steps")
    p.add_argument("--recipe", choices=("original", "fast"), default=d.recipe,
                   help="training procedure whose learning parameters are checked")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate (TF models, fast recipe)")
    p.add_argument("--lr-scale", type=positive_float, default=1.0, help="multiply every learning rate")
    p.add_argument("--seed", type=seed_value, default=0, help="seed of the initialization and of the data order")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads for the run (default: one per core that other processes leave idle, "
                        "measured while the data loads; at least 1)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..diagnostics.options import DoctorOptions

    options = DoctorOptions(steps=args.steps, batch_size=args.batch_size, limit_train=args.limit_train,
                            val_images=args.val_images, every=args.every, recipe=args.recipe, lr=args.lr,
                            lr_scale=args.lr_scale, seed=args.seed, device=args.device, threads=args.threads or 0,
                            progress=args.progress)
    options.validate()  # usage errors first: they answer before torch is imported
    check_model_choice(args)
    import torch

    from ..data import load_training_subset
    from ..diagnostics.doctor import doctor_images, run_doctor
    from ..diagnostics.idle_cores import IdleCores

    idle = IdleCores()  # measured while the data loads: how busy the other processes keep the machine
    torch.manual_seed(args.seed)
    model = model_from_args(args)
    # only the ~6,000 images the run uses are decoded on a cold cache (a warm one is used as it is)
    read = data_options(args)
    data = load_training_subset(lambda n: doctor_images(n, options), args.data, args.cache_dir,
                                progress=args.progress, labels=read["labels"], resize=read["resize"] or "none",
                                dataset=read["dataset"] or "cifar10")
    fit_model_to_classes(model, data.classes)  # the head follows the data's class count, as in train
    if not options.threads:
        options.threads = idle.threads(torch.get_num_threads())
    report = run_doctor(model, data.images, data.labels, options, classes=data.classes, subset_of=data.total)
    if args.json:
        print(json.dumps(report.to_dict(), allow_nan=False))
    else:
        print(report.format())
    return report.exit_code
