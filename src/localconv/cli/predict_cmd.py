"""``localconv predict``: top-k classes with softmax probabilities for image files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import add_device_arg, positive_int, run_classes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("images", nargs="+", type=Path,
                   help="image files, prepared as training prepares them (data.prepare_image): EXIF orientation "
                        "applied; any size: the shorter side is scaled to 32 and the centre 32x32 kept")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image, most probable first")
    p.add_argument("--views", choices=("single", "flip", "multiview"), default="single",
                   help="average the softmax over the centre view (single), it and its mirror (flip), or 10 "
                        "views: 4 corners + centre and their mirrors (multiview)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema",
                   help="averaged (ema; raw if the recipe keeps none) or raw weights")
    p.add_argument("--json", action="store_true", help="print one JSON list: per image, its top-k classes and "
                                                       "probabilities")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data import read_image
    from ..metrics import format_accuracy
    from ..training.checkpoint import load_run
    from ..training.engine import resolve_device
    from ..training.evaluate import predict_probs

    images = np.stack([read_image(p) for p in args.images])  # validate every file before any work
    device = resolve_device(args.device)
    model, meta = load_run(args.run, which=args.weights, device=str(device))
    classes = run_classes(model, meta, args.run)
    k = min(args.top_k, len(classes))
    if k < args.top_k:  # a run of fewer classes: all of them, most probable first
        print(f"note: --top-k {args.top_k} is more than the run's {len(classes)} classes; showing {k}",
              file=sys.stderr)
    probs = predict_probs(model, torch.from_numpy(images).to(device), views=args.views)
    top_p, top_i = probs.topk(k, dim=1)
    results = []
    for path, ps, idx in zip(args.images, top_p.tolist(), top_i.tolist()):
        results.append({"image": str(path), "top": [{"class": classes[i], "probability": p} for p, i in zip(ps, idx)]})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        ranked = ", ".join(f"{t['class']} {format_accuracy(t['probability'])}" for t in r["top"])
        print(f"{r['image']}: {ranked}")
    return 0
