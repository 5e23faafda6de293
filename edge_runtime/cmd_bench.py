"""`qvit-edge bench model.so [...]`: latency, throughput, memory and a per-op profile of a model.so.

Like TFLite's benchmark_model, ONNX Runtime's perf test and ncnn's benchncnn: the model is loaded
(init time), run once (first-inference time, reported apart: cold caches, the thread pool
starting), then W warm-up runs, then timed runs of one input until at least --runs runs and
--min-secs seconds are done, or --max-secs seconds have passed (at least one run). Each run is
timed on its own with `time.perf_counter`; the report gives min / p50 / p90 / p95 / p99 / p999 /
mean / std / max (ms; percentiles by linear interpolation, numpy's default), images per second,
the process's peak RSS and its RSS before and after the timed runs (a leak shows as growth), and
a per-operator profile from the executor's per-step timers: by op kind, per plan step (--csv),
as a timeline of the last timed runs (--trace, Chrome's trace format) and as a chart (--plot).

The input is a fixed random tensor already at the model's size (decoding is not measured), or
--input IMAGE prepared exactly as `qvit-edge run` and the Python API prepare it. --batch N runs
N images per call. --cpus pins the process (and so the worker threads it starts) to some CPUs
(big.LITTLE boards), --cooldown sleeps between timed runs (a Pi that throttles when hot).
JSON schema: docs/runtime.md.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import resource
import sys
import time

import numpy as np

from qvit_edge.clikit import (
    UserError,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
    writable_file_path,
)
from qvit_edge.preflight import check_threads, host_machine, open_model

SCHEMA = "qvit-edge.bench/2"
TRACE_RUNS = 10  # --trace: the last this many timed image runs
DEFAULT_PLOT = "bench-profile.png"
STDOUT = "-"


def cpu_list(s: str) -> list[int]:
    """--cpus: "0-3", "4,5", "0-1,3" -> sorted CPU numbers (argparse type)."""
    cpus: set[int] = set()
    for part in s.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            a = int(lo)
            b = int(hi) if dash else a
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a CPU list like 0-3 or 4,5 or 0-1,3") from None
        if a < 0 or b < a:
            raise argparse.ArgumentTypeError(f"{part!r} in {s!r} is not a CPU range (low-high, low <= high)")
        cpus.update(range(a, b + 1))
    return sorted(cpus)


def format_cpus(cpus) -> str:
    """[0, 1, 2, 3, 6] -> "0-3,6"."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def add_arguments(p):
    p.add_argument("model", help="a model.so written by `make compile`")
    # >= 1 while parsing; the upper bound (the CPUs here) is check_threads' at run time
    p.add_argument("--threads", type=positive_int, default=1, help="worker threads (default 1)")
    p.add_argument("--warmup", type=nonneg_int, default=5,
                   help="untimed runs after the first inference (default 5)")
    p.add_argument("--runs", type=positive_int, default=50, help="timed runs, at least (default 50)")
    p.add_argument("--min-secs", type=nonneg_float, default=0.0,
                   help="keep running until the timed runs took this long (default 0: exactly --runs)")
    p.add_argument("--max-secs", type=positive_float, default=150.0,
                   help="stop the timed runs after this long even before --runs (at least one run; "
                        "default 150, as benchmark_model)")
    p.add_argument("--batch", type=positive_int, default=1, help="images per call (default 1)")
    p.add_argument("--input", metavar="IMAGE", help="benchmark on this image (prepared as `run` does) "
                   "instead of a fixed random input")
    p.add_argument("--cpus", type=cpu_list, metavar="LIST",
                   help="run on these CPUs only: 0-3, 4,5, 0-1,3 (sched_setaffinity; big.LITTLE boards)")
    p.add_argument("--cooldown", type=nonneg_float, default=0.0, metavar="SECS",
                   help="sleep this long between timed runs (not timed; default 0)")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="leave the per-operator timers off")
    p.add_argument("--csv", nargs="?", const=STDOUT, type=writable_file_path, metavar="FILE",
                   help="per-step profile as CSV to FILE, or alone: to stdout instead of the report")
    p.add_argument("--trace", type=writable_file_path, metavar="FILE",
                   help=f"Chrome trace JSON (chrome://tracing, Perfetto) of the last {TRACE_RUNS} timed runs")
    p.add_argument("--plot", nargs="?", const=DEFAULT_PLOT, type=writable_file_path, metavar="FILE",
                   help=f"bar chart of the per-op profile (PNG; default {DEFAULT_PLOT}; needs matplotlib)")
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


