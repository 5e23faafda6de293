"""Every C path a model.so runs, under ASan + UBSan: the C micro-kernels linked into model.so
(native/model) and their glue, and the runtime's backend (native/tvm_backend.c: step loop, thread
pool, workspace) with the rest of the native library.

    python native/tests/sanitize_models.py [--threads 1,2]     # (make sanitize runs it)

1. builds qvit_edge._native with -fsanitize=address,undefined into build/sanitize/pkg/ (beside
   links to edge_runtime/*.py, so that package is the runtime the check imports);
2. exports DeiT-T (W2A2) and Swin-T (W3A3) with random weights and compiles them for this machine
   with the same flags on the micro-kernels (QVIT_MODEL_CFLAGS; TVM's own generated code is LLVM
   output and is not instrumented);
3. runs each model.so in a child Python with the sanitizer runtimes preloaded, at each thread
   count, on random images: its logits must equal, bit for bit, those of the same model compiled
   without the sanitizers (exactness against the numpy reference is tests/test_model_so.py's job;
   the distance is printed).

Any sanitizer report aborts the child; the exit status is 0 only when every model ran clean and
equal.
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "build", "sanitize")
PKG = os.path.join(OUT, "pkg")
SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
MODELS = {  # name: (timm architecture, bits)
    "deit_tiny_w2a2": ("deit_tiny_patch16_224", 2),
    "swin_tiny_w3a3": ("swin_tiny_patch4_window7_224", 3),
}

_CHILD = r"""
import sys
import numpy as np
import qvit_edge._native as nat
from qvit_compile.intmodel import reference
from qvit_edge import model
from qvit_compile.intmodel import IntModel

assert nat.__file__.startswith(sys.argv[1]), nat.__file__  # the sanitized build, not the installed one
san_path, plain_path, int_path, threads = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
im = IntModel.load(int_path)
x = np.random.default_rng(threads).standard_normal((2,) + tuple(im.input_shape)).astype(np.float32)
with model.load(san_path, threads=threads) as m:
    got = m.run(x)
    again = m.run(x)
with model.load(plain_path, threads=threads) as m:
    plain = m.run(x)
want = np.concatenate([reference.run(im, x[i:i + 1]) for i in range(len(x))])
assert np.array_equal(got, again), "two runs differ"
# The instrumented build must compute exactly what the shipped build computes.
assert np.array_equal(got, plain), f"sanitized and plain builds differ by {np.abs(got - plain).max():.3g}"
print(f"equal to the plain build; max |model.so - numpy reference| = {float(np.abs(got - want).max()):.2e}")
"""


def sanitizer_runtimes(cc: str) -> list[str]:
    libs = []
    for name in ("libasan.so", "libubsan.so"):
        p = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(p):
            sys.exit(f"sanitize: error: {cc} has no {name} (Debian: apt-get install gcc)")
        libs.append(p)
    return libs


def build_native(cc: str) -> None:
    """The native library with the sanitizers, rebuilt only when a source is newer."""
    pkg = os.path.join(PKG, "qvit_edge")
    os.makedirs(pkg, exist_ok=True)
    for f in glob.glob(os.path.join(ROOT, "edge_runtime", "*.py")):
        link = os.path.join(pkg, os.path.basename(f))
        if not os.path.lexists(link):
            os.symlink(f, link)
    for link in glob.glob(os.path.join(pkg, "*.py")):
        if not os.path.exists(link):
            os.unlink(link)
    built = glob.glob(os.path.join(pkg, "_native*.so"))
    sources = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ROOT, "native")) for f in fs
               if f.endswith((".c", ".h")) or f == "build_ffi.py"]
    if built and os.path.getmtime(built[0]) > max(map(os.path.getmtime, sources)):
        return
    print("sanitize: building qvit_edge._native with ASan + UBSan", flush=True)
    for b in built:
        os.unlink(b)
    env = dict(os.environ, CC=cc, CFLAGS=" ".join(SAN + ["-O1"]), LDFLAGS=" ".join(SAN))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import build_ffi; "
            "build_ffi.ffibuilder.compile(tmpdir=sys.argv[2])")
    r = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "native"), PKG], env=env,
                       capture_output=True, text=True, cwd=PKG)
    if r.returncode != 0:
        from qvit_edge.clikit import compiler_error

        sys.stderr.write(r.stdout[-4000:] + r.stderr[-4000:])
        err = compiler_error(r.stdout + r.stderr)
        sys.exit(f"sanitize: error: building the native library failed: {err}")


def build_models() -> dict[str, tuple[str, str, str]]:
    """{name: (sanitized model.so, plain model.so, integer model)}: each model compiled twice, with
    and without the sanitizers on the micro-kernels."""
    from qvit.export import export_random
    from qvit_compile.compiler import compile_model

    arch_here = "x86_64" if os.uname().machine == "x86_64" else "aarch64"
    out = {}
    for name, (arch, bits) in MODELS.items():
        paths = [os.path.join(OUT, f"{name}.{kind}.so") for kind in ("sanitized", "plain")]
        int_path = os.path.join(OUT, f"{name}.qvit.safetensors")
        print(f"sanitize: compiling {arch} W{bits}A{bits} (random weights), with and without the sanitizers",
              flush=True)
        im, _ = export_random(arch, bits)
        im.save(int_path)
        for path, flags in zip(paths, (" ".join(SAN + ["-O1"]), "")):
            os.environ["QVIT_MODEL_CFLAGS"] = flags
            compile_model(im, arch_here, path, progress=lambda *a: None)
        os.environ.pop("QVIT_MODEL_CFLAGS")
        out[name] = (*paths, int_path)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    cc = os.environ.get("CC", "cc")
    preload = sanitizer_runtimes(cc)
    os.makedirs(OUT, exist_ok=True)
    build_native(cc)
    models = build_models()
    env = dict(os.environ, PYTHONPATH=PKG, LD_PRELOAD=" ".join(preload),
               # Python itself leaks by design at exit; the kernels' leaks show up as
               # heap-use-after-free / overflow reports instead, which do abort.
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:detect_odr_violation=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    failed = 0
    for name, (san_path, plain_path, int_path) in models.items():
        for t in threads:
            r = subprocess.run([sys.executable, "-c", _CHILD, PKG, san_path, plain_path, int_path, str(t)],
                               env=env, capture_output=True, text=True, timeout=1800)
            report = (r.stdout + r.stderr).strip()
            clean = "ERROR: AddressSanitizer" not in report and "runtime error:" not in report
            ok = r.returncode == 0 and clean
            status = "ok" if ok else f"FAILED (exit {r.returncode})"
            print(f"sanitize: {name} threads={t}: {status}: {report.splitlines()[-1] if report else ''}",
                  flush=True)
            if not ok:
                failed += 1
                sys.stderr.write(report[-6000:] + "\n")
    print(f"sanitize: {failed} failures ({shlex.join(['LD_PRELOAD=' + ' '.join(preload)])})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
