"""`make demo`: the whole pipeline on the shipped default model.

shipped checkpoint -> `qvit export` -> `python -m qvit_compile` (this host, and aarch64)
-> `qvit-edge run` on the shipped images. Each step is the command a user would type; it is
printed before it runs. Outputs go to build/demo/ and are reused while newer than their inputs.

    python -m qvit.demo [--model models/NAME] [--images FILES...] [--no-aarch64]
"""
from __future__ import annotations

import argparse
import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "models" / "fmnist_deit_tiny_w2a2"
DEFAULT_IMAGES = sorted(glob.glob(str(ROOT / "examples" / "images" / "*.png")))
HOST = {"x86_64": "x86_64", "AMD64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(
    platform.machine())


def _newer(out: Path, *inputs: Path) -> bool:
    """True when `out` exists and is newer than every input file (directories: their files)."""
    if not out.exists():
        return False
    files = [f for p in inputs for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    return all(out.stat().st_mtime >= f.stat().st_mtime for f in files)


REBUILD = False


def _step(title: str, argv: list[str], out: Path | None = None, inputs: tuple[Path, ...] = ()) -> None:
    print(f"\n== {title}")
    if out is not None and not REBUILD and _newer(out, *inputs):
        print(f"   up to date: {os.path.relpath(out, ROOT)}")
        return
    exe = [sys.executable, "-m", argv[0].replace("-", "_")] + argv[1:]
    print("   $ " + " ".join(shlex.quote(a) for a in argv))
    r = subprocess.run(exe, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"demo: `{argv[0]} {argv[1]}` failed (exit {r.returncode})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qvit-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a `qvit train` checkpoint directory")
    ap.add_argument("--images", nargs="+", default=DEFAULT_IMAGES)
    ap.add_argument("--no-aarch64", action="store_true", help="skip the aarch64 cross build")
    ap.add_argument("--rebuild", action="store_true", help="redo every step, even when up to date")
    args = ap.parse_args(argv)
    global REBUILD
    REBUILD = args.rebuild

    model = args.model.resolve()
    if not model.is_dir():
        print(f"demo: no checkpoint at {model}", file=sys.stderr)
        return 2
    if HOST is None:
        print(f"demo: this host ({platform.machine()}) is neither x86_64 nor aarch64", file=sys.stderr)
        return 2
    out = ROOT / "build" / "demo" / model.name
    out.mkdir(parents=True, exist_ok=True)
    intmodel = out / "model.qvit.safetensors"
    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    print(f"qvit-edge demo: {rel(model)} -> export -> compile -> run")

    _step("1. export the trained checkpoint to the integer model",
          ["qvit", "export", rel(model), "--out", rel(intmodel)], intmodel, (model,))
    host_so = out / HOST / "model.so"
    _step(f"2. compile it to bit-serial kernels for this host ({HOST})",
          ["qvit_compile", "--target", HOST, "--model", rel(intmodel), "--out", rel(host_so)],
          host_so, (intmodel,))
    _step("3. what the model.so holds", ["qvit-edge", "info", rel(host_so)])
    _step("4. classify the images on the edge runtime (numpy + cffi + Pillow only)",
          ["qvit-edge", "run", rel(host_so), *[rel(Path(i)) for i in args.images], "--topk", "3"])

    other = "aarch64" if HOST == "x86_64" else "x86_64"
    if not args.no_aarch64:
        cc = "aarch64-linux-gnu-gcc" if other == "aarch64" else "x86_64-linux-gnu-gcc"
        if shutil.which(cc) is None:
            print(f"\n== 5. cross-compile for {other}: skipped ({cc} not installed)")
        else:
            other_so = out / other / "model.so"
            _step(f"5. cross-compile for {other} (Raspberry Pi 4: Cortex-A72)",
                  ["qvit_compile", "--target", other, "--model", rel(intmodel), "--out", rel(other_so)],
                  other_so, (intmodel,))
            _step(f"6. the {other} model.so, checked on this host without loading it",
                  ["qvit-edge", "info", rel(other_so)])
            print(f"\n   copy {rel(other_so)} to the board and run `qvit-edge run model.so image.jpg` there"
                  " (README: Raspberry Pi)")
    print("\ndemo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
