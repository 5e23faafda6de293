"""`qvit-edge eval model.so FOLDER [--topk 5] [--limit N] [--threads N] [--batch 32] [--json]`: accuracy
of a model.so on an ImageFolder tree, on the board.

FOLDER holds one folder per class, FOLDER/<class>/<images> (torchvision's ImageFolder layout; images
in sub-folders of a class folder count too). A class folder is matched to the model's class names
(its metadata's "classes"): exactly, then ignoring case, then ignoring punctuation and spacing
("t-shirt-top" and "T_shirt top" are "T-shirt/top"), else by number: a folder named 0..C-1 is that
class index (numbered ImageFolder trees). Every image is prepared as `qvit-edge run` and the Python
API prepare it (qvit_edge.api) and run in batches. The report: images, top-1 and top-k accuracy,
images per second, and in --json the accuracy per class. JSON schema: docs/runtime.md.
"""
from __future__ import annotations

import json
import os
import re
import time

import numpy as np

from qvit_edge.clikit import UserError, positive_int

SCHEMA = "qvit-edge.eval/1"
# torchvision's IMG_EXTENSIONS: other files in a class folder (notes, .DS_Store) are not images
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
MAX_LISTED = 30  # class names listed in an error line


def add_arguments(p):
    p.add_argument("model", help="a model.so written by `make compile`")
    p.add_argument("folder", metavar="FOLDER", help="an ImageFolder tree: FOLDER/<class>/<images>")
    p.add_argument("--topk", type=positive_int, default=5, help="top-k accuracy besides top-1 (default 5)")
    p.add_argument("--limit", type=positive_int, help="at most N images, taken from every class in turn")
    p.add_argument("--threads", type=positive_int, default=1, help="worker threads (default 1)")
    p.add_argument("--batch", type=positive_int, default=32, help="images per call (default 32)")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/runtime.md)")


def _slug(s: str) -> str:
    return re.sub(r"[^0-9a-z]+", "-", s.lower()).strip("-")


def _listed(classes: list) -> str:
    shown = ", ".join(map(str, classes[:MAX_LISTED]))
    return shown + (f", ... ({len(classes)} in all)" if len(classes) > MAX_LISTED else "")


def class_index(name: str, classes: list) -> int | None:
    """The class a folder name stands for: exact, case-insensitive, punctuation-insensitive (when
    that is unambiguous), else a class number 0..C-1; None when it names none."""
    for key in (lambda s: s, str.lower, _slug):
        hits = [i for i, c in enumerate(classes) if key(str(c)) == key(name)]
        if len(hits) == 1:
            return hits[0]
    if re.fullmatch(r"[0-9]+", name) and int(name) < len(classes):
        return int(name)
    return None


