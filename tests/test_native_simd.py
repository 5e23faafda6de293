"""The C micro-kernels' SIMD paths (native/model: AVX-512, AVX2, NEON) compute exactly what their
portable path computes: tests/native_simd_equal.c, built with the flags model.so's micro-kernels get,
once per path, prints every result on edge values (ties at .5, values past 2^22, signed zeros,
infinities, NaN, clip bounds, large negative exp inputs) and random data; the outputs must be the
same text. The portable path itself is checked against the numpy reference by test_compile.py and
test_model_so.py."""
from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from qvit_compile import package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "tests", "native_simd_equal.c")


def build(cc: str, flags: list, out: str) -> str:
    r = subprocess.run([cc, *package.CFLAGS, *flags, SRC, "-o", out, "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def build_all(jobs: list) -> list:
    """[(cc, flags, out)] built side by side (each build takes seconds)."""
    with ThreadPoolExecutor(max_workers=4) as ex:
        return list(ex.map(lambda j: build(*j), jobs))


def run(cmd: list) -> list:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.splitlines()


def assert_same(ref: list, got: list, name: str):
    """Same lines after the '# path' header; the first differences named on failure."""
    assert ref[0] == "# path portable", ref[0]
    assert len(ref) == len(got) and len(ref) > 100000, (name, len(ref), len(got))
    bad = [(a, b) for a, b in zip(ref[1:], got[1:]) if a != b]
    assert not bad, f"{name}: {len(bad)} values differ from the portable path, first: {bad[:8]}"


@pytest.fixture(scope="module")
def x86_builds(tmp_path_factory):
    """The x86_64 portable, x86-64-v3 (AVX2) and this machine's (AVX-512 where it has it) outputs."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    d = tmp_path_factory.mktemp("native_simd")
    flags = {"portable": ["-march=x86-64", "-DQV_PORTABLE"], "x86-64-v3": ["-march=x86-64-v3"],
             "native": ["-march=native"]}
    exes = build_all([("gcc", f, str(d / name)) for name, f in flags.items()])
    return {name: run([exe]) for name, exe in zip(flags, exes)}


def test_x86_paths_equal_portable(x86_builds):
    ref = x86_builds["portable"]
    for march in ("x86-64-v3", "native"):
        assert_same(ref, x86_builds[march], march)
    assert x86_builds["x86-64-v3"][0] == "# path avx2"


def test_edge_values_reach_the_reciprocal_fallback(x86_builds):
    """The quotients next to ties (native_simd_equal.c: test_recip_codes) include values whose code
    from x * (1/step) differs from x / step's, in the quantize and the softmax, so the NEON
    quantize's fallback to the division is exercised (and a wrong one fails the comparison)."""
    out = x86_builds["portable"]
    hard = [int(line.split()[1]) for line in out if line.startswith("recip.hard ")]
    assert hard and hard[0] >= 100, hard
    assert sum(line.startswith("recip.softmax.") for line in out) >= 16 * 10


@pytest.mark.qemu
def test_neon_paths_equal_portable_under_qemu(tmp_path, x86_builds):
    """aarch64 for the Pi 4 (Cortex-A72) and Pi 5 (A76) against the portable build, under qemu;
    the portable path computes the same on both architectures."""
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make system-deps installs it)")
    cc, qemu = "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    flags = {"portable": ["-mcpu=cortex-a72", "-DQV_PORTABLE"], "cortex-a72": ["-mcpu=cortex-a72"],
             "cortex-a76": ["-mcpu=cortex-a76"]}
    exes = build_all([(cc, f, str(tmp_path / name)) for name, f in flags.items()])
    out = {name: run(qemu + [exe]) for name, exe in zip(flags, exes)}
    for cpu in ("cortex-a72", "cortex-a76"):
        assert out[cpu][0] == "# path neon", out[cpu][0]
        assert_same(out["portable"], out[cpu], cpu)
    assert_same(x86_builds["portable"], out["portable"], "aarch64 portable against x86_64 portable")
