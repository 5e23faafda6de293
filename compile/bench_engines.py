"""GEMM engines head to head on this machine: each quantized linear layer of DeiT-T / DeiT-S (batch 1,
197 tokens) as model.so runs it, activation quantize (+ pack) and GEMM with its fused epilogue, once
per engine (compile/engines.py), timed interleaved.

    python -m qvit_compile.bench_engines [--models deit_small] [--bits 2 4] [--engines bitserial int8dot]
                                         [--threads 1] [--repeat 15] [--mcpu CPU] [--cpu-time]

(int8dot-amx is in the default engines where this machine's CPU has AMX-INT8 and the OS allows it;
elsewhere it would time its int8dot fallback, so it is not: the header says which ran.)

The kernels are built by TVM for this machine's CPU (or --mcpu) exactly as the compiler builds them,
the C micro-kernels (native/model) compiled for it and loaded beside them. Per round every engine of a
layer runs one untimed call and three timed ones, round-robin, so load from other processes hits all
alike; the table gives medians of `repeat` rounds (ms per layer call, quantize included). Threads:
TVM's own thread pool (TVM_NUM_THREADS), set before TVM starts.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MODELS = {"deit_tiny": 192, "deit_small": 384}
TOKENS = 197


def layers(d: int):
    return [("qkv", 3 * d, d, "none"), ("proj", d, d, "add"), ("fc1", 4 * d, d, "gelu"),
            ("fc2", d, 4 * d, "add")]


def build(target, m, n, k, bits, epi, engine, w_bits=None):
    """-> a call of quantize + GEMM of one layer with `engine` (`bits`: the activations' and, unless
    w_bits, the weights')."""
    import tvm

    from . import kernels as K
    from . import packing, schedules
    wb = w_bits or bits
    rng = np.random.default_rng(0)
    w = rng.integers(-(1 << (wb - 1)), 1 << (wb - 1), (n, k)).astype(np.int8)
    x = rng.standard_normal((m, k)).astype(np.float32)
    step, zp = np.array([0.3], np.float32), np.array([1], np.int32)
    scale = np.full(n, 0.01, np.float32)
    bias = np.zeros(n, np.float32)
    corr = packing.zero_point_correction(w, 1)
    res = [rng.standard_normal((m, n)).astype(np.float32)] if epi == "add" else []
    if engine in ("int8dot", "int8dot-amx"):
        amx = engine == "int8dot-amx"
        kp = K.int8dot_k(k, amx)
        q = schedules.prim_func("q", *K.int8dot_quant(m, k, bits, None, amx))
        g = schedules.prim_func("g", *K.int8dot_linear(m, n, k, epi, None, amx))
        act = np.zeros((K.int8dot_rows(m, amx), kp), np.int8)
        wp = packing.int8_panel(w, kp)
    else:
        q = schedules.generic(schedules.prim_func("q", *K.pack_act(m, k, bits)), "q")
        mt, nv = K.gemm_tile(epi)
        g = schedules.bitserial_linear(schedules.prim_func("g", *K.bitserial_linear(m, n, k, bits, wb, epi,
                                                                                     None, nv)),
                                       "g", m, n, target.arch, mt, nv, panel_epilogue=epi != "add")
        act = np.zeros((bits, K.rows_padded(m), K.linear_words(k)), np.uint64)
        wp = packing.weight_panel(w, wb, nv)
    mod = tvm.compile(tvm.IRModule({"q": q, "g": g}), target=target.tvm()).mod
    dev = tvm.cpu()
    t = lambda a: tvm.runtime.tensor(np.ascontiguousarray(a), dev)  # noqa: E731
    y = t(np.zeros((m, n), np.float32))
    qa = [t(x), t(step), t(zp), t(act)]
    ga = [qa[3], t(wp), t(scale), t(corr), t(bias), *[t(r) for r in res], y]
    return lambda: (mod["q"](*qa), mod["g"](*ga))


def load_model_kernels(target):
    """The C micro-kernels for the target, loaded RTLD_GLOBAL so TVM's JIT code resolves them."""
    from . import package
    d = tempfile.mkdtemp(prefix="qvit_bench_engines_")
    objs = [package.compile_model_kernel(target.cc, target, src, d) for src in package.MODEL_KERNELS]
    out = os.path.join(d, "model_kernels.so")
    subprocess.run([target.cc, "-shared", "-o", out, *objs, "-lm"], check=True)
    return ctypes.CDLL(out, mode=ctypes.RTLD_GLOBAL)


X86_ENGINES = ("bitserial", "int8dot", "int8dot-amx")  # what build() builds


def runnable_engines(lib) -> list:
    """X86_ENGINES this machine runs as themselves: int8dot-amx only where AMX tiles run (elsewhere
    it would time its int8dot fallback)."""
    return [e for e in X86_ENGINES if e != "int8dot-amx" or lib.qvit_int8dot_amx_state() == 1]


AMX_STATES = {1: "AMX tiles", 0: "not built in", -1: "no AMX in this CPU: its int8dot fallback",
              -2: "AMX refused by the OS: its int8dot fallback", -3: "QVIT_NO_AMX: its int8dot fallback"}


def medians(fns: dict, repeat: int, inner: int = 3, clock=time.perf_counter) -> dict:
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            fn()
            t0 = clock()
            for _ in range(inner):
                fn()
            times[name].append((clock() - t0) / inner * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qvit_compile.bench_engines",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deit_small"], choices=list(MODELS))
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--engines", nargs="+", help="default: bitserial int8dot (and int8dot-amx where it runs)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--mcpu", help="LLVM CPU to build for (default: this machine's)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time the calling thread's CPU time, not wall time (a loaded machine; 1 thread "
                         "only: TVM runs a one-thread parallel loop in the calling thread)")
    args = ap.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from . import targets
    target = targets.get("x86_64" if os.uname().machine == "x86_64" else "aarch64", args.mcpu)
    lib = load_model_kernels(target)
    amx = lib.qvit_int8dot_amx_state()
    if args.engines is None:
        args.engines = runnable_engines(lib)
    print(f"# GEMM engines, {target.arch} mcpu {target.mcpu}, {args.threads} thread(s), medians of "
          f"{args.repeat} interleaved rounds, ms per layer call (quantize + GEMM + epilogue), "
          f"{'thread CPU time' if args.cpu_time else 'wall time'}"
          + (f"; int8dot-amx: {AMX_STATES.get(amx, amx)}" if "int8dot-amx" in args.engines else ""))
    print("| model | bits | layer | M x N x K | epilogue | " + " | ".join(args.engines)
          + " | speed-up (first / last) |")
    print("|---|---|---|---|---|" + "---|" * len(args.engines) + "---|")
    totals = {}
    for model in args.models:
        for bits in args.bits:
            for name, n, k, epi in layers(MODELS[model]):
                fns = {e: build(target, TOKENS, n, k, bits, epi, e) for e in args.engines}
                clock = time.thread_time if args.cpu_time else time.perf_counter
                med = medians(fns, args.repeat, clock=clock)
                for e in args.engines:
                    totals[(model, bits, e)] = totals.get((model, bits, e), 0.0) + med[e]
                sp = med[args.engines[0]] / med[args.engines[-1]]
                print(f"| {model} | W{bits}A{bits} | {name} | {TOKENS} x {n} x {k} | {epi} | "
                      + " | ".join(f"{med[e]:.3f}" for e in args.engines) + f" | {sp:.2f}x |", flush=True)
            row = [totals[(model, bits, e)] for e in args.engines]
            print(f"| {model} | W{bits}A{bits} | **one block** | | | " + " | ".join(f"{v:.3f}" for v in row)
                  + f" | {row[0] / row[-1]:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
