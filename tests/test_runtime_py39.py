"""The device runtime on the oldest Python it supports (3.9, Raspberry Pi OS bullseye).

A Python 3.9 venv (cached under build/py39-runtime/) gets numpy, cffi and Pillow from PyPI,
the native library is built for it the way a board without the cross-built one builds it
(native/build_ffi.py, as scripts/pi-bench.sh does), and `qvit-edge info / run / bench` run on
a compiled model. Skips when no python3.9 is installed.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "build", "py39-runtime")


def _find_python39():
    for cand in (shutil.which("python3.9"), os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python")):
        if cand and os.path.exists(cand):
            r = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                               capture_output=True, text=True)
            if r.stdout.strip() == "True":
                return cand
    return None


@pytest.fixture(scope="module")
def py39():
    """(python, PYTHONPATH) of a Python 3.9 with only the device's packages and the runtime."""
    exe = _find_python39()
    if exe is None:
        pytest.skip("no Python 3.9 installed (the runtime's minimum version)")
    venv_py = os.path.join(BASE, "venv", "bin", "python")
    stamp = os.path.join(BASE, "venv", ".deps")
    if not os.path.exists(stamp):
        shutil.rmtree(os.path.join(BASE, "venv"), ignore_errors=True)
        subprocess.run([exe, "-m", "venv", os.path.join(BASE, "venv")], check=True, capture_output=True)
        r = subprocess.run([venv_py, "-m", "pip", "install", "-q", "numpy", "cffi", "pillow", "setuptools"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        open(stamp, "w").close()
    # The runtime as a board has it: edge_runtime/ as qvit_edge, native library built there
    # (again only when a native source is newer than the last build).
    top = os.path.join(BASE, "pkg")
    pkg = os.path.join(top, "qvit_edge")
    os.makedirs(pkg, exist_ok=True)
    for f in os.listdir(os.path.join(ROOT, "edge_runtime")):
        if f.endswith(".py") and not os.path.lexists(os.path.join(pkg, f)):
            os.symlink(os.path.join(ROOT, "edge_runtime", f), os.path.join(pkg, f))
    built = [os.path.join(pkg, f) for f in os.listdir(pkg) if f.startswith("_native.") and f.endswith(".so")]
    sources = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "native")) for f in fs
               if f.endswith((".c", ".h", ".py"))]
    if not built or max(map(os.path.getmtime, sources)) > os.path.getmtime(built[0]):
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import build_ffi; "
                "build_ffi.ffibuilder.compile('.')")
        r = subprocess.run([venv_py, "-c", code, os.path.join(ROOT, "native")], cwd=top, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "PYTHONPATH": top})
        assert r.returncode == 0, r.stderr[-2000:]
    return venv_py, top


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    pytest.importorskip("tvm", reason="the compile stage (apache-tvm) is not installed")
    from qvit_compile import intmodel
    from qvit_compile.compiler import compile_model

    path = str(tmp_path_factory.mktemp("m") / "deit.so")
    compile_model(intmodel.random_deit(seed=0), {"x86_64": "x86_64", "aarch64": "aarch64"}.get(
        os.uname().machine, "x86_64"), path, progress=lambda *a: None)
    return path


@pytest.mark.slow
@pytest.mark.optional_in_ci  # no registry this project installs from offers a Python 3.9
def test_runtime_runs_on_python_3_9(py39, model, tmp_path):
    from PIL import Image

    exe, path = py39
    img = tmp_path / "x.png"
    Image.new("L", (40, 30), 128).save(img)

    def edge(*args):
        r = subprocess.run([exe, "-m", "qvit_edge", *args], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": path})
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert edge("info", model, "--json")["runs_here"] is True
    py311 = subprocess.run([sys.executable, "-m", "qvit_edge", "run", model, str(img), "--json"],
                           capture_output=True, text=True, timeout=300)
    assert edge("run", model, str(img), "--json")["results"][0]["top"] == \
        json.loads(py311.stdout)["results"][0]["top"]
    assert edge("bench", model, "--runs", "5", "--warmup", "1", "--json")["runs"] == 5
    code = "import qvit_edge._native as n, sys; print(n.__file__, sys.version_info[:2])"
    r = subprocess.run([exe, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": path})
    assert r.stdout.startswith(path) and "(3, 9)" in r.stdout
