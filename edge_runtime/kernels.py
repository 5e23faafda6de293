"""Native low-bit integer kernels (native/, built as qvit_edge._native) as a numpy API.

Arithmetic: edge_runtime/quant.py. Activations are unsigned b-bit codes with an integer zero
point, weights signed b-bit codes (1 bit: -1/+1). Every GEMM here returns exactly what
`quant.int_linear` / `quant.int_matmul_act` return, or applies the fused epilogue of the integer
reference's `linear_epilogue` (qvit_compile.intmodel.reference; and optionally
`quant.quantize_act`) to it, bit for bit.

Two exact engines:
  "bitserial": bit planes, AND + popcount (AVX-512 VPOPCNTDQ, AVX2, NEON CNT, scalar);
  "int8":      int8 dot products (AVX-512 VNNI, AVX2 PMADDUBSW, NEON SDOT / SMULL, scalar).
`engine="auto"` picks the faster one per bit width on this path (ENGINE_BY_BITS, measured with
`make bench-kernels`, docs/bench-kernels.md).

    from qvit_edge import kernels as K
    w = K.pack_weight(w_codes, bits=2)                   # once, ahead of time
    y = K.linear(a_codes, 2, a_zp, w, scale=np.float32(a_step) * w_step, bias=b)   # float32 [M, N]
    codes = K.linear(..., requant=(next_step, next_zp, next_bits))                 # uint8 codes
    acc = K.int_linear(a_codes, a_zp, w_codes, a_bits=2, w_bits=2)                  # int32, like quant
    s = K.int_matmul_act(q_codes, q_zp, k_codes, k_zp, bits=2)                      # Q K^T, int32

Paths: `paths()` lists what this CPU runs, `set_path(name)` / env QVIT_NATIVE_PATH forces one.
Threads: `set_threads(n)` (1 by default, or env QVIT_NUM_THREADS).
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import numpy as np

from . import quant

try:
    from . import _native
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(f"qvit_edge._native is not built ({e}); reinstall qvit-edge (pip install .)") from None

ffi, lib = _native.ffi, _native.lib

PATH_NAMES = ("scalar", "avx2", "avx512", "neon", "neon_dot")
ENGINES = ("bitserial", "int8")

# Faster exact engine per bit width (max of activation and weight bits); 5..8 bits: int8 always.
# avx512 and avx2: measured by `make bench-kernels` (docs/bench-kernels.md: DeiT-S shapes,
# 1 thread, packing included; avx2 with --path avx2 on the same AVX-512 machine): bit-serial
# wins at 1-2 bits with VPOPCNTDQ, only at 1 bit with the AVX2 table popcount. The NEON rows
# are not measured on ARM hardware yet and follow the per-cycle estimates in the team's
# perf-anchors notes: with SDOT (Pi 5) int8 wins from 3 bits; without SDOT (Pi 4) bit-serial
# stays ahead up to 3 bits. Re-measure on the device and update.
ENGINE_BY_BITS = {
    "avx512": {1: "bitserial", 2: "bitserial", 3: "int8", 4: "int8"},
    "avx2": {1: "bitserial", 2: "int8", 3: "int8", 4: "int8"},
    "neon_dot": {1: "bitserial", 2: "bitserial", 3: "int8", 4: "int8"},
    "neon": {1: "bitserial", 2: "bitserial", 3: "bitserial", 4: "int8"},
    "scalar": {1: "bitserial", 2: "bitserial", 3: "int8", 4: "int8"},
}


# ---- paths and threads -------------------------------------------------------------------------
def _check_forced_path() -> None:
    """The C side ignores an unknown or unsupported QVIT_NATIVE_PATH (it runs the best path);
    say so once, in one line, instead of silently benchmarking or testing the wrong path."""
    forced = os.environ.get("QVIT_NATIVE_PATH")
    if forced and forced != "auto" and forced != PATH_NAMES[lib.qv_get_path()]:
        why = "is unknown" if forced not in PATH_NAMES else "is not supported on this CPU"
        warnings.warn(f"QVIT_NATIVE_PATH={forced} {why}; using {PATH_NAMES[lib.qv_get_path()]} "
                      f"(supported: {', '.join(paths())})", RuntimeWarning, stacklevel=2)


def paths() -> list[str]:
    """Paths this CPU and build can run, scalar first."""
    return [n for i, n in enumerate(PATH_NAMES) if lib.qv_path_supported(i)]


def get_path() -> str:
    return PATH_NAMES[lib.qv_get_path()]


def set_path(name: str) -> None:
    """Force a path ("auto" = best for this CPU). ValueError if unknown or unsupported here."""
    idx = -1 if name == "auto" else (PATH_NAMES.index(name) if name in PATH_NAMES else None)
    if idx is None:
        raise ValueError(f"unknown kernel path {name!r}; known: auto, {', '.join(PATH_NAMES)}")
    if lib.qv_set_path(idx) != 0:
        supported = ", ".join(paths())
        raise ValueError(f"kernel path {name!r} is not supported on this CPU (supported: {supported})")


@contextlib.contextmanager
def forced_path(name: str):
    """Context manager: run the body on path `name`, then restore the previous one."""
    old = get_path()
    set_path(name)
    try:
        yield
    finally:
        set_path(old)


def get_threads() -> int:
    return int(lib.qv_pool_threads())


def set_threads(n: int) -> int:
    """Threads the kernels use (the calling thread included). Returns the value in effect."""
    return int(lib.qv_pool_set_threads(int(n)))


_check_forced_path()


# Activation x activation (attention) matmuls pack both operands per call and have short K
# (head_dim = 64: one word per bit plane), where per-tile work dominates bit-serial: measured on
# avx512, int8 already wins at 2 bits there. Paths not listed use ENGINE_BY_BITS.
ENGINE_BY_BITS_ACT = {
    "avx512": {1: "bitserial", 2: "int8", 3: "int8", 4: "int8"},
}


def engine_for(a_bits: int, w_bits: int, path: str | None = None, act_act: bool = False) -> str:
    """The faster exact engine for these bit widths on `path` (default: the one in effect);
    act_act: for an attention matmul (two activation operands) rather than a linear layer."""
    bits = max(a_bits, w_bits)
    if bits > 4:
        return "int8"
    path = path or get_path()
    table = ENGINE_BY_BITS_ACT.get(path) if act_act else None
    return (table or ENGINE_BY_BITS.get(path, ENGINE_BY_BITS["scalar"]))[bits]


# ---- packing -------------------------------------------------------------------------------------
@dataclass
class Packed:
    """A B operand (weights, or the second activation of an attention matmul) in native layout."""
    engine: str
    bits: int
    signed: bool
    n: int
    k: int
    data: np.ndarray     # uint64 bit planes (bitserial) or int8 blocks (int8)
    colsum: np.ndarray   # int32 [n], sum of the code values of each row


def _ptr(ctype: str, arr: np.ndarray | None):
    """Pointer to a C-contiguous array's data (the caller keeps `arr` alive during the call).
    ffi.from_buffer is ~4x cheaper than arr.ctypes.data, which matters for small GEMMs."""
    return ffi.NULL if arr is None else ffi.cast(ctype, ffi.from_buffer(arr))


def _codes(x, bits: int, signed: bool, check: bool, what: str) -> np.ndarray:
    """Codes as a C-contiguous 2-D uint8 array (int8 bytes for signed), range-checked."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array of codes, got shape {x.shape}")
    if check and x.size:
        lo, hi = quant.weight_range(bits) if signed else quant.act_range(bits)
        mn, mx = int(x.min()), int(x.max())
        if mn < lo or mx > hi:
            raise ValueError(f"{what}: codes in [{mn}, {mx}] do not fit {bits}-bit range [{lo}, {hi}]")
        if signed and bits == 1 and np.any(x == 0):
            raise ValueError(f"{what}: 1-bit weight codes must be -1 or +1")
    dt = np.int8 if signed else np.uint8
    if x.dtype != dt:
        x = x.astype(dt)
    return np.ascontiguousarray(x).view(np.uint8)


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= 8):
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")


