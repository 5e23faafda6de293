"""The integer reference: runs an integer model (docs/integer-model.md) from codes and steps alone.

numpy only, no torch. Every later stage (native kernels, the compiled model.so) is checked
against it, layer by layer: `run(..., trace=True)` returns every op's float output and, for each
quantized op, its integer side (input activation codes and int32 accumulators).

All quantization arithmetic comes from `qvit_edge.quant` (quantize_act, int_linear,
int_matmul_act). The float epilogues are pinned down here so other stages can reproduce them:

    qlinear / patch_embed:  y = float32(acc) * (a_step * w_step[n]) + bias[n]
    attention scores:       S = float32(acc) * (scale * q_step[h] * k_step[h]) (+ rel_pos_bias) (+ mask)
    attention output:       O = float32(acc) * (p_step[h] * v_step[h])

(each scale product evaluated in float32, left to right); the per-head IRM's sums run in
`head_sum`'s order, which the compiled attention kernel reproduces. The loops are all numpy array
operations (no numba needed); the integer sums run as exact float64 BLAS matmuls (see
`int_linear`), since numpy's int64 matmul has no BLAS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qvit_edge import quant

from .format import IntModel
from .spec import IntModelError, irm_stat, num_windows, padded_grid, pair

F32 = np.float32


@dataclass
class Trace:
    """What one run computed. `values[name]`: every float32 activation of the graph (the
    input "image" included). `ints[out]`: for each quantized op, keyed by its output name:
    qlinear / patch_embed -> {"a": input codes, "acc": int32 accumulators [..., N]};
    attention -> {"q", "k", "v": codes [B', H, T, d], "s_acc": [B', H, T, T] (q k^T),
    "p": probability codes [B', H, T, T], "o_acc": [B', H, T, d] (p v)}."""

    values: dict[str, np.ndarray] = field(default_factory=dict)
    ints: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def run(model: IntModel, image: np.ndarray, trace: bool = False):
    """image: float32 [B, C, H, W], resized and normalised. -> logits [B, num_classes]
    (and the Trace when trace=True)."""
    x = np.asarray(image, F32)
    c, h, w = model.input_shape
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise IntModelError(f"input must be [B, {c}, {h}, {w}], got {list(x.shape)}")
    env = {"image": x}
    tr = Trace(values=env) if trace else None
    last_use = {} if trace else _last_uses(model.graph)
    for i, op in enumerate(model.graph):
        out, ints = run_op(model, op, env)
        env[op["out"]] = out
        if trace:
            if ints is not None:
                tr.ints[op["out"]] = ints
        else:  # free what no later op reads
            for name in _inputs(op):
                if last_use.get(name) == i and name != "logits":
                    env.pop(name, None)
    logits = env["logits"]
    return (logits, tr) if trace else logits


def run_op(model: IntModel, op: dict, env: dict[str, np.ndarray]):
    """Run one op on the activations in `env` -> (float32 output, integer side or None)."""
    fn = _OPS[op["op"]]
    args = [env[n] for n in _inputs(op)]
    return fn(op, model.params(op), *args)


def _inputs(op: dict) -> list[str]:
    return op["in"] if isinstance(op["in"], list) else [op["in"]]


def _last_uses(graph: list[dict]) -> dict[str, int]:
    last = {}
    for i, op in enumerate(graph):
        for n in _inputs(op):
            last[n] = i
    return last


# ---------------------------------------------------------------------------------------------
# quantized ops
# ---------------------------------------------------------------------------------------------


# The integer sums are quant.int_linear / quant.int_matmul_act exactly. numpy's int64 matmul has
# no BLAS (slow on real model sizes), so when the sum provably stays below 2^53 in magnitude it runs
# as a float64 BLAS matmul: every product and partial sum of integers < 2^53 is exact in float64,
# in any order, so the result is bit for bit the int64 one (tests/test_reference.py checks).
_EXACT_F64 = 1 << 53


def int_linear(a: np.ndarray, z_a, w: np.ndarray, a_bits: int, w_bits: int) -> np.ndarray:
    bound = a.shape[-1] * ((1 << a_bits) + abs(int(z_a))) * (1 << (w_bits - 1))  # >= K max|a - z| max|w|
    if bound >= _EXACT_F64:
        return quant.int_linear(a, z_a, w)
    acc = (a.astype(np.float64) - float(z_a)) @ w.astype(np.float64).T
    return quant._to_int32(acc.astype(np.int64))


def int_matmul_act(a: np.ndarray, z_a, b: np.ndarray, z_b, bits: int) -> np.ndarray:
    za = np.asarray(z_a, np.float64)[..., None, None]
    zb = np.asarray(z_b, np.float64)[..., None, None]
    bound = a.shape[-1] * (((1 << bits) + int(np.abs(za).max())) * ((1 << bits) + int(np.abs(zb).max())))
    if bound >= _EXACT_F64:
        return quant.int_matmul_act(a, z_a, b, z_b)
    acc = (a.astype(np.float64) - za) @ np.swapaxes(b.astype(np.float64) - zb, -1, -2)
    return quant._to_int32(acc.astype(np.int64))


def linear_epilogue(acc: np.ndarray, a_step, w_step, bias=None) -> np.ndarray:
    y = acc.astype(F32) * (F32(a_step) * np.asarray(w_step, F32))
    if bias is not None:
        y = y + np.asarray(bias, F32)
    return y.astype(F32, copy=False)


def _qlinear(op, prm, x):
    w = prm["weight"]
    codes = quant.quantize_act(x, prm["a_step"], prm["a_zp"], op["a_bits"])
    acc = int_linear(codes.reshape(-1, codes.shape[-1]), prm["a_zp"], w, op["a_bits"], op["w_bits"])
    acc = acc.reshape(codes.shape[:-1] + (w.shape[0],))
    return linear_epilogue(acc, prm["a_step"], prm["w_step"], prm.get("bias")), {"a": codes, "acc": acc}


def patches(image: np.ndarray, patch: int) -> np.ndarray:
    """[B, C, H, W] -> [B, Hp*Wp, C*p*p]: patches row-major, each vector in (c, kh, kw) order."""
    b, c, h, w = image.shape
    p = int(patch)
    x = image.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(x.reshape(b, (h // p) * (w // p), c * p * p))


def _patch_embed(op, prm, x):
    return _qlinear(op, prm, patches(x, op["patch"]))


def split_qkv(qkv: np.ndarray, heads: int, head_dim: int):
    """[B', T, 3*H*d] -> q, k, v each [B', H, T, d] (timm's order)."""
    b, t, _ = qkv.shape
    q, k, v = qkv.reshape(b, t, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    return q, k, v


def irm(op, prm, q, k):
    """Information Rectification of q, k [B', H, T, d] with the op's statistic: "token" is a
    LayerNorm over head_dim, affine [d] shared across heads; "head" is `head_norm`."""
    eps = op["eps"]
    if irm_stat(op) == "head":
        return (
            head_norm(q, prm["norm_q.gamma"], prm["norm_q.beta"], eps),
            head_norm(k, prm["norm_k.gamma"], prm["norm_k.beta"], eps),
        )
    return (
        layernorm(q, prm["norm_q.weight"], prm["norm_q.bias"], eps),
        layernorm(k, prm["norm_k.weight"], prm["norm_k.bias"], eps),
    )


def head_sum(x: np.ndarray) -> np.ndarray:
    """float32 sum of each (item, head) T x d block of x [B', H, T, d] in the order the compiled
    kernel reproduces: each row's sum over d (numpy's pairwise sum of a unit-stride row, as
    `layernorm`'s mean), then numpy's pairwise sum of the T row sums (a contiguous float32 vector
    per block) -> [B', H, 1, 1]."""
    rows = np.ascontiguousarray(np.asarray(x, F32).sum(-1, dtype=F32))
    return rows.sum(-1, dtype=F32)[..., None, None]


def head_norm(x: np.ndarray, gamma, beta, eps: float) -> np.ndarray:
    """Per-head IRM of x [B', H, T, d] (gamma, beta [H, d]), all float32 in this order:
    mu = head_sum(x) / (T*d); var = head_sum((x - mu)^2) / (T*d);
    out = ((x - mu) + beta[h]) / (gamma[h] * sqrt(var + eps))."""
    x = np.asarray(x, F32)
    n = F32(x.shape[-2] * x.shape[-1])
    mu = head_sum(x) / n
    xc = x - mu
    var = head_sum(xc * xc) / n
    den = np.asarray(gamma, F32)[:, None, :] * np.sqrt(var + F32(eps))
    return ((xc + np.asarray(beta, F32)[:, None, :]) / den).astype(F32, copy=False)


def attention_scores(op, prm, s_acc: np.ndarray) -> np.ndarray:
    """int32 q k^T accumulators [B', H, T, T] -> float scores with relative position bias and mask."""
    h = op["heads"]
    scale = (F32(op["scale"]) * prm["q_step"] * prm["k_step"]).astype(F32)
    s = s_acc.astype(F32) * scale.reshape(h, 1, 1)
    if "rel_pos_bias" in prm:
        s = s + prm["rel_pos_bias"]
    if "mask" in prm:
        mask = prm["mask"]
        nw, t = mask.shape[0], s.shape[-1]
        s = (s.reshape(-1, nw, h, t, t) + mask[None, :, None]).reshape(-1, h, t, t)
    return s.astype(F32, copy=False)


def _attention(op, prm, qkv):
    h, d, bits = op["heads"], op["head_dim"], op["bits"]
    q, k, v = split_qkv(qkv, h, d)
    if op["irm"]:
        q, k = irm(op, prm, q, k)

    def codes(x, a):
        return quant.quantize_act(x, prm[f"{a}_step"].reshape(h, 1, 1), prm[f"{a}_zp"].reshape(h, 1, 1), bits)

    qc, kc, vc = codes(q, "q"), codes(k, "k"), codes(v, "v")
    s_acc = int_matmul_act(qc, prm["q_zp"], kc, prm["k_zp"], bits)
    p = softmax(attention_scores(op, prm, s_acc))
    pc = codes(p, "p")
    o_acc = int_matmul_act(pc, prm["p_zp"], np.swapaxes(vc, -1, -2), prm["v_zp"], bits)
    o = o_acc.astype(F32) * (prm["p_step"] * prm["v_step"]).astype(F32).reshape(h, 1, 1)
    b, _, t, _ = o.shape
    out = np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(b, t, h * d)
    return out, {"q": qc, "k": kc, "v": vc, "s_acc": s_acc, "p": pc, "o_acc": o_acc}


# ---------------------------------------------------------------------------------------------
# float ops
# ---------------------------------------------------------------------------------------------


def layernorm(x: np.ndarray, weight, bias, eps: float) -> np.ndarray:
    x = np.asarray(x, F32)
    mu = x.mean(-1, keepdims=True, dtype=F32)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True, dtype=F32)
    return (xc / np.sqrt(var + F32(eps)) * weight + bias).astype(F32, copy=False)


def softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(F32, copy=False)


def erfc(z: np.ndarray) -> np.ndarray:
    """Complementary error function in float64 (Chebyshev fit, fractional error < 1.2e-7
    everywhere; Numerical Recipes' erfcc): numpy has no erf and the device has no scipy."""
    z = np.asarray(z, np.float64)
    a = np.abs(z)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -1.26551223 + t * (
        1.00002368
        + t
        * (
            0.37409196
            + t
            * (
                0.09678418
                + t
                * (
                    -0.18628806
                    + t
                    * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                )
            )
        )
    )
    r = t * np.exp(-a * a + poly)
    return np.where(z >= 0, r, 2.0 - r)


def gelu(x: np.ndarray, clip=None) -> np.ndarray:
    """Exact (erf) GELU = x * Phi(x), then the optional output clip to [-clip, clip]."""
    x64 = np.asarray(x, np.float64)
    y = (0.5 * x64 * erfc(-x64 / np.sqrt(2.0))).astype(F32)
    if clip is not None:
        y = np.clip(y, F32(-clip), F32(clip))
    return y


def window_partition(x: np.ndarray, grid, window, shift) -> np.ndarray:
    """[B, H*W, C] -> roll by -shift -> zero-pad to whole windows -> [B*nW, wh*ww, C]."""
    (gh, gw), (wh, ww), (sh, sw) = pair(grid), pair(window), pair(shift)
    b, _, c = x.shape
    m = x.reshape(b, gh, gw, c)
    if sh or sw:
        m = np.roll(m, (-sh, -sw), axis=(1, 2))
    hp, wp = padded_grid(grid, window)
    if (hp, wp) != (gh, gw):
        m = np.pad(m, ((0, 0), (0, hp - gh), (0, wp - gw), (0, 0)))
    m = m.reshape(b, hp // wh, wh, wp // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(m).reshape(b * num_windows(grid, window), wh * ww, c)


def window_reverse(x: np.ndarray, grid, window, shift) -> np.ndarray:
    """The inverse of window_partition:
    [B*nW, wh*ww, C] -> crop the padding -> roll by +shift -> [B, H*W, C]."""
    (gh, gw), (wh, ww), (sh, sw) = pair(grid), pair(window), pair(shift)
    hp, wp = padded_grid(grid, window)
    c = x.shape[-1]
    b = x.shape[0] // num_windows(grid, window)
    m = x.reshape(b, hp // wh, wp // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
    m = m[:, :gh, :gw]
    if sh or sw:
        m = np.roll(m, (sh, sw), axis=(1, 2))
    return np.ascontiguousarray(m).reshape(b, gh * gw, c)


def patch_merge(x: np.ndarray, grid) -> np.ndarray:
    """timm 1.0 PatchMerging's rearrangement (odd H or W padded with zeros at the end, as timm):
    [B, H*W, C] -> [B, ceil(H/2)*ceil(W/2), 4C]."""
    gh, gw = pair(grid)
    b, _, c = x.shape
    m = x.reshape(b, gh, gw, c)
    if gh % 2 or gw % 2:
        m = np.pad(m, ((0, 0), (0, gh % 2), (0, gw % 2), (0, 0)))
    h2, w2 = (gh + 1) // 2, (gw + 1) // 2
    m = m.reshape(b, h2, 2, w2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    return np.ascontiguousarray(m).reshape(b, h2 * w2, 4 * c)


_OPS = {
    "patch_embed": _patch_embed,
    "qlinear": _qlinear,
    "attention": _attention,
    "prepend": lambda op, prm, x: (
        np.concatenate(
            [np.broadcast_to(prm[t], (x.shape[0],) + prm[t].shape[1:]) for t in op["tensors"]] + [x], axis=1
        ),
        None,
    ),
    "add_const": lambda op, prm, x: ((x + prm[op["tensor"]]).astype(F32), None),
    "layernorm": lambda op, prm, x: (layernorm(x, prm["weight"], prm["bias"], op["eps"]), None),
    "gelu": lambda op, prm, x: (gelu(x, op["clip"]), None),
    "add": lambda op, prm, a, b: ((a + b).astype(F32), None),
    "average": lambda op, prm, a, b: (((a + b) / F32(2)).astype(F32), None),
    "window_partition": lambda op, prm, x: (window_partition(x, op["grid"], op["window"], op["shift"]), None),
    "window_reverse": lambda op, prm, x: (window_reverse(x, op["grid"], op["window"], op["shift"]), None),
    "patch_merge": lambda op, prm, x: (patch_merge(x, op["grid"]), None),
    "token": lambda op, prm, x: (np.ascontiguousarray(x[:, int(op["index"])]), None),
    "mean_tokens": lambda op, prm, x: (x.mean(1, dtype=F32), None),
}
