"""`make bench` / `python -m qvit_compile.bench`: end-to-end latency of the compiled model.so against
PyTorch FP32 eager, ONNX Runtime FP32 and ONNX Runtime int8 (dynamic quantization) on the same
architecture, batch 1, at each thread count, all in one run, with the CPU and the instruction sets
found, and model.so's time per op kind (docs/bench.md has the results and how to read them).

Every contender runs the same random-weight architecture (no pretrained weights can be downloaded
here); latency does not depend on the weight values. Runs are interleaved (one run of each contender
per round) so a machine that gets busier mid-benchmark affects all of them alike; we report the
median over rounds and the ratios of medians.

python -m qvit_compile.bench --threads 1,2 --arch deit_small_patch16_224 --bits 2 --rounds 15
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np


def _parse_threads(s: str) -> list[int]:
    try:
        out = [int(v) for v in str(s).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads wants a list like 1,2; got {s!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError("--threads values must be >= 1")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qvit_compile.bench", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=_parse_threads, default=[1, 2], help="thread counts, e.g. 1,2")
    p.add_argument("--arch", default="deit_small_patch16_224")
    p.add_argument("--bits", type=int, default=2, help="weight and activation bits of the blocks")
    p.add_argument("--rounds", type=int, default=15, help="timed runs per contender and thread count")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="build/bench", help="folder for model.so, ONNX files, results.json")
    p.add_argument("--no-baselines", action="store_true", help="only the compiled model")
    p.add_argument("--warm-call", action="store_true",
                   help="one untimed call of the same contender right before each timed one (after the "
                        "settle pause): back-to-back latency, every thread pool awake; by default each timed "
                        "call follows the pause")
    return p


class Contender:
    name = ""

    def set_threads(self, n: int) -> None: ...

    def run(self, x: np.ndarray) -> None: ...


OURS = "model.so"


class ModelSo(Contender):
    def __init__(self, path: str):
        from qvit_edge import model
        self.name = OURS
        self.m = model.load(path)

    def set_threads(self, n):
        self.m.threads = n

    def run(self, x):
        self.m.run(x)


class TorchFP32(Contender):
    def __init__(self, arch: str):
        import timm
        import torch
        self.torch = torch
        self.name = "PyTorch FP32 eager"
        self.model = timm.create_model(arch, pretrained=False).eval()

    def set_threads(self, n):
        self.torch.set_num_threads(n)

    def run(self, x):
        with self.torch.inference_mode():
            self.model(self.torch.from_numpy(x))


def export_onnx(arch: str, folder: str, x: np.ndarray) -> tuple[str, str]:
    """timm model -> ONNX FP32 and its onnxruntime.quantization.quantize_dynamic int8 version (int8
    weights, int8 activations quantized on the fly: MatMulInteger / DynamicQuantizeLinear), once."""
    import timm
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    fp32 = os.path.join(folder, f"{arch}.fp32.onnx")
    int8 = os.path.join(folder, f"{arch}.int8.onnx")
    if not (os.path.exists(fp32) and os.path.exists(int8)):
        model = timm.create_model(arch, pretrained=False).eval()
        with quiet(os.path.join(folder, "onnx-export.log")), torch.no_grad():
            torch.onnx.export(model, torch.from_numpy(x), fp32, input_names=["x"], output_names=["y"],
                              opset_version=17, dynamo=False)
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
    return fp32, int8


class Ort(Contender):
    """An ONNX file in ONNX Runtime's CPU provider, all graph optimizations, sequential execution."""

    def __init__(self, name: str, path: str):
        import onnxruntime as ort
        self.ort = ort
        self.name = name
        self.path = path
        self.sessions = {}

    def set_threads(self, n):
        if n not in self.sessions:
            so = self.ort.SessionOptions()
            so.log_severity_level = 3  # errors only: its graph-optimizer notes are not results
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
            self.sessions[n] = self.ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.sess = self.sessions[n]

    def run(self, x):
        self.sess.run(None, {"x": x})


