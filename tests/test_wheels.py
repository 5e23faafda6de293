"""The device runtime as users install it: `make wheels` (scripts/build_wheels.py) builds the
qvit-edge distribution as abi3 manylinux wheels for x86_64 and aarch64; each installs with pip
into a fresh environment with no compiler anywhere on PATH (the aarch64 one into Debian's aarch64
Python under qemu-user, as on a Raspberry Pi) and runs `qvit-edge run` and
`qvit_edge.load(...).predict(...)` on a model.so, giving what the development install gives."""
from __future__ import annotations

import email
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(ROOT, "examples", "images", "0019_t-shirt-top.png")
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
PREDICT = ("import json, sys, qvit_edge; m = qvit_edge.load(sys.argv[1]); "
           "top = m.predict(sys.argv[2], topk=3); "
           "print(json.dumps([[p.index, p.label, round(p.prob, 6)] for p in top]))")

pytestmark = pytest.mark.qemu


def _build_wheels_module():
    path = os.path.join(ROOT, "scripts", "build_wheels.py")
    spec = importlib.util.spec_from_file_location("build_wheels", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bw = _build_wheels_module()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_wheels.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    made = {}
    for name in os.listdir(out):
        arch = "aarch64" if name.endswith("_aarch64.whl") else "x86_64"
        made[arch] = str(out / name)
    assert sorted(made) == ["aarch64", "x86_64"], os.listdir(out)
    return made


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from qvit_compile.compiler import compile_model
    from qvit_compile.intmodel import random_deit

    d = tmp_path_factory.mktemp("wheel-models")
    paths = {}
    for arch in ("x86_64", "aarch64"):
        paths[arch] = str(d / f"deit_{arch}.so")
        compile_model(random_deit(seed=3), arch, paths[arch], progress=lambda *a: None)
    return paths


def _dev_answer(model: str) -> tuple[list, list]:
    """What the development install (editable, this interpreter) says for IMAGE."""
    r = subprocess.run([sys.executable, "-m", "qvit_edge", "run", model, IMAGE, "--json", "--topk", "3"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run([sys.executable, "-c", PREDICT, model, IMAGE], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr
    return _top(r.stdout), json.loads(r2.stdout)


def _top(run_json: str) -> list:
    out = json.loads(run_json)
    (res,) = out["results"] if "results" in out else [out]
    return [(p["index"], p["class"]) for p in res["top"]]


def _no_compiler_env(tmp_path, extra_path: str = "") -> dict:
    """An environment whose PATH holds no C compiler at all (and CC points nowhere)."""
    empty = tmp_path / "bin-without-compilers"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(PATH=os.pathsep.join(p for p in (extra_path, str(empty)) if p), CC="/nonexistent/cc",
               PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    for cc in ("gcc", "cc", "clang", "aarch64-linux-gnu-gcc"):
        assert shutil.which(cc, path=env["PATH"]) is None
    return env


# ---------------------------------------------------------------- what is in the wheels
@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_wheel_holds_the_device_runtime_only(wheels, arch):
    path = wheels[arch]
    name = os.path.basename(path)
    assert name == f"qvit_edge-0.1.0-cp39-abi3-manylinux2014_{arch}.manylinux_2_17_{arch}.whl"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        info = [n for n in names if ".dist-info/" in n]
        files = sorted(n for n in names if n not in info)
        meta = email.message_from_bytes(z.read("qvit_edge-0.1.0.dist-info/METADATA"))
        entry_points = z.read("qvit_edge-0.1.0.dist-info/entry_points.txt").decode()
        so = z.read("qvit_edge/_native.abi3.so")
        wheel = z.read("qvit_edge-0.1.0.dist-info/WHEEL").decode()
    assert all(f.startswith("qvit_edge/") for f in files), files
    assert "qvit_edge/setup.py" not in files
    assert "qvit_edge/_native.abi3.so" in files
    modules = {os.path.basename(f)[:-3] for f in files if f.endswith(".py")}
    assert {"api", "cli", "model", "preflight", "preprocess", "quant"} <= modules
    # the integer-model writer, reference and benchmarks belong to the qvit distribution
    assert not modules & {"intmodel", "reference", "bench_kernels", "setup"}
    # ELF for the right CPU: e_machine at offset 18
    assert so[:4] == b"\x7fELF" and int.from_bytes(so[18:20], "little") == ELF_MACHINE[arch]
    assert sorted(meta.get_all("Requires-Dist")) == ["cffi>=1.15", 'matplotlib; extra == "plot"',
                                                    "numpy>=1.21", "pillow>=9"]
    assert "qvit-edge = qvit_edge.cli:main" in entry_points and "qvit =" not in entry_points
    assert f"Tag: cp39-abi3-manylinux_2_17_{arch}" in wheel


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_auditwheel_finds_manylinux_2_17(wheels, arch):
    assert bw.manylinux_tag(wheels[arch]) == f"manylinux_2_17_{arch}"


def test_a_glibc_2_34_symbol_is_refused(wheels, tmp_path):
    """Without the pinned symbol versions (a build made as the editable install makes it), the
    native library references pthread_create@GLIBC_2.34 and the build stops with one line."""
    host = bw.host_arch()
    with zipfile.ZipFile(wheels[host]) as z:
        z.extract("qvit_edge/_native.abi3.so", tmp_path / "pinned")
    unpinned = tmp_path / "unpinned.so"
    import qvit_edge._native as native

    shutil.copy(native.__file__, unpinned)
    wheel = bw.set_platform(wheels[host], host, str(unpinned), str(tmp_path / "out"))
    with pytest.raises(bw.BuildError, match=r"needs manylinux_2_3\d_.*glibc symbol newer than 2.17"):
        bw.check_policy(wheel, host)


def test_unknown_arch_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "build_wheels.py"), "--arch", "riscv64",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("build_wheels: error: --arch riscv64"), r.stderr


# ---------------------------------------------------------------- installed as a user would
def _fresh_venv_install(python: str, wheel: str, tmp_path) -> str:
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
    env = _no_compiler_env(tmp_path)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--only-binary=:all:",
                        wheel],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return str(venv)


def _find_python39():
    for cand in (shutil.which("python3.9"), os.path.expanduser("~/.pyenv/versions/3.9.18/bin/python")):
        if cand and os.path.exists(cand):
            r = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                               capture_output=True, text=True)
            if r.stdout.strip() == "True":
                return cand
    return None


PYTHONS = [pytest.param("this", id="this-python"),
           # the oldest CPython the runtime supports (Raspberry Pi OS bullseye), and the abi3 claim;
           # no registry this project installs from offers a Python 3.9, hence optional in CI
           pytest.param("3.9", id="python3.9", marks=pytest.mark.optional_in_ci)]


@pytest.mark.parametrize("python", PYTHONS)
def test_x86_64_wheel_installs_and_runs_without_a_compiler(wheels, models, tmp_path, python):
    if bw.host_arch() != "x86_64":
        pytest.skip("x86_64 host only")
    # a venv's base interpreter, not the development venv itself
    base = getattr(sys, "_base_executable", sys.executable) if python == "this" else _find_python39()
    if base is None:
        pytest.skip("no Python 3.9 installed (the runtime's minimum version)")
    venv = _fresh_venv_install(base, wheels["x86_64"], tmp_path)
    env = _no_compiler_env(tmp_path, extra_path=os.path.join(venv, "bin"))
    want_run, want_predict = _dev_answer(models["x86_64"])
    r = subprocess.run(["qvit-edge", "run", models["x86_64"], IMAGE, "--json", "--topk", "3"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert _top(r.stdout) == want_run
    r = subprocess.run(["python", "-c", PREDICT, models["x86_64"], IMAGE], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == want_predict
    r = subprocess.run(["qvit-edge", "bench", models["x86_64"], "--runs", "3", "--warmup", "1", "--json"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0 and json.loads(r.stdout)["threads"] == 1, r.stderr
    # the device side only: no training command, no torch, no compile stage
    assert not os.path.exists(os.path.join(venv, "bin", "qvit"))
    r = subprocess.run(["python", "-c", "import qvit_edge._native, importlib.util as u; "
                        "print([n for n in ('qvit', 'qvit_compile', 'torch', 'tvm') if u.find_spec(n)])"],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


@pytest.fixture(scope="module")
def aarch64_sysroot():
    try:
        return bw.aarch64_sysroot()
    except bw.BuildError as e:
        pytest.fail(str(e))


def _pin(dist: str) -> str:
    from importlib import metadata

    return f"{dist}=={metadata.version(dist)}"


def test_aarch64_wheel_installs_under_qemu_without_a_compiler(wheels, models, aarch64_sysroot, tmp_path):
    """Debian's aarch64 python3.11 under qemu-user, as a Raspberry Pi (64-bit OS) runs it: a new
    venv, pip (itself run from its wheel) installing the qvit-edge wheel and PyPI's aarch64
    wheels of numpy / cffi / Pillow, then the runtime on an aarch64 model.so."""
    qemu = shutil.which("qemu-aarch64")
    assert qemu, "qemu-aarch64 missing (make system-deps installs qemu-user)"
    py = os.path.join(aarch64_sysroot, "usr", "bin", "python3.11")
    house = tmp_path / "wheelhouse"
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                        "-d", str(house),
                        "--implementation", "cp", "--python-version", "3.11", "--abi", "cp311",
                        "--platform", "manylinux_2_17_aarch64", "--platform", "manylinux2014_aarch64",
                        "--platform", "manylinux_2_28_aarch64", _pin("numpy"), _pin("cffi"), _pin("pillow"),
                        "pycparser", _pin("pip")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (pip_wheel,) = [str(house / f) for f in os.listdir(house) if f.startswith("pip-")]

    def guest(*args, **kw):
        env = _no_compiler_env(tmp_path, extra_path=str(tmp_path / "venv" / "bin"))
        return subprocess.run([qemu, "-L", aarch64_sysroot, *args], capture_output=True, text=True, env=env,
                              cwd=str(tmp_path), timeout=900, **kw)

    venv = tmp_path / "venv"
    r = guest(py, "-m", "venv", "--without-pip", str(venv))
    assert r.returncode == 0, r.stderr
    vpy = str(venv / "bin" / "python")
    r = guest(vpy, os.path.join(pip_wheel, "pip"), "install", "-q", "--no-index", "--find-links", str(house),
              "--only-binary=:all:", wheels["aarch64"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (venv / "bin" / "qvit").exists()

    want_run, want_predict = _dev_answer(models["x86_64"])  # same random model, other CPU: same answer
    r = guest(vpy, str(venv / "bin" / "qvit-edge"), "run", models["aarch64"], IMAGE, "--json", "--topk", "3")
    assert r.returncode == 0, r.stderr
    assert _top(r.stdout) == want_run
    r = guest(vpy, "-c", PREDICT, models["aarch64"], IMAGE)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [p[:2] for p in got] == [p[:2] for p in want_predict]
    assert [p[2] for p in got] == pytest.approx([p[2] for p in want_predict], abs=1e-5)
