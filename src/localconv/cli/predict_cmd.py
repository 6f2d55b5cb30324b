"""``localconv predict``: top-k classes with softmax probabilities for image files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import add_device_arg, positive_int, run_classes

if TYPE_CHECKING:  # numpy is imported when a command runs
    import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained run")
    p.add_argument("run", type=Path, help="run folder, or an ONNX file written by `localconv export` (run with "
                                          "onnxruntime, without torch; --device then does not apply, and it holds the "
                                          "weights it was exported with)")
    p.add_argument("images", nargs="+", type=Path,
                   help="image files, prepared as training prepares them (data.prepare_image): EXIF orientation "
                        "applied; any size: the shorter side is scaled to 32 and the centre 32x32 kept")
    p.add_argument("--top-k", type=positive_int, default=3, help="classes shown per image, most probable first")
    p.add_argument("--views", choices=("single", "flip", "multiview"), default="single",
                   help="average the softmax over the centre view (single), it and its mirror (flip), or 10 "
                        "views: 4 corners + centre and their mirrors (multiview)")
    p.add_argument("--weights", choices=("ema", "raw", "best"), default="ema",
                   help="averaged (ema; raw if the recipe keeps none), raw, or the best-evaluated weights")
    p.add_argument("--json", action="store_true", help="print one JSON list: per image, its top-k classes and "
                                                       "probabilities")
    add_device_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import read_image

    images = np.stack([read_image(p) for p in args.images])  # validate every file before any work
    if args.run.suffix.lower() == ".onnx":  # an exported classifier: onnxruntime and numpy, no torch
        from ..errors import LocalconvError
        from ..export.onnx_runtime import OnnxClassifier

        from ..data.channels import to_channels

        onnx_model = OnnxClassifier(args.run)
        held = onnx_model.metadata.get("source", {}).get("weights")
        if args.weights != "ema" and held is not None and args.weights != held:  # not the default: asked for
            raise LocalconvError(f"--weights {args.weights}: {args.run} holds the {held} weights; export the run "
                                 f"with --weights {args.weights} to predict with those")
        # an exported --in-chans 1 run takes the images' luma, as the run folder does below (numpy only)
        images = to_channels(images, onnx_model.input_shape[0], str(args.run))
        return report(args, onnx_model.classes, onnx_model.predict_proba(images, views=args.views))
    import torch

    from ..training.checkpoint import load_run
    from ..training.engine import resolve_device
    from ..training.evaluate import predict_probs

    device = resolve_device(args.device)
    model, meta = load_run(args.run, which=args.weights, device=str(device))
    classes = run_classes(model, meta, args.run)
    from ..data.channels import to_channels

    images = to_channels(images, getattr(model, "in_chans", 3))  # a --in-chans 1 run reads the images' luma
    probs = predict_probs(model, torch.from_numpy(images).to(device), views=args.views)
    return report(args, classes, probs.double().cpu().numpy())


def report(args: argparse.Namespace, classes: list[str], probs: np.ndarray) -> int:
    """Print the top-k classes of each image (``probs``: [images, classes]), as text or JSON."""
    import numpy as np

    from ..metrics import format_accuracy

    k = min(args.top_k, len(classes))
    if k < args.top_k:  # a run of fewer classes: all of them, most probable first
        print(f"note: --top-k {args.top_k} is more than the run's {len(classes)} classes; showing {k}",
              file=sys.stderr)
    top_i = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    results = []
    for path, row, idx in zip(args.images, probs, top_i):
        results.append({"image": str(path), "top": [{"class": classes[i], "probability": float(row[i])}
                                                    for i in idx.tolist()]})
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    for r in results:
        ranked = ", ".join(f"{t['class']} {format_accuracy(t['probability'])}" for t in r["top"])
        print(f"{r['image']}: {ranked}")
    return 0