def latency_stats(seconds, scale: float = 1.0) -> dict:
    """min / p50 / p90 / p95 / p99 / p999 / mean / std (population) / max in ms, each times scale."""
    ms = np.asarray(seconds, np.float64) * 1e3 * scale
    pct = {f"p{k}": float(np.percentile(ms, q)) for k, q in (("50", 50), ("90", 90), ("95", 95), ("99", 99),
                                                             ("999", 99.9))}
    return {"min": float(ms.min()), **pct, "mean": float(ms.mean()), "std": float(ms.std()),
            "max": float(ms.max())}


def set_cpus(cpus: list[int] | None) -> list[int] | None:
    """Pins this process to `cpus` (before the model and its worker threads start, which inherit
    it); returns the CPUs it may run on now (None where the OS does not say)."""
    getaff = getattr(os, "sched_getaffinity", None)
    if cpus is None:
        try:
            return sorted(getaff(0)) if getaff else None
        except OSError:
            return None
    if getaff is None or not hasattr(os, "sched_setaffinity"):
        raise UserError("--cpus: this system has no CPU affinity (os.sched_setaffinity)")
    allowed = set(getaff(0))
    missing = [c for c in cpus if c not in allowed]
    if missing:
        raise UserError(f"--cpus {format_cpus(cpus)}: CPU {format_cpus(missing)} not available "
                        f"(available: {format_cpus(allowed)})")
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise UserError(f"--cpus {format_cpus(cpus)}: cannot pin to them ({e.strerror or e})") from None
    return sorted(getaff(0))


def _input(model, image: str | None, batch: int) -> np.ndarray:
    if image is None:
        return np.random.default_rng(0).standard_normal((batch, *model.input_shape)).astype(np.float32)
    from qvit_edge.api import ImageClassifier

    x = ImageClassifier(model, model.path).prepare(image)
    return np.ascontiguousarray(np.broadcast_to(x, (batch, *x.shape)))


