"""Builds the device runtime (the qvit-edge distribution: edge_runtime/ + native/) as abi3
manylinux wheels, one per CPU architecture:  make wheels  ->  build/wheels/

    python scripts/build_wheels.py [--arch x86_64 aarch64] [--out build/wheels]
    python scripts/build_wheels.py cross-native OUT.so --python-include DIR [--manylinux]

- The host's wheel is what `pip wheel ./edge_runtime` makes (setup.py -> cffi -> gcc), built from
  a clean copy of the tracked sources, so nothing of the editable checkout (an in-place
  extension, caches) gets in.
- The aarch64 wheel (on an x86_64 host) is the same wheel with the native library
  cross-compiled by aarch64-linux-gnu-gcc from native/build_ffi.py's lists, against Debian's
  aarch64 Python headers (scripts/aarch64-python.sh fetches them); `cross-native` is that step
  alone, which scripts/aarch64-python.sh also uses.
- Both are built with QV_MANYLINUX (native/glibc_symver.h pins the glibc symbols newer than
  2.17), then auditwheel says which manylinux tag they satisfy; anything newer than
  manylinux_2_17 is an error. The extension uses only the stable ABI, so the tag is cp39-abi3:
  one wheel serves CPython 3.9 and every later version.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANYLINUX = "manylinux_2_17"        # glibc 2.17: every 64-bit Raspberry Pi OS and distribution since
LEGACY_ALIAS = "manylinux2014"      # the same policy's older name, for pip < 20.3
ABI_TAG = "cp39-abi3"
CROSS_CC = {"aarch64": "aarch64-linux-gnu-gcc"}
PYVER = "3.11"                      # the aarch64 headers' version (any >= 3.9 gives the same abi3)


class BuildError(Exception):
    """One line for the user; the script exits 1 with it."""


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def run(cmd, what: str, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        raise BuildError(f"{what} failed: {(errors or lines or ['exit ' + str(r.returncode)])[-1].strip()}")
    return r


def compiler_error(log: str) -> str:
    """The compiler's first real error line, as everywhere in the project (edge_runtime/clikit.py)."""
    spec = importlib.util.spec_from_file_location("_clikit", os.path.join(ROOT, "edge_runtime", "clikit.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.compiler_error(log)


# ---------------------------------------------------------------- the native library, cross-compiled
def cross_compile_native(out: str, python_include: str, cc: str = CROSS_CC["aarch64"],
                         manylinux: bool = False, sysroot_include: str | None = None) -> None:
    """qvit_edge._native for another CPU: cffi's generated C + native/'s sources and flags (as
    native/build_ffi.py lists them for setup.py), compiled by `cc` against `python_include`."""
    if shutil.which(cc) is None:
        raise BuildError(f"{cc} not found (make system-deps installs gcc-aarch64-linux-gnu and "
                         "libc6-dev-arm64-cross)")
    spec = importlib.util.spec_from_file_location("build_ffi", os.path.join(ROOT, "native", "build_ffi.py"))
    ffi_mod = importlib.util.module_from_spec(spec)
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        spec.loader.exec_module(ffi_mod)
    finally:
        os.chdir(cwd)
    work = tempfile.mkdtemp(prefix="qvit-native-")
    try:
        c_file = os.path.join(work, "_native.c")
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):  # cffi's "generating ..."
            ffi_mod.ffibuilder.emit_c_code(c_file)
        # Host-only tuning flags never reach another CPU; SIMD is chosen per function in the sources.
        cflags = [a for a in ffi_mod.CFLAGS if not a.startswith(("-march", "-mtune", "-mavx", "-mno-"))]
        cmd = [cc, "-shared", "-fPIC", *cflags, *(["-DQV_MANYLINUX"] if manylinux else []),
               *[f"-I{d}" for d in ffi_mod.INCLUDE_DIRS], f"-I{python_include}",
               *([f"-idirafter{sysroot_include}"] if sysroot_include else []),
               c_file, *ffi_mod.SOURCES, "-o", out + ".tmp", *ffi_mod.LDFLAGS]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError("cross-compiling the native library failed: "
                             f"{compiler_error(r.stdout + r.stderr)}")
        os.replace(out + ".tmp", out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def aarch64_sysroot() -> str:
    """The unpacked Debian arm64 sysroot of scripts/aarch64-python.sh (fetched on first use)."""
    run(["bash", os.path.join(ROOT, "scripts", "aarch64-python.sh")], "scripts/aarch64-python.sh")
    base = os.environ.get("QVIT_AARCH64_PYTHON_DIR", os.path.join(ROOT, "build", "aarch64-python"))
    sysroot = os.path.join(base, "sysroot")
    if not os.path.isfile(os.path.join(sysroot, "usr", "include", f"python{PYVER}", "Python.h")):
        raise BuildError(f"no aarch64 Python headers in {sysroot} (scripts/aarch64-python.sh fetches them)")
    return sysroot


# ---------------------------------------------------------------- wheels
def stage_sources(dest: str) -> str:
    """A clean copy of what the qvit-edge distribution is built from: the files git tracks (or
    would: new, not ignored) in edge_runtime/ and native/. Returns the project folder."""
    r = run(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard", "-z",
             "edge_runtime", "native"], "git ls-files")
    for rel in filter(None, r.stdout.split("\0")):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    return os.path.join(dest, "edge_runtime")


def build_host_wheel(work: str) -> str:
    """`pip wheel` of a clean copy of edge_runtime/ for this machine; returns the wheel's path."""
    project = stage_sources(os.path.join(work, "src"))
    env = dict(os.environ, CFLAGS=(os.environ.get("CFLAGS", "") + " -DQV_MANYLINUX").strip())
    out = os.path.join(work, "host")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--disable-pip-version-check", "-w", out, project], "pip wheel ./edge_runtime", env=env)
    wheels = [f for f in os.listdir(out) if f.endswith(".whl")]
    if len(wheels) != 1:
        raise BuildError(f"pip wheel made {wheels or 'no wheel'} in {out}")
    return os.path.join(out, wheels[0])


def set_platform(wheel: str, arch: str, native_so: str | None, out_dir: str) -> str:
    """The wheel with its platform tag set to manylinux_2_17_<arch> (+ the 2014 alias) and,
    given native_so, the native library replaced; RECORD rewritten by `wheel pack`."""
    work = tempfile.mkdtemp(prefix="qvit-wheel-")
    try:
        run([sys.executable, "-m", "wheel", "unpack", "-d", work, wheel], "wheel unpack")
        (tree,) = [os.path.join(work, d) for d in os.listdir(work)]
        if native_so:
            (ext,) = [f for f in os.listdir(os.path.join(tree, "qvit_edge")) if f.startswith("_native.")]
            os.remove(os.path.join(tree, "qvit_edge", ext))
            shutil.copy2(native_so, os.path.join(tree, "qvit_edge", "_native.abi3.so"))
        (info,) = [d for d in os.listdir(tree) if d.endswith(".dist-info")]
        wheel_file = os.path.join(tree, info, "WHEEL")
        with open(wheel_file) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip() and not ln.startswith("Tag:")]
        python, abi = ABI_TAG.split("-")
        lines += [f"Tag: {python}-{abi}-{plat}_{arch}" for plat in (MANYLINUX, LEGACY_ALIAS)]
        with open(wheel_file, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.makedirs(out_dir, exist_ok=True)
        r = run([sys.executable, "-m", "wheel", "pack", "-d", out_dir, tree], "wheel pack")
        m = re.search(r"Repacking wheel as (\S+?\.whl)", r.stdout + r.stderr)
        if not m:
            raise BuildError("wheel pack did not say which wheel it wrote")
        return os.path.abspath(m.group(1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def manylinux_tag(wheel: str) -> str:
    """The most compatible manylinux tag auditwheel finds the wheel consistent with."""
    here = os.path.dirname(sys.executable)  # the venv's, when it is not on PATH
    auditwheel = shutil.which("auditwheel", path=here) or shutil.which("auditwheel")
    if auditwheel is None:
        raise BuildError("auditwheel not found (pip install auditwheel; make install has it)")
    r = run([auditwheel, "show", wheel], f"auditwheel show {os.path.basename(wheel)}")
    m = re.search(r'following platform tag:\s*"([^"]+)"', " ".join(r.stdout.split()))
    if not m:
        raise BuildError(f"auditwheel show {os.path.basename(wheel)}: no platform tag in its output")
    return m.group(1)


def check_policy(wheel: str, arch: str) -> None:
    got = manylinux_tag(wheel)
    if got != f"{MANYLINUX}_{arch}":
        raise BuildError(f"{os.path.basename(wheel)} needs {got}, not {MANYLINUX}_{arch}: a glibc symbol "
                         "newer than 2.17 is referenced (auditwheel show names it; pin it in "
                         "native/glibc_symver.h)")


def build_wheels(archs: list[str], out_dir: str) -> list[str]:
    host = host_arch()
    for arch in archs:
        if arch != host and arch not in CROSS_CC:
            raise BuildError(f"--arch {arch}: on this {host} machine only {host} and "
                             f"{', '.join(a for a in CROSS_CC if a != host) or 'nothing else'} can be built")
    os.makedirs(out_dir, exist_ok=True)
    for old in os.listdir(out_dir):
        if old.startswith("qvit_edge-") and old.endswith(".whl"):
            os.remove(os.path.join(out_dir, old))
    work = tempfile.mkdtemp(prefix="qvit-wheels-")
    made = []
    try:
        host_wheel = build_host_wheel(work)
        for arch in archs:
            native = None
            if arch != host:
                sysroot = aarch64_sysroot()
                native = os.path.join(work, f"_native.{arch}.so")
                cross_compile_native(native, os.path.join(sysroot, "usr", "include", f"python{PYVER}"),
                                     cc=CROSS_CC[arch], manylinux=True,
                                     sysroot_include=os.path.join(sysroot, "usr", "include"))
            wheel = set_platform(host_wheel, arch, native, out_dir)
            check_policy(wheel, arch)
            made.append(wheel)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="build_wheels.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    p.add_argument("--arch", nargs="+", default=None, help="x86_64 and/or aarch64 (default: both on x86_64)")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "wheels"), help="output folder")
    c = sub.add_parser("cross-native", help="only cross-compile qvit_edge._native for aarch64")
    c.add_argument("output")
    c.add_argument("--python-include", required=True, help="the aarch64 Python's include folder")
    c.add_argument("--sysroot-include", help="the aarch64 sysroot's /usr/include (searched last)")
    c.add_argument("--cc", default=CROSS_CC["aarch64"])
    c.add_argument("--manylinux", action="store_true", help="pin glibc symbols to 2.17 (wheels)")
    args = p.parse_args(argv)
    try:
        if args.cmd == "cross-native":
            cross_compile_native(args.output, args.python_include, cc=args.cc, manylinux=args.manylinux,
                                 sysroot_include=args.sysroot_include)
            return 0
        archs = args.arch or (["x86_64", "aarch64"] if host_arch() == "x86_64" else [host_arch()])
        for w in build_wheels(archs, args.out):
            print(os.path.relpath(w))
        return 0
    except BuildError as e:
        print(f"build_wheels: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
