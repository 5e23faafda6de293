"""The TVM compile stage, kernel by kernel: the bit-serial kernels give exactly the integer
accumulators of qvit_edge.quant for every bit width, weight packing round-trips, and the CLI fails
with one clear line. (Whole models: tests/test_model_so.py.)"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from qvit_compile import kernels as K  # noqa: E402
from qvit_compile import package, packing, schedules, targets  # noqa: E402
from qvit_edge import quant  # noqa: E402

HOST = targets.get("x86_64", "x86-64-v3")
DEV = tvm.cpu()


@pytest.fixture(scope="module", autouse=True)
def model_kernels_loaded(tmp_path_factory):
    """The C micro-kernels (native/model) as a shared library loaded RTLD_GLOBAL, so the kernels TVM
    JIT-compiles here resolve their call_extern symbols (in a model.so they are linked in)."""
    import ctypes
    out = str(tmp_path_factory.mktemp("model_kernels") / "model_kernels.so")
    objs = [package.compile_model_kernel("gcc", HOST, src, os.path.dirname(out))
            for src in package.MODEL_KERNELS]
    subprocess.run(["gcc", "-shared", "-o", out, *objs, "-lm"], check=True)
    return ctypes.CDLL(out, mode=ctypes.RTLD_GLOBAL)


def _t(a):
    return tvm.runtime.tensor(np.ascontiguousarray(a), DEV)


@pytest.fixture(scope="module", params=[(7, 21, 77), (5, 16, 40)], ids=["k77", "k40"])
def linear_kernels(request, model_kernels_loaded):
    """One build with pack + bit-serial GEMM for every (a_bits, w_bits) in 1..4 (ragged M, N and K so
    the padding paths run; K <= 64 is the single-word case)."""
    m, n, k = request.param
    funcs = {}
    for ab in range(1, 5):
        name = f"pack{ab}"
        ins, outs = K.pack_act(m, k, ab)
        funcs[name] = schedules.generic(schedules.prim_func(name, ins, outs), name)
        for wb in range(1, 5):
            name = f"gemm{ab}{wb}"
            ins, outs = K.bitserial_linear(m, n, k, ab, wb)
            func = schedules.prim_func(name, ins, outs)
            funcs[name] = schedules.bitserial_linear(func, name, m, n, "x86_64")
    ex = tvm.compile(tvm.IRModule(funcs), target=HOST.tvm())
    return ex.mod, (m, n, k)


@pytest.mark.parametrize("ab", [1, 2, 3, 4])
@pytest.mark.parametrize("wb", [1, 2, 3, 4])
def test_bitserial_linear_is_exact(linear_kernels, ab, wb):
    mod, (m, n, k) = linear_kernels
    rng = np.random.default_rng(ab * 10 + wb)
    step, zp = np.float32(0.37), int(rng.integers(0, 1 << ab))
    x = rng.normal(0, 1.5, (m, k)).astype(np.float32)
    w = rng.choice(quant.weight_levels(wb), size=(n, k)).astype(np.int8)
    codes = quant.quantize_act(x, step, zp, ab)
    planes = _t(np.full((ab, K.rows_padded(m), K.linear_words(k)), 7, np.uint64))  # stale memory
    mod[f"pack{ab}"](_t(x), _t(np.array([step], np.float32)), _t(np.array([zp], np.int32)), planes)
    np.testing.assert_array_equal(planes.numpy()[:, :m], packing.bit_planes(codes, ab, K.linear_words(k)))
    assert not planes.numpy()[:, m:].any()  # padded rows are zero
    y = _t(np.zeros((m, n), np.float32))
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    mod[f"gemm{ab}{wb}"](planes, _t(packing.weight_panel(w, wb)), _t(ones),
                         _t(packing.zero_point_correction(w, zp)), _t(zeros), y)
    # scale 1, bias 0: the float output is the int32 accumulator itself (|acc| < 2^24)
    np.testing.assert_array_equal(y.numpy(), quant.int_linear(codes, zp, w).astype(np.float32))


@pytest.fixture(scope="module", params=[(7, 21, 77), (13, 48, 40)], ids=["k77", "k40"])
def int8dot_kernels(request, model_kernels_loaded):
    """The int8dot engine (native/model/int8dot.c, here its portable C path: x86-64-v3 has no VNNI) beside
    the bit-serial GEMM, for every epilogue, with LayerNorm fused and not."""
    m, n, k = request.param
    funcs = {}
    for ab in range(1, 5):
        for ln in (None, 1e-6):
            name = f"quant{ab}_{ln is not None}"
            funcs[name] = schedules.prim_func(name, *K.int8dot_quant(m, k, ab, ln))
    for epi, clip in (("none", None), ("gelu", None), ("gelu", 1.5), ("add", None)):
        name = f"i8_{epi}_{clip}"
        funcs[name] = schedules.prim_func(name, *K.int8dot_linear(m, n, k, epi, clip))
        name = f"bs_{epi}_{clip}"
        func = schedules.prim_func(name, *K.bitserial_linear(m, n, k, 2, 3, epi, clip))
        funcs[name] = schedules.bitserial_linear(func, name, m, n, "x86_64", *K.gemm_tile(epi),
                                                 panel_epilogue=epi != "add")
        funcs["pack2"] = schedules.generic(schedules.prim_func("pack2", *K.pack_act(m, k, 2)), "pack2")
    ex = tvm.compile(tvm.IRModule(funcs), target=HOST.tvm())
    return ex.mod, (m, n, k)


@pytest.mark.parametrize("ab", [1, 2, 3, 4])
@pytest.mark.parametrize("wb", [1, 2, 3, 4])
def test_int8dot_linear_is_exact(int8dot_kernels, ab, wb):
    """int8dot: the codes are the reference's (row-major, zero padded), the accumulators
    quant.int_linear's exactly, for every bit width and ragged M, N, K."""
    mod, (m, n, k) = int8dot_kernels
    rng = np.random.default_rng(ab * 10 + wb)
    step, zp = np.float32(0.37), int(rng.integers(0, 1 << ab))
    x = rng.normal(0, 1.5, (m, k)).astype(np.float32)
    w = rng.choice(quant.weight_levels(wb), size=(n, k)).astype(np.int8)
    codes = quant.quantize_act(x, step, zp, ab)
    kp = K.int8dot_k(k)
    a = _t(np.full((K.rows_padded(m), kp), 7, np.int8))  # stale memory
    mod[f"quant{ab}_False"](_t(x), _t(np.array([step], np.float32)), _t(np.array([zp], np.int32)), a)
    got = a.numpy()
    np.testing.assert_array_equal(got[:m, :k], codes)
    assert not got[m:].any() and not got[:, k:].any()  # padding is zero codes
    y = _t(np.zeros((m, n), np.float32))
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    mod["i8_none_None"](a, _t(packing.int8_panel(w, kp)), _t(ones), _t(packing.zero_point_correction(w, zp)),
                        _t(zeros), y)
    np.testing.assert_array_equal(y.numpy(), quant.int_linear(codes, zp, w).astype(np.float32))


