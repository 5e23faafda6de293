"""`make bench-kernels`: the native low-bit GEMMs on DeiT-T / DeiT-S shapes against PyTorch FP32
and ONNX Runtime int8 (MatMulInteger), measured in the same run, interleaved.

    python -m qvit_compile.bench_kernels [--threads 1 2] [--repeat 15] [--models deit_tiny deit_small]
                                      [--out docs/bench-kernels-results.md]

Every candidate of one shape is timed round-robin (per round: one untimed warm-up call, then
three timed calls; `repeat` rounds) so load from other processes hits all of them alike while
each is measured warm, as in a steady layer loop; the tables give medians. Output buffers are allocated
once (PyTorch `out=`, ours `dst=`; ONNX Runtime reuses its arena), as a runtime does. Weights
are packed once ahead of time; activations (and both operands of the attention matmuls) are
packed inside every timed call, and for bit-serial that cost is included. Needs torch and onnxruntime
(dependencies of the qvit distribution) for the peers.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from qvit_edge import kernels as K
from qvit_edge import quant

MODELS = {  # name: (embed dim, heads, mlp ratio); M = 197 tokens (224 px, patch 16, cls)
    "deit_tiny": (192, 3, 4),
    "deit_small": (384, 6, 4),
}
TOKENS = 197
BITS = [1, 2, 3, 4, 8]


def shapes(model: str):
    d, h, r = MODELS[model]
    hd = d // h
    return [  # (layer, kind, M, N, K, batch)
        ("qkv", "linear", TOKENS, 3 * d, d, 1),
        ("proj", "linear", TOKENS, d, d, 1),
        ("fc1", "linear", TOKENS, r * d, d, 1),
        ("fc2", "linear", TOKENS, d, r * d, 1),
        ("q@k^T", "attn", TOKENS, TOKENS, hd, h),
        ("attn@v", "attn", TOKENS, hd, TOKENS, h),
    ]


# ---- peers -----------------------------------------------------------------------------------------
def torch_fp32(kind, m, n, k, batch, threads, rng):
    import torch
    torch.set_num_threads(threads)
    if kind == "linear":
        x = torch.from_numpy(rng.standard_normal((m, k), np.float32))
        # weight as [K, N], prepared once
        wt = torch.from_numpy(rng.standard_normal((n, k), np.float32)).t().contiguous()
        out = torch.empty((m, n))
        return lambda: torch.matmul(x, wt, out=out)
    x = torch.from_numpy(rng.standard_normal((batch, m, k), np.float32))
    y = torch.from_numpy(rng.standard_normal((batch, k, n), np.float32))
    out = torch.empty((batch, m, n))
    return lambda: torch.matmul(x, y, out=out)


def ort_int8(kind, m, n, k, batch, threads, rng):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    if kind == "linear":
        a = rng.integers(0, 256, (m, k), np.uint8)
        w = rng.integers(-128, 128, (k, n), np.int8)
        nodes = [helper.make_node("MatMulInteger", ["a", "w", "za"], ["y"])]
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(3, np.uint8), "za")]
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])]
        feed = {"a": a}
        out = [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])]
    else:
        a = rng.integers(0, 256, (batch, m, k), np.uint8)
        b = rng.integers(0, 256, (batch, k, n), np.uint8)
        nodes = [helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])]
        inits = [numpy_helper.from_array(np.array(3, np.uint8), "za"),
                 numpy_helper.from_array(np.array(5, np.uint8), "zb")]
        inputs = [helper.make_tensor_value_info("a", TensorProto.UINT8, [batch, m, k]),
                  helper.make_tensor_value_info("b", TensorProto.UINT8, [batch, k, n])]
        feed = {"a": a, "b": b}
        out = [helper.make_tensor_value_info("y", TensorProto.INT32, [batch, m, n])]
    graph = helper.make_graph(nodes, "mmi", inputs, out, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see OMP_WAIT_POLICY below
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feed)


def ours(kind, m, n, k, batch, bits, engine, rng):
    if kind == "linear":
        a = rng.integers(0, 1 << bits, (m, k)).astype(np.uint8)
        w = rng.choice(quant.weight_levels(bits), (n, k)).astype(np.int8)
        pw = K.pack_b(w, bits, True, engine)  # ahead of time, not timed
        dst = np.empty((m, n), np.int32)
        return lambda: K.gemm(a, bits, 1, pw, check=False, dst=dst)
    a = rng.integers(0, 1 << bits, (batch, m, k)).astype(np.uint8)
    b = rng.integers(0, 1 << bits, (batch, n, k)).astype(np.uint8)
    za = np.ones(batch, np.int32)
    dst = np.empty((batch, m, n), np.int32)
    return lambda: K.matmul_act(a, za, b, za, bits, engine=engine, check=False, dst=dst)


# ---- timing ------------------------------------------------------------------------------------------
def interleaved_medians(fns: dict, repeat: int, inner: int = 3) -> dict:
    """Round-robin over the candidates, `repeat` rounds; in a round each candidate runs one
    untimed call (its data back in cache after the previous candidate evicted it) and then
    `inner` timed calls. Warm-cache steady state for every candidate, while slow drifts in the
    machine's load still hit all of them alike. Returns the median per-call time."""
    for f in fns.values():  # first-call allocations, ORT/torch lazy init
        f()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, f in fns.items():
            f()
            for _ in range(inner):
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def popcount_peak_samples(path: str, n: int, seconds: float) -> list[float]:
    return [float(K.lib.qv_popcount_peak(K.PATH_NAMES.index(path), seconds)) for _ in range(n)]


