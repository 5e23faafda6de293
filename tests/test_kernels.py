"""qvit_edge.kernels (native/) against the numpy int64 reference in quant.py, on every path."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from qvit_compile.intmodel import reference
from qvit_edge import kernels as K
from qvit_edge import quant

PATHS = K.paths()
BITS = [1, 2, 3, 4, 8]
SHAPES = [(1, 1, 1), (1, 7, 100), (9, 1, 64), (13, 21, 127), (4, 40, 385), (197, 24, 96)]


@pytest.fixture(autouse=True)
def _restore_path_and_threads():
    path, threads = K.get_path(), K.get_threads()
    yield
    K.set_path(path)
    K.set_threads(threads)


def rand_act(rng, bits, shape):
    return rng.integers(0, 1 << bits, shape).astype(np.int32)


def rand_weight(rng, bits, shape):
    return rng.choice(quant.weight_levels(bits), shape).astype(np.int32)


def test_scalar_and_a_simd_path_exist():
    assert PATHS[0] == "scalar"
    assert K.get_path() in PATHS


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("engine", K.ENGINES)
def test_int_linear_matches_quant_reference(path, engine):
    rng = np.random.default_rng(hash((path, engine)) % 2**32)
    K.set_path(path)
    for a_bits in BITS:
        for w_bits in BITS:
            for m, n, k in SHAPES:
                a, w = rand_act(rng, a_bits, (m, k)), rand_weight(rng, w_bits, (n, k))
                za = int(rng.integers(0, 1 << a_bits))
                got = K.int_linear(a, za, w, a_bits, w_bits, engine=engine)
                np.testing.assert_array_equal(got, quant.int_linear(a, za, w),
                                              err_msg=f"{path} {engine} W{w_bits}A{a_bits} {m}x{n}x{k}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("engine", K.ENGINES)
def test_int_matmul_act_matches_quant_reference(path, engine):
    """Q K^T and A V: two activation operands, each with its own zero point."""
    rng = np.random.default_rng(7)
    K.set_path(path)
    for bits in BITS:
        for m, n, k in [(1, 1, 3), (197, 197, 64), (197, 64, 197), (5, 9, 130)]:
            a, b = rand_act(rng, bits, (m, k)), rand_act(rng, bits, (n, k))
            za, zb = (int(z) for z in rng.integers(0, 1 << bits, 2))
            got = K.int_matmul_act(a, za, b, zb, bits, engine=engine)
            want = quant.int_matmul_act(a, za, b, zb)
            np.testing.assert_array_equal(got, want, err_msg=f"{path} {engine} {bits}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bits", [4, 8])
def test_worst_case_codes_at_deit_b_k_do_not_overflow(path, bits):
    """K = 3072 with every product at its extreme: the largest |acc| a DeiT-B layer can produce."""
    K.set_path(path)
    k = 3072
    a = np.full((2, k), (1 << bits) - 1)
    w = np.full((3, k), quant.weight_range(bits)[0])
    want = quant.int_linear(a, 0, w)
    assert abs(int(want[0, 0])) == quant.max_abs_acc(k, bits, bits)
    for engine in K.ENGINES:
        np.testing.assert_array_equal(K.int_linear(a, 0, w, bits, bits, engine=engine), want)
    b = np.full((3, k), (1 << bits) - 1)
    for engine in K.ENGINES:  # unsigned x unsigned, zero points at the far end
        np.testing.assert_array_equal(K.int_matmul_act(a, 0, b, 0, bits, engine=engine),
                                      quant.int_matmul_act(a, 0, b, 0))
        np.testing.assert_array_equal(K.int_matmul_act(a * 0, (1 << bits) - 1, b, 0, bits, engine=engine),
                                      quant.int_matmul_act(a * 0, (1 << bits) - 1, b, 0))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("engine", K.ENGINES)
def test_fused_epilogue_is_bit_exact(path, engine):
    """One call = the integer reference's linear epilogue, then quant.quantize_act of the result."""
    rng = np.random.default_rng(3)
    K.set_path(path)
    m, n, k, a_bits, w_bits = 37, 45, 200, 2, 3
    a, w = rand_act(rng, a_bits, (m, k)), rand_weight(rng, w_bits, (n, k))
    za, a_step = 1, np.float32(0.0371)
    w_step = rng.uniform(0.001, 0.05, n).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    pw = K.pack_weight(w, w_bits, engine=engine)
    acc = quant.int_linear(a, za, w)
    want = reference.linear_epilogue(acc, a_step, w_step, bias)
    scale = np.float32(a_step) * w_step
    got = K.linear(a, a_bits, za, pw, scale=scale, bias=bias)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(K.linear(a, a_bits, za, pw), acc)
    step, zp, bits = 0.173, 5, 4
    codes = K.linear(a, a_bits, za, pw, scale=scale, bias=bias, requant=(step, zp, bits))
    assert codes.dtype == np.uint8
    np.testing.assert_array_equal(codes, quant.quantize_act(want, step, zp, bits))
    # a scalar scale, no bias
    np.testing.assert_array_equal(K.linear(a, a_bits, za, pw, scale=np.float32(0.5)),
                                  acc.astype(np.float32) * np.float32(0.5))


