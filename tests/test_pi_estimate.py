"""make pi-estimate (compile/pi_estimate.py): a Raspberry Pi latency estimate from counted blocks + llvm-mca.

One tiny random DeiT, compiled for aarch64 and for the host (x86-64-v3, what qemu-x86_64 runs), goes
through the whole method once (1 and 2 threads, with the calibration); the counts are checked to be
exact (a second count gives the same executions per block), and user errors to be one line, exit 2.
Needs qemu-user, llvm-19, the aarch64 cross compiler and TVM: under CI=true a skip is a failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")
for tool in ("qemu-aarch64", "qemu-x86_64", "llvm-mca-19", "llvm-mc-19", "aarch64-linux-gnu-gcc", "gcc"):
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (make system-deps)", allow_module_level=True)

from qvit_compile import pi_estimate, pi_mca, pi_symbols, pi_trace  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from qvit_compile.compiler import compile_model
    from qvit_compile.intmodel import random_deit

    d = tmp_path_factory.mktemp("pi_estimate")
    m = random_deit(seed=0)
    a64, x86 = str(d / "tiny.aarch64.so"), str(d / "tiny.x86_64.so")
    quiet = lambda *a: None  # noqa: E731
    compile_model(m, "aarch64", a64, progress=quiet)
    compile_model(m, "x86_64", x86, mcpu="x86-64-v3", progress=quiet)
    return {"a64": a64, "x86": x86, "dir": d}


@pytest.fixture(scope="module")
def result(models):
    work = str(models["dir"] / "work")
    r = subprocess.run([sys.executable, "-m", "qvit_compile.pi_estimate", models["a64"], "--threads", "1,2",
                        "--json", "--calibrate", "--host-model", models["x86"], "--workdir", work],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), work


def test_json_structure_and_table(result):
    r, _ = result
    assert r["schema"] == "qvit.pi-estimate/1" and r["estimate"] is True
    assert r["cpu"] == "cortex-a72" and r["clock_ghz"] == 1.8 and r["mca_model"] == "cortex-a57"
    assert r["threads"] == [1, 2]
    kinds = {k["kind"]: k for k in r["kinds"]}
    assert {"qlinear", "attention", "patch_embed"} <= set(kinds)
    for t in ("1", "2"):
        assert r["total_ms"][t] == pytest.approx(sum(k["ms"][t] for k in r["kinds"]))
        assert r["runtime_overhead_ms"][t] >= 0
    assert sum(k["share"] for k in r["kinds"]) == pytest.approx(1.0)
    # 2 heads and parallel GEMMs: 2 threads are faster, and never more than twice as fast
    assert r["total_ms"]["1"] / 2 - 1e-9 <= r["total_ms"]["2"] < r["total_ms"]["1"]
    assert r["coverage"]["analysed"] >= 0.99
    assert len(r["assumptions"]) >= 3
    text = pi_estimate.render(r)
    assert "ESTIMATE" in text and "total" in text and "coverage" in text and "1.8 GHz" in text
    assert "calibration on this machine" in text


def test_calibration_reports_an_error(result):
    cal = result[0]["calibration"]
    assert cal["clock_ghz"] > 0.5 and cal["mca_model"]
    assert cal["total"]["measured_ms"] > 0 and cal["total"]["estimated_ms"] > 0
    assert isinstance(cal["total"]["error"], float) and abs(cal["total"]["error"]) < 5
    assert {k["kind"] for k in cal["kinds"]} >= {"qlinear", "attention"}
    alone = pi_estimate.render({"schema": "qvit.pi-estimate/1", "estimate": True, "calibration": cal})
    assert alone.startswith("calibration on this machine") and "measured ms" in alone


def _execs_by_module(trace, model):
    """{(own code?, step, block instructions): executions} of the work (not overhead, not pool sync)."""
    amap = pi_symbols.AddressMap(trace.side["maps"], model)
    out: dict = {}
    for phase, i, _vcpu, n in trace.counts:
        vaddr, insns = trace.blocks[i]
        mod, func = amap.lookup(vaddr)
        if phase == 0 or amap.category(mod, func) != "work":
            continue
        own = os.path.realpath(mod) == os.path.realpath(model) or os.path.basename(mod).startswith("_native")
        key = (own, phase, insns)
        out[key] = out.get(key, 0) + n
    return out


def test_counts_are_exact(models, result, tmp_path):
    """A second count of the same inference gives the same executions of every block of the model and
    the runtime in every step. libc's allocator (the runtime's workspace allocations) depends on the
    heap the Python process left, so it may differ, by a tiny fraction."""
    _, work = result
    first_dir = os.path.join(work, "runs", "tiny.aarch64.cortex-a72")
    blocks, counts, phases = pi_trace.parse_counts(os.path.join(first_dir, "counts.t1.txt"))
    with open(os.path.join(first_dir, "side.t1.json")) as f:
        side = json.load(f)
    first = pi_trace.Trace(blocks, counts, phases, side, "aarch64", 1)
    again = pi_trace.count_inference("aarch64", models["a64"], 1, str(tmp_path))
    assert again.phases == first.phases == len(side["steps"]) + 1
    a, b = _execs_by_module(first, models["a64"]), _execs_by_module(again, models["a64"])
    own_a = {k: n for k, n in a.items() if k[0]}
    own_b = {k: n for k, n in b.items() if k[0]}
    assert own_a == own_b and sum(n * len(k[2]) for k, n in own_a.items()) > 100_000
    insns = lambda d: sum(n * len(k[2]) for k, n in d.items())  # noqa: E731
    libc_diff = abs(insns(a) - insns(own_a) - (insns(b) - insns(own_b)))
    assert libc_diff <= 0.01 * insns(a)


def _main(argv, capsys):
    rc = pi_estimate.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def test_user_errors_are_one_line(models, tmp_path, capsys, monkeypatch):
    work = ["--workdir", str(tmp_path)]
    rc, err = _main([models["x86"]] + work, capsys)
    assert rc == 2 and len(err) == 1 and "aarch64 model.so" in err[0]
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an elf file at all")
    rc, err = _main([str(junk)] + work, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("pi-estimate: error:")
    rc, err = _main([str(tmp_path / "missing.so")] + work, capsys)
    assert rc == 2 and len(err) == 1 and "no such file" in err[0]

    real_which = shutil.which
    monkeypatch.setattr(pi_trace.shutil, "which", lambda t: None if t == "qemu-aarch64" else real_which(t))
    rc, err = _main([models["a64"], "--threads", "1", "--json"] + work, capsys)
    assert rc == 2 and len(err) == 1 and "qemu-aarch64 not found" in err[0]
    monkeypatch.undo()

    monkeypatch.setattr(pi_mca, "LLVM_MCA", "llvm-mca-does-not-exist")
    rc, err = _main([models["a64"], "--threads", "1", "--json"] + work, capsys)
    assert rc == 2 and len(err) == 1 and "llvm-19" in err[0]


def test_device_budgets_come_from_the_estimates():
    """tests/device/budget.json holds the estimates (`scripts/pi_estimate_table.py --budget`) that
    the board tests turn into latency budgets, for boards those tests know, at 1 and 4 threads."""
    b = json.loads((Path(__file__).parent / "device" / "budget.json").read_text())
    assert b["estimate_margin"] > 1.0
    for core, models in b["estimate_ms"].items():
        assert core in b["gmac_per_s"], core
        for key, ms in models.items():
            arch, bits = key.split(" ")
            assert arch in b["gmac"] and re.fullmatch(r"W\d+A\d+", bits), key
            assert set(ms) == {"1", "4"} and 0 < ms["4"] <= ms["1"], (core, key, ms)
