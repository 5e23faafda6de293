"""`--engine measure`: the GEMM engine of each bit width chosen by timing the candidates on this
machine, for a model compiled for this machine's own x86 CPU.

The first linear layer of each (a_bits, w_bits) is built once per candidate engine (activation
quantize + GEMM + its epilogue, exactly as the compiler builds it: bench_engines.build) and timed
interleaved on one thread; the fastest takes every layer of that width. The candidates compute the
same integers (compile/engines.py), so the choice changes speed only. The timing runs in a child
process: TVM's thread pool is sized when TVM starts, and the compiler's TVM has started already.

    python -m qvit_compile.engine_measure --shape M N K --bits A W --epilogue none|add|gelu [--mcpu CPU]
prints {engine: median ms} as JSON (what the compiler runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from qvit_edge.clikit import UserError

REPEAT = 7


def check_host(target) -> None:
    """UserError unless the target is this machine's CPU (a measurement elsewhere means nothing)."""
    from .targets import host_x86_cpu
    if os.uname().machine != "x86_64" or target.arch != "x86_64":
        raise UserError(f"--engine measure: times engines on this machine, so the target must be this "
                        f"machine's x86_64 CPU (target {target.arch}); let the table choose for "
                        f"{target.arch} (drop --engine)")
    if target.mcpu != host_x86_cpu():
        raise UserError(f"--engine measure: the target CPU {target.mcpu} is not this machine's "
                        f"({host_x86_cpu()}); drop --mcpu, or drop --engine to let the table choose")


def measure(target, m: int, n: int, k: int, a_bits: int, w_bits: int, epilogue: str) -> dict:
    """{engine: median ms of one call} for one layer on this machine, 1 thread."""
    cmd = [sys.executable, "-m", "qvit_compile.engine_measure", "--shape", str(m), str(n), str(k),
           "--bits", str(a_bits), str(w_bits), "--epilogue", epilogue, "--mcpu", target.mcpu]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TVM_NUM_THREADS": "1"})
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"--engine measure: timing the engines failed: {last}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def fastest(times: dict) -> str:
    from .bench_engines import X86_ENGINES
    return min(times, key=lambda e: (times[e], X86_ENGINES.index(e)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qvit_compile.engine_measure",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, required=True, metavar=("M", "N", "K"))
    ap.add_argument("--bits", type=int, nargs=2, required=True, metavar=("A_BITS", "W_BITS"))
    ap.add_argument("--epilogue", choices=("none", "add", "gelu"), default="none")
    ap.add_argument("--mcpu")
    ap.add_argument("--repeat", type=int, default=REPEAT)
    args = ap.parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", "1")  # before TVM starts
    from . import bench_engines, targets
    target = targets.get("x86_64", args.mcpu)
    lib = bench_engines.load_model_kernels(target)
    m, n, k = args.shape
    fns = {e: bench_engines.build(target, m, n, k, args.bits[0], args.epilogue, e, w_bits=args.bits[1])
           for e in bench_engines.runnable_engines(lib)}
    print(json.dumps({e: round(v, 5) for e, v in bench_engines.medians(fns, args.repeat).items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