@pytest.fixture(scope="module")
def bsneon_kernels(model_kernels_loaded):
    """bitserial-neon (native/model/bsneon.c, its portable C path on x86) for every (a_bits, w_bits), and its
    epilogues, on ragged M, N and K."""
    m, n, k = 7, 21, 77
    funcs = {}
    for ab in range(1, 5):
        pk = schedules.prim_func(f"pack{ab}", *K.pack_act(m, k, ab))
        funcs[f"pack{ab}"] = schedules.generic(pk, f"pack{ab}")
        for wb in range(1, 5):
            funcs[f"bsn{ab}{wb}"] = schedules.prim_func(f"bsn{ab}{wb}", *K.bsneon_linear(m, n, k, ab, wb))
    for epi, clip in (("gelu", 1.5), ("add", None)):
        funcs[f"bsn_{epi}"] = schedules.prim_func(f"bsn_{epi}", *K.bsneon_linear(m, n, k, 2, 3, epi, clip))
    ex = tvm.compile(tvm.IRModule(funcs), target=HOST.tvm())
    return ex.mod, (m, n, k)


@pytest.mark.parametrize("ab", [1, 2, 3, 4])
@pytest.mark.parametrize("wb", [1, 2, 3, 4])
def test_bsneon_linear_is_exact(bsneon_kernels, ab, wb):
    mod, (m, n, k) = bsneon_kernels
    rng = np.random.default_rng(ab * 10 + wb)
    step, zp = np.float32(0.37), int(rng.integers(0, 1 << ab))
    x = rng.normal(0, 1.5, (m, k)).astype(np.float32)
    w = rng.choice(quant.weight_levels(wb), size=(n, k)).astype(np.int8)
    codes = quant.quantize_act(x, step, zp, ab)
    planes = _t(np.zeros((ab, K.rows_padded(m), K.linear_words(k)), np.uint64))
    mod[f"pack{ab}"](_t(x), _t(np.array([step], np.float32)), _t(np.array([zp], np.int32)), planes)
    y = _t(np.zeros((m, n), np.float32))
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    wp = _t(packing.bsneon_panel(w, wb))
    mod[f"bsn{ab}{wb}"](planes, wp, _t(ones), _t(packing.zero_point_correction(w, zp)), _t(zeros), y)
    np.testing.assert_array_equal(y.numpy(), quant.int_linear(codes, zp, w).astype(np.float32))
    if (ab, wb) == (2, 3):  # the fused epilogues: float32 operations in order, as int8dot's
        scale = rng.uniform(0.01, 0.2, n).astype(np.float32)
        bias = rng.normal(0, 1, n).astype(np.float32)
        corr = packing.zero_point_correction(w, zp)
        res = rng.normal(0, 1, (m, n)).astype(np.float32)
        acc = quant.int_linear(codes, 0, w)
        for epi, clip in (("gelu", 1.5), ("add", None)):
            extra = [_t(res)] if epi == "add" else []
            mod[f"bsn_{epi}"](planes, wp, _t(scale), _t(corr), _t(bias), *extra, y)
            np.testing.assert_array_equal(y.numpy(), _epilogue_f32(acc, corr, scale, bias, epi, clip, res))


