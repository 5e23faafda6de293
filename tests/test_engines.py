"""GEMM engines (compile/engines.py): the table picks per target CPU, the override, the choice
recorded in model.so and shown by `qvit-edge info` (old files without it still load), and every
vector path of the int8dot micro-kernel (native/model/int8dot.c) equal to its portable C path, bit for bit.
(Exactness against the reference: tests/test_compile.py kernel by kernel, tests/test_model_so.py
whole models with each engine.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from qvit_compile import engines
from qvit_edge.clikit import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_KERNELS = os.path.join(ROOT, "native", "model")


@pytest.mark.parametrize("arch,features,ab,wb,want", [
    ("aarch64", ["dotprod"], 2, 2, "int8dot"),
    ("aarch64", ["dotprod"], 4, 4, "int8dot"),
    ("aarch64", ["dotprod"], 1, 1, "int8dot"),
    ("aarch64", [], 2, 2, "bitserial-neon"),
    ("aarch64", [], 2, 4, "bitserial-neon"),
    ("aarch64", [], 3, 3, "lut-neon"),
    ("aarch64", [], 4, 4, "lut-neon"),
    ("aarch64", [], 4, 2, "lut-neon"),
    ("aarch64", [], 8, 8, "int16"),
    ("aarch64", ["dotprod"], 8, 8, "int16"),
    ("x86_64", ["avx512vnni"], 2, 2, "int8dot"),
    ("x86_64", ["avxvnni"], 3, 3, "int8dot"),
    ("x86_64", [], 2, 2, "bitserial"),
    ("x86_64", ["avx512vnni"], 4, 8, "int16"),
    ("x86_64", ["amx-int8", "avx512vnni", "avxvnni"], 2, 2, "int8dot-amx"),
    ("x86_64", ["amx-int8", "avx512vnni"], 4, 4, "int8dot-amx"),
    ("x86_64", ["amx-int8"], 8, 8, "int16"),
    ("aarch64", ["amx-int8", "dotprod"], 2, 2, "int8dot"),  # (an x86 feature never picks for Arm)
])
def test_table(arch, features, ab, wb, want):
    assert engines.choose(arch, features, ab, wb) == want


tvm = pytest.importorskip("tvm")
from qvit_compile import targets  # noqa: E402


@pytest.mark.parametrize("arch,mcpu,want", [
    ("aarch64", "cortex-a76", "int8dot"), ("aarch64", "cortex-a55", "int8dot"),
    ("aarch64", "neoverse-n1", "int8dot"), ("aarch64", "cortex-a78", "int8dot"),
    ("aarch64", "cortex-a72", "bitserial-neon"), ("aarch64", "cortex-a53", "bitserial-neon"),
    ("x86_64", "sapphirerapids", "int8dot-amx"), ("x86_64", "graniterapids", "int8dot-amx"),
    ("x86_64", "alderlake", "int8dot"), ("x86_64", "znver4", "int8dot"),
    ("x86_64", "icelake-server", "int8dot"),
    ("x86_64", "x86-64-v3", "bitserial"), ("x86_64", "skylake", "bitserial"),
])
def test_table_per_mcpu(arch, mcpu, want, monkeypatch):
    """The features come from LLVM's description of the CPU named by --mcpu (not this machine's
    flags, which count only for its own CPU name)."""
    monkeypatch.delenv(engines.ENV, raising=False)
    monkeypatch.setattr(engines, "host_x86_features", lambda: {"amx-int8", "avx512vnni"})
    sel = engines.Selection(targets.get(arch, mcpu))
    assert sel.pick("qlinear", 2, 2) == want
    assert sel.pick("patch_embed", 8, 8) == "int16"
    meta = sel.meta()
    assert meta["mcpu"] == mcpu and meta["forced"] is False
    assert [(r["kind"], r["engine"], r["layers"]) for r in meta["layers"]] == [
        ("patch_embed", "int16", 1), ("qlinear", want, 1)]


def test_host_flags_count_for_the_host_cpu_only(monkeypatch):
    """A VM may name its CPU by a model whose LLVM description lacks AMX (a Sapphire Rapids guest
    reported as rocketlake): compiling for this machine's CPU reads its AMX flag too (only that:
    VNNI is compiled in by -march, so LLVM's description decides)."""
    monkeypatch.delenv(engines.ENV, raising=False)
    monkeypatch.setattr(targets, "host_x86_cpu", lambda: "rocketlake")
    monkeypatch.setattr(engines, "host_x86_features", lambda: {"amx-int8"})
    if os.uname().machine == "x86_64":
        assert engines.Selection(targets.get("x86_64", "rocketlake")).pick("qlinear", 2, 2) == "int8dot-amx"
    assert engines.Selection(targets.get("x86_64", "icelake-server")).pick("qlinear", 2, 2) == "int8dot"
    monkeypatch.setattr(engines, "host_x86_features", lambda: set())
    assert engines.Selection(targets.get("x86_64", "rocketlake")).pick("qlinear", 2, 2) == "int8dot"
    monkeypatch.setattr(targets, "host_x86_cpu", lambda: "haswell")  # (no VNNI by LLVM's word)
    monkeypatch.setattr(engines, "host_x86_features", lambda: {"amx-int8"})
    if os.uname().machine == "x86_64":
        assert engines.Selection(targets.get("x86_64", "haswell")).pick("qlinear", 2, 2) == "int8dot-amx"