@contextlib.contextmanager
def quiet(log_path: str):
    """Send what the baselines' exporters print (TorchScript tracer warnings, ONNX Runtime's
    quantization advice; Python warnings, logging and C-level output alike) to log_path, so the
    benchmark's own lines are what the terminal shows. On failure the log's tail is shown."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    root = logging.getLogger()
    level = root.level
    with open(log_path, "w") as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            with open(log_path) as f:
                sys.stderr.write("".join(f.readlines()[-20:]))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            root.setLevel(level)


SETTLE_S = 0.2


def measure(contenders: list, threads: list[int], x: np.ndarray, rounds: int, warmup: int,
            warm_call: bool = False) -> dict:
    res: dict = {}
    for t in threads:
        for c in contenders:
            c.set_threads(t)
            for _ in range(warmup):
                c.run(x)
        times = {c.name: [] for c in contenders}
        for _ in range(rounds):
            for c in contenders:
                c.set_threads(t)
                # Let the previous contender's worker threads stop spinning (ONNX Runtime and
                # OpenMP spin-wait after a call), so no contender runs against another's pool.
                time.sleep(SETTLE_S)
                if warm_call:  # wakes its own pool (a VM's idle vCPU can take ms to come back)
                    c.run(x)
                t0 = time.perf_counter()
                c.run(x)
                times[c.name].append(time.perf_counter() - t0)
        res[t] = {k: {"median_ms": 1e3 * float(np.median(v)), "min_ms": 1e3 * float(np.min(v)),
                      "runs_ms": [round(1e3 * s, 3) for s in v]} for k, v in times.items()}
    return res


def per_layer(so_path: str, imodel, threads: list[int], rounds: int) -> dict:
    """Each linear layer of block 0, float input -> float output, as the model.so runs it (its pack
    and GEMM steps, LayerNorm/GELU/residual fused) against the native kernels of qvit_edge._native
    doing the same work (qv_layernorm when fused, qv_quantize, qv_bs_linear, qv_gelu when fused),
    at the same thread count on the same thread pool. Medians of `rounds` timings of 20 calls."""
    from qvit_edge import model as runtime

    so = runtime.load(so_path)
    nat, ffi, lib = so._nat, runtime._ffi, so._nat.lib

    def ptr(a, ctype):
        return nat.ffi.cast(ctype, nat.ffi.from_buffer(a))
    so.run(np.zeros((1,) + so.input_shape, np.float32))
    steps = so._plan["steps"]
    graph = {op["out"]: op for op in imodel.graph}
    out: dict = {}
    for t in threads:
        lib.qv_pool_set_threads(t)
        for st in steps:
            op = graph.get(st["op"])
            gemm = so._plan["kernels"][st["kernel"]]  # any GEMM engine's (compile/engines.py)
            if op is None or op["op"] != "qlinear" or not st["op"].startswith("blocks.0.") or \
                    not any(e in gemm for e in ("bitserial_gemm", "int8dot_gemm", "bsneon_gemm")):
                continue
            idx = [j for j, s2 in enumerate(steps) if s2["op"] == st["op"]]  # pack + gemm
            arr = ffi.new("qvit_tvm_step[]", len(idx))
            for k, j in enumerate(idx):
                arr[k] = so._steps[j]
            pa = nat.ffi.cast("void *", int(ffi.cast("uintptr_t", arr)))

            n_idx = len(idx)

            def ours(pa=pa, n=n_idx):
                lib.qvit_tvm_run(so._kernels, so._num_kernels, pa, n, nat.ffi.NULL, so._failed)

            prm = imodel.params(op)
            w = prm["weight"]
            n_out, k_in = w.shape
            m = int(np.prod(so._plan["tensors"][steps[idx[0]]["args"][0]]["shape"][:-1]))
            x = np.random.default_rng(0).standard_normal((m, k_in)).astype(np.float32)
            codes = np.zeros((m, k_in), np.uint8)
            y = np.zeros((m, n_out), np.float32)
            xn = np.zeros_like(x)
            ab, wb = int(op["a_bits"]), int(op["w_bits"])
            bw = np.zeros(lib.qv_bs_b_words(n_out, k_in, wb), np.uint64)
            bsum = np.zeros(n_out, np.int32)
            w8 = np.ascontiguousarray(w.view(np.uint8))
            lib.qv_bs_pack_b(ptr(w8, "uint8_t *"), n_out, k_in, k_in, wb, 1, ptr(bw, "uint64_t *"),
                             ptr(bsum, "int32_t *"))
            scale = (np.float32(prm["a_step"]) * prm["w_step"]).astype(np.float32)
            bias = prm.get("bias", np.zeros(n_out, np.float32)).astype(np.float32)
            ep = nat.ffi.new("qv_epilogue *")
            ep.scale, ep.bias = ptr(scale, "float *"), ptr(bias, "float *")
            ep.out_f, ep.ldo = ptr(y, "float *"), n_out
            ln = next((o for o in imodel.graph if o["out"] == op["in"] and o["op"] == "layernorm"), None)
            gelu = any(g["op"] == "gelu" and g["in"] == op["out"] for g in imodel.graph)
            fx, fxn, fc = ptr(x, "float *"), ptr(xn, "float *"), ptr(codes, "uint8_t *")
            lnp = {k: ptr(np.ascontiguousarray(v, np.float32), "float *")
                   for k, v in imodel.params(ln).items()} if ln else None
            pb, ps, py = ptr(bw, "uint64_t *"), ptr(bsum, "int32_t *"), ptr(y, "float *")
            a_step, a_zp = float(prm["a_step"]), int(prm["a_zp"])

            def native(ln=ln, gelu=gelu, fx=fx, fxn=fxn, fc=fc, lnp=lnp, m=m, k_in=k_in, n_out=n_out, ab=ab,
                       wb=wb, a_step=a_step, a_zp=a_zp, pb=pb, ps=ps, ep=ep, py=py):
                src = fx
                if ln is not None:
                    lib.qv_layernorm(fx, m, k_in, lnp["weight"], lnp["bias"], float(ln["eps"]), fxn)
                    src = fxn
                lib.qv_quantize(src, m * k_in, a_step, a_zp, ab, fc)
                lib.qv_bs_linear(fc, m, k_in, k_in, ab, a_zp, pb, ps, wb, 1, 0, n_out, ep)
                if gelu:
                    lib.qv_gelu(py, m * n_out, 10.0, py)

            res = {}
            for name, fn in (("model.so", ours), ("native", native)):
                fn()
                ts = []
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    for _ in range(20):
                        fn()
                    ts.append((time.perf_counter() - t0) / 20)
                res[name] = 1e3 * float(np.median(ts))
            label = f"{op['param']} M{m} K{k_in} N{n_out} W{wb}A{ab}" + (" +LN" if ln else "") + \
                (" +GELU" if gelu else "")
            out.setdefault(t, {})[label] = res
    so.close()
    return out


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    import timm

    from qvit.export import ExportError, export_random

    from .compiler import compile_model

    if not args.no_baselines and args.arch not in timm.list_models():
        print(f"bench: {args.arch} is not a timm model, which the PyTorch and ONNX Runtime baselines are "
              "built from; pick one (e.g. deit_small_patch16_224) or pass --no-baselines", file=sys.stderr)
        return 2

    so_path = os.path.join(args.out, f"{args.arch}_w{args.bits}a{args.bits}.x86_64.so")
    print(f"bench: on {_cpu_name()}, {os.cpu_count()} logical CPUs; instruction sets: "
          f"{', '.join(_isa()) or 'none of note'}", flush=True)
    print(f"bench: compiling {args.arch} W{args.bits}A{args.bits} (random weights) -> {so_path}", flush=True)
    try:
        model, _ = export_random(args.arch, args.bits)
    except ExportError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    compile_model(model, "x86_64", so_path, progress=lambda s: print(s, flush=True))
    c, h, w = model.input_shape
    x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    contenders = [ModelSo(so_path)]
    if not args.no_baselines:
        contenders.append(TorchFP32(args.arch))
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.out if os.access(args.out, os.W_OK) else tmp
            print("bench: PyTorch FP32, ONNX Runtime FP32 and int8 baselines (exporting ONNX once; its log: "
                  f"{os.path.join(folder, 'onnx-export.log')})", flush=True)
            fp32, int8 = export_onnx(args.arch, folder, x)
            contenders += [Ort("ONNX Runtime FP32", fp32), Ort("ONNX Runtime int8 (dynamic)", int8)]
            res = measure(contenders, args.threads, x, args.rounds, args.warmup, args.warm_call)
    else:
        res = measure(contenders, args.threads, x, args.rounds, args.warmup, args.warm_call)
    print("bench: model.so per op kind", flush=True)
    ops = per_op(so_path, args.threads, x, args.rounds)
    print("bench: per layer, model.so kernels vs the native kernels", flush=True)
    layers = per_layer(so_path, model, args.threads, max(5, args.rounds // 2))
    import onnxruntime
    import torch

    from qvit_edge.preflight import read_model_doc
    gemm = read_model_doc(so_path).get("gemm") or {}
    engines = sorted({row["engine"] for row in gemm.get("layers", [])})
    info = {"arch": args.arch, "bits": args.bits, "batch": 1, "rounds": args.rounds,
            "warm_call": args.warm_call, "cpu": _cpu_name(), "isa": _isa(),
            "cores": os.cpu_count(), "gemm_engines": engines,
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "command": "python -m qvit_compile.bench " +
            " ".join(sys.argv[1:] if argv is None else argv), "results": res, "per_op_ms": ops,
            "per_layer": layers}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(report(info))
    return 0


def per_op(so_path: str, threads: list[int], x: np.ndarray, rounds: int) -> dict:
    """model.so's time per op kind (the runtime's per-step timers), medians over `rounds` runs, ms."""
    from qvit_edge import model as runtime

    out: dict = {}
    with runtime.load(so_path, profile=True) as m:
        for t in threads:
            m.threads = t
            m.run(x)
            per_run: dict[str, list[float]] = {}
            for _ in range(rounds):
                m.reset_profile()
                m.run(x)
                for kind, s in m.profile().items():
                    per_run.setdefault(kind, []).append(1e3 * s)
            med = {k: float(np.median(v)) for k, v in per_run.items()}
            out[t] = dict(sorted(med.items(), key=lambda kv: -kv[1]))
    return out


def report(info: dict) -> str:
    lines = [f"{info['arch']} W{info['bits']}A{info['bits']}, batch 1, median of {info['rounds']} "
             f"interleaved runs{' (each after an untimed call)' if info.get('warm_call') else ''} "
             f"({info['cpu']}, {info['cores']} cores; "
             f"{', '.join(info.get('isa', [])) or 'no SIMD extensions of note'}; model.so GEMM engines: "
             f"{', '.join(info.get('gemm_engines', [])) or '?'})", "",
             "| threads | contender | median ms | min ms | model.so speed-up |", "|---|---|---|---|---|"]
    for t, r in info["results"].items():
        ours = r[OURS]["median_ms"]
        for name, v in r.items():
            lines.append(f"| {t} | {name} | {v['median_ms']:.1f} | {v['min_ms']:.1f} | "
                         f"{v['median_ms'] / ours:.2f}x |")
    if info.get("per_op_ms"):
        lines += ["", "model.so per op kind (the runtime's step timers), median ms:", "",
                  "| threads | " + " | ".join(next(iter(info["per_op_ms"].values()))) + " |",
                  "|---|" + "---|" * len(next(iter(info["per_op_ms"].values())))]
        for t, r in info["per_op_ms"].items():
            kinds = next(iter(info["per_op_ms"].values()))
            lines.append(f"| {t} | " + " | ".join(f"{r.get(k, 0.0):.2f}" for k in kinds) + " |")
    lines += ["", "Per layer (block 0, float in -> float out), median ms:", "",
              "| threads | layer | model.so | native | native / model.so |", "|---|---|---|---|---|"]
    for t, r in info.get("per_layer", {}).items():
        for label, v in r.items():
            lines.append(f"| {t} | {label} | {v['model.so']:.3f} | {v['native']:.3f} | "
                         f"{v['native'] / v['model.so']:.2f}x |")
    return "\n".join(lines)


# (flag in /proc/cpuinfo, name): what decides the engines' speed
_ISA_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512F"), ("avx512bw", "AVX-512BW"),
              ("avx512_vpopcntdq", "AVX-512 VPOPCNTDQ"), ("avx512_vnni", "AVX-512 VNNI"),
              ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8"), ("asimd", "NEON"),
              ("asimddp", "dot product (SDOT)"), ("i8mm", "I8MM"))


def _isa() -> list[str]:
    """The instruction sets among _ISA_FLAGS this CPU reports (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        return []
    return [name for flag, name in _ISA_FLAGS if flag in flags]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


if __name__ == "__main__":
    sys.exit(main())
