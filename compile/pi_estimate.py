"""A Raspberry Pi latency ESTIMATE of an aarch64 model.so, without a board (make pi-estimate).

    python -m qvit_compile.pi_estimate MODEL [--cpu cortex-a72|cortex-a76] [--threads 1,4] [--json]
                                             [--calibrate [--host-model HOST.so]]

A latency ESTIMATE of an aarch64 model.so on a Raspberry Pi, made without a board: one inference runs
under qemu-user with a plugin that counts every executed block of machine code (pi_trace), each hot
block is timed by llvm-mca on the core's scheduling model (pi_mca), and the cycles, attributed to the
plan's op kinds (pi_cost), are turned into milliseconds at the board's clock. --calibrate runs the
same method on this machine against its measured per-kernel time (pi_calibrate). docs/pi-estimate.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from qvit_edge.clikit import UserError, parse_args, safe_stdio

from . import pi_cost, pi_mca, pi_trace

SCHEMA = "qvit.pi-estimate/1"
PROG = "pi-estimate"
# The Pi's core -> the board, its clock, and LLVM's scheduling model for it (LLVM models the A72 with
# the A57's, and the A76 with the Neoverse N1's, the server core derived from it).
CPUS = {
    "cortex-a72": {"board": "Raspberry Pi 4", "core": "Cortex-A72", "ghz": 1.8, "mca": "cortex-a57"},
    "cortex-a76": {"board": "Raspberry Pi 5", "core": "Cortex-A76", "ghz": 2.4, "mca": "neoverse-n1"},
}
NEEDS_A76 = ("cortex-a76", "cortex-a78", "neoverse-n1", "cortex-x1", "cortex-a55")  # dot product and later
ASSUMPTIONS = [
    "every load and store hits the L1 cache (all in cache), every branch is predicted",
    "no thermal throttling: the core runs at the clock above throughout",
    "each block costs its steady-state cycles from llvm-mca's scheduling model of the core",
    "N threads: the latency is the main thread's work (task 0, a full chunk of every parallel loop, plus "
    "all serial work); thread wake-up, barriers and shared memory bandwidth cost nothing",
    "one image, batch 1, after nothing else ran (no warm-up); the Python runtime's own overhead is shown "
    "apart and not in the total",
]
ROOT = pi_trace.ROOT
DEFAULT_DIR = os.path.join(ROOT, "build", "pi-estimate")


def thread_list(text: str) -> list:
    try:
        ts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give thread counts like 1,4") from None
    if not ts or any(not 1 <= t <= 16 for t in ts):
        raise argparse.ArgumentTypeError(f"{text!r}: thread counts from 1 to 16")
    return sorted(set(ts))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m qvit_compile.pi_estimate",
                                description=__doc__.splitlines()[0])
    p.add_argument("model", help="an aarch64 model.so (make compile TARGET=aarch64); with --calibrate an "
                                 "x86-64-v3 model.so runs the calibration alone")
    p.add_argument("--cpu", choices=sorted(CPUS), default="cortex-a72",
                   help="cortex-a72: Raspberry Pi 4 at 1.8 GHz (default); cortex-a76: Pi 5 at 2.4 GHz")
    p.add_argument("--threads", type=thread_list, default=[1, 4], help="thread counts (default 1,4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--calibrate", action="store_true",
                   help="also run the method on this machine against its measured per-kernel time")
    p.add_argument("--host-model", help="with --calibrate: the x86-64-v3 model.so to use (default: built "
                                        "from the model's architecture and bits with random weights)")
    p.add_argument("--coverage", type=float, default=0.995,
                   help="share of executed instructions timed by llvm-mca (default 0.995)")
    p.add_argument("--workdir", default=DEFAULT_DIR,
                   help="counts, llvm-mca cache and host models (default build/pi-estimate)")
    return p


def _machine(path: str) -> str:
    from qvit_edge.preflight import verify_model_file

    return verify_model_file(path, machine="any").elf.machine


def check_model(path: str, cpu: str) -> dict:
    from qvit_edge.preflight import verify_model_file

    mf = verify_model_file(path, machine="any")  # PreflightError (one line) when not a model.so
    if mf.elf.machine != "aarch64":
        raise UserError(f"{path}: a model for {mf.elf.machine}; pi-estimate needs an aarch64 model.so "
                        f"(make compile TARGET=aarch64 MODEL=...)")
    doc = dict(mf.doc)
    built = (doc.get("target") or {}).get("mcpu", "?")
    if cpu == "cortex-a72" and built in NEEDS_A76:
        raise UserError(f"{path}: compiled for {built}, which a Raspberry Pi 4 (Cortex-A72) cannot run; "
                        f"use --cpu cortex-a76 or a model compiled for cortex-a72")
    return doc


def _work(by_label: dict) -> int:
    return sum(v for k, v in by_label.items() if k not in (pi_cost.SYNC, pi_cost.OVERHEAD))


def estimate(path: str, cpu: str, threads: list, workdir: str, coverage: float = 0.995,
             progress=lambda s: None) -> dict:
    doc = check_model(path, cpu)
    pi_mca.tools()  # every tool is there before the long emulated runs start
    pi_trace.need_qemu("aarch64")
    spec = CPUS[cpu]
    name = os.path.splitext(os.path.basename(path))[0]
    labelled = []
    for t in threads:
        progress(f"{PROG}: counting one inference with {t} thread(s) under qemu-aarch64 ...")
        trace = pi_trace.count_inference("aarch64", path, t, os.path.join(workdir, "runs", f"{name}.{cpu}"))
        labelled.append(pi_cost.label_trace(trace, path))
    progress(f"{PROG}: timing the blocks with llvm-mca -mcpu={spec['mca']} ...")
    analyzer = pi_mca.Analyzer("aarch64", spec["mca"], os.path.join(workdir, "mca-cache.json"), spec["mca"])
    res = pi_cost.estimate_cycles(labelled, analyzer, coverage)
    per_ms = 1.0 / (spec["ghz"] * 1e6)
    ms = {t: {k: c * per_ms for k, c in res["cycles"][t].items()} for t in threads}
    kinds = sorted({k for t in threads for k in ms[t] if k != pi_cost.OVERHEAD},
                   key=lambda k: -ms[threads[0]].get(k, 0.0))
    total = {str(t): sum(v for k, v in ms[t].items() if k != pi_cost.OVERHEAD) for t in threads}
    t0 = str(threads[0])
    bits = doc.get("bits") or {}
    return {
        "schema": SCHEMA, "estimate": True,
        "model": path, "arch": doc.get("arch"), "bits": bits,
        "compiled_for": (doc.get("target") or {}).get("mcpu"),
        "cpu": cpu, "board": spec["board"], "core": spec["core"], "clock_ghz": spec["ghz"],
        "mca_model": spec["mca"], "llvm_mca": pi_mca.version(), "threads": threads,
        "kinds": [{"kind": k, "ms": {str(t): ms[t].get(k, 0.0) for t in threads},
                   "share": ms[threads[0]].get(k, 0.0) / total[t0] if total[t0] else 0.0} for k in kinds],
        "total_ms": total,
        "runtime_overhead_ms": {str(t): ms[t].get(pi_cost.OVERHEAD, 0.0) for t in threads},
        "instructions": {str(lt.threads): {"critical_path": _work(res["instructions"][lt.threads]),
                                           "all_threads": lt.work_insns} for lt in labelled},
        "pool_sync_instructions": {str(t): res["instructions"][t].get(pi_cost.SYNC, 0) for t in threads},
        "coverage": res["coverage"],
        "assumptions": ASSUMPTIONS,
    }


def _fmt_n(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n:.0f}"


def render_calibration(cal: dict, w: int = 16) -> list:
    lines = [f"calibration on this machine: {cal['host_cpu']}, {cal['clock_ghz']:.2f} GHz measured, "
             f"llvm-mca model {cal['mca_model']}, 1 thread, {cal['host_model']}",
             f"{'op kind':<{w}}{'estimated ms':>16}{'measured ms':>16}{'error':>9}"]
    for k in cal["kinds"] + [dict(cal["total"], kind="total")]:
        err = f"{100 * k['error']:+.1f}%" if k["error"] is not None else "-"
        lines.append(f"{k['kind']:<{w}}{k['estimated_ms']:>16.3f}{k['measured_ms']:>16.3f}{err:>9}")
    lines.append(f"sum of |error| over kinds: {100 * cal['abs_error_share']:.1f} % of the measured total "
                 f"(load average {cal['load_average']:.1f} while measuring)")
    return lines


def render(r: dict) -> str:
    if "kinds" not in r:  # calibration only
        return "\n".join(render_calibration(r["calibration"]))
    ts = r["threads"]
    b = r["bits"]
    lines = [f"{PROG}: an ESTIMATE, not a measurement (no board was used; docs/pi-estimate.md)",
             f"model:  {r['arch']} W{b.get('weight')}A{b.get('act')} ({r['model']}, "
             f"compiled for {r['compiled_for']})",
             f"board:  {r['board']}, {r['core']} at {r['clock_ghz']} GHz "
             f"(llvm-mca {r['llvm_mca']} scheduling model {r['mca_model']})", ""]
    heads = [f"{t} thread{'s' if t > 1 else ''} ms" for t in ts]
    w = max([len("runtime overhead")] + [len(k["kind"]) for k in r["kinds"]])
    lines.append(f"{'op kind':<{w}}" + "".join(f"{h:>16}" for h in heads) + f"{'share':>9}")
    for k in r["kinds"]:
        lines.append(f"{k['kind']:<{w}}" + "".join(f"{k['ms'][str(t)]:>16.2f}" for t in ts)
                     + f"{100 * k['share']:>8.1f}%")
    row = lambda name, d: f"{name:<{w}}" + "".join(f"{d[str(t)]:>16.2f}" for t in ts)  # noqa: E731
    lines.append(row("total", r["total_ms"]) + f"{100.0:>8.1f}%")
    lines.append(row("runtime overhead", r["runtime_overhead_ms"]) + "   (Python; not in the total)")
    c = r["coverage"]
    lines += ["", f"coverage: {100 * c['analysed']:.2f} % of {_fmt_n(c['instructions'])} executed "
                  f"instructions timed by llvm-mca ({c['blocks_analysed']} of {c['blocks']} distinct blocks);"
                  f" the rest at {c['cpi_rest']:.2f} cycles/instruction",
              "assumptions:"] + [f"  - {a}" for a in r["assumptions"]]
    if r.get("calibration"):
        lines += [""] + render_calibration(r["calibration"], w)
    return "\n".join(lines)


def main(argv=None) -> int:
    safe_stdio()
    args = parse_args(parser(), argv, prefix=PROG)
    if args is None:
        return 2
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if not args.json else (lambda s: None)
    try:
        if not 0.5 <= args.coverage <= 1.0:
            raise UserError(f"--coverage {args.coverage}: must be between 0.5 and 1")
        if not os.path.exists(args.model):
            raise UserError(f"{args.model}: no such file (make compile TARGET=aarch64 MODEL=... builds one)")
        host = args.host_model
        if args.calibrate and host is None and _machine(args.model) == "x86_64":
            host = args.model  # a host model: the calibration alone
            r = {"schema": SCHEMA, "estimate": True, "model": args.model}
        else:
            r = estimate(args.model, args.cpu, args.threads, args.workdir, args.coverage, say)
        if args.calibrate:
            from . import pi_calibrate

            if host is None:
                say(f"{PROG}: building the host model for calibration ...")
                host = pi_calibrate.host_model_for(r, os.path.join(args.workdir, "host-models"))
            elif not os.path.exists(host):
                raise UserError(f"{host}: no such file")
            say(f"{PROG}: calibrating on this machine ({host}) ...")
            cache = os.path.join(args.workdir, "mca-cache.json")
            r["calibration"] = pi_calibrate.calibrate(host, args.workdir, cache)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(r, indent=1) if args.json else render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