@pytest.mark.parametrize("engine", K.ENGINES)
def test_batched_attention_matmuls_with_per_head_zero_points(engine):
    """Q K^T and A V for [B, H, T, d] codes in one call, zero points and scales per head."""
    rng = np.random.default_rng(9)
    bits, (b, h, t, d) = 2, (2, 3, 50, 16)
    q, k, v = (rand_act(rng, bits, (b, h, t, d)) for _ in range(3))
    p = rand_act(rng, bits, (b, h, t, t))
    zq, zk, zp, zv = (rng.integers(0, 1 << bits, h) for _ in range(4))
    s = K.matmul_act(q, zq, k, zk, bits, engine=engine)
    np.testing.assert_array_equal(s, quant.int_matmul_act(q, zq, k, zk))
    vt = np.swapaxes(v, -1, -2)
    o = K.matmul_act(p, zp, vt, zv, bits, engine=engine)
    np.testing.assert_array_equal(o, quant.int_matmul_act(p, zp, vt, zv))
    scale = rng.uniform(0.01, 0.1, h).astype(np.float32)
    sf = K.matmul_act(q, zq, k, zk, bits, engine=engine, scale=scale)
    np.testing.assert_array_equal(sf, s.astype(np.float32) * scale.reshape(h, 1, 1))


def test_requant_ties_round_half_to_even():
    a = np.array([[1], [2], [3], [5]])  # acc = a * 1 -> y / 2 = 0.5, 1, 1.5, 2.5
    pw = K.pack_weight(np.array([[1]]), 2)
    codes = K.linear(a, 3, 0, pw, scale=np.float32(1), requant=(2.0, 0, 3))
    np.testing.assert_array_equal(codes[:, 0], [0, 1, 2, 2])


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_give_identical_results(threads):
    rng = np.random.default_rng(5)
    a, w = rand_act(rng, 2, (197, 384)), rand_weight(rng, 2, (200, 384))
    want = quant.int_linear(a, 2, w)
    K.set_threads(threads)
    assert K.get_threads() == threads
    q, k = rand_act(rng, 2, (5, 60, 16)), rand_act(rng, 2, (5, 70, 16))
    zq, zk = rng.integers(0, 4, 5), rng.integers(0, 4, 5)
    want_s = quant.int_matmul_act(q, zq, k, zk)
    for engine in K.ENGINES:
        np.testing.assert_array_equal(K.int_linear(a, 2, w, 2, 2, engine=engine), want)
        np.testing.assert_array_equal(K.matmul_act(q, zq, k, zk, 2, engine=engine), want_s)  # heads split


def test_forcing_a_path():
    with K.forced_path("scalar"):
        assert K.get_path() == "scalar"
    with pytest.raises(ValueError, match="unknown kernel path"):
        K.set_path("sse9")
    missing = [p for p in K.PATH_NAMES if p not in PATHS]
    if missing:
        with pytest.raises(ValueError, match="not supported"):
            K.set_path(missing[0])


def test_forced_path_from_environment():
    import subprocess
    import sys
    code = "from qvit_edge import kernels as K; print(K.get_path())"

    def run(value):
        return subprocess.run([sys.executable, "-c", code], env={"QVIT_NATIVE_PATH": value, "PATH": ""},
                              capture_output=True, text=True, check=True)
    out = run("scalar")
    assert out.stdout.strip() == "scalar" and out.stderr == ""
    out = run("sse9")  # unknown: the best path runs, with one warning line
    assert out.stdout.strip() == K.paths()[-1]
    assert "QVIT_NATIVE_PATH=sse9 is unknown" in out.stderr


def test_bad_arguments_raise_value_error():
    pw = K.pack_weight(np.ones((3, 10), int), 2)
    with pytest.raises(ValueError, match="do not fit"):
        K.linear(np.full((2, 10), 4), 2, 0, pw)
    with pytest.raises(ValueError, match="K mismatch"):
        K.linear(np.zeros((2, 11), int), 2, 0, pw)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        K.pack_weight(np.zeros((2, 4), int), 1)
    with pytest.raises(ValueError, match="bits"):
        K.pack_weight(np.zeros((2, 4), int), 9)