def bench_float_ops(repeat, seed=0):
    """The float ops of a DeiT-S block, native C against the numpy integer reference's own."""
    from qvit_compile.intmodel import reference
    rng = np.random.default_rng(seed)
    d, h = 384, 6
    x = rng.standard_normal((TOKENS, d)).astype(np.float32)
    w, b = rng.standard_normal(d).astype(np.float32), rng.standard_normal(d).astype(np.float32)
    s = rng.standard_normal((h, TOKENS, TOKENS)).astype(np.float32)
    u = rng.standard_normal((TOKENS, 4 * d)).astype(np.float32)
    cases = {
        f"layernorm {TOKENS}×{d}": (lambda: K.layernorm(x, w, b, 1e-6),
                                    lambda: reference.layernorm(x, w, b, 1e-6)),
        f"softmax {h}×{TOKENS}×{TOKENS}": (lambda: K.softmax(s), lambda: reference.softmax(s)),
        f"gelu {TOKENS}×{4 * d}": (lambda: K.gelu(u), lambda: reference.gelu(u)),
        f"quantize {TOKENS}×{d} (2 bit)": (lambda: K.quantize(x, 0.1, 2, 2),
                                           lambda: quant.quantize_act(x, 0.1, 2, 2)),
    }
    rows = []
    for name, (c, npy) in cases.items():
        med = interleaved_medians({"c": c, "numpy": npy}, repeat)
        rows.append((name, med["c"], med["numpy"]))
    return rows


PROBE = "popcount_probe"


def popcount_probe(path: str, target_s: float = 100e-6):
    """A fixed amount of the path's AND + popcount + accumulate step (~target_s long) as a timed
    candidate: interleaved with the GEMMs, it sees the same load, so M·N·K·b² / time over its
    bit-MACs / time is the fraction of the popcount peak under the same conditions."""
    idx = K.PATH_NAMES.index(path)
    rate = float(K.lib.qv_popcount_peak(idx, 0.02))
    iters = max(1, int(target_s * rate / K.lib.qv_popcount_probe(idx, 1)))
    work = float(K.lib.qv_popcount_probe(idx, iters))
    return (lambda: K.lib.qv_popcount_probe(idx, iters)), work