@pytest.fixture(scope="module")
def lut_kernels(model_kernels_loaded):
    """lut-neon (native/model/lut.c, its portable C path on x86) for every (a_bits, w_bits), and its
    epilogues, on ragged M, N and K, fed by int8dot's codes kernel."""
    m, n, k = 7, 21, 77
    funcs = {}
    for ab in range(1, 5):
        qk = schedules.prim_func(f"q{ab}", *K.int8dot_quant(m, k, ab))
        funcs[f"q{ab}"] = schedules.generic(qk, f"q{ab}")
        for wb in range(1, 5):
            funcs[f"lut{ab}{wb}"] = schedules.prim_func(f"lut{ab}{wb}", *K.lut_linear(m, n, k, ab, wb))
    for epi, clip in (("gelu", 1.5), ("add", None)):
        funcs[f"lut_{epi}"] = schedules.prim_func(f"lut_{epi}", *K.lut_linear(m, n, k, 3, 2, epi, clip))
    ex = tvm.compile(tvm.IRModule(funcs), target=HOST.tvm())
    return ex.mod, (m, n, k)


@pytest.mark.parametrize("ab", [1, 2, 3, 4])
@pytest.mark.parametrize("wb", [1, 2, 3, 4])
def test_lut_linear_is_exact(lut_kernels, ab, wb):
    """lut-neon: packing.lut_panel's table indices and the kernel give quant.int_linear's integers
    and bitserial_linear's epilogue floats."""
    mod, (m, n, k) = lut_kernels
    rng = np.random.default_rng(ab * 10 + wb + 100)
    step, zp = np.float32(0.37), int(rng.integers(0, 1 << ab))
    x = rng.normal(0, 1.5, (m, k)).astype(np.float32)
    w = rng.choice(quant.weight_levels(wb), size=(n, k)).astype(np.int8)
    codes = quant.quantize_act(x, step, zp, ab)
    kp = K.int8dot_k(k)
    a = _t(np.zeros((K.rows_padded(m), kp), np.int8))
    mod[f"q{ab}"](_t(x), _t(np.array([step], np.float32)), _t(np.array([zp], np.int32)), a)
    y = _t(np.zeros((m, n), np.float32))
    ones, zeros = np.ones(n, np.float32), np.zeros(n, np.float32)
    wp = _t(packing.lut_panel(w, wb, kp))
    mod[f"lut{ab}{wb}"](a, wp, _t(ones), _t(packing.zero_point_correction(w, zp)), _t(zeros), y)
    np.testing.assert_array_equal(y.numpy(), quant.int_linear(codes, zp, w).astype(np.float32))
    if (ab, wb) == (3, 2):
        scale = rng.uniform(0.01, 0.2, n).astype(np.float32)
        bias = rng.normal(0, 1, n).astype(np.float32)
        corr = packing.zero_point_correction(w, zp)
        res = rng.normal(0, 1, (m, n)).astype(np.float32)
        acc = quant.int_linear(codes, 0, w)
        for epi, clip in (("gelu", 1.5), ("add", None)):
            extra = [_t(res)] if epi == "add" else []
            mod[f"lut_{epi}"](a, wp, _t(scale), _t(corr), _t(bias), *extra, y)
            np.testing.assert_array_equal(y.numpy(), _epilogue_f32(acc, corr, scale, bias, epi, clip, res))