def pack_b(codes, bits: int, signed: bool, engine: str = "bitserial", check: bool = True) -> Packed:
    """Pack N rows of K codes as the B operand of a GEMM (weights: signed=True)."""
    _check_bits(bits)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    c = _codes(codes, bits, signed, check, "B operand")
    n, k = c.shape
    if k == 0:
        raise ValueError("K must be at least 1")
    colsum = np.empty(n, np.int32)
    if engine == "bitserial":
        data = np.empty(lib.qv_bs_b_words(n, k, bits), np.uint64)
        rc = lib.qv_bs_pack_b(_ptr("uint8_t *", c), n, k, k, bits, int(signed), _ptr("uint64_t *", data),
                              _ptr("int32_t *", colsum))
    else:
        data = np.empty(lib.qv_i8_b_bytes(n, k), np.int8)
        rc = lib.qv_i8_pack_b(_ptr("uint8_t *", c), n, k, k, int(signed), _ptr("int8_t *", data),
                              _ptr("int32_t *", colsum))
    if rc != 0:
        raise ValueError(f"native pack failed for shape {c.shape}")
    return Packed(engine, int(bits), bool(signed), n, k, data, colsum)


def pack_weight(w_codes, bits: int, engine: str = "auto", a_bits: int | None = None,
                check: bool = True) -> Packed:
    """Pack signed weight codes [N, K] once, ahead of time.
    engine "auto": engine_for(a_bits or bits, bits)."""
    if engine == "auto":
        engine = engine_for(a_bits or bits, bits)
    return pack_b(w_codes, bits, True, engine, check)


