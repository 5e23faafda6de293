"""On a real Raspberry Pi-class board (aarch64 hardware, not qemu): latency against budget.json, memory.

Run on the board (README, "Raspberry Pi"):

    QVIT_DEVICE_MODEL=~/model.so python3 -m pytest -m device tests/device -v

Elsewhere every test skips and says why. The model defaults to build/aarch64/model.so.
"""
import json
import os
import platform

import pytest

from qvit_edge.cmd_bench import arm_core, bench
from qvit_edge.preflight import available_cpus, read_model_doc

pytestmark = pytest.mark.device

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_MODEL = os.path.join(ROOT, "build", "aarch64", "model.so")
MODEL = os.path.expanduser(os.environ.get("QVIT_DEVICE_MODEL", DEFAULT_MODEL))


@pytest.fixture(scope="module")
def board():
    """The board's ARM core ("Cortex-A72"), or skip with the reason this is not one."""
    machine = platform.machine().lower()
    if machine not in ("aarch64", "arm64"):
        pytest.skip(f"device tests need aarch64 hardware (a Raspberry Pi, 64-bit OS); this is {machine}")
    core = arm_core()
    if core is None:
        pytest.skip("aarch64 under emulation (qemu-user shows the host's /proc/cpuinfo): not real hardware")
    if not os.path.exists(MODEL):
        pytest.skip(f"no model at {MODEL}: set QVIT_DEVICE_MODEL or `make compile TARGET=aarch64 MODEL=...`")
    return core


@pytest.fixture(scope="module")
def budget(board):
    with open(os.path.join(HERE, "budget.json")) as f:
        b = json.load(f)
    doc = read_model_doc(MODEL)
    arch, bits = doc["arch"], doc.get("bits") or {}
    # the estimate of this model on this board (make pi-estimate), with a margin for what it does
    # not model (caches, throttling); else the FP32 engine's ceiling scaled by MACs
    est = b.get("estimate_ms", {}).get(board, {}).get(f"{arch} W{bits.get('weight')}A{bits.get('act')}")
    if est:
        return {threads: b["estimate_margin"] * ms for threads, ms in est.items()}
    if board not in b["gmac_per_s"]:
        pytest.skip(f"no budget for {board} in tests/device/budget.json (known: {list(b['gmac_per_s'])})")
    if arch not in b["gmac"]:
        pytest.skip(f"no budget for model {arch} in tests/device/budget.json (known: {list(b['gmac'])})")
    return {threads: 1e3 * b["gmac"][arch] / rate for threads, rate in b["gmac_per_s"][board].items()}


@pytest.mark.parametrize("threads", ["1", "4"])
def test_latency_within_budget(budget, threads):
    if int(threads) > available_cpus():
        pytest.skip(f"{threads} threads wanted, {available_cpus()} CPUs here")
    r = bench(MODEL, threads=int(threads), warmup=5, runs=30, profile=False)
    p50 = r["latency_ms"]["p50"]
    print(json.dumps({"threads": threads, "p50_ms": p50, "budget_ms": budget[threads], "cpu": r["cpu"]}))
    assert p50 <= budget[threads], f"p50 {p50:.1f} ms over the {budget[threads]:.1f} ms budget ({r['cpu']})"


def test_rss_flat_over_1000_inferences(board):
    r = bench(MODEL, threads=1, warmup=20, runs=1000, profile=False)
    mem = r["memory_mb"]
    assert mem["rss_after_runs"] - mem["rss_before_runs"] < 1.0, mem


def test_profile_covers_the_model(board):
    r = bench(MODEL, threads=1, warmup=1, runs=3, profile=True)
    assert {"qlinear", "attention"} <= set(r["profile_ms"]), r["profile_ms"]