def test_host_x86_features_reads_cpuinfo():
    if not os.path.exists("/proc/cpuinfo") or os.uname().machine != "x86_64":
        pytest.skip("reads Linux x86_64's /proc/cpuinfo")
    assert engines.host_x86_features() == {v for f, v in engines._HOST_FLAGS.items() if _host_flags(f)}


def test_override(monkeypatch):
    t = targets.get("aarch64", "cortex-a72")
    monkeypatch.delenv(engines.ENV, raising=False)
    sel = engines.Selection(t, "int8dot")
    assert sel.pick("qlinear", 2, 2) == "int8dot" and sel.pick("qlinear", 8, 8) == "int16"
    assert sel.meta()["forced"] is True
    monkeypatch.setenv(engines.ENV, "bitserial")
    assert engines.Selection(targets.get("aarch64", "cortex-a76")).pick("qlinear", 2, 2) == "bitserial"
    a76 = targets.get("aarch64", "cortex-a76")
    assert engines.Selection(a76, "int8dot").pick("qlinear", 2, 2) == "int8dot"
    x86 = targets.get("x86_64", "x86-64-v3")
    assert engines.Selection(x86, "int8dot-amx").pick("qlinear", 4, 4) == "int8dot-amx"
    monkeypatch.setenv(engines.ENV, "int8dot")  # plain VNNI on an AMX CPU, for comparisons
    assert engines.Selection(targets.get("x86_64", "sapphirerapids")).pick("qlinear", 2, 2) == "int8dot"
    monkeypatch.setenv(engines.ENV, "fast")
    with pytest.raises(UserError, match="QVIT_GEMM_ENGINE: unknown GEMM engine 'fast'"):
        engines.Selection(t)