# ---- GEMMs ---------------------------------------------------------------------------------------
def _result(dst, shape, dtype) -> np.ndarray:
    """A fresh output array, or `dst` when it fits (a runtime reuses its buffers: a fresh large
    array costs page faults on every call)."""
    if dst is None:
        return np.empty(shape, dtype)
    fits = dst.shape == tuple(shape) and dst.dtype == dtype
    if not (fits and dst.flags.c_contiguous and dst.flags.writeable):
        raise ValueError(f"dst must be a writable C-contiguous {np.dtype(dtype).name} array of shape "
                         f"{tuple(shape)}, got {dst.dtype} {dst.shape}")
    return dst


def gemm(a_codes, a_bits: int, za: int, b: Packed, zb: int = 0, scale=None, bias=None, requant=None,
         out: str | None = None, check: bool = True, dst: np.ndarray | None = None) -> np.ndarray:
    """sum_k (a[m, k] - za) * (b[n, k] - zb) with the fused epilogue, in one native call that
    also packs the activations.

    out: "int32" -> the exact accumulators [M, N] (default when no scale is given);
         "float32" -> y = float32(acc) * scale[n] + bias[n] (default with a scale);
         "codes" -> uint8 quant.quantize_act(y, *requant) (default with requant=(step, zp, bits)).
    scale: float32 scalar or [N] (a linear layer: float32(s_a) * s_w); bias: [N] or None.
    dst: optional preallocated result array (dtype and shape as above), returned.
    """
    _check_bits(a_bits)
    a = _codes(a_codes, a_bits, False, check, "A operand")
    m, k = a.shape
    if k != b.k:
        raise ValueError(f"K mismatch: A has {k}, B has {b.k}")
    if b.signed and zb != 0:
        raise ValueError("a signed (weight) operand has no zero point")
    if out is None:
        out = "codes" if requant is not None else ("float32" if scale is not None else "int32")
    if out not in ("int32", "float32", "codes"):
        raise ValueError(f"out must be int32, float32 or codes, got {out!r}")
    n = b.n
    ep = ffi.new("qv_epilogue *")
    keep = []  # arrays the epilogue points into stay alive until the call returns
    if scale is not None:
        s = np.asarray(scale, np.float32)
        if s.ndim == 0:
            ep.scale0 = float(s)
        else:
            s = np.ascontiguousarray(s.reshape(-1))
            if s.shape[0] != n:
                raise ValueError(f"scale has {s.shape[0]} values for N = {n}")
            ep.scale = _ptr("float *", s)
            keep.append(s)
    else:
        ep.scale0 = 1.0
    if bias is not None:
        bb = np.ascontiguousarray(np.asarray(bias, np.float32).reshape(-1))
        if bb.shape[0] != n:
            raise ValueError(f"bias has {bb.shape[0]} values for N = {n}")
        ep.bias = _ptr("float *", bb)
        keep.append(bb)
    if out == "codes":
        if requant is None:
            raise ValueError("out='codes' needs requant=(step, zero_point, bits)")
        q_step, q_zp, q_bits = requant
        _check_bits(q_bits)
        ep.q_step, ep.q_zp, ep.q_bits = float(np.float32(q_step)), int(q_zp), int(q_bits)
        res = _result(dst, (m, n), np.uint8)
        ep.out_q = _ptr("uint8_t *", res)
    elif out == "float32":
        res = _result(dst, (m, n), np.float32)
        ep.out_f = _ptr("float *", res)
    else:
        res = _result(dst, (m, n), np.int32)
        ep.out_i = _ptr("int32_t *", res)
    ep.ldo = n
    ap = _ptr("uint8_t *", a)
    if b.engine == "bitserial":
        rc = lib.qv_bs_linear(ap, m, k, k, a_bits, int(za), _ptr("uint64_t *", b.data),
                              _ptr("int32_t *", b.colsum), b.bits, int(b.signed), int(zb), n, ep)
    else:
        rc = lib.qv_i8_linear(ap, m, k, k, a_bits, int(za), _ptr("int8_t *", b.data),
                              _ptr("int32_t *", b.colsum), int(b.signed), int(zb), n, ep)
    if rc != 0:
        raise ValueError("native gemm rejected its arguments")
    return res


def linear(a_codes, a_bits: int, za: int, w: Packed, scale=None, bias=None, requant=None, out=None,
           check: bool = True, dst: np.ndarray | None = None) -> np.ndarray:
    """A quantized linear layer in one call: weights packed by pack_weight, activations packed here."""
    return gemm(a_codes, a_bits, za, w, 0, scale, bias, requant, out, check, dst)


