#!/usr/bin/env python3
"""The README's Raspberry Pi ESTIMATE table: DeiT-T/S 224 at W2A2 and W4A4, random weights, each
compiled for the board's core (default GEMM engine of that core) and priced by
`python -m qvit_compile.pi_estimate` for 1 and 4 threads.

    python scripts/pi_estimate_table.py [--out build/pi-estimate/table] [--reuse] [--budget]

Prints a markdown table (estimated ms, and the GEMM engine of the low-bit layers) and writes every
estimate's JSON beside its model.so; --budget also writes them into the device tests' budgets
(tests/device/budget.json, "estimate_ms"). Everything is an estimate (docs/pi-estimate.md), not a
measurement.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = [("DeiT-T", "deit_tiny_patch16_224"), ("DeiT-S", "deit_small_patch16_224")]
BITS = (2, 4)
CORES = [("Pi 4", "cortex-a72"), ("Pi 5", "cortex-a76")]
BUDGET = ROOT / "tests" / "device" / "budget.json"
THREADS = "1,4"


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"pi_estimate_table: {' '.join(cmd[:4])} ... failed: {tail}")


def estimate(arch: str, bits: int, cpu: str, out: Path, reuse: bool) -> dict:
    so = out / f"{arch}.w{bits}a{bits}.{cpu}.so"
    js = so.with_suffix(".json")
    if not (reuse and so.exists()):
        run([sys.executable, "-m", "qvit_compile", "--target", "aarch64", "--arch", arch, "--bits", str(bits),
             "--random", "--mcpu", cpu, "--out", str(so)])
    if not (reuse and js.exists() and js.stat().st_mtime >= so.stat().st_mtime):
        r = subprocess.run([sys.executable, "-m", "qvit_compile.pi_estimate", str(so), "--cpu", cpu,
                            "--threads", THREADS, "--json"], cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"pi_estimate_table: estimate of {so} failed: {r.stderr.strip()[-300:]}")
        js.write_text(r.stdout)
    return json.loads(js.read_text())


def engine_of(so: Path, bits: int) -> str:
    """The GEMM engine model.so records for its W{bits}A{bits} linear layers (`qvit-edge info`)."""
    r = subprocess.run([sys.executable, "-m", "qvit_edge", "info", str(so), "--json"], cwd=ROOT,
                       capture_output=True, text=True)
    gemm = (json.loads(r.stdout).get("gemm") if r.returncode == 0 else None) or {}
    kinds = [row["engine"] for row in gemm.get("layers", []) if row.get("a_bits") == bits]
    return kinds[0] if kinds else "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "pi-estimate" / "table")
    p.add_argument("--reuse", action="store_true", help="keep model.so files and estimates already built")
    p.add_argument("--budget", action="store_true",
                   help=f"write the estimates into {BUDGET.relative_to(ROOT)}")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    head = "| ESTIMATE, ms (224 px, batch 1) | bits |"
    rule = "|---|---|"
    for board, cpu in CORES:
        head += f" {board} ({cpu}), 1 thread | {board}, 4 threads | {board} GEMM engine |"
        rule += "---|---|---|"
    lines = [head, rule]
    budget = json.loads(BUDGET.read_text())
    for label, arch in MODELS:
        for bits in BITS:
            row = f"| {label} | W{bits}A{bits} |"
            for _, cpu in CORES:
                d = estimate(arch, bits, cpu, args.out, args.reuse)
                key = f"{arch} W{d['bits'].get('weight')}A{d['bits'].get('act')}"
                per_threads = {t: round(v, 1) for t, v in d["total_ms"].items()}
                budget["estimate_ms"].setdefault(d["core"], {})[key] = per_threads
                so = args.out / f"{arch}.w{bits}a{bits}.{cpu}.so"
                row += f" {d['total_ms']['1']:.0f} | {d['total_ms']['4']:.0f} | {engine_of(so, bits)} |"
            lines.append(row)
            print(row, file=sys.stderr, flush=True)
    print("\n".join(lines))
    if args.budget:
        BUDGET.write_text(json.dumps(budget, indent=2) + "\n")
        print(f"pi_estimate_table: wrote the estimates into {BUDGET.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