def bench(models, threads_list, repeat, seed=0):
    rng = np.random.default_rng(seed)
    path = K.get_path()
    # The standalone peak is sampled all through the run; it varies with the load on the machine.
    peaks = popcount_peak_samples(path, 10, 0.03)
    probe, probe_work = popcount_probe(path)
    rows = []
    for threads in threads_list:
        K.set_threads(threads)
        for model in models:
            for layer, kind, m, n, k, batch in shapes(model):
                fns = {"torch_fp32": torch_fp32(kind, m, n, k, batch, threads, rng),
                       "ort_int8": ort_int8(kind, m, n, k, batch, threads, rng), PROBE: probe}
                for bits in BITS:
                    for engine in K.ENGINES:
                        if bits == 8 and engine == "bitserial":
                            continue  # 64 plane pairs: never competitive, int8 is exact at 8 bits
                        fns[f"{engine}_w{bits}a{bits}"] = ours(kind, m, n, k, batch, bits, engine, rng)
                med = interleaved_medians(fns, repeat)
                peaks += popcount_peak_samples(path, 2, 0.02)
                probe_rate = probe_work / med.pop(PROBE)  # bit-MACs per second, 1 thread, same rounds
                rows.append(dict(threads=threads, model=model, layer=layer, kind=kind, m=m, n=n, k=k,
                                 batch=batch, times=med, probe_rate=probe_rate))
                print(f"  {threads}t {model:10s} {layer:7s} done", file=sys.stderr)
    K.set_threads(1)
    return path, peaks, rows