def int_linear(a, z_a: int, w, a_bits: int, w_bits: int, engine: str = "auto") -> np.ndarray:
    """Same result as quant.int_linear (packs the weights on every call: for tests and one-offs)."""
    if engine == "auto":
        engine = engine_for(a_bits, w_bits)
    return gemm(a, a_bits, z_a, pack_b(w, w_bits, True, engine), out="int32")


def matmul_act(a, z_a, b, z_b, bits: int, b_bits: int | None = None, engine: str = "auto", scale=None,
               check: bool = True, dst: np.ndarray | None = None) -> np.ndarray:
    """Attention matmul over leading batch axes, both operands packed per call in one native call:
    out[..., m, n] = sum_k (a[..., m, k] - z_a) * (b[..., n, k] - z_b)   (Q K^T: b = K; A V: b = V^T).
    z_a, z_b (and scale): scalars or one per batch entry (e.g. per head), broadcast over the
    leading axes as in quant.int_matmul_act. Returns int32, or float32 acc * scale with a scale."""
    b_bits = bits if b_bits is None else b_bits
    _check_bits(bits)
    _check_bits(b_bits)
    if engine == "auto":
        engine = engine_for(bits, b_bits, act_act=True)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 2 or b.ndim != a.ndim or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"matmul_act: shapes {a.shape}, {b.shape} do not match [..., M, K], [..., N, K]")
    lead, (m, k), n = a.shape[:-2], a.shape[-2:], b.shape[-2]
    if k == 0:
        raise ValueError("K must be at least 1")
    batch = int(np.prod(lead, dtype=np.int64))
    a2 = _codes(a.reshape(batch * m, k), bits, False, check, "A operand")
    b2 = _codes(b.reshape(batch * n, k), b_bits, False, check, "B operand")
    za = np.ascontiguousarray(np.broadcast_to(np.asarray(z_a, np.int32), lead).reshape(-1))
    zb = np.ascontiguousarray(np.broadcast_to(np.asarray(z_b, np.int32), lead).reshape(-1))
    out_i = out_f = sc = None
    if scale is None:
        out_i = _result(dst, lead + (m, n), np.int32)
    else:
        sc = np.broadcast_to(np.asarray(scale, np.float32), lead).reshape(-1)
        sc = np.ascontiguousarray(sc)
        out_f = _result(dst, lead + (m, n), np.float32)
    rc = lib.qv_matmul_act(ENGINES.index(engine), _ptr("uint8_t *", a2), m * k, k, bits,
                           _ptr("int32_t *", za), _ptr("uint8_t *", b2), n * k, k, b_bits,
                           _ptr("int32_t *", zb), batch, m, n, k,
                           _ptr("float *", sc), _ptr("float *", out_f), _ptr("int32_t *", out_i))
    if rc != 0:
        raise ValueError("native matmul_act rejected its arguments")
    return out_i if scale is None else out_f


def int_matmul_act(a, z_a, b, z_b, bits: int, b_bits: int | None = None, engine: str = "auto") -> np.ndarray:
    """Same result as quant.int_matmul_act: sum_k (a[..., m, k] - z_a) (b[..., n, k] - z_b)."""
    return matmul_act(a, z_a, b, z_b, bits, b_bits, engine)


# ---- float ops -------------------------------------------------------------------------------------
def _f32(x) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def layernorm(x, weight=None, bias=None, eps: float = 1e-6) -> np.ndarray:
    x = _f32(x)
    n = x.shape[-1]
    out = np.empty_like(x)
    wt = None if weight is None else _f32(weight)
    bs = None if bias is None else _f32(bias)
    lib.qv_layernorm(_ptr("float *", x), x.size // n, n, _ptr("float *", wt), _ptr("float *", bs), float(eps),
                     _ptr("float *", out))
    return out


def softmax(x) -> np.ndarray:
    """Softmax over the last axis."""
    x = _f32(x)
    out = np.empty_like(x)
    lib.qv_softmax(_ptr("float *", x), x.size // x.shape[-1], x.shape[-1], _ptr("float *", out))
    return out


def gelu(x, clip=None) -> np.ndarray:
    """Exact (erf) GELU, optionally clipped to [-clip, clip]."""
    x = _f32(x)
    out = np.empty_like(x)
    lib.qv_gelu(_ptr("float *", x), x.size, float(clip) if clip else 0.0, _ptr("float *", out))
    return out


def quantize(x, step: float, zero_point: int, bits: int) -> np.ndarray:
    """quant.quantize_act with one step and zero point, as uint8 codes (bit-exact)."""
    _check_bits(bits)
    x = _f32(x)
    out = np.empty(x.shape, np.uint8)
    lib.qv_quantize(_ptr("float *", x), x.size, float(np.float32(step)), int(zero_point), int(bits),
                    _ptr("uint8_t *", out))
    return out