def test_float_ops_match_reference():
    rng = np.random.default_rng(11)
    x = rng.normal(0, 3, (5, 197, 64)).astype(np.float32)
    # LayerNorm and quantize share model.so's arithmetic (native/qv_arith.h: numpy's pairwise sums,
    # no contraction), so they are numpy's bit for bit; softmax's exp is Cephes' (1 ulp), GELU's erf
    # the compile stage's rational one
    for n in (64, 197, 384, 7):  # one pairwise block, several, the 8-accumulator tail, shorter than 8
        xn = x[..., :n] if n <= 64 else rng.normal(0, 3, (3, n)).astype(np.float32)
        wn, bn = rng.normal(1, 0.1, n).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32)
        np.testing.assert_array_equal(K.layernorm(xn, wn, bn, 1e-6), reference.layernorm(xn, wn, bn, 1e-6))
    np.testing.assert_allclose(K.softmax(x), reference.softmax(x), atol=1e-7, rtol=1e-5)
    np.testing.assert_allclose(K.gelu(x), reference.gelu(x), atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(K.gelu(x, clip=2.0), reference.gelu(x, clip=2.0), atol=1e-6, rtol=1e-5)
    xs = np.concatenate([x.reshape(-1), np.array([0.125, 0.375, -0.125], np.float32)])
    np.testing.assert_array_equal(K.quantize(xs, 0.25, 3, 4), quant.quantize_act(xs, 0.25, 3, 4))


def test_bench_kernels_runs_and_reports_targets(tmp_path):
    """`make bench-kernels` end to end on the smallest setting (numbers are not checked: no timed tests)."""
    import subprocess
    import sys
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "bench.md"
    cmd = [sys.executable, "-m", "qvit_compile.bench_kernels", "--threads", "1", "--repeat", "1",
           "--models", "deit_small", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    text = out.read_text()
    for needle in ("| deit_small | fc2 | 197×384×1536", "bitserial_w1a1", "ort_int8", "### Targets",
                   "| W2A2 |", "layernorm 197×384"):
        assert needle in text


def test_engine_choice_tables():
    assert K.engine_for(8, 2) == "int8" and K.engine_for(1, 1, "avx512") == "bitserial"
    assert K.engine_for(2, 2, "avx512") == "bitserial"
    assert K.engine_for(2, 2, "avx512", act_act=True) == "int8"  # attention: short K, both operands packed
    assert K.engine_for(2, 2, "neon", act_act=True) == K.engine_for(2, 2, "neon")  # no separate table


def test_make_bench_runs_end_to_end_and_reports_ops_and_layers(tmp_path):
    """`make bench`'s program on the smallest model, without the baselines (their export costs
    minutes): compile, time, per-op profile, per-layer comparison, report; numbers are not checked."""
    import json
    import subprocess
    import sys
    pytest.importorskip("tvm")
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "qvit_compile.bench", "--threads", "1", "--rounds", "2", "--warmup", "0",
           "--arch", "deit_tiny_patch4_28", "--no-baselines", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / "results.json").read_text())
    assert set(info["results"]["1"]) == {"model.so"}
    assert {"qlinear", "attention"} <= set(info["per_op_ms"]["1"])
    assert len(info["per_layer"]["1"]) == 4 and info["gemm_engines"] and info["cpu"]
    assert "model.so per op kind" in r.stdout and "Per layer" in r.stdout
    # a model timm cannot build has no baselines: one line, exit 2, before anything is compiled
    no_timm = cmd[:-3] + ["--out", str(tmp_path / "b2")]
    r = subprocess.run(no_timm, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not a timm model" in r.stderr and "Traceback" not in r.stderr


def test_idle_workers_sleep_after_a_run():
    """The pool's workers spin for a moment after a run (the next step comes soon), then sleep: an
    idle process holding a 2-thread pool costs next to no CPU. Its own process, so no other thread
    pool (torch's OpenMP) is counted."""
    code = (
        "import time, numpy as np\n"
        "from qvit_edge import kernels as K\n"
        "K.set_threads(2)\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.integers(0, 4, (197, 384)).astype(np.uint8)\n"
        "w = rng.integers(-2, 2, (256, 384)).astype(np.int8)\n"
        "for _ in range(3): K.int_linear(a, 2, w, 2, 2)\n"
        "c0 = time.process_time(); time.sleep(0.5); print(time.process_time() - c0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 0.05, r.stdout
