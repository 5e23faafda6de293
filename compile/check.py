"""`python -m qvit_compile.check`: does a compiled model.so compute what the PyTorch quantized model
and the integer reference compute? Compiles for the target, runs the model.so there (x86_64 natively,
aarch64 under qemu with the device runtime from scripts/aarch64-python.sh: no TVM), and reports top-1
agreement and the largest logit difference against both.

python -m qvit_compile.check --checkpoint runs/x --target x86_64 --images 1000     # Fashion-MNIST test images
python -m qvit_compile.check --arch deit_tiny_patch16_224 --bits 2 --random --target aarch64 --images 4
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from qvit_edge.clikit import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_RUNNER = """import sys, numpy as np
from qvit_edge import model
so = model.load(sys.argv[1], threads=int(sys.argv[4]))
np.save(sys.argv[3], so.run(np.load(sys.argv[2])))
"""


def run_model_so(path: str, x: np.ndarray, arch: str, threads: int = 1) -> np.ndarray:
    """Logits of model.so on x: in process for x86_64, under qemu (aarch64 Python) for aarch64."""
    if arch == "x86_64":
        from qvit_edge import model
        with model.load(path, threads=threads) as so:
            return so.run(x)
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "aarch64-python.sh")], capture_output=True,
                       text=True)
    if r.returncode != 0:
        raise UserError(f"no aarch64 Python for qemu: {r.stderr.strip().splitlines()[-1:]}")
    py = r.stdout.strip().splitlines()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        xi, yo = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        np.save(xi, x)
        r = subprocess.run([py, "-c", _RUNNER, path, xi, yo, str(threads)], capture_output=True, text=True)
        if r.returncode != 0:
            raise UserError(f"aarch64 run failed: {r.stderr.strip().splitlines()[-1:]}")
        return np.load(yo)


def fashion_images(n: int, input_cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """The first n Fashion-MNIST test images, normalised as the model's metadata says."""
    from qvit.data import load_dataset
    ds = load_dataset("fashion-mnist", "test")
    img = ds.images[:n].numpy().astype(np.float32) / 255.0
    mean = np.asarray(input_cfg["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(input_cfg["std"], np.float32).reshape(1, -1, 1, 1)
    return ((img - mean) / std).astype(np.float32), ds.labels[:n].numpy()


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    return {"top1_agree": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_diff": float(np.abs(a - b).max()), "max_abs_logit": float(np.abs(b).max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qvit_compile.check", description=__doc__.splitlines()[0])
    p.add_argument("--target", default="x86_64")
    p.add_argument("--checkpoint", help="`qvit train` checkpoint (Fashion-MNIST test images)")
    p.add_argument("--arch", help="with --random: named architecture (random images)")
    p.add_argument("--bits", type=int)
    p.add_argument("--random", action="store_true")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="build/check", help="folder for model.so and check.json")
    args = p.parse_args(argv)
    try:
        import torch

        from qvit import export

        from . import targets
        from .compiler import compile_model
        t = targets.get(args.target)
        targets.check_compiler(t)
        if args.checkpoint:
            from qvit.checkpoint import load_model
            torch_model, _ = load_model(args.checkpoint)
            imodel = export.export_checkpoint(args.checkpoint, torch_model)
            x, labels = fashion_images(args.images, imodel.config["input"])
        elif args.random and args.arch and args.bits:
            imodel, torch_model = export.export_random(args.arch, args.bits)
            x = np.random.default_rng(1).standard_normal((args.images,) + imodel.input_shape)
            x = x.astype(np.float32)
            labels = None
        else:
            raise UserError("give --checkpoint DIR, or --arch NAME --bits B --random")
        os.makedirs(args.out, exist_ok=True)
        so = os.path.join(args.out, f"{imodel.config['arch']}.{args.target}.so")
        compile_model(imodel, args.target, so, progress=lambda s: print(s, flush=True))
        print(f"check: {len(x)} images: model.so ({args.target}), PyTorch, the reference", flush=True)
        y_so = run_model_so(so, x, args.target, args.threads)
        with torch.inference_mode():
            y_torch = torch.cat([torch_model.eval()(torch.from_numpy(x[i:i + 100]))
                                 for i in range(0, len(x), 100)])
        y_torch = y_torch.float().numpy()
        from .intmodel import reference
        y_ref = np.concatenate([reference.run(imodel, x[i:i + 50]) for i in range(0, len(x), 50)])
    except UserError as e:
        print(f"qvit_compile.check: error: {e}", file=sys.stderr)
        return 2
    res = {"model": args.checkpoint or f"{args.arch} W{args.bits}A{args.bits} random", "target": args.target,
           "images": len(x), "vs_pytorch": agreement(y_so, y_torch), "vs_reference": agreement(y_so, y_ref)}
    if labels is not None:
        res["accuracy"] = {"model.so": float((y_so.argmax(1) == labels).mean()),
                           "pytorch": float((y_torch.argmax(1) == labels).mean())}
    with open(os.path.join(args.out, f"check.{args.target}.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
