"""The compiled micro-kernel cache (compile/package.py): a model.so's C micro-kernels are compiled once
per compiler, flags and sources, then linked from the cache; anything that changes their bytes
(flags, any source or header of native/model, qv_arith.h) compiles them again."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from qvit_compile import package, targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def native_copy(tmp_path, monkeypatch):
    """The micro-kernels' sources in a scratch copy, so a test may edit a header."""
    d = tmp_path / "native"
    shutil.copytree(os.path.join(ROOT, "native", "model"), d / "model")
    shutil.copy(os.path.join(ROOT, "native", "qv_arith.h"), d / "qv_arith.h")
    monkeypatch.setattr(package, "NATIVE_DIR", str(d))
    monkeypatch.setattr(package, "MODEL_KERNELS_DIR", str(d / "model"))
    return d


def compiles(monkeypatch) -> list:
    """Records every `cc ... -c` the package runs."""
    seen, real = [], subprocess.run

    def run(cmd, *a, **k):
        if isinstance(cmd, list) and "-c" in cmd and "-o" in cmd and cmd[cmd.index("-c") + 1].endswith(".c"):
            seen.append(cmd)
        return real(cmd, *a, **k)
    monkeypatch.setattr(package.subprocess, "run", run)
    return seen


def test_a_kernel_compiles_once_then_comes_from_the_cache(tmp_path, monkeypatch, native_copy):
    monkeypatch.setenv(package.KERNEL_CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv("QVIT_MODEL_CFLAGS", raising=False)
    seen = compiles(monkeypatch)
    t = targets.get("x86_64", "x86-64-v3")
    src = str(native_copy / "model" / "pack.c")

    def build(name):
        (tmp_path / name).mkdir()
        return open(package.compile_model_kernel(t.cc, t, src, str(tmp_path / name)), "rb").read()

    first = build("a")
    assert len(seen) == 1 and len(os.listdir(tmp_path / "cache")) == 1
    assert build("b") == first and len(seen) == 1  # the same bytes, not compiled again
    monkeypatch.setenv("QVIT_MODEL_CFLAGS", "-DQVIT_CACHE_TEST=1")  # other flags: other bytes
    build("c")
    assert len(seen) == 2
    monkeypatch.delenv("QVIT_MODEL_CFLAGS")
    with open(native_copy / "qv_arith.h", "a") as f:  # a header the kernel includes changed
        f.write("\n/* changed */\n")
    build("d")
    assert len(seen) == 3
    with open(native_copy / "model" / "epilogue.h", "a") as f:  # a header pack.c does not include
        f.write("\n/* changed */\n")
    build("e")
    assert len(seen) == 4  # every source of the room counts: safe rather than exact
    assert build("f") and len(seen) == 4


def test_the_cache_can_be_switched_off(tmp_path, monkeypatch, native_copy):
    monkeypatch.setenv(package.KERNEL_CACHE_ENV, "0")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    seen = compiles(monkeypatch)
    t = targets.get("x86_64", "x86-64-v3")
    for _ in range(2):
        package.compile_model_kernel(t.cc, t, str(native_copy / "model" / "igemm.c"), str(tmp_path))
    assert len(seen) == 2 and not (tmp_path / "xdg").exists()
    monkeypatch.delenv(package.KERNEL_CACHE_ENV)
    assert package.kernel_cache_dir() == str(tmp_path / "xdg" / "qvit" / "kernels")