def test_cli_unknown_engine(tmp_path):
    r = subprocess.run([sys.executable, "-m", "qvit_compile", "--target", "x86_64", "--engine", "magic",
                        "--model", "x", "--out", str(tmp_path / "m.so")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "qvit_compile: error: --engine: unknown GEMM engine 'magic' "
        "(known: bitserial, int8dot, bitserial-neon, int8dot-amx, lut-neon; or measure)"]


# ------------------------------------------------------------------------ --engine measure

def test_measure_takes_the_fastest_per_bit_width(monkeypatch):
    """--engine measure times the first layer of each bit width once and gives every layer of that
    width the fastest engine; the times go into the metadata."""
    from qvit_compile import engine_measure
    monkeypatch.delenv(engines.ENV, raising=False)
    calls = []

    def fake(target, m, n, k, ab, wb, epi):
        calls.append((m, n, k, ab, wb, epi))
        return {"bitserial": 0.2, "int8dot": 0.5, "int8dot-amx": 0.3} if ab == 1 else \
            {"bitserial": 0.9, "int8dot": 0.4, "int8dot-amx": 0.6}
    monkeypatch.setattr(engine_measure, "measure", fake)
    sel = engines.Selection(targets.get("x86_64"), "measure")
    assert sel.pick("qlinear", 2, 2, (197, 1152, 384, "none")) == "int8dot"
    assert sel.pick("qlinear", 2, 2, (197, 384, 1536, "add")) == "int8dot"  # not timed again
    assert sel.pick("qlinear", 1, 1, (197, 384, 384, "add")) == "bitserial"
    assert sel.pick("patch_embed", 8, 8, (196, 384, 768, "none")) == "int16"  # no choice at 8 bits
    assert calls == [(197, 1152, 384, 2, 2, "none"), (197, 384, 384, 1, 1, "add")]
    meta = sel.meta()
    assert meta["forced"] is False and [(r["a_bits"], r["engine"]) for r in meta["measured"]] == \
        [(1, "bitserial"), (2, "int8dot")]
    assert "measured on this machine" in engines.describe(meta)


def test_measure_on_this_machine_compiles_an_exact_model(tmp_path, monkeypatch):
    """The real timing (a child process, TVM on one thread): the engine recorded for the layers is
    the fastest of the times recorded beside it, and the model still computes the reference."""
    from qvit_compile import compiler, engine_measure, intmodel
    from qvit_compile.intmodel import reference
    from qvit_edge import model as model_so
    monkeypatch.delenv(engines.ENV, raising=False)
    if os.uname().machine != "x86_64":
        pytest.skip("--engine measure times x86_64 engines")
    m = intmodel.random_deit(bits=2, irm=False, depth=1, seed=3)
    out = str(tmp_path / "m.so")
    lines = []
    meta = compiler.compile_model(m, "x86_64", out, engine="measure", progress=lines.append)
    (row,) = meta["gemm"]["measured"]
    assert {"bitserial", "int8dot"} <= set(row["ms"]) and all(v > 0 for v in row["ms"].values())
    assert row["engine"] == min(row["ms"], key=row["ms"].get)
    assert {r["engine"] for r in meta["gemm"]["layers"] if r["a_bits"] == 2} == {row["engine"]}
    assert any(ln.startswith("  measured W2A2") and ln.endswith("-> " + row["engine"]) for ln in lines)
    x = np.random.default_rng(0).standard_normal((2,) + m.input_shape).astype(np.float32)
    with model_so.load(out) as so:
        assert so.meta["gemm"]["measured"] == meta["gemm"]["measured"]
        np.testing.assert_allclose(so.run(x), reference.run(m, x), atol=1e-4, rtol=1e-4)
    assert engine_measure.fastest({"int8dot": 0.3, "bitserial": 0.3}) == "bitserial"  # ties: fixed order


@pytest.mark.parametrize("target,mcpu,want", [
    ("aarch64", None, "the target must be this machine's x86_64 CPU (target aarch64)"),
    ("x86_64", "skylake", "the target CPU skylake is not this machine's"),
])
def test_measure_refuses_another_cpu_in_one_line(tmp_path, target, mcpu, want):
    cmd = [sys.executable, "-m", "qvit_compile", "--target", target, "--engine", "measure", "--arch",
           "deit_tiny_patch16_224", "--bits", "2", "--random", "--out", str(tmp_path / "m.so")]
    r = subprocess.run(cmd + (["--mcpu", mcpu] if mcpu else []), capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and want in lines[0], r.stderr[-2000:]


# ------------------------------------------------------------------------ metadata and info

def test_metadata_info_and_old_files(tmp_path, monkeypatch):
    """model.so records the engines (and mcpu); info shows them; a file compiled before they were
    recorded (no "gemm" field) still loads, runs and is described."""
    from qvit_compile import compiler, intmodel, lower, package
    from qvit_compile.intmodel import reference
    from qvit_edge import cmd_info
    from qvit_edge import model as model_so
    monkeypatch.delenv(engines.ENV, raising=False)
    m = intmodel.random_deit(bits=2, irm=False, depth=1, seed=2)
    new = str(tmp_path / "new.so")
    meta = compiler.compile_model(m, "x86_64", new, mcpu="x86-64-v3", engine="int8dot",
                                  progress=lambda *a: None)
    assert meta["gemm"]["mcpu"] == "x86-64-v3" and meta["gemm"]["forced"] is True
    rows = {(r["kind"], r["w_bits"], r["a_bits"]): (r["engine"], r["layers"]) for r in meta["gemm"]["layers"]}
    assert rows[("qlinear", 2, 2)] == ("int8dot", 4) and rows[("patch_embed", 8, 8)] == ("int16", 1)
    x = np.random.default_rng(0).standard_normal((2,) + m.input_shape).astype(np.float32)
    with model_so.load(new) as so:
        assert so.meta["gemm"] == meta["gemm"]
        np.testing.assert_allclose(so.run(x), reference.run(m, x), atol=1e-4, rtol=1e-4)
    d = cmd_info.describe(new)
    assert d["gemm"] == meta["gemm"] and "gemm" not in d["extra"]
    r = subprocess.run([sys.executable, "-m", "qvit_edge", "info", new], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("gemm engines"))
    assert "qlinear W2A2: int8dot (4 layers)" in line and "mcpu x86-64-v3, forced" in line

    # the metadata of files from before the engines: no "gemm"
    old = str(tmp_path / "old.so")
    t = targets.get("x86_64", "x86-64-v3")
    package.build(lower.lower(m, "x86_64"), compiler.model_meta(m), t, old, progress=lambda *a: None)
    with model_so.load(old) as so:
        assert "gemm" not in so.meta
        np.testing.assert_allclose(so.run(x), reference.run(m, x), atol=1e-4, rtol=1e-4)
    assert cmd_info.describe(old)["gemm"] is None
    r = subprocess.run([sys.executable, "-m", "qvit_edge", "info", old], capture_output=True, text=True)
    assert r.returncode == 0 and "gemm engines    not recorded" in r.stdout


def test_schema_rejects_a_bad_gemm_field():
    from qvit_edge import model_schema as schema
    good = {"mcpu": "cortex-a76", "features": ["dotprod"], "forced": False,
            "layers": [{"kind": "qlinear", "w_bits": 2, "a_bits": 2, "engine": "int8dot", "layers": 48}]}
    schema._check_gemm(good)
    schema._check_gemm({**good, "layers": [{**good["layers"][0], "engine": "a-later-engine"}]})
    measured = {"a_bits": 2, "w_bits": 2, "shape": [197, 1152, 384], "epilogue": "none",
                "ms": {"bitserial": 0.56, "int8dot": 0.49}, "engine": "int8dot"}
    schema._check_gemm({**good, "measured": [measured]})
    for bad, msg in (({**good, "forced": 1}, "gemm.forced"), ({k: v for k, v in good.items() if k != "mcpu"},
                                                                "no 'mcpu'"),
                     ({**good, "layers": [{**good["layers"][0], "w_bits": 99}]}, "gemm.layers.w_bits"),
                     ({**good, "layers": "int8dot"}, "gemm.layers"),
                     ({**good, "measured": [{**measured, "ms": {"int8dot": "fast"}}]},
                      "gemm.measured.ms.int8dot"),
                     ({**good, "measured": [{**measured, "a_bits": 0}]}, "gemm.measured.a_bits")):
        with pytest.raises(schema.SchemaError, match=msg):
            schema._check_gemm(bad)


# ------------------------------------------------------- int8dot micro-kernel: every path in C

_DRIVER = r"""
#include "int8dot.c"
#include <stdio.h>
/* every epilogue and shape: qvit_int8dot_panel (this build's path) against plain loops with the
 * scalar epilogue (gelu_f), floats compared bit for bit; with AMX_LAYOUT qvit_int8dot_amx_group on
 * int8dot-amx's paddings (K to 64, rows to 16) */
#ifdef AMX_LAYOUT
#define KB 64
#define MB 16
#else
#define KB 16
#define MB 8
#endif
static uint32_t rng = 12345;
static int next(int n) { rng = rng * 1103515245u + 12345u; return (int)((rng >> 8) % (uint32_t)n); }
int main(void) {
  /* (AMX: 2 x 2, 1 x 2, 2 x 1 and 1 x 1 tile blocks, K tails, one row, one channel) */
  static const int shapes[][3] = {{13, 37, 77}, {197, 48, 384}, {8, 16, 16}, {5, 50, 1536}, {33, 64, 192},
                                  {1, 1, 64}, {48, 20, 100}};
  int bad = 0;
  for (int s = 0; s < 7; s++) {
    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    const int Mpad = (M + MB - 1) / MB * MB, Kp = (K + KB - 1) / KB * KB, P = (N + 15) / 16;
    int8_t *a = calloc((size_t)Mpad * Kp, 1), *wp = calloc((size_t)P * 16 * Kp, 1);
    int8_t *w = calloc((size_t)N * K, 1);
    float *sc = malloc(4 * N), *bi = malloc(4 * N), *res = malloc(4 * (size_t)M * N);
    float *y = malloc(4 * (size_t)M * N);
    int32_t *corr = malloc(4 * N);
    for (int r = 0; r < M; r++) for (int k = 0; k < K; k++) a[r * Kp + k] = (int8_t)next(16);
    for (int n = 0; n < N; n++) {
      for (int k = 0; k < K; k++) {
        w[n * K + k] = (int8_t)(next(16) - 8);
        wp[((n / 16) * (Kp / 4) + k / 4) * 64 + (n % 16) * 4 + k % 4] = w[n * K + k];
      }
      sc[n] = 0.001f * (float)(1 + next(50)), bi[n] = 0.01f * (float)(next(200) - 100);
      corr[n] = next(300) - 150;
    }
    for (int i = 0; i < M * N; i++) res[i] = 0.01f * (float)(next(200) - 100);
    for (int epi = 0; epi < 4; epi++) {
      const int e = epi == 3 ? EPI_GELU : epi, clip_on = epi == 3;
      memset(y, 0xff, 4 * (size_t)M * N); /* NaNs: an output never written fails */
#ifdef AMX_LAYOUT
      for (int g = 0; g < (P + 1) / 2; g++)
        qvit_int8dot_amx_group(g, M, Mpad, N, Kp, e, clip_on, 0.75f, a, wp, sc, corr, bi, res, y);
#else
      for (int p = 0; p < P; p++)
        qvit_int8dot_panel(p, M, Mpad, N, Kp, e, clip_on, 0.75f, a, wp, sc, corr, bi, res, y);
#endif
      for (int r = 0; r < M; r++)
        for (int n = 0; n < N; n++) {
          int32_t acc = 0;
          for (int k = 0; k < K; k++) acc += (int32_t)a[r * Kp + k] * w[n * K + k];
          float v = sc[n] * (float)(acc - corr[n]) + bi[n];
          if (e == EPI_GELU) v = gelu_f(v, clip_on, 0.75f);
          else if (e == EPI_ADD) v = v + res[r * N + n];
          if (memcmp(&v, &y[r * N + n], 4)) bad++;
        }
    }
    free(a), free(wp), free(w), free(sc), free(bi), free(res), free(y), free(corr);
  }
#ifdef AMX_LAYOUT
  printf("path %d amx %d mismatches %d\n", qvit_int8dot_path(), qvit_int8dot_amx_state(), bad);
#else
  printf("path %d mismatches %d\n", qvit_int8dot_path(), bad);
#endif
  return bad != 0;
}
"""


def _host_flags(flag: str) -> bool:
    try:
        return flag in open("/proc/cpuinfo").read().split()
    except OSError:
        return False


ARM_CC, QEMU = "aarch64-linux-gnu-gcc", ["qemu-aarch64", "-cpu", "max"]
PATHS = [  # id, compiler, flags, runner, path number the object reports, needed
    ("x86-portable", "gcc", ["-march=native", "-DQVIT_INT8DOT_PORTABLE"], [], 0, None),
    ("x86-avx512vnni", "gcc", ["-march=native"], [], 2, "avx512_vnni"),
    ("x86-avxvnni", "gcc", ["-march=alderlake"], [], 3, "avx_vnni"),
    ("arm-sdot", ARM_CC, ["-mcpu=cortex-a76", "-static"], QEMU, 1, None),
    ("arm-portable", ARM_CC, ["-mcpu=cortex-a72", "-static"], QEMU, 0, None),
]


def _build_driver(tmp_path, cc, flags):
    src = tmp_path / "driver.c"
    src.write_text(_DRIVER)
    exe = tmp_path / "driver"
    r = subprocess.run([cc, "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", *flags,
                        "-I", MODEL_KERNELS, str(src), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return exe


@pytest.mark.cpu_feature
@pytest.mark.parametrize("cc,flags,runner,path,need", [p[1:] for p in PATHS], ids=[p[0] for p in PATHS])
def test_int8dot_paths_equal_portable(tmp_path, cc, flags, runner, path, need):
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"needs {cc} and {runner[0] if runner else ''}")
    if need and not _host_flags(need):
        pytest.skip(f"this CPU has no {need}")
    exe = _build_driver(tmp_path, cc, flags)
    r = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"path {path} mismatches 0", r.stdout + r.stderr


# qvit_int8dot_amx_state: 1 AMX runs, 0 not built in, -1 the CPU lacks it, -2 the OS refuses, -3 QVIT_NO_AMX
AMX_WHY = {-1: "this CPU has no AMX-INT8",
           -2: "the OS does not enable AMX tiles (XCR0 / arch_prctl, Linux < 5.16)"}
AMX_PATHS = [  # id, compiler, flags, runner, environment, path number, AMX state (None: any but 1)
    ("x86-amx", "gcc", ["-march=native", "-DAMX_LAYOUT"], [], {}, 2, 1),
    # the same build and layout with AMX refused: each group on the VNNI panels (or the portable
    # ones on a CPU without VNNI), and on an x86-64-v3 build (AVX2: portable panels)
    ("x86-amx-off-vnni", "gcc", ["-march=native", "-DAMX_LAYOUT"], [], {"QVIT_NO_AMX": "1"}, None, None),
    ("x86-v3-amx", "gcc", ["-march=x86-64-v3", "-DAMX_LAYOUT"], [], {}, 0, 1),
    ("x86-v3-amx-off", "gcc", ["-march=x86-64-v3", "-DAMX_LAYOUT"], [], {"QVIT_NO_AMX": "1"}, 0, None),
    ("arm-sdot-amx-layout", ARM_CC, ["-mcpu=cortex-a76", "-static", "-DAMX_LAYOUT"], QEMU, {}, 1, 0),
]


@pytest.mark.cpu_feature
@pytest.mark.parametrize("cc,flags,runner,env,path,state", [p[1:] for p in AMX_PATHS],
                         ids=[p[0] for p in AMX_PATHS])
def test_int8dot_amx_equal_portable(tmp_path, cc, flags, runner, env, path, state):
    """int8dot-amx's group kernel on its paddings: AMX tiles where the CPU and the OS allow them
    (skipped, saying which, where not), the int8dot panels of the build otherwise; always the
    reference's floats bit for bit."""
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"needs {cc} and {runner[0] if runner else ''}")
    exe = _build_driver(tmp_path, cc, flags)
    r = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "QVIT_NO_AMX": "", **env})
    out = r.stdout.split()
    assert r.returncode == 0 and len(out) == 6 and out[5] == "0", r.stdout + r.stderr
    got_path, got_state = int(out[1]), int(out[3])
    if state == 1 and got_state in AMX_WHY:
        pytest.skip(AMX_WHY[got_state])
    if state is None:
        assert got_state != 1 and got_state in (-1, -2, -3), r.stdout
    else:
        assert got_state == state, r.stdout
    if path is not None:
        assert got_path == path, r.stdout
    else:  # -march=native: the host's VNNI path
        want = 2 if _host_flags("avx512_vnni") else 3 if _host_flags("avx_vnni") else 0
        assert got_path == want, r.stdout