# ---- report ------------------------------------------------------------------------------------------
def macs(r):
    return r["m"] * r["n"] * r["k"] * r["batch"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def auto_time(rows, bits: int, path: str) -> float:
    """Block time with the engine `engine="auto"` picks for each layer (kernels.engine_for)."""
    return sum(r["times"][f"{K.engine_for(bits, bits, path, act_act=r['kind'] == 'attn')}_w{bits}a{bits}"]
               for r in rows)


def report(path, peaks, rows, repeat, float_rows=()) -> str:
    out = []
    peak = max(peaks)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    out.append(f"- CPU: {cpu_name()} ({os.cpu_count()} logical CPUs), kernel path `{path}`; "
               f"median of {repeat} interleaved rounds; load average at the end: "
               f"{', '.join(f'{x:.2f}' for x in load) if load else 'n/a'}")
    probes = [r["probe_rate"] for r in rows]
    out.append(f"- popcount peak (AND + popcount + accumulate, registers only, 1 thread), standalone: "
               f"best {peak / 1e9:.0f}, median {np.median(peaks) / 1e9:.0f} G binary MAC/s over "
               f"{len(peaks)} samples; as an interleaved candidate (used for % peak): "
               f"{min(probes) / 1e9:.0f}–{max(probes) / 1e9:.0f} across shapes")
    out.append("")
    for threads in sorted({r["threads"] for r in rows}):
        out.append(f"### {threads} thread{'s' if threads > 1 else ''}: speed-up over PyTorch FP32 "
                   "(time of FP32 / time of candidate; higher is better)")
        out.append("")
        cols = ["ort_int8"] + [f"{e}_w{b}a{b}" for b in BITS for e in K.ENGINES
                               if not (b == 8 and e == "bitserial")]
        short = {"ort_int8": "ORT int8"} | {f"{e}_w{b}a{b}": f"{'bs' if e == 'bitserial' else 'i8'} {b}b"
                                              for b in BITS for e in K.ENGINES}
        head = " | ".join(short[c] for c in cols)
        out.append(f"| model | layer | M×N×K (×heads) | FP32 µs | {head} |")
        out.append("|---|---|---|---:|" + "---:|" * len(cols))
        for r in (r for r in rows if r["threads"] == threads):
            t = r["times"]
            dims = f"{r['m']}×{r['n']}×{r['k']}" + (f" ×{r['batch']}" if r["batch"] > 1 else "")
            cells = [f"{t['torch_fp32'] / t[c]:.1f}" for c in cols]
            fp = t["torch_fp32"] * 1e6
            out.append(f"| {r['model']} | {r['layer']} | {dims} | {fp:.0f} | " + " | ".join(cells) + " |")
        out.append("")
        out.append(f"### {threads} thread{'s' if threads > 1 else ''}: median µs, "
                   "effective GOPS (2·M·N·K / time), bit-serial as % of the popcount peak "
                   "(bit-MACs = M·N·K·b² per second over threads × the interleaved probe's rate)")
        out.append("")
        out.append("| model | layer | candidate | µs | GOPS | % popcount peak |")
        out.append("|---|---|---|---:|---:|---:|")
        for r in (r for r in rows if r["threads"] == threads):
            for c, t in r["times"].items():
                gops = 2 * macs(r) / t / 1e9
                pk = ""
                if c.startswith("bitserial"):
                    b = int(c.split("a")[-1])
                    pk = f"{100 * macs(r) * b * b / t / (r['probe_rate'] * threads):.0f}"
                out.append(f"| {r['model']} | {r['layer']} | {c} | {t * 1e6:.0f} | {gops:.0f} | {pk} |")
        out.append("")
    out.append("### Targets (DeiT-S, 1 thread, all six GEMMs of a block summed, packing included)")
    out.append("")
    out.append("auto = the engine `engine=\"auto\"` picks per layer (kernels.engine_for: linears and "
               "attention matmuls have separate tables). "
               "PyTorch's per-FLOP speed differs a lot between these shapes, so the last column also "
               "compares with an FP32 block that ran every GEMM at PyTorch's best rate in this table "
               "(2·MACs of the block / best FP32 GFLOPS of any DeiT-S GEMM).")
    out.append("")
    out.append("| bits | FP32 µs | bit-serial µs | int8 µs | auto µs | best exact path | speed-up | target "
               "| vs FP32 at its best rate |")
    out.append("|---|---:|---:|---:|---:|---|---:|---|---:|")
    targets = {1: 10.0, 2: 4.0, 4: 2.0}
    s1 = [r for r in rows if r["threads"] == min(r["threads"] for r in rows) and r["model"] == "deit_small"]
    if s1:
        fp = sum(r["times"]["torch_fp32"] for r in s1)
        best_rate = max(macs(r) / r["times"]["torch_fp32"] for r in s1)  # MAC/s
        fp_best = sum(macs(r) for r in s1) / best_rate
        for b in BITS:
            i8 = sum(r["times"][f"int8_w{b}a{b}"] for r in s1)
            bs = sum(r["times"][f"bitserial_w{b}a{b}"] for r in s1) if b != 8 else float("inf")
            auto = auto_time(s1, b, path)
            best, tb = min((("bit-serial", bs), ("int8", i8), ("auto (per layer)", auto)), key=lambda x: x[1])
            tgt = ""
            if b in targets:
                tgt = f"≥ {targets[b]:.0f}× ({'met' if fp / tb >= targets[b] else 'NOT met'})"
            bs_s = f"{bs * 1e6:.0f}" if b != 8 else "-"
            out.append(f"| W{b}A{b} | {fp * 1e6:.0f} | {bs_s} | {i8 * 1e6:.0f} | {auto * 1e6:.0f} | {best} "
                       f"| {fp / tb:.1f}× | {tgt} | {fp_best / tb:.1f}× |")
        out.append("")
        out.append(f"(FP32 at its best rate: {2 * best_rate / 1e9:.0f} GFLOPS, "
                   f"block {fp_best * 1e6:.0f} µs.)")
    out.append("")
    if float_rows:
        out.append("### Float ops of a DeiT-S block, 1 thread: native C vs numpy "
                   "(qvit_compile.intmodel.reference)")
        out.append("")
        out.append("| op | C µs | numpy µs | numpy / C |")
        out.append("|---|---:|---:|---:|")
        for name, c, npy in float_rows:
            out.append(f"| {name} | {c * 1e6:.0f} | {npy * 1e6:.0f} | {npy / c:.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    # Three thread pools (torch's OpenMP, ORT's, ours) take turns on the same cores: none may keep
    # spinning after its call, or the next candidate runs against a busy core.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    ap = argparse.ArgumentParser(prog="python -m qvit_compile.bench_kernels",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--path", default="auto",
                    help="force a kernel path (scalar, avx2, avx512, neon, neon_dot)")
    ap.add_argument("--out", help="also write the markdown tables to this file")
    args = ap.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        print(f"bench-kernels: needs torch and onnxruntime for the peers ({e}); pip install ./edge_runtime .",
              file=sys.stderr)
        return 2
    try:
        K.set_path(args.path)
    except ValueError as e:
        print(f"bench-kernels: {e}", file=sys.stderr)
        return 2
    path, peaks, rows = bench(args.models, args.threads, args.repeat)
    text = report(path, peaks, rows, args.repeat, bench_float_ops(args.repeat))
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
