"""Weight packing (numpy, at compile time): codes -> the bit-plane layouts the kernels read.

Layouts are described in kernels.py: bit t of uint64 word w of a plane holds element 64 w + t;
weight panels are [ceil(N / NV), wb, KW, NV]; 1-bit weights {-1, +1} are stored as the bit (w + 1) / 2,
b-bit weights as their two's complement bit planes (the top plane has weight -2^(b-1)).
"""
from __future__ import annotations

import numpy as np

from .kernels import NV, WORD, linear_words, words


def bit_planes(codes: np.ndarray, bits: int, kw: int | None = None) -> np.ndarray:
    """Unsigned bit patterns [R, K] -> planes [bits, R, KW] uint64 (padding bits 0)."""
    codes = np.asarray(codes, np.int64)
    r, k = codes.shape
    kw = kw or words(k)
    out = np.zeros((bits, r, kw), np.uint64)
    for i in range(bits):
        b = ((codes >> i) & 1).astype(np.uint8)
        b = np.pad(b, ((0, 0), (0, kw * WORD - k)))
        packed = np.packbits(b.reshape(r, kw, WORD), axis=-1, bitorder="little")
        out[i] = packed.view("<u8").reshape(r, kw)
    return out


def weight_bits(w: np.ndarray, bits: int) -> np.ndarray:
    """Signed weight codes -> the unsigned bit patterns that are packed."""
    w = np.asarray(w, np.int64)
    if bits == 1:
        return (w + 1) // 2
    return w & ((1 << bits) - 1)


def weight_panel(w: np.ndarray, bits: int, nv: int = NV) -> np.ndarray:
    """Signed codes [N, K] -> panels [ceil(N / nv), bits, KW, nv] uint64 (padded channels are 0)."""
    planes = bit_planes(weight_bits(w, bits), bits, linear_words(w.shape[1]))  # [bits, N, KW]
    n, kw = planes.shape[1], planes.shape[2]
    npad = -(-n // nv) * nv
    full = np.zeros((bits, npad, kw), np.uint64)
    full[:, :n] = planes
    return np.ascontiguousarray(full.reshape(bits, npad // nv, nv, kw).transpose(1, 0, 3, 2))


def zero_point_correction(w: np.ndarray, a_zp: int) -> np.ndarray:
    """corr[n] = z_a * sum_k w[n, k] (int32): sum_k (a - z_a) w = sum_k a w - corr."""
    s = np.asarray(w, np.int64).sum(axis=1) * int(a_zp)
    return s.astype(np.int32)


def int16_panel(w: np.ndarray) -> np.ndarray:
    """int8 weights [N, K] (N % 16 == 0, K even) -> int16 pairs [N/16, K/2, 16, 2] for
    native/model/igemm.c: element [p, k2, l, t] = w[16 p + l, 2 k2 + t]."""
    n, k = w.shape
    return np.ascontiguousarray(np.asarray(w, np.int16).reshape(n // 16, 16, k // 2, 2).transpose(0, 2, 1, 3))


def int8_panel(w: np.ndarray, kp: int) -> np.ndarray:
    """Signed codes [N, K] -> int8 panels [ceil(N / 16), kp / 4, 16, 4] for native/model/int8dot.c (zero
    past N and K): element [p, g, l, j] = w[16 p + l, 4 g + j], one 64-byte group = 16 channels x 4 k."""
    n, k = w.shape
    npad = -(-n // 16) * 16
    full = np.zeros((npad, kp), np.int8)
    full[:n, :k] = np.asarray(w, np.int8)
    return np.ascontiguousarray(full.reshape(npad // 16, 16, kp // 4, 4).transpose(0, 2, 1, 3))


def lut_panel(w: np.ndarray, bits: int, kp: int) -> np.ndarray:
    """Signed codes [N, K] -> table indices [ceil(N / 16), bits, kp / 8, 16] uint8 for
    native/model/lut.c (kp % 16 == 0; zero past N and K): byte [p, j, h, l] holds bits 4 g .. 4 g + 3
    of weight plane j of channel 16 p + l as a 4-bit index, group g = 2 h in the low nibble and 2 h + 1
    in the high one."""
    n, k = w.shape
    npad = -(-n // 16) * 16
    full = np.zeros((npad, kp), np.int64)
    full[:n, :k] = weight_bits(w, bits)
    planes = (full[None] >> np.arange(bits)[:, None, None]) & 1  # [bits, npad, kp]
    idx = (planes.reshape(bits, npad, kp // 4, 4) << np.arange(4)).sum(-1)  # [bits, npad, groups]
    byte = idx[..., 0::2] | (idx[..., 1::2] << 4)  # [bits, npad, kp / 8]
    return np.ascontiguousarray(byte.reshape(bits, npad // 16, 16, kp // 8).transpose(1, 0, 3, 2)
                                .astype(np.uint8))


def bsneon_panel(w: np.ndarray, bits: int) -> np.ndarray:
    """weight_panel with 8 channels per panel and N padded to 16 (zero rows: never stored), for
    native/model/bsneon.c, which takes two panels per call."""
    n = w.shape[0]
    w16 = np.zeros((-(-n // 16) * 16, w.shape[1]), np.int64)
    w16[:n] = w
    return weight_panel(w16, bits, 8)