def image_folder(folder: str, classes: list) -> list[tuple[str, int, str]]:
    """[(image path, class index, class folder)] of an ImageFolder tree, class folders in name order,
    images in path order. One-line UserError for a folder naming no class, two folders naming one,
    no class folders or no images."""
    if not os.path.exists(folder):
        raise UserError(f"{folder}: no such folder")
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: not a folder (expected FOLDER/<class>/<images>)")
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise UserError(f"{folder}: cannot list ({e.strerror or e})") from None
    if not names:
        raise UserError(f"{folder}: no class folders (expected FOLDER/<class>/<images>, one folder per "
                        "class)")
    taken: dict[int, str] = {}
    out = []
    for name in names:
        idx = class_index(name, classes)
        if idx is None:
            raise UserError(f"{os.path.join(folder, name)}: names none of the model's {len(classes)} classes "
                            f"({_listed(classes)}) nor a class number 0..{len(classes) - 1}")
        if idx in taken:
            raise UserError(f"{os.path.join(folder, name)} and {os.path.join(folder, taken[idx])} both name "
                            f"class {idx} ({classes[idx]})")
        taken[idx] = name
        files = []
        for root, dirs, fs in os.walk(os.path.join(folder, name), followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [os.path.join(root, f) for f in fs
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        out += [(f, idx, name) for f in sorted(files)]
    if not out:
        raise UserError(f"{folder}: no images in its class folders ({' '.join(IMAGE_EXTENSIONS)})")
    return out


def take(items: list, limit: int | None) -> list:
    """At most `limit` items, from every class in turn (the first of each class, then the second, ...),
    so a small sample still covers every class; in the tree's order."""
    if limit is None or limit >= len(items):
        return items
    by_class: dict[int, list] = {}
    for it in items:
        by_class.setdefault(it[1], []).append(it)
    order = []
    depth = max(len(v) for v in by_class.values())
    for j in range(depth):
        order += [v[j] for v in by_class.values() if j < len(v)]
    keep = {id(it) for it in order[:limit]}
    return [it for it in items if id(it) in keep]


def evaluate(path: str, folder: str, topk: int = 5, limit: int | None = None, threads: int = 1,
             batch: int = 32) -> dict:
    """Top-1 / top-k accuracy of a model.so on an ImageFolder tree; returns the eval JSON object."""
    import qvit_edge
    from qvit_edge.api import top_k

    t0 = time.perf_counter()
    m = qvit_edge.load(path, threads=threads)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        classes = list(m.classes) or [str(i) for i in range(m.num_classes)]
        items = take(image_folder(folder, classes), limit)
        k = min(topk, m.num_classes)
        hit1 = np.zeros(len(items), bool)
        hitk = np.zeros(len(items), bool)
        prep_s = infer_s = 0.0
        t_all = time.perf_counter()
        for b in range(0, len(items), batch):
            chunk = items[b:b + batch]
            t = time.perf_counter()
            x = np.stack([m.prepare(p) for p, _, _ in chunk])  # ImageError: one line naming the file
            t1 = time.perf_counter()
            logits = m.run(x)
            infer_s += time.perf_counter() - t1
            prep_s += t1 - t
            for j, (row, (_, label, _)) in enumerate(zip(logits, chunk)):
                top = [p.index for p in top_k(row, k, classes)]
                hit1[b + j] = top[0] == label
                hitk[b + j] = label in top
        total = time.perf_counter() - t_all
    finally:
        m.close()
    labels = np.array([it[1] for it in items])
    per_class = []
    for idx in sorted(set(labels.tolist())):
        sel = labels == idx
        per_class.append({"index": idx, "class": classes[idx],
                          "folder": next(it[2] for it in items if it[1] == idx), "images": int(sel.sum()),
                          "top1": float(hit1[sel].mean()), "topk": float(hitk[sel].mean())})
    n = len(items)
    return {"schema": SCHEMA, "model": path, "arch": m.meta.get("arch"), "folder": folder,
            "threads": threads, "batch": batch, "k": k, "images": n, "classes": len(per_class),
            "top1": float(hit1.mean()), "topk": float(hitk.mean()),
            "correct_top1": int(hit1.sum()), "correct_topk": int(hitk.sum()),
            "load_ms": load_ms, "seconds": total, "images_per_s": n / total if total > 0 else None,
            "preprocess_ms_per_image": prep_s * 1e3 / n, "inference_ms_per_image": infer_s * 1e3 / n,
            "per_class": per_class}


def run(args) -> int:
    from qvit_edge.preflight import check_threads

    r = evaluate(args.model, args.folder, topk=args.topk, limit=args.limit,
                 threads=check_threads(args.threads), batch=args.batch)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"model      {r['model']} ({r['arch']}), {r['threads']} thread(s), batch {r['batch']}")
    print(f"data       {r['folder']}: {r['images']} images, {r['classes']} classes")
    print(f"top-1      {100 * r['top1']:.2f} %  ({r['correct_top1']}/{r['images']})")
    print(f"top-{r['k']:<6} {100 * r['topk']:.2f} %  ({r['correct_topk']}/{r['images']})")
    ips = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-"
    print(f"speed      {ips} images/s ({r['preprocess_ms_per_image']:.2f} ms preparing + "
          f"{r['inference_ms_per_image']:.2f} ms inference per image); load {r['load_ms']:.0f} ms")
    if len(r["per_class"]) <= MAX_LISTED:
        w = max(len(str(c["class"])) for c in r["per_class"])
        print(f"per class  (top-1, top-{r['k']}, images)")
        for c in r["per_class"]:
            print(f"  {str(c['class']):<{w}}  {100 * c['top1']:6.2f} %  {100 * c['topk']:6.2f} %  "
                  f"{c['images']}")
    return 0