_BS_DRIVER = r"""
#include "bsneon.c"
#include <stdio.h>
/* qvit_bsneon_group (this build's path) against popcount loops, every (a_bits, w_bits), K of 1, 6,
 * 24 and 40 words (40: more than one 31-word flush), scale 1, bias 0: y is the integer sum */
static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
int main(void) {
  static const int kws[] = {1, 6, 24, 40};
  int bad = 0;
  for (int s = 0; s < 4; s++)
    for (int ab = 1; ab <= 4; ab++)
      for (int wb = 1; wb <= 4; wb++) {
        const int M = 5, Mpad = 8, N = 21, G = 2, KW = kws[s];
        uint64_t *a = calloc((size_t)ab * Mpad * KW, 8), *w = calloc((size_t)2 * G * wb * KW * 8, 8);
        for (int i = 0; i < ab; i++) for (int r = 0; r < M; r++) for (int k = 0; k < KW; k++)
          a[((int64_t)i * Mpad + r) * KW + k] = next();
        for (size_t q = 0; q < (size_t)2 * G * wb * KW * 8; q++) w[q] = next();
        float *sc = malloc(4 * N), *bi = calloc(N, 4), *y = malloc(4 * M * N);
        int32_t *corr = calloc(N, 4);
        for (int n = 0; n < N; n++) sc[n] = 1.0f;
        for (int g = 0; g < G; g++)
          qvit_bsneon_group(g, M, Mpad, N, KW, ab, wb, 0, 0, 0, a, w, sc, corr, bi, 0, y);
        for (int r = 0; r < M; r++)
          for (int n = 0; n < N; n++) {
            int64_t acc = 0;
            for (int i = 0; i < ab; i++)
              for (int j = 0; j < wb; j++) {
                int64_t c = 0, ca = 0;
                for (int k = 0; k < KW; k++) {
                  const uint64_t av = a[((int64_t)i * Mpad + r) * KW + k];
                  c += __builtin_popcountll(av & w[(((int64_t)(n / 8) * wb + j) * KW + k) * 8 + n % 8]);
                  ca += __builtin_popcountll(av);
                }
                if (wb == 1) acc += (2 * c - ca) << i;
                else acc += (j == wb - 1 ? -c : c) << (i + j);
              }
            if ((float)acc != y[r * N + n]) bad++;
          }
        free(a), free(w), free(sc), free(bi), free(y), free(corr);
      }
  printf("path %d mismatches %d\n", qvit_bsneon_path(), bad);
  return bad != 0;
}
"""