def _erf_f32(x):
    """kernels._erf in numpy float32, operation by operation."""
    f = np.float32
    x = np.maximum(np.minimum(x, f(4.0)), f(-4.0))
    x2 = x * x
    p = x2 * f(-2.72614225801306e-10) + f(2.77068142495902e-08)
    for c in (-2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02):
        p = x2 * p + f(c)
    p = x * p
    q = x2 * f(-1.45660718464996e-05) + f(-2.13374055278905e-04)
    for c in (-1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = x2 * q + f(c)
    return p / q


def _epilogue_f32(acc, corr, scale, bias, epi, clip, res):
    f = np.float32
    v = scale * (acc - corr).astype(f) + bias
    if epi == "gelu":
        v = v * f(0.5) * (f(1.0) + _erf_f32(v * f(0.7071067811865476)))
        if clip is not None:
            v = np.maximum(np.minimum(v, f(clip)), f(-clip))
    elif epi == "add":
        v = v + res
    return v


def test_int8dot_layernorm_codes_and_epilogues_match_bitserial(int8dot_kernels):
    """LayerNorm-fused codes equal the reference's, and for each epilogue (none, GELU with and
    without clip, residual add) the int8dot floats are the float32 operations of the bit-serial
    kernel's epilogue in order, bit for bit (C without contraction; the TVM-generated bit-serial
    kernel may fuse a multiply-add, so it agrees to an ulp)."""
    from qvit_compile.intmodel import reference
    mod, (m, n, k) = int8dot_kernels
    rng = np.random.default_rng(7)
    ab, wb, step, zp = 2, 3, np.float32(0.41), 1
    x = rng.normal(0.3, 2.0, (m, k)).astype(np.float32)
    g, b = rng.uniform(0.5, 1.5, k).astype(np.float32), rng.normal(0, 0.3, k).astype(np.float32)
    kp = K.int8dot_k(k)
    a = _t(np.zeros((K.rows_padded(m), kp), np.int8))
    args = [_t(v) for v in (x, g, b, np.array([step], np.float32), np.array([zp], np.int32))]
    mod[f"quant{ab}_True"](*args, a)
    want = quant.quantize_act(reference.layernorm(x, g, b, 1e-6), step, zp, ab)
    np.testing.assert_array_equal(a.numpy()[:m, :k], want)
    w = rng.choice(quant.weight_levels(wb), size=(n, k)).astype(np.int8)
    planes = _t(np.zeros((ab, K.rows_padded(m), K.linear_words(k)), np.uint64))
    mod["pack2"](_t(x), _t(np.array([step], np.float32)), _t(np.array([zp], np.int32)), planes)
    mod[f"quant{ab}_False"](_t(x), _t(np.array([step], np.float32)), _t(np.array([zp], np.int32)), a)
    scale = rng.uniform(0.01, 0.2, n).astype(np.float32)
    bias = rng.normal(0, 1, n).astype(np.float32)
    corr = packing.zero_point_correction(w, zp)
    res = rng.normal(0, 1, (m, n)).astype(np.float32)
    for epi, clip in (("none", None), ("gelu", None), ("gelu", 1.5), ("add", None)):
        extra = [_t(res)] if epi == "add" else []
        y8, yb = _t(np.zeros((m, n), np.float32)), _t(np.zeros((m, n), np.float32))
        mod[f"i8_{epi}_{clip}"](a, _t(packing.int8_panel(w, kp)), _t(scale), _t(corr), _t(bias), *extra, y8)
        mod[f"bs_{epi}_{clip}"](planes, _t(packing.weight_panel(w, wb)), _t(scale), _t(corr), _t(bias),
                                *extra, yb)
        want = _epilogue_f32(quant.int_linear(a.numpy()[:m, :k], 0, w), corr, scale, bias, epi, clip, res)
        np.testing.assert_array_equal(y8.numpy(), want, err_msg=f"{epi} clip={clip}")
        np.testing.assert_allclose(yb.numpy(), want, rtol=1e-6, atol=1e-6, err_msg=f"{epi} clip={clip}")


@pytest.mark.parametrize("irm", [0, 1, 2])  # K.IRM_MODES: none, per token, per head
@pytest.mark.parametrize("t,d,bits", [(9, 5, 3), (70, 20, 4)])  # 70: past one 64-key block, two plane words
def test_attention_kernel_is_exact(irm, t, d, bits):
    """The attention kernel (C micro-kernel per head) on one head group: q, k, v and probability codes
    and planes, code sums and the P V output against qvit_edge.quant / reference arithmetic."""
    from qvit_compile.intmodel import reference
    bp, h = 2, 2
    ins, outs = K.attention(bp, t, h, d, bits, irm, 1e-6, 0.5, False, 0)
    mod = tvm.compile(tvm.IRModule({"att": schedules.prim_func("att", ins, outs)}), target=HOST.tvm()).mod
    rng = np.random.default_rng(3)
    qkv = rng.normal(0, 1, (bp, t, 3 * h * d)).astype(np.float32)
    st = {s: rng.uniform(0.2, 0.6, h).astype(np.float32) for s in "qkvp"}
    st["p"] = np.full(h, 1 / 7, np.float32)
    zp = {s: rng.integers(0, 1 << bits, h).astype(np.int32) for s in "qkv"}
    zp["p"] = np.zeros(h, np.int32)
    shape = (d,) if irm == 1 else (h, d)
    nw = [rng.uniform(0.5, 1.5, shape).astype(np.float32), rng.normal(0, 0.2, shape).astype(np.float32)] * 2
    if irm == 2:
        qkv[:, :, : 2 * h * d] += 3.0  # q, k off zero: the per-head mean matters
    args = [qkv, *(nw if irm else [])]
    for s in "qkvp":
        args += [st[s], zp[s]]
    res = [_t(np.full([int(v) for v in o.shape], 7, str(o.dtype))) for o in outs]
    mod["att"](*[_t(a) for a in args], *res)
    qp, kp, vp, qs, ks, vs, pp, ps, out = [r.numpy() for r in res]
    q, k, v = reference.split_qkv(qkv, h, d)
    if irm == 1:
        q = reference.layernorm(q, nw[0], nw[1], 1e-6)
        k = reference.layernorm(k, nw[2], nw[3], 1e-6)
    elif irm == 2:
        q = reference.head_norm(q, nw[0], nw[1], 1e-6)
        k = reference.head_norm(k, nw[2], nw[3], 1e-6)
    qc = quant.quantize_act(q, st["q"][:, None, None], zp["q"][:, None, None], bits)
    kc = quant.quantize_act(k, st["k"][:, None, None], zp["k"][:, None, None], bits)
    vc = quant.quantize_act(v, st["v"][:, None, None], zp["v"][:, None, None], bits)
    for planes, sums, codes in ((qp, qs, qc), (kp, ks, kc), (vp, vs, np.swapaxes(vc, -1, -2))):
        want = np.stack([packing.bit_planes(c, bits) for c in codes.reshape(-1, *codes.shape[2:])])
        np.testing.assert_array_equal(planes.reshape(want.shape[0], bits, *planes.shape[3:]), want)
        np.testing.assert_array_equal(sums, codes.sum(-1))
    s_acc = quant.int_matmul_act(qc, zp["q"], kc, zp["k"])
    s = s_acc.astype(np.float32) * (np.float32(0.5) * st["q"] * st["k"]).astype(np.float32)[:, None, None]
    pc = quant.quantize_act(reference.softmax(s), st["p"][:, None, None], 0, bits)
    got_p = np.stack([[[[int(pp[b, hh, i, r, c // 64]) >> (c % 64) & 1 for c in range(t)] for r in range(t)]
                       for i in range(bits)] for b in range(bp) for hh in range(h)])
    want_p = np.stack([[(pc[b, hh] >> i) & 1 for i in range(bits)] for b in range(bp) for hh in range(h)])
    assert (got_p != want_p).mean() < 0.01  # exp() may differ in the last ulp at a rounding boundary
    pc_got = (got_p * (1 << np.arange(bits))[None, :, None, None]).sum(1).reshape(bp, h, t, t)
    np.testing.assert_array_equal(ps, pc_got.sum(-1))
    o_acc = quant.int_matmul_act(pc_got, zp["p"], np.swapaxes(vc, -1, -2), zp["v"])
    want_o = o_acc.astype(np.float32) * (st["p"] * st["v"]).astype(np.float32)[:, None, None]
    np.testing.assert_allclose(out, want_o.transpose(0, 2, 1, 3).reshape(bp, t, h * d), rtol=1e-6)


def test_weight_panel_layout():
    w = np.array([[-2, 1, 0], [1, -1, -2]], np.int8)
    p = packing.weight_panel(w, 2)  # [1, 2, KW, NV], KW >= 2 (second word all padding)
    assert p.shape == (1, 2, K.linear_words(3), K.NV) and not p[:, :, 1:].any()
    # two's complement bits: -2 = 0b10, 1 = 0b01, 0 = 0b00, -1 = 0b11
    assert int(p[0, 0, 0, 0]) == 0b010 and int(p[0, 1, 0, 0]) == 0b001
    assert int(p[0, 0, 0, 1]) == 0b011 and int(p[0, 1, 0, 1]) == 0b110
    assert not p[0, :, 0, 2:].any()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "qvit_compile", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_unknown_target(tmp_path):
    r = _cli("--target", "riscv", "--model", "x", "--out", str(tmp_path / "m.so"))
    assert r.returncode == 2
    want = "qvit_compile: error: unknown target 'riscv' (known: x86_64, aarch64)"
    assert r.stderr.strip().splitlines() == [want]


def test_cli_bad_model_file(tmp_path):
    bad = tmp_path / "bad.qvit.safetensors"
    bad.write_bytes(b"this is not a safetensors file at all")
    r = _cli("--target", "x86_64", "--model", str(bad), "--out", str(tmp_path / "m.so"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not a safetensors file" in r.stderr
    r = _cli("--target", "x86_64", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "m.so"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_cli_missing_cross_compiler(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # no aarch64-linux-gnu-gcc on PATH
    r = _cli("--target", "aarch64", "--model", "x", "--out", str(tmp_path / "m.so"), env=env)
    assert r.returncode == 2
    assert "'aarch64-linux-gnu-gcc' for target aarch64 not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("grid,window,shift", [((14, 14), (7, 7), (3, 3)), ((14, 14), (4, 4), (2, 2)),
                                               ((7, 7), (7, 7), (0, 0)), ((6, 10), (4, 4), (2, 2))])
def test_window_ops(grid, window, shift):
    """Window partition / reverse (roll, padding) and patch merging equal the reference's."""
    from qvit_compile.intmodel import reference
    c = 3
    funcs = {}
    for name, (ins, outs) in {"wp": K.window_partition(c, grid, window, shift),
                              "wr": K.window_reverse(c, grid, window, shift),
                              "pm": K.patch_merge(c, grid)}.items():
        funcs[name] = schedules.generic(schedules.prim_func(name, ins, outs), name)
    mod = tvm.compile(tvm.IRModule(funcs), target=HOST.tvm()).mod
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, grid[0] * grid[1], c)).astype(np.float32)
    parts = reference.window_partition(x, list(grid), list(window), list(shift))
    back = reference.window_reverse(parts, list(grid), list(window), list(shift))
    merged = reference.patch_merge(x, list(grid))
    for name, inp, want in (("wp", x, parts), ("wr", parts, back), ("pm", x, merged)):
        out = _t(np.zeros(want.shape, np.float32))
        mod[name](_t(inp), out)
        np.testing.assert_array_equal(out.numpy(), want, err_msg=name)
