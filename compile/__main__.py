"""`python -m qvit_compile`: integer model / checkpoint / random named architecture -> model.so.

python -m qvit_compile --target x86_64  --model model.qvit.safetensors --out build/x86_64/model.so
python -m qvit_compile --target aarch64 --model runs/x/checkpoint       --out build/aarch64/model.so
python -m qvit_compile --target x86_64  --arch deit_small_patch16_224 --bits 2 --random --out deit_s_w2.so
"""
from __future__ import annotations

import argparse
import os
import sys

from qvit_edge.clikit import UserError, creatable_file_path, int_range, parse_args, safe_stdio

from . import targets


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qvit_compile", description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help=f"one of {', '.join(targets.ARCHS)}")
    p.add_argument("--mcpu", help="LLVM CPU (default: cortex-a72 for aarch64, this machine's CPU for x86_64)")
    p.add_argument("--model", help="integer model file (*.qvit.safetensors) or a `qvit train` checkpoint dir")
    p.add_argument("--arch", help="with --random: a named architecture, e.g. deit_small_patch16_224")
    p.add_argument("--bits", type=int_range(1, 8), help="with --random: bits of the blocks (1-4 usual, 1-8)")
    p.add_argument("--random", action="store_true", help="random-init weights (benchmarks)")
    p.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0)
    # checked while parsing: an unwritable --out must fail before the compile, not after it
    p.add_argument("--out", required=True, type=creatable_file_path, help="model.so to write")
    p.add_argument("--engine", help="force the GEMM engine of the <= 4-bit linear layers: bitserial, "
                                    "int8dot, int8dot-amx, bitserial-neon or lut-neon; or measure: time "
                                    "the x86 candidates on this machine (its own CPU as the target) and "
                                    "take the fastest per bit width "
                                    "(default: $QVIT_GEMM_ENGINE, else chosen for the target CPU)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def load_source(args):
    """-> IntModel from --model (integer model file or checkpoint) or --arch/--bits/--random."""
    from .intmodel import IntModel

    if args.random:
        if args.model:
            raise UserError("give either --model or --arch/--bits/--random, not both")
        if not args.arch or args.bits is None:
            raise UserError("--random needs --arch NAME and --bits B")
        try:
            from qvit.export import export_random
        except ImportError as e:
            raise UserError(f"--random needs the training side (torch, timm): {e}") from None
        model, _ = export_random(args.arch, args.bits, seed=args.seed)
        return model
    if not args.model:
        raise UserError("no model: give --model PATH (integer model or checkpoint) or --arch/--bits/--random")
    path = args.model
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        try:
            from qvit.export import export_checkpoint
        except ImportError as e:
            raise UserError(f"a checkpoint needs the training side (torch, timm): {e}") from None
        return export_checkpoint(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise UserError(f"{path}: not an integer model file or checkpoint")
    return IntModel.load(path)


def main(argv=None) -> int:
    safe_stdio()
    args = parse_args(parser(), argv, prefix="qvit_compile")
    if args is None:
        return 2
    try:
        t = targets.get(args.target, args.mcpu)
        targets.check_compiler(t)
        from . import engines
        # an unknown engine, or measuring for another CPU, fails before the model is loaded
        if engines.override(args.engine) == engines.MEASURE:
            from . import engine_measure
            engine_measure.check_host(t)
        out_dir = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(out_dir, exist_ok=True)
        model = load_source(args)
        from .compiler import compile_model
        compile_model(model, args.target, args.out, args.mcpu, engine=args.engine,
                      progress=(lambda *a: None) if args.quiet else (lambda s: print(s, flush=True)))
    except UserError as e:
        print(f"qvit_compile: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qvit_compile: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
