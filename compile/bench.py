"""`make bench` / `python -m qvit_compile.bench`: end-to-end latency of the compiled model.so against
PyTorch FP32 eager and ONNX Runtime int8 (dynamic quantization) on the same architecture, batch 1,
at each thread count, all in one run (docs/bench.md has the results and how to read them).

Every contender runs the same random-weight architecture (no pretrained weights can be downloaded
here); latency does not depend on the weight values. Runs are interleaved (one run of each contender
per round) so a machine that gets busier mid-benchmark affects all of them alike; we report the
median over rounds and the ratios of medians.

python -m qvit_compile.bench --threads 1,2 --arch deit_small_patch16_224 --bits 2 --rounds 15
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

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
    return p


class Contender:
    name = ""

    def set_threads(self, n: int) -> None: ...

    def run(self, x: np.ndarray) -> None: ...


class ModelSo(Contender):
    def __init__(self, path: str):
        from qvit_edge import model
        self.name = "model.so (TVM, bit-serial)"
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


class OrtInt8(Contender):
    """timm model -> ONNX (FP32) -> onnxruntime.quantization.quantize_dynamic (int8 weights, int8
    activations quantized on the fly: MatMulInteger / DynamicQuantizeLinear)."""

    def __init__(self, arch: str, folder: str, x: np.ndarray):
        import onnxruntime as ort
        import timm
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        self.ort = ort
        self.name = "ONNX Runtime int8 (dynamic)"
        fp32 = os.path.join(folder, f"{arch}.fp32.onnx")
        int8 = os.path.join(folder, f"{arch}.int8.onnx")
        if not os.path.exists(int8):
            model = timm.create_model(arch, pretrained=False).eval()
            with torch.no_grad():
                torch.onnx.export(model, torch.from_numpy(x), fp32, input_names=["x"], output_names=["y"],
                                  opset_version=17, dynamo=False)
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
        self.path = int8
        self.sessions = {}

    def set_threads(self, n):
        if n not in self.sessions:
            so = self.ort.SessionOptions()
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            so.execution_mode = self.ort.ExecutionMode.ORT_SEQUENTIAL
            self.sessions[n] = self.ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.sess = self.sessions[n]

    def run(self, x):
        self.sess.run(None, {"x": x})


def measure(contenders: list, threads: list[int], x: np.ndarray, rounds: int, warmup: int) -> dict:
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
                t0 = time.perf_counter()
                c.run(x)
                times[c.name].append(time.perf_counter() - t0)
        res[t] = {k: {"median_ms": 1e3 * float(np.median(v)), "min_ms": 1e3 * float(np.min(v)),
                      "runs_ms": [round(1e3 * s, 3) for s in v]} for k, v in times.items()}
    return res


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    from qvit.export import export_random

    from .compiler import compile_model

    so_path = os.path.join(args.out, f"{args.arch}_w{args.bits}a{args.bits}.x86_64.so")
    print(f"bench: compiling {args.arch} W{args.bits}A{args.bits} (random weights) -> {so_path}", flush=True)
    model, _ = export_random(args.arch, args.bits)
    compile_model(model, "x86_64", so_path, progress=lambda s: print(s, flush=True))
    c, h, w = model.input_shape
    x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
    contenders = [ModelSo(so_path)]
    if not args.no_baselines:
        print("bench: PyTorch FP32 and ONNX Runtime int8 baselines (exporting ONNX once)", flush=True)
        contenders.append(TorchFP32(args.arch))
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.out if os.access(args.out, os.W_OK) else tmp
            contenders.append(OrtInt8(args.arch, folder, x))
            res = measure(contenders, args.threads, x, args.rounds, args.warmup)
    else:
        res = measure(contenders, args.threads, x, args.rounds, args.warmup)
    import onnxruntime
    import torch
    info = {"arch": args.arch, "bits": args.bits, "batch": 1, "rounds": args.rounds, "cpu": _cpu_name(),
            "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "command": "python -m qvit_compile.bench " +
            " ".join(sys.argv[1:] if argv is None else argv), "results": res}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(info, f, indent=1)
    print(report(info))
    return 0


def report(info: dict) -> str:
    lines = [f"{info['arch']} W{info['bits']}A{info['bits']}, batch 1, median of {info['rounds']} "
             f"interleaved runs ({info['cpu']}, {info['cores']} cores)", "",
             "| threads | contender | median ms | min ms | model.so speed-up |", "|---|---|---|---|---|"]
    for t, r in info["results"].items():
        ours = r["model.so (TVM, bit-serial)"]["median_ms"]
        for name, v in r.items():
            lines.append(f"| {t} | {name} | {v['median_ms']:.1f} | {v['min_ms']:.1f} | "
                         f"{v['median_ms'] / ours:.2f}x |")
    return "\n".join(lines)


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
