"""The quantization arithmetic of qvit-edge: one source of truth for every stage.

Training (qvit/, in torch), the integer reference (numpy), the native kernels (C) and the
compiled model (TVM) all follow the definitions here. Only numpy is needed.

Conventions (docs/quantization.md explains the why):

* Activations are **unsigned codes** a in [0, 2^b - 1] with one float step s_a and one
  integer zero point z_a per tensor (per head for q, k, v and the attention probabilities):
      a = clamp(round_half_even(x / s_a) + z_a, 0, 2^b - 1),     x_hat = s_a * (a - z_a)
  A "signed" activation is just z_a = 2^(b-1); there is one code format, so one kernel.
  Per-tensor (not per-input-channel, as the official Q-ViT code has) is what makes
  sum_k (a - z_a) * w an integer GEMM with a scalar epilogue.
* Weights are **signed codes** with one float step per output channel (symmetric LSQ):
      b >= 2: w in [-2^(b-1), 2^(b-1) - 1] (two's complement bit planes)
      b == 1: w in {-1, +1} (stored as the bit (w + 1) / 2); a 1-bit two's complement
              range {-1, 0} would waste half the information.
* A quantized linear layer is then exactly
      y[m, n] = s_a * s_w[n] * acc[m, n] + bias[n],  acc = sum_k (a[m, k] - z_a) * w[n, k]  (int32)
  and an attention matmul of two activations a, b is s_a * s_b * sum_k (a - z_a)(b - z_b).
* Rounding is round-half-to-even everywhere (torch.round, numpy.rint, C nearbyint/lrint
  in the default mode, LLVM roundeven), so all stages agree bit for bit on the codes.
"""
from __future__ import annotations

import numpy as np

MAX_BITS = 8


def act_range(bits: int) -> tuple[int, int]:
    """Code range of a b-bit activation (always unsigned)."""
    _check_bits(bits)
    return 0, (1 << bits) - 1


def weight_range(bits: int) -> tuple[int, int]:
    """Code range of a b-bit weight (signed). 1 bit is the binary set {-1, +1}."""
    _check_bits(bits)
    if bits == 1:
        return -1, 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def weight_levels(bits: int) -> np.ndarray:
    """All values a b-bit weight code can take (2 for 1 bit, 2^b otherwise)."""
    lo, hi = weight_range(bits)
    return np.array([-1, 1]) if bits == 1 else np.arange(lo, hi + 1)


def signed_zero_point(bits: int) -> int:
    """Zero point that makes an unsigned code grid symmetric around 0 (a 'signed' activation)."""
    return 1 << (bits - 1)


def quantize_act(x: np.ndarray, step, zero_point, bits: int) -> np.ndarray:
    """Float activations -> unsigned integer codes (int32). step/zero_point broadcast against x."""
    lo, hi = act_range(bits)
    q = np.rint(np.asarray(x, np.float32) / np.asarray(step, np.float32)) + np.asarray(zero_point, np.float32)
    return np.clip(q, lo, hi).astype(np.int32)


def dequantize_act(codes: np.ndarray, step, zero_point) -> np.ndarray:
    return (np.asarray(codes, np.float32) - np.asarray(zero_point, np.float32)) * np.asarray(step, np.float32)


def quantize_weight(w: np.ndarray, step: np.ndarray, bits: int) -> np.ndarray:
    """Float weights [N, K] and per-output-channel steps [N] -> signed codes (int32)."""
    w = np.asarray(w, np.float32)
    s = np.asarray(step, np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
    if bits == 1:
        return np.where(w >= 0, 1, -1).astype(np.int32)
    lo, hi = weight_range(bits)
    return np.clip(np.rint(w / s), lo, hi).astype(np.int32)


def dequantize_weight(codes: np.ndarray, step: np.ndarray) -> np.ndarray:
    c = np.asarray(codes, np.float32)
    return c * np.asarray(step, np.float32).reshape((-1,) + (1,) * (c.ndim - 1))


def int_linear(a: np.ndarray, z_a: int, w: np.ndarray) -> np.ndarray:
    """Exact integer accumulator acc[m, n] = sum_k (a[m, k] - z_a) * w[n, k] (int64 -> int32 checked)."""
    acc = (np.asarray(a, np.int64) - int(z_a)) @ np.asarray(w, np.int64).T
    return _to_int32(acc)


def int_matmul_act(a: np.ndarray, z_a, b: np.ndarray, z_b) -> np.ndarray:
    """Exact sum_k (a[..., m, k] - z_a) * (b[..., n, k] - z_b) for two activation operands (per-batch
    zero points broadcast over the leading axes, e.g. one per head)."""
    za = np.asarray(z_a, np.int64)[..., None, None] if np.ndim(z_a) else np.int64(z_a)
    zb = np.asarray(z_b, np.int64)[..., None, None] if np.ndim(z_b) else np.int64(z_b)
    acc = (np.asarray(a, np.int64) - za) @ np.swapaxes(np.asarray(b, np.int64) - zb, -1, -2)
    return _to_int32(acc)


def max_abs_acc(k: int, a_bits: int, w_bits: int) -> int:
    """Largest |acc| a K-long dot product of b-bit codes can reach (for overflow checks)."""
    a_lo, a_hi = act_range(a_bits)
    w_lo, w_hi = weight_range(w_bits)
    return k * (a_hi - a_lo) * max(abs(w_lo), abs(w_hi))


def _to_int32(acc: np.ndarray) -> np.ndarray:
    if acc.size and (acc.max() > np.iinfo(np.int32).max or acc.min() < np.iinfo(np.int32).min):
        raise OverflowError("integer accumulator exceeds int32")
    return acc.astype(np.int32)


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= MAX_BITS):
        raise ValueError(f"bits must be an integer in 1..{MAX_BITS}, got {bits!r}")
