#!/usr/bin/env python3
"""Latency of a model.so call back to back and after an idle pause (the way `make bench` times
each contender: a 0.2 s settle pause before every timed call), at a given thread count.
    python scripts/idle_call_latency.py MODEL.so [--threads 2] [--pause 0.2] [--calls 15]
Shows what a thread pool's idle policy costs: workers that sleep between or inside calls must be
woken, which on a VM can take milliseconds."""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from qvit_edge import model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.2)
    ap.add_argument("--calls", type=int, default=15)
    a = ap.parse_args()
    m = model.load(a.model, threads=a.threads)
    x = np.random.default_rng(0).standard_normal((1,) + m.input_shape).astype(np.float32)
    for _ in range(5):
        m.run(x)
    res = {}
    for pause in (0.0, a.pause):
        times = []
        for _ in range(a.calls):
            time.sleep(pause)
            t0 = time.perf_counter()
            m.run(x)
            times.append(time.perf_counter() - t0)
        res[pause] = times
    cpu = platform.processor() or platform.machine()
    print(f"{a.model}, {a.threads} threads, {cpu}: median of {a.calls} calls")
    for pause, times in res.items():
        what = "back to back" if pause == 0 else f"{pause} s after the last call"
        print(f"  {what}: {1e3 * np.median(times):.2f} ms (min {1e3 * min(times):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
