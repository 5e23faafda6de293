"""NEON's exactly rounded division without fdiv (native/qv_arith.h: nq_div, nq_div_r, nq_div_v and
the check nq_div_exact, used by the GELU epilogue and the LayerNorm / IRM rows) against IEEE
division under qemu-aarch64: tests/native_div_exact.c divides random, adversarial (within ~2^-24
ulp of a tie, binade edges, q next to powers of two, subnormal and overflowing quotients) and
special values both ways. Each weakened check the header can build (QV_NQ_DIV_MUTANT) must fail
the same driver, so the values are hard enough to notice a check that is removed or loosened."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from qvit_compile import package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "native_div_exact.c")
ARITH = os.path.join(ROOT, "native", "qv_arith.h")
CC, QEMU = "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-cpu", "max"]
MUTANTS = sorted({int(m) for m in re.findall(r"QV_NQ_DIV_MUTANT == (\d+)", open(ARITH).read())})


def run_driver(tmp_path, cpu: str, defines: list) -> tuple:
    """(exit status, {kind: {count: n}}, stdout) of the driver built for cpu with defines."""
    for tool in (CC, QEMU[0]):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make system-deps installs it)")
    exe = tmp_path / ("div_" + cpu + "".join(d.replace("=", "_") for d in defines))
    r = subprocess.run([CC, *package.CFLAGS, f"-mcpu={cpu}", "-static", *defines, SRC, "-o", str(exe), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([*QEMU, str(exe)], capture_output=True, text=True, timeout=600)
    kinds = {}
    for line in r.stdout.splitlines():
        if line.startswith("kind "):
            f = line.split()
            kinds[f[1]] = {f[i]: int(f[i + 1]) for i in range(2, len(f), 2)}
    return r.returncode, kinds, r.stdout


@pytest.mark.qemu
@pytest.mark.parametrize("cpu", ["cortex-a72", "cortex-a76"])
def test_nq_div_is_ieee_division(tmp_path, cpu):
    rc, kinds, out = run_driver(tmp_path, cpu, [])
    assert set(kinds) == {"random", "bits", "tie", "pow2", "qpow2", "range", "special"}, out[-2000:]
    assert rc == 0, out[-3000:]
    for name, k in kinds.items():
        assert k["mismatch"] == 0 and k["false_pass"] == 0, (name, k)
    tie = kinds["tie"]
    # next to ties the quotient before the check is often wrong (so a missing check shows), and the
    # check sends normal quotients there to the division (the others always go)
    assert tie["unchecked"] > tie["pairs"] // 100, tie
    assert tie["fallback"] - (tie["pairs"] - tie["normal"]) >= tie["pairs"] // 400, tie
    # ordinary quotients take the fast path: the check passes them
    assert kinds["random"]["fallback"] <= kinds["random"]["pairs"] // 10000, kinds["random"]
    for name in ("random", "pow2"):
        assert kinds[name]["true_pass"] == kinds[name]["pairs"], (name, kinds[name])


@pytest.mark.qemu
@pytest.mark.parametrize("mutant", MUTANTS)
def test_a_weakened_check_fails_the_driver(tmp_path, mutant):
    rc, kinds, out = run_driver(tmp_path, "cortex-a72", [f"-DQV_NQ_DIV_MUTANT={mutant}"])
    bad = sum(k["mismatch"] + k["false_pass"] for k in kinds.values())
    assert kinds and rc == 1 and bad > 0, (mutant, out[-2000:])


def test_the_header_has_mutants():
    assert MUTANTS == [1, 2, 3, 4]
