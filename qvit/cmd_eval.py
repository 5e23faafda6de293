"""`qvit eval CHECKPOINT`: top-1 / top-5 of a checkpoint on a data set's validation split.

qvit eval runs/w2a2/best                     (the data set it was trained on)
qvit eval runs/w2a2/best --data PATH --json
"""

from __future__ import annotations

import argparse
import json

from qvit_edge.clikit import UserError, nonneg_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="checkpoint directory written by `qvit train` (e.g. runs/x/best)")
    p.add_argument("--data", help="fashion-mnist, digits or an image folder (default: the training data)")
    p.add_argument("--split", choices=["test", "val", "train"], default="test",
                   help="test (default; reported, never selected on), val (model selection) or train")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--limit", type=positive_int, help="evaluate on the first N images only")
    p.add_argument("--workers", type=nonneg_int, default=2)
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args) -> int:
    import torch

    from qvit.checkpoint import load_model
    from qvit.data import input_of, load_dataset
    from qvit.train import evaluate, img_size_of

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise UserError("--batch-size must be positive")
    model, config = load_model(args.checkpoint)
    spec = args.data or config.get("train", {}).get("data")
    if not spec:
        raise UserError("the checkpoint does not name its data set; give --data")
    ds = load_dataset(spec, args.split, **input_of(config))  # channels, mean, std as trained
    classes = config.get("classes")
    if classes and len(classes) != len(ds.classes):
        raise UserError(f"{spec} has {len(ds.classes)} classes, the model {len(classes)}")
    m = evaluate(
        model, ds, img_size_of(model), args.batch_size, args.workers, args.limit, progress=not args.json
    )
    q = model.qvit_config.quant
    result = {
        "checkpoint": args.checkpoint,
        "arch": model.qvit_config.arch,
        "data": spec,
        "split": args.split,
        "w_bits": q.w_bits,
        "a_bits": q.a_bits,
        "irm": q.irm if q.quantized else None,
        "top1": round(m["top1"], 3),
        "top5": round(m["top5"], 3),
        "loss": round(m["loss"], 5),
        "images": m["count"],
    }
    if args.json:
        print(json.dumps(result))
    else:
        bits = f"W{q.w_bits}A{q.a_bits}" if q.quantized else "full precision"
        print(
            f"{result['arch']} ({bits}) on {spec} {args.split} ({m['count']} images): "
            f"top-1 {m['top1']:.2f} %, top-5 {m['top5']:.2f} %"
        )
    return 0