def bench(path: str, threads: int = 1, warmup: int = 5, runs: int = 50, profile: bool = True, *,
          min_secs: float = 0.0, max_secs: float | None = 150.0, batch: int = 1, image: str | None = None,
          cpus: list[int] | None = None, cooldown: float = 0.0, trace_runs: int = 0) -> dict:
    """Runs the benchmark; returns the bench JSON object (with "_trace": the recorded stamps when
    trace_runs > 0, which the caller turns into a Chrome trace and drops)."""
    if warmup < 0:
        raise UserError(f"--warmup {warmup}: must be 0 or more")
    if runs < 1:
        raise UserError(f"--runs {runs}: must be at least 1")
    if batch < 1:
        raise UserError(f"--batch {batch}: must be at least 1")
    if min_secs < 0 or cooldown < 0 or (max_secs is not None and max_secs <= 0):
        raise UserError("--min-secs and --cooldown must be >= 0, --max-secs > 0")
    if trace_runs and not profile:
        raise UserError("--trace needs the per-step timers: drop --no-profile")
    on_cpus = set_cpus(cpus)
    if cpus is not None and threads > len(on_cpus):
        raise UserError(f"--threads {threads}: more than the {len(on_cpus)} CPU(s) of --cpus "
                        f"{format_cpus(on_cpus)}")
    threads = check_threads(threads)
    rss_start = rss_mb()
    t0 = time.perf_counter()
    model = open_model(path, threads=threads, profile=profile)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        x = _input(model, image, batch)
        t = time.perf_counter()
        model.run(x)
        first_ms = (time.perf_counter() - t) * 1e3
        warm = []
        for _ in range(warmup):
            t = time.perf_counter()
            model.run(x)
            warm.append(time.perf_counter() - t)
        if profile:
            model.reset_profile()
        if trace_runs:
            model.record_trace(trace_runs)
        rss_before = rss_mb()
        times: list[float] = []
        stopped_by = "runs"  # what ended the timed runs: runs, min_secs (kept going), max_secs (cut)
        t_all = time.perf_counter()
        while True:
            if times and cooldown:
                time.sleep(cooldown)
            t = time.perf_counter()
            model.run(x)
            times.append(time.perf_counter() - t)
            elapsed = time.perf_counter() - t_all
            if len(times) >= runs and elapsed >= min_secs:
                stopped_by = "min_secs" if len(times) > runs else "runs"
                break
            if max_secs is not None and elapsed >= max_secs:
                stopped_by = "max_secs"
                break
        wall = time.perf_counter() - t_all
        rss_after = rss_mb()
        prof = model.profile() if profile else {}
        steps_s = model.step_profile() if profile else []
        stamps = model.trace() if trace_runs else []
        plan_steps = model.steps
        kernels = list(model._plan.get("kernels") or [])
        meta = model.meta
    finally:
        model.close()
    n_images = len(times) * batch
    per_image = {k: v * 1e3 / n_images for k, v in sorted(prof.items(), key=lambda kv: -kv[1])}
    step_sum = sum(per_image.values())
    steps = []
    for i, (st, s) in enumerate(zip(plan_steps, steps_s)):
        ms = s * 1e3 / n_images
        k = st.get("kernel")
        steps.append({"index": i, "kind": st.get("kind"), "op": st.get("op"),
                      "kernel": kernels[k] if isinstance(k, int) and 0 <= k < len(kernels) else None,
                      "ms": ms, "share": ms / step_sum if step_sum > 0 else 0.0})
    r = {
        "schema": SCHEMA, "model": path, "arch": meta.get("arch"), "bits": meta.get("bits"),
        "target": meta.get("target"), "machine": host_machine(), "cpu": _cpu_name(), "core": arm_core(),
        "threads": threads, "batch": batch, "warmup": warmup, "runs": len(times),
        "runs_requested": runs, "min_secs": min_secs, "max_secs": max_secs, "stopped_by": stopped_by,
        "cooldown_s": cooldown, "cpus": on_cpus, "input": image if image is not None else "random",
        "load_ms": load_ms, "init_ms": load_ms,
        "first_inference_ms": first_ms,
        "warmup_mean_ms": float(np.mean(warm) * 1e3) if warm else None,
        "latency_ms": latency_stats(times),
        "latency_per_image_ms": latency_stats(times, 1.0 / batch),
        "timed_s": float(sum(times)), "wall_s": wall,
        "images_per_s": n_images / sum(times),
        "memory_mb": {"peak_rss": peak_rss_mb(), "rss_at_start": rss_start, "rss_before_runs": rss_before,
                      "rss_after_runs": rss_after},
        "profile_ms": per_image,
        "profile_share": {k: v / step_sum for k, v in per_image.items()} if step_sum > 0 else {},
        "profile_steps": steps,
    }
    if trace_runs:
        r["_trace"] = stamps
    return r


# ------------------------------------------------------------------------------------ outputs

CSV_FIELDS = ("index", "kind", "op", "kernel", "ms_per_image", "share_pct")


