"""``localconv summary``: per-layer output shapes, parameters and multiply-adds of a model."""
from __future__ import annotations

import argparse
import json

from .common import add_model_args, check_model_choice, model_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="per-layer table: output shape, parameters, multiply-adds",
                       description="Per-layer output shape, parameters and multiply-adds (per image, forward) "
                                   "of a built-in model (--model) or a cuda-convnet layer file (--cfg; --params "
                                   "is optional here: the structure does not depend on it).")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_model_choice(args)  # before the imports below (torch): a usage error answers at once
    from ..reports.summary import format_summary, summarize

    if args.cfg is not None and args.model is None:
        from ..configs import load_cfg_model

        model = load_cfg_model(args.cfg, args.params, crop=args.crop or 24, require_params=False)
        name = str(args.cfg)
    else:
        model = model_from_args(args)
        name = args.model
    summary = summarize(model, name)
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0
