"""Suite-wide policy: under CI=true a skipped test is a failed test.

A test that needs a tool (the aarch64 cross compiler, qemu, TVM, the aarch64 Python, the data)
skips on a developer's machine that lacks it, with the reason. In CI the install is part of what
is tested, so a missing tool must show up as red, never as "skipped". Only tests that cannot run
on any CI machine say so with a marker: `device` (real ARM hardware) and `optional_in_ci` (an
interpreter no package registry here offers). Tests of one CPU's instructions (AMX, AVX-512
VPOPCNTDQ) are marked `cpu_feature`: the CI machine's CPU changes from run to run, so they may skip
there, but only with the reason "this CPU has no ..."; any other skip of theirs still fails.
"""
from __future__ import annotations

import os

import pytest

ALLOWED_IN_CI = ("device", "optional_in_ci")
CPU_LACKS = "this CPU has no "  # the one skip reason a `cpu_feature` test may give under CI=true


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "optional_in_ci: may skip under CI=true (names why in its reason)")
    config.addinivalue_line("markers", f"cpu_feature: may skip under CI=true only as '{CPU_LACKS}...'")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return
    if any(item.get_closest_marker(m) for m in ALLOWED_IN_CI):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if item.get_closest_marker("cpu_feature") and reason.startswith(CPU_LACKS):
        return
    report.outcome = "failed"
    report.longrepr = f"CI=true: a skip is a failure here (broken install?): {reason}"


def one_line_error(r, *needles) -> str:
    """A finished subprocess that failed as a user error: status 2, one stderr line holding every
    needle, no traceback. Returns the line."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


@pytest.fixture(scope="session")
def api_model(tmp_path_factory):
    """(model.so path, integer model) of a tiny random DeiT (28 px gray input, Fashion-MNIST class
    names) compiled for this machine: one compile (slow) shared by the Python API tests and the
    docs' examples."""
    from qvit_compile import intmodel
    from qvit_compile.compiler import compile_model

    m = intmodel.random_deit(seed=3)
    m.config["classes"] = FASHION_CLASSES
    path = str(tmp_path_factory.mktemp("api") / "deit.so")
    compile_model(m, os.uname().machine, path, progress=lambda *a: None)
    return path, m