BS_PATHS = [
    ("x86-portable", "gcc", ["-march=native"], [], 0),
    ("arm-neon-a72", ARM_CC, ["-mcpu=cortex-a72", "-static"], QEMU, 1),
    ("arm-portable", ARM_CC, ["-mcpu=cortex-a72", "-static", "-DQVIT_BSNEON_PORTABLE"], QEMU, 0),
]


@pytest.mark.parametrize("cc,flags,runner,path", [p[1:] for p in BS_PATHS], ids=[p[0] for p in BS_PATHS])
def test_bsneon_paths_exact(tmp_path, cc, flags, runner, path):
    """bitserial-neon's NEON byte-counter path and its portable C path give the popcount sums."""
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"needs {cc} and {runner[0] if runner else ''}")
    src = tmp_path / "driver.c"
    src.write_text(_BS_DRIVER)
    exe = tmp_path / "driver"
    r = subprocess.run([cc, "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", *flags,
                        "-I", MODEL_KERNELS, str(src), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"path {path} mismatches 0", r.stdout + r.stderr


_LUT_DRIVER = r"""
#include "lut.c"
#include <stdio.h>
/* qvit_lut_rows (this build's path) against a * w summed directly, every (a_bits, w_bits), Kp of 16,
 * 96, 1536 (many uint8 rounds, the largest DeiT row) and 4384 (past the uint16 bound: the portable
 * loop), scale 1, bias 0: y is the integer sum */
static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
int main(void) {
  static const int kps[] = {16, 96, 1536, 4384};
  int bad = 0;
  for (int s = 0; s < 4; s++)
    for (int ab = 1; ab <= 4; ab++)
      for (int wb = 1; wb <= 4; wb++) {
        const int M = 5, Mpad = 8, N = 21, P = 2, Kp = kps[s], H = Kp / 8;
        int8_t *a = calloc((size_t)Mpad * Kp, 1), *w = calloc((size_t)N * Kp, 1);
        uint8_t *panel = calloc((size_t)P * wb * H * 16, 1);
        for (int r = 0; r < M; r++)
          for (int k = 0; k < Kp; k++) a[r * Kp + k] = (int8_t)(next() % (1u << ab));
        for (int n = 0; n < N; n++)
          for (int k = 0; k < Kp; k++) {
            const int v = wb == 1 ? (next() & 1 ? 1 : -1) : (int)(next() % (1u << wb)) - (1 << (wb - 1));
            w[n * Kp + k] = (int8_t)v;
            const int bitsv = wb == 1 ? (v + 1) / 2 : v & ((1 << wb) - 1);
            for (int j = 0; j < wb; j++)
              if (bitsv >> j & 1) {
                const int g = k / 4, h = g / 2, bit = k % 4 + 4 * (g % 2);
                panel[(((int64_t)(n / 16) * wb + j) * H + h) * 16 + n % 16] |= (uint8_t)(1 << bit);
              }
          }
        float *sc = malloc(4 * N), *bi = calloc(N, 4), *y = malloc(4 * M * N);
        int32_t *corr = calloc(N, 4);
        for (int n = 0; n < N; n++) sc[n] = 1.0f;
        for (int rb = 0; rb < (M + 1) / 2; rb++)
          if (qvit_lut_rows(rb, M, Mpad, N, Kp, ab, wb, 0, 0, 0, a, panel, sc, corr, bi, 0, y)) bad++;
        for (int r = 0; r < M; r++)
          for (int n = 0; n < N; n++) {
            int64_t acc = 0;
            for (int k = 0; k < Kp; k++) acc += a[r * Kp + k] * w[n * Kp + k];
            if ((float)acc != y[r * N + n]) bad++;
          }
        free(a), free(w), free(panel), free(sc), free(bi), free(y), free(corr);
      }
  printf("path %d mismatches %d\n", qvit_lut_path(), bad);
  return bad != 0;
}
"""

LUT_PATHS = [
    ("x86-portable", "gcc", ["-march=native"], [], 0),
    ("arm-neon-a72", ARM_CC, ["-mcpu=cortex-a72", "-static"], QEMU, 1),
    ("arm-portable", ARM_CC, ["-mcpu=cortex-a72", "-static", "-DQVIT_LUT_PORTABLE"], QEMU, 0),
]


@pytest.mark.parametrize("cc,flags,runner,path", [p[1:] for p in LUT_PATHS], ids=[p[0] for p in LUT_PATHS])
def test_lut_paths_exact(tmp_path, cc, flags, runner, path):
    """lut-neon's TBL path and its portable C path give the sums of a * w (a weight layout built
    independently of packing.lut_panel, which test_compile checks against the reference)."""
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"needs {cc} and {runner[0] if runner else ''}")
    src = tmp_path / "driver.c"
    src.write_text(_LUT_DRIVER)
    exe = tmp_path / "driver"
    r = subprocess.run([cc, "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", *flags,
                        "-I", MODEL_KERNELS, str(src), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"path {path} mismatches 0", r.stdout + r.stderr


_IGEMM_DRIVER = r"""
#include "igemm.c"
#include <stdio.h>
/* qvit_int_gemm_panel (this build's path) against the sums written out, with the float32 epilogue,
 * K of 12 (K / 2 % 4 != 0: the plain loop on NEON), 24, 768 (DeiT's patch embedding) */
static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
int main(void) {
  static const int ks[] = {12, 24, 768};
  int bad = 0;
  for (int s = 0; s < 3; s++) {
    const int M = 7, N = 32, K = ks[s], K2 = K / 2;
    int16_t *a = malloc(2 * (size_t)M * K), *w = malloc(2 * (size_t)N * K), *wp = malloc(2 * (size_t)N * K);
    float *sc = malloc(4 * N), *bi = malloc(4 * N), *y = malloc(4 * (size_t)M * N);
    for (int q = 0; q < M * K; q++) a[q] = (int16_t)((int)(next() % 511) - 255);
    for (int q = 0; q < N * K; q++) w[q] = (int16_t)((int)(next() % 256) - 128);
    for (int n = 0; n < N; n++) {
      sc[n] = (float)(next() % 1000 + 1) * 1e-4f;
      bi[n] = (float)((int)(next() % 2001) - 1000) * 1e-3f;
      for (int k = 0; k < K; k++)
        wp[(((int64_t)(n / 16) * K2 + k / 2) * 16 + n % 16) * 2 + k % 2] = w[n * K + k];
    }
    for (int p = 0; p < N / 16; p++) qvit_int_gemm_panel(p, M, N, K, a, wp, sc, bi, y);
    for (int r = 0; r < M; r++)
      for (int n = 0; n < N; n++) {
        int32_t acc = 0;
        for (int k = 0; k < K; k++) acc += a[r * K + k] * w[n * K + k];
        const float want = sc[n] * (float)acc + bi[n];
        if (memcmp(&want, y + r * N + n, 4)) bad++;
      }
    free(a), free(w), free(wp), free(sc), free(bi), free(y);
  }
  printf("mismatches %d\n", bad);
  return bad != 0;
}
"""

IGEMM_PATHS = [
    ("x86-native", "gcc", ["-march=native"], []),
    ("x86-portable", "gcc", ["-march=x86-64-v3"], []),
    ("arm-neon-a72", ARM_CC, ["-mcpu=cortex-a72", "-static"], QEMU),
    ("arm-portable", ARM_CC, ["-mcpu=cortex-a72", "-static", "-DQVIT_IGEMM_PORTABLE"], QEMU),
]


@pytest.mark.parametrize("cc,flags,runner", [p[1:] for p in IGEMM_PATHS], ids=[p[0] for p in IGEMM_PATHS])
def test_igemm_paths_exact(tmp_path, cc, flags, runner):
    """The 8-bit GEMM (patch embedding): every path's floats are the written-out sums' epilogue."""
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"needs {cc} and {runner[0] if runner else ''}")
    src = tmp_path / "driver.c"
    src.write_text(_IGEMM_DRIVER)
    exe = tmp_path / "driver"
    r = subprocess.run([cc, "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", *flags,
                        "-I", MODEL_KERNELS, str(src), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "mismatches 0", r.stdout + r.stderr


_ATT_DRIVER = r"""
#include "attention.c"
#include <stdio.h>
/* qvit_attention_item (this build's path) on random heads; writes every output tensor to stdout as
 * raw bytes, so builds with different paths can be compared byte for byte. Shapes: DeiT-S's
 * (T 197, d 64, per-head IRM) and Swin's windows (T 49, d 32, bias and shift masks), bits 2 and 4,
 * and odd ones (T, d not multiples of 16 or 64, d past one 64-byte tile row, 1 and 3 bits). */
static uint64_t rng = 88172645463325252ull;
static uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static float unif(float lo, float hi) { return lo + (hi - lo) * (float)(next() >> 40) / (float)(1 << 24); }
static void emit(const void *p, size_t n) { fwrite(p, 1, n, stdout); }
int main(void) {
#if defined(ATT_DOT)
  fprintf(stderr, "path dot, amx %d\n", (int)qv_amx_state());
#else
  fprintf(stderr, "path planes\n");
#endif
  /* T, H, d, bits, irm; the irm 0 shapes also get inputs on quantization ties (x = (n + 1/2) step, where
   * a division and a multiplication by the reciprocal may round apart) and a nonzero P zero point */
  static const int shapes[][5] = {{197, 6, 64, 2, 0}, {197, 6, 64, 4, 2}, {49, 3, 32, 2, 1},
                                  {49, 3, 32, 4, 1},  {70, 2, 20, 3, 1},  {9, 2, 5, 3, 0},
                                  {130, 2, 96, 4, 0}, {33, 3, 48, 1, 2}};
  for (int s = 0; s < 8; s++) {
    const int T = shapes[s][0], H = shapes[s][1], d = shapes[s][2], bits = shapes[s][3], irm = shapes[s][4];
    const int Bp = 2, D = H * d, has_bias = irm == 1, n_mask = irm == 1 ? 2 : 0;
    const int DW = words(d), TW = words(T);
    float *qkv = malloc(4 * (size_t)Bp * T * 3 * D), *nw[4], st[4][8], *bias = malloc(4 * (size_t)H * T * T),
          *mask = malloc(4 * (size_t)2 * T * T);
    int32_t zp[4][8];
    for (int j = 0; j < 4; j++) {
      nw[j] = malloc(4 * (size_t)H * d);
      for (int i = 0; i < H * d; i++) nw[j][i] = j % 2 ? unif(-0.2f, 0.2f) : unif(0.5f, 1.5f);
      for (int h = 0; h < H; h++) {
        st[j][h] = j == 3 ? 1.0f / (float)((1 << bits) - 1) : unif(0.1f, 0.6f);
        zp[j][h] = j == 3 ? irm == 0 : (int32_t)(next() % (1u << bits));
      }
    }
    for (size_t i = 0; i < (size_t)Bp * T * 3 * D; i++) {
      const int part = (int)(i % (3 * D)) / D, head = (int)(i % D) / d;
      qkv[i] = irm == 0 && next() % 4 == 0 ? ((float)(int)(next() % 8) - 2.5f) * st[part][head]
                                           : unif(-2.0f, 2.0f) + (irm == 2 ? 1.5f : 0.0f);
    }
    if (s == 2 || s == 5) /* non-finite and huge inputs: every path's fallbacks give the same codes */
      for (size_t i = 0; i < (size_t)Bp * T * 3 * D; i += 97)
        qkv[i] = i / 97 % 3 == 0 ? __builtin_nanf("") : i / 97 % 3 == 1 ? __builtin_inff() : 1e30f;
    for (size_t i = 0; i < (size_t)H * T * T; i++)
      bias[i] = i % 53 == 0 ? -__builtin_inff() : i % 71 == 0 ? __builtin_nanf("") : unif(-1.0f, 1.0f);
    for (size_t i = 0; i < (size_t)2 * T * T; i++) mask[i] = next() % 4 ? 0.0f : -100.0f;
    const size_t nq = (size_t)Bp * H * bits * T * DW, nv = (size_t)Bp * H * bits * d * TW,
                 np_ = (size_t)Bp * H * bits * T * TW;
    uint64_t *qp = calloc(nq, 8), *kp = calloc(nq, 8), *vp = calloc(nv, 8), *pp = calloc(np_, 8);
    int32_t *qs = calloc((size_t)Bp * H * T, 4), *ks = calloc((size_t)Bp * H * T, 4),
            *vs = calloc((size_t)Bp * H * d, 4), *ps = calloc((size_t)Bp * H * T, 4);
    float *out = calloc((size_t)Bp * T * D, 4);
    for (int item = 0; item < Bp * H; item++)
      if (qvit_attention_item(item, T, H, d, bits, irm, 1e-6f, 0.125f, has_bias, n_mask, qkv, nw[0], nw[1],
                              nw[2], nw[3], st[0], zp[0], st[1], zp[1], st[2], zp[2], st[3], zp[3], bias,
                              mask, qp, kp, vp, qs, ks, vs, pp, ps, out))
        return 1;
    emit(qp, 8 * nq), emit(kp, 8 * nq), emit(vp, 8 * nv), emit(pp, 8 * np_);
    emit(qs, 4 * (size_t)Bp * H * T), emit(ks, 4 * (size_t)Bp * H * T), emit(vs, 4 * (size_t)Bp * H * d);
    emit(ps, 4 * (size_t)Bp * H * T), emit(out, 4 * (size_t)Bp * T * D);
  }
  return 0;
}
"""

ATT_PATHS = [  # id, compiler, flags, runner; each must give the portable build's bytes
    # byte dot products where the CPU has AVX-512 VNNI: on AMX tiles where it has AMX-INT8 (and the OS
    # allows them), and with QVIT_NO_AMX set on vpdpbusd
    ("x86-native", "gcc", ["-march=native"], []),
    ("x86-native-no-amx", "gcc", ["-march=native"], ["env", "QVIT_NO_AMX=1"]),
    ("x86-v4", "gcc", ["-march=x86-64-v4", "-mavx512vpopcntdq"], []),  # AVX-512 popcount bit planes
    ("x86-v3", "gcc", ["-march=x86-64-v3"], []),
    ("arm-neon-a72", ARM_CC, ["-mcpu=cortex-a72", "-static"], QEMU),
]


def _att_bytes(tmp_path, name, cc, flags, runner):
    src = tmp_path / "att.c"
    src.write_text(_ATT_DRIVER)
    exe = tmp_path / name
    r = subprocess.run([cc, "-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi",
                        *flags, "-I", MODEL_KERNELS, str(src), "-o", str(exe), "-lm"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([*runner, str(exe)], capture_output=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout, r.stderr.decode()


@pytest.mark.cpu_feature
@pytest.mark.parametrize("cc,flags,runner", [p[1:] for p in ATT_PATHS], ids=[p[0] for p in ATT_PATHS])
def test_attention_paths_equal_portable(tmp_path, cc, flags, runner):
    """The attention micro-kernel's SIMD paths (VNNI byte dot products, AVX-512 popcount, NEON) give
    the portable C build's codes, planes, sums and outputs byte for byte, at DeiT-S and Swin shapes."""
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"needs {cc} and {runner[0] if runner else ''}")
    if "x86-64-v4" in flags and not _host_flags("avx512_vpopcntdq"):
        pytest.skip("this CPU has no AVX-512 VPOPCNTDQ")
    want, _ = _att_bytes(tmp_path, "portable", "gcc", ["-march=x86-64-v3", "-DQV_PORTABLE"], [])
    got, path = _att_bytes(tmp_path, "simd", cc, flags, runner)
    if "-march=native" in flags and _host_flags("avx512_vnni"):  # the paths this host's model.so runs
        assert path.startswith("path dot"), path
        host_amx = _host_flags("amx_int8") and _host_flags("amx_tile")
        if "QVIT_NO_AMX=1" in runner:  # refused by the variable, or before it by the CPU (amx.h)
            assert path.strip().endswith("amx -3" if host_amx else "amx -1"), path
        elif host_amx:
            assert path.strip().endswith("amx 1"), path
    assert len(got) == len(want) and got == want
