"""`qvit-edge run model.so IMAGE... [--topk 5] [--threads N] [--json]`: classify images.

The model is loaded once and every image reuses it. Each image is decoded and prepared as
the model's metadata says (qvit_edge.preprocess), run alone (batch 1, so the latency shown
is one image's), and its top-k classes are printed with softmax probabilities.

An image that cannot be read is reported on its own line and the others still run; the exit
status is then 2. JSON schema: docs/runtime.md.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from qvit_edge import api
from qvit_edge.clikit import positive_int
from qvit_edge.preflight import check_threads, open_model
from qvit_edge.preprocess import ImageError, InputSpec, load_image

SCHEMA = "qvit-edge.run/1"


def add_arguments(p):
    p.add_argument("model", help="a model.so written by `make compile`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, BMP, ...)")
    p.add_argument("--topk", type=positive_int, default=5, help="classes to show per image (default 5)")
    # >= 1 while parsing; the upper bound (the CPUs here) is check_threads' at run time
    p.add_argument("--threads", type=positive_int, default=1, help="worker threads (default 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/runtime.md)")


def top_k(logits: np.ndarray, k: int, classes: list) -> list[dict]:
    """[{index, class, prob}] for the k most probable classes of one image (qvit_edge.api.top_k)."""
    return [{"index": p.index, "class": p.label, "prob": p.prob} for p in api.top_k(logits, k, classes)]


def run(args) -> int:
    from qvit_edge.clikit import UserError

    threads = check_threads(args.threads)
    if args.topk < 1:
        raise UserError(f"--topk {args.topk}: must be at least 1")
    t0 = time.perf_counter()
    model = open_model(args.model, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        spec = InputSpec.from_meta(model.meta)
        classes = list(model.meta.get("classes") or [])
        k = min(args.topk, int(model.meta.get("num_classes") or len(classes) or args.topk))
        results, failed = [], 0
        for path in args.images:
            try:
                t1 = time.perf_counter()
                x = load_image(path, spec)[None]
                t2 = time.perf_counter()
            except ImageError as e:
                failed += 1
                results.append({"image": path, "error": str(e)})
                print(f"qvit-edge run: error: {e}", file=sys.stderr)
                continue
            logits = model.run(x)[0]
            t3 = time.perf_counter()
            r = {"image": path, "top": top_k(logits, k, classes),
                 "preprocess_ms": (t2 - t1) * 1e3, "latency_ms": (t3 - t2) * 1e3}
            results.append(r)
            if not args.json:
                _print_result(r)
    finally:
        model.close()
    if args.json:
        print(json.dumps({"schema": SCHEMA, "model": args.model, "arch": model.meta.get("arch"),
                          "threads": threads, "load_ms": load_ms, "results": results}, indent=2))
    return 2 if failed else 0


def _print_result(r: dict) -> None:
    print(f"{r['image']}  ({r['latency_ms']:.1f} ms inference, {r['preprocess_ms']:.1f} ms preprocessing)")
    w = max(len(t["class"]) for t in r["top"])
    for i, t in enumerate(r["top"], 1):
        print(f"  {i}. {t['class']:<{w}}  {100 * t['prob']:6.2f}%")
