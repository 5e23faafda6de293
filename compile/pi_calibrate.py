"""pi-estimate --calibrate: the same method on this machine, against its measured per-kernel time.

A host model.so (x86-64-v3: QEMU 7.2 emulates AVX2, not AVX-512) is counted under qemu-x86_64 and
timed by llvm-mca with this CPU's scheduling model (LLVM's name for the host CPU) at this core's
measured clock (native/tools/cpu_clock.c); the same file runs natively through the runtime's own
executor (1 thread). The error per op kind is (estimate - measured) / measured.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

from qvit_edge.clikit import UserError

from . import pi_cost, pi_mca, pi_trace

HOST_MCPU = "x86-64-v3"


def host_cpu_name() -> str:
    """LLVM's name for this CPU (its llvm-mca scheduling model), e.g. sapphirerapids."""
    llc = shutil.which("llc-19")
    if llc:
        r = subprocess.run([llc, "--version"], capture_output=True, text=True)
        m = re.search(r"Host CPU:\s*(\S+)", r.stdout)
        if m and m.group(1) != "generic":
            return m.group(1)
    return "native"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "?"
    get = {k: re.search(rf"^{k}\s*:\s*(.+)$", text, re.M) for k in ("model name", "cpu family", "model")}
    name = get["model name"].group(1).strip() if get["model name"] else "?"
    if get["cpu family"] and get["model"]:
        name += f" (family {get['cpu family'].group(1).strip()}, model {get['model'].group(1).strip()})"
    return name


def measure_clock_ghz() -> float:
    exe = pi_trace.build_tool("cpu_clock", shared=False)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    try:
        return float(r.stdout.strip())
    except ValueError:
        raise UserError(f"cpu_clock failed: {r.stderr.strip()[:200]}") from None


def host_model_for(meta: dict, cache_dir: str) -> str:
    """A host build (random weights) of the aarch64 model's architecture and bits."""
    arch, bits = meta.get("arch"), meta.get("bits", {})
    if bits.get("weight") != bits.get("act"):
        raise UserError("--calibrate without --host-model needs equal weight and activation bits")
    path = os.path.join(cache_dir, f"{arch}_w{bits['weight']}a{bits['act']}.{HOST_MCPU}.so")
    if os.path.exists(path):
        return path
    try:
        from qvit.export import export_random
    except ImportError as e:
        raise UserError(f"building a host model needs the training side (torch, timm): {e}; "
                        f"or give --host-model") from None
    from .compiler import compile_model
    try:
        model, _ = export_random(arch, int(bits["weight"]))
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot build {arch} for the host ({e}); give --host-model") from None
    os.makedirs(cache_dir, exist_ok=True)
    compile_model(model, "x86_64", path + ".tmp", mcpu=HOST_MCPU, progress=lambda *a: None)
    os.replace(path + ".tmp", path)
    return path


def measure_host(path: str, runs: int) -> dict:
    """ms per op kind, natively, 1 thread: the runtime's per-step timers (what `qvit-edge bench --json`
    reports as profile_ms) split the inference; its total is the thread's CPU time of the fastest
    run, so other processes on a busy machine (preemption) do not count."""
    import time

    import numpy as np

    from qvit_edge.preflight import open_model

    with open_model(path, threads=1, profile=True) as m:
        x = np.random.default_rng(0).standard_normal((1,) + tuple(m.input_shape)).astype(np.float32)
        m.run(x)  # warm-up
        m.reset_profile()
        best = float("inf")
        for _ in range(runs):
            t0 = time.thread_time()
            m.run(x)
            best = min(best, time.thread_time() - t0)
        prof = m.profile()
    wall = sum(prof.values())
    return {k: v / wall * best * 1e3 for k, v in prof.items()} if wall else {}


def calibrate(host_model: str, workdir: str, cache_path: str, runs: int = 20) -> dict:
    from qvit_edge.preflight import verify_model_file

    mf = verify_model_file(host_model, machine="x86_64")
    if (mf.doc.get("target") or {}).get("mcpu") not in (HOST_MCPU, "x86-64-v2", "x86-64"):
        raise UserError(f"{host_model}: built for {mf.doc['target'].get('mcpu')}; qemu-x86_64 needs a model "
                        f"built with --mcpu {HOST_MCPU}")
    mcpu = host_cpu_name()
    trace = pi_trace.count_inference("x86_64", host_model, 1, os.path.join(workdir, "host"))
    labelled = pi_cost.label_trace(trace, host_model)
    res = pi_cost.estimate_cycles([labelled], pi_mca.Analyzer("x86_64", mcpu, cache_path))
    ghz = measure_clock_ghz()
    measured = measure_host(host_model, runs)
    ghz = max(ghz, measure_clock_ghz())  # the clock can only be underestimated by preemption
    est = {k: c / (ghz * 1e6) for k, c in res["cycles"][1].items() if k != pi_cost.OVERHEAD}
    kinds = sorted(set(est) | set(measured), key=lambda k: -measured.get(k, 0.0))
    rows = []
    for k in kinds:
        e, m = est.get(k, 0.0), measured.get(k, 0.0)
        rows.append({"kind": k, "estimated_ms": e, "measured_ms": m, "error": (e - m) / m if m else None})
    te, tm = sum(est.values()), sum(measured.values())
    weighted = sum(abs(r["estimated_ms"] - r["measured_ms"]) for r in rows) / tm if tm else None
    total = {"estimated_ms": te, "measured_ms": tm, "error": (te - tm) / tm if tm else None}
    return {"host_model": host_model, "host_cpu": cpu_model(), "mca_model": mcpu, "clock_ghz": ghz,
            "kinds": rows, "total": total,
            "abs_error_share": weighted, "coverage": res["coverage"],
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
