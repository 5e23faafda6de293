"""Builds native/tests/test_native.c with the kernel sources and runs it.

    python native/tests/run_native_tests.py host        # this machine, every path it supports
    python native/tests/run_native_tests.py sanitize    # the same under ASan + UBSan (make sanitize)
    python native/tests/run_native_tests.py aarch64     # cross-compiled, run under qemu-aarch64

Exit status: the test program's (0 = passed); 77 = skipped (tool missing, reason printed).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE = os.path.dirname(HERE)
ROOT = os.path.dirname(NATIVE)
sys.path.insert(0, NATIVE)
import build_ffi  # noqa: E402  (source list and flags shared with the cffi build)

from qvit_edge.clikit import compiler_error  # noqa: E402

KERNEL_SOURCES = [s for s in build_ffi.SOURCES if not s.endswith(build_ffi.TVM_BACKEND)]
SKIP = 77

MODES = {
    "host": {"cc": "cc", "flags": ["-O2"], "run": []},
    "sanitize": {"cc": "cc",
                 "flags": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                           "-fno-sanitize-recover=undefined"],
                 "run": []},
    "aarch64": {"cc": "aarch64-linux-gnu-gcc", "flags": ["-O2"],
                "run": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]},
}


def build(mode: str, out_dir: str) -> str | None:
    cfg = MODES[mode]
    cc = os.environ.get("CC", cfg["cc"]) if mode != "aarch64" else cfg["cc"]
    if shutil.which(cc) is None:
        print(f"skipped: compiler {cc} not found")
        return None
    if cfg["run"] and shutil.which(cfg["run"][0]) is None:
        print(f"skipped: {cfg['run'][0]} not found")
        return None
    os.makedirs(out_dir, exist_ok=True)
    exe = os.path.join(out_dir, f"test_native_{mode}")
    flags = [f for f in build_ffi.CFLAGS if not f.startswith("-O")] + cfg["flags"]
    cmd = [cc, *flags, "-I", NATIVE, os.path.join(HERE, "test_native.c"), *KERNEL_SOURCES,
           "-o", exe, "-lm", "-pthread"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout + r.stderr)
        print(f"error: building the native tests with {cc} failed: {compiler_error(r.stdout + r.stderr)}",
              file=sys.stderr)
        sys.exit(1)
    return exe


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "host"
    if mode not in MODES:
        print(f"usage: {argv[0]} {{{'|'.join(MODES)}}} [threads]", file=sys.stderr)
        return 2
    threads = argv[2] if len(argv) > 2 else "2"
    exe = build(mode, os.path.join(ROOT, "build", "native-tests"))
    if exe is None:
        return SKIP
    env = dict(os.environ)
    if mode == "aarch64":
        env["QV_TEST_SKIP_FORK"] = "qemu-user cannot fork a multi-threaded process"
    if mode == "sanitize":
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return subprocess.run([*MODES[mode]["run"], exe, threads], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
