"""`qvit-edge bench model.so [--threads N] [--warmup W] [--runs R] [--json]`: latency, throughput, memory.

Like TFLite's benchmark_model and ONNX Runtime's perf test: after W warm-up runs, R timed
runs of one image (batch 1, a fixed random input already at the model's size, so decoding
is not measured) give the latency distribution (min / p50 / p90 / p99 / mean / max, in ms;
percentiles by linear interpolation, numpy's default), images per second (R / total time of
the timed runs), the process's peak RSS and its RSS before and after the timed runs (a
leak shows as growth), and a per-operator profile: time per op kind (layer kind) per
image, from the executor's per-step timers. JSON schema: docs/runtime.md.
"""
from __future__ import annotations

import json
import platform
import resource
import time

import numpy as np

from qvit_edge.clikit import UserError, nonneg_int, positive_int
from qvit_edge.preflight import check_threads, host_machine, open_model

SCHEMA = "qvit-edge.bench/1"


def add_arguments(p):
    p.add_argument("model", help="a model.so written by `make compile`")
    # >= 1 while parsing; the upper bound (the CPUs here) is check_threads' at run time
    p.add_argument("--threads", type=positive_int, default=1, help="worker threads (default 1)")
    p.add_argument("--warmup", type=nonneg_int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs (default 50)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="leave the per-operator timers off")
    p.add_argument("--json", action="store_true", help="print one JSON object (docs/runtime.md)")


def rss_mb() -> float | None:
    """Resident set size now (Linux /proc), in MB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 1e6
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def latency_stats(seconds: list[float]) -> dict:
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"min": float(ms.min()), "p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "max": float(ms.max())}


def bench(path: str, threads: int = 1, warmup: int = 5, runs: int = 50, profile: bool = True) -> dict:
    """Runs the benchmark; returns the bench JSON object."""
    if warmup < 0:
        raise UserError(f"--warmup {warmup}: must be 0 or more")
    if runs < 1:
        raise UserError(f"--runs {runs}: must be at least 1")
    rss_start = rss_mb()
    t0 = time.perf_counter()
    model = open_model(path, threads=threads, profile=profile)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        x = np.random.default_rng(0).standard_normal((1, *model.input_shape)).astype(np.float32)
        for _ in range(warmup):
            model.run(x)
        if profile:
            model.reset_profile()
        rss_before = rss_mb()
        times = []
        t_all = time.perf_counter()
        for _ in range(runs):
            t = time.perf_counter()
            model.run(x)
            times.append(time.perf_counter() - t)
        total = time.perf_counter() - t_all
        rss_after = rss_mb()
        prof = model.profile() if profile else {}
        meta = model.meta
    finally:
        model.close()
    per_image = {k: v * 1e3 / runs for k, v in sorted(prof.items(), key=lambda kv: -kv[1])}
    step_sum = sum(per_image.values())
    return {
        "schema": SCHEMA, "model": path, "arch": meta.get("arch"), "bits": meta.get("bits"),
        "target": meta.get("target"), "machine": host_machine(), "cpu": _cpu_name(), "core": arm_core(),
        "threads": threads, "batch": 1, "warmup": warmup, "runs": runs,
        "load_ms": load_ms,
        "latency_ms": latency_stats(times),
        "images_per_s": runs / total,
        "memory_mb": {"peak_rss": peak_rss_mb(), "rss_at_start": rss_start, "rss_before_runs": rss_before,
                      "rss_after_runs": rss_after},
        "profile_ms": per_image,
        "profile_share": {k: v / step_sum for k, v in per_image.items()} if step_sum > 0 else {},
    }


# ARM's part numbers (/proc/cpuinfo "CPU part") of the cores of Raspberry Pi-class boards.
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78", "0xd4b": "Cortex-A78C"}


def cpu_info() -> dict:
    """/proc/cpuinfo's first block and the board's 'Model' line (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, val = line.partition(":")
                if sep and key.strip() not in fields:
                    fields[key.strip()] = val.strip()
    except OSError:
        pass
    return fields


def arm_core() -> str | None:
    """The ARM core this runs on ("Cortex-A72" on a Pi 4), None elsewhere (and under qemu-user,
    which shows the host's /proc/cpuinfo)."""
    info = cpu_info()
    if "CPU implementer" not in info:
        return None
    return ARM_CORES.get(info.get("CPU part", "").lower(), f"ARM part {info.get('CPU part', '?')}")


def _cpu_name() -> str:
    """The board or CPU: "Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)", "AMD EPYC", ..."""
    info = cpu_info()
    core = arm_core()
    name = info.get("Model") or info.get("model name") or info.get("Hardware") or platform.processor() \
        or platform.machine()
    return f"{name} ({core})" if core and core not in name else name


def run(args) -> int:
    r = bench(args.model, threads=check_threads(args.threads), warmup=args.warmup, runs=args.runs,
              profile=args.profile)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    lat, mem = r["latency_ms"], r["memory_mb"]
    print(f"model      {r['model']} ({r['arch']}, bits {r['bits']})")
    print(f"machine    {r['machine']}, {r['cpu']}; {r['threads']} thread(s), batch 1, "
          f"{r['warmup']} warm-up + {r['runs']} timed runs; load {r['load_ms']:.0f} ms")
    print(f"latency    min {lat['min']:.2f}  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
          f"p99 {lat['p99']:.2f}  mean {lat['mean']:.2f} ms")
    print(f"throughput {r['images_per_s']:.1f} images/s")
    growth = "" if None in (mem["rss_before_runs"], mem["rss_after_runs"]) else \
        f", {mem['rss_after_runs'] - mem['rss_before_runs']:+.1f} MB over the timed runs"
    print(f"memory     peak RSS {mem['peak_rss']:.1f} MB{growth}")
    if r["profile_ms"]:
        print("profile    (ms per image by op kind)")
        w = max(len(k) for k in r["profile_ms"])
        for k, v in r["profile_ms"].items():
            print(f"  {k:<{w}}  {v:8.3f}  {100 * r['profile_share'][k]:5.1f}%")
    return 0
