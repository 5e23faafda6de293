"""The plain C test of the native kernels (native/tests/test_native.c): on this machine under
ASan + UBSan (every x86 path), and cross-compiled for aarch64 under qemu (the NEON paths)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, "native", "tests", "run_native_tests.py")


def run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUNNER, mode, "2"], capture_output=True, text=True, timeout=600)


def test_native_kernels_under_asan_and_ubsan():
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler on this machine")
    r = run("sanitize")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "0 failures" in r.stdout


@pytest.mark.slow
def test_model_so_c_paths_under_asan_and_ubsan():
    """The micro-kernels linked into model.so, its glue and native/tvm_backend.c, on DeiT-T and
    Swin-T at 1 and 2 threads (native/tests/sanitize_models.py)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "native", "tests", "sanitize_models.py"),
                        "--threads", "1,2"], capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count(": ok: equal to the plain build") == 4 and "sanitize: 0 failures" in r.stdout


@pytest.mark.qemu
def test_native_kernels_aarch64_under_qemu():
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make system-deps installs it)")
    r = run("aarch64")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "path neon " in r.stdout and "0 failures" in r.stdout


@pytest.mark.qemu
def test_python_api_on_aarch64_under_qemu():
    """The Python API with the cross-built extension in the aarch64 Python of
    scripts/aarch64-python.sh: NEON and SDOT paths against quant.py through numpy."""
    for tool in ("qemu-aarch64", "aarch64-linux-gnu-gcc", "apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (make system-deps installs it)")
    r = subprocess.run(["bash", os.path.join(ROOT, "scripts", "aarch64-python.sh")], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    py = r.stdout.strip().splitlines()[-1]
    checker = os.path.join(ROOT, "native", "tests", "check_kernels_api.py")
    r = subprocess.run([py, checker], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "neon neon_dot" in r.stdout and " 0 failures" in r.stdout