def profile_csv(r: dict) -> str:
    """One row per plan step: index, kind, op (the layer it belongs to), kernel, ms per image, share %."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for s in r["profile_steps"]:
        w.writerow([s["index"], s["kind"], s["op"] or "", s["kernel"] or "", f"{s['ms']:.6f}",
                    f"{100 * s['share']:.3f}"])
    return buf.getvalue()


def chrome_trace(r: dict, stamps: list) -> dict:
    """Chrome's trace event format (chrome://tracing, ui.perfetto.dev): one complete event ("ph": "X")
    per step of each recorded run, at the start and for the duration the executor measured (us, from
    the first recorded step), name = op kind; one enclosing event per run on its own row."""
    steps = r["profile_steps"]
    origin = min((float(a[0, 0]) for a in stamps), default=0.0)
    events = [{"ph": "M", "pid": 1, "name": "process_name",
               "args": {"name": f"qvit-edge bench {r['model']}"}},
              {"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "runs"}},
              {"ph": "M", "pid": 1, "tid": 2, "name": "thread_name", "args": {"name": "steps"}}]
    for j, a in enumerate(stamps):
        us = (a - origin) * 1e6
        events.append({"name": f"run {j}", "cat": "run", "ph": "X", "pid": 1, "tid": 1, "ts": float(us[0, 0]),
                       "dur": float(us[-1, 1] - us[0, 0]), "args": {"run": j}})
        for i, st in enumerate(steps):
            events.append({"name": st["kind"], "cat": "step", "ph": "X", "pid": 1, "tid": 2,
                           "ts": float(us[i, 0]), "dur": float(us[i, 1] - us[i, 0]),
                           "args": {"step": i, "op": st["op"], "kernel": st["kernel"], "run": j}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"schema": SCHEMA, "model": r["model"], "arch": r["arch"], "threads": r["threads"],
                          "cpu": r["cpu"], "clock": "CLOCK_MONOTONIC, from the first recorded step"}}


def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("--plot needs matplotlib (pip install matplotlib)") from None
    return Figure, FigureCanvasAgg


MAX_PLOT_STEPS = 40


def plot_profile(r: dict, path: str) -> None:
    """PNG: ms per image by op kind, and the slowest plan steps (at most MAX_PLOT_STEPS)."""
    Figure, FigureCanvasAgg = _matplotlib()
    kinds = list(r["profile_ms"].items())[::-1]
    steps = sorted(r["profile_steps"], key=lambda s: -s["ms"])[:MAX_PLOT_STEPS][::-1]
    h1, h2 = 0.6 + 0.3 * len(kinds), 0.6 + 0.22 * len(steps)
    fig = Figure(figsize=(9, 1.2 + h1 + h2))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [h1, h2]})
    ax1.barh([k for k, _ in kinds], [v for _, v in kinds], color="tab:blue")
    for i, (_, v) in enumerate(kinds):
        ax1.text(v, i, f" {v:.3f} ({100 * r['profile_share'].get(kinds[i][0], 0):.0f}%)", va="center",
                 fontsize=8)
    ax1.set_xlabel("ms per image")
    ax1.set_title(f"{r['arch']} on {r['cpu']}, {r['threads']} thread(s), batch {r['batch']}: "
                  f"p50 {r['latency_per_image_ms']['p50']:.2f} ms/image", fontsize=9)
    labels = [f"{s['index']} {s['op'] or s['kind']} ({s['kernel'] or s['kind']})" for s in steps]
    ax2.barh(labels, [s["ms"] for s in steps], color="tab:orange")
    ax2.tick_params(axis="y", labelsize=7)
    ax2.set_xlabel(f"ms per image, plan steps (slowest {len(steps)} of {len(r['profile_steps'])})")
    fig.tight_layout()
    try:
        fig.savefig(path, format="png", dpi=100)
    except OSError as e:
        raise UserError(f"--plot {path}: cannot write ({e.strerror or e})") from None


def _write(path: str, text: str, flag: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write ({e.strerror or e})") from None


def run(args) -> int:
    csv_out, plot_out, trace_out = args.csv, args.plot, args.trace
    if not args.profile and (csv_out or plot_out or trace_out):
        flag = "--csv" if csv_out else "--plot" if plot_out else "--trace"
        raise UserError(f"{flag} needs the per-op timers: drop --no-profile")
    if csv_out == STDOUT and args.json:
        raise UserError("--csv without a file prints the CSV on stdout, as --json does: give --csv FILE")
    if plot_out:
        _matplotlib()  # before the benchmark, not after it
    r = bench(args.model, threads=args.threads, warmup=args.warmup, runs=args.runs, profile=args.profile,
              min_secs=args.min_secs, max_secs=args.max_secs, batch=args.batch, image=args.input,
              cpus=args.cpus, cooldown=args.cooldown, trace_runs=TRACE_RUNS if trace_out else 0)
    stamps = r.pop("_trace", [])
    notes = []
    if trace_out:
        _write(trace_out, json.dumps(chrome_trace(r, stamps)), "--trace")
        notes.append(f"trace      {trace_out} ({len(stamps)} runs; chrome://tracing or ui.perfetto.dev)")
    if csv_out and csv_out != STDOUT:
        _write(csv_out, profile_csv(r), "--csv")
        notes.append(f"csv        {csv_out} ({len(r['profile_steps'])} steps)")
    if plot_out:
        plot_profile(r, plot_out)
        notes.append(f"plot       {plot_out}")
    if args.json:
        print(json.dumps(r, indent=2))
    elif csv_out == STDOUT:
        sys.stdout.write(profile_csv(r))
    else:
        _print_report(r)
    for n in notes:
        print(n, file=sys.stderr if (args.json or csv_out == STDOUT) else sys.stdout)
    return 0


def _print_report(r: dict) -> None:
    lat, img, mem = r["latency_ms"], r["latency_per_image_ms"], r["memory_mb"]
    stop = {"runs": "", "min_secs": f", kept on for --min-secs {r['min_secs']:g}",
            "max_secs": f", cut by --max-secs {r['max_secs']:g}"}[r["stopped_by"]]
    cpus = f" on CPUs {format_cpus(r['cpus'])}" if r["cpus"] else ""
    print(f"model      {r['model']} ({r['arch']}, bits {r['bits']})")
    print(f"machine    {r['machine']}, {r['cpu']}; {r['threads']} thread(s){cpus}, batch {r['batch']}, "
          f"input {r['input']}")
    print(f"runs       {r['runs']} timed ({r['runs_requested']} asked{stop}) in {r['wall_s']:.2f} s, "
          f"after 1 first + {r['warmup']} warm-up" + (f"; {r['cooldown_s']:g} s cool-down between runs"
                                                      if r["cooldown_s"] else ""))
    warm = f"{r['warmup_mean_ms']:.2f} ms" if r["warmup_mean_ms"] is not None else "-"
    print(f"init       {r['init_ms']:.1f} ms; first inference {r['first_inference_ms']:.2f} ms; "
          f"warm-up mean {warm}")
    per = " per call" if r["batch"] > 1 else ""
    print(f"latency    min {lat['min']:.2f}  p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  "
          f"p95 {lat['p95']:.2f}  p99 {lat['p99']:.2f}  p999 {lat['p999']:.2f}  max {lat['max']:.2f}  "
          f"mean {lat['mean']:.2f}  std {lat['std']:.2f} ms{per}")
    if r["batch"] > 1:
        print(f"per image  min {img['min']:.3f}  p50 {img['p50']:.3f}  mean {img['mean']:.3f} ms")
    print(f"throughput {r['images_per_s']:.1f} images/s")
    growth = "" if None in (mem["rss_before_runs"], mem["rss_after_runs"]) else \
        f", {mem['rss_after_runs'] - mem['rss_before_runs']:+.1f} MB over the timed runs"
    print(f"memory     peak RSS {mem['peak_rss']:.1f} MB{growth}")
    if r["profile_ms"]:
        print("profile    (ms per image by op kind)")
        w = max(len(k) for k in r["profile_ms"])
        for k, v in r["profile_ms"].items():
            print(f"  {k:<{w}}  {v:8.3f}  {100 * r['profile_share'][k]:5.1f}%")


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
