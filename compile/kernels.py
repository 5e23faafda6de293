"""TE definitions of every kernel a compiled Q-ViT runs (batch-1 static shapes).

Each builder returns (inputs, outputs) TE tensors; `schedules.py` turns them into scheduled
PrimFuncs. Two are te.extern loops whose body calls a C micro-kernel (native/model, compiled for the
target and linked into model.so by package.py): `pack_act` (quantize + pack, with the LayerNorm) and
`attention` (the whole attention op per head); TVM still checks their arguments and runs the loop
parallel. Quantization follows qvit_edge.quant exactly: codes = clip(rint(x / step) + zp, 0, 2^b-1)
(nearbyint is round-half-to-even), unsigned activation codes, signed weight codes.

Bit-serial layout. A K-long vector of b-bit codes becomes b bit planes of KW = ceil(K / 64) uint64
words (bit t of word w is element 64 w + t; padding bits are 0). Then
    sum_k a[k] w[k] = sum_{i,j} c_ij popcount(A_i & W_j),   c_ij = 2^(i+j) (times -1 for the weight's
two's complement sign plane), and zero points are folded in with per-row code sums. Weight planes are
stored [N / NV, wb, KW, NV] so the GEMM's inner loop loads NV consecutive output channels at once.
"""
from __future__ import annotations

from tvm import te, tirx

WORD = 64  # bits per packed word
U64 = "uint64"
NV = 16  # output channels per weight-panel (vector lanes of the GEMM)
MTILE = 4  # activation rows per GEMM tile
ROW_PAD = 8  # activation planes are padded to a multiple of this many rows (zero rows), >= any tile


def gemm_tile(epilogue: str) -> tuple[int, int]:
    """(rows, channels) of the bit-serial GEMM's output tile. Measured on DeiT-S proj (K = N = 384,
    residual epilogue, 1 thread, Zen 4): 8 x 8 took 0.145 ms, 4 x 16 0.171 ms; fc2 (K = 1536) the
    same either way; fc1 (GELU epilogue) 0.97 vs 0.75 ms, so 4 x 16 elsewhere."""
    return (8, 8) if epilogue == "add" else (MTILE, NV)


def rows_padded(m: int) -> int:
    return -(-m // ROW_PAD) * ROW_PAD


def linear_words(k: int) -> int:
    """Packed words per row in the linear-layer GEMM: at least 2 (zero padded). With a single word
    TVM 0.27 miscompiled the 1-bit-weight tile (wrong sums, found by tests/test_compile.py)."""
    return max(2, words(k))


def words(k: int) -> int:
    return (k + WORD - 1) // WORD



def _code(x, step, zp, bits):
    """Float -> unsigned activation code as in quant.quantize_act (float32 divide, half-even, clip)."""
    q = tirx.nearbyint(x / step) + zp.astype("float32")
    q = tirx.max(tirx.min(q, tirx.const(float((1 << bits) - 1), "float32")), tirx.const(0.0, "float32"))
    return q.astype("int32")


# ---------------------------------------------------------------------------------------------- #
# Quantized linear layers
# ---------------------------------------------------------------------------------------------- #

def _act_input(m: int, k: int, ln_eps: float | None):
    """The input side of a quantized layer: x [M, K] (and LayerNorm weight, bias when ln_eps is set),
    its step and zero point. Returns (placeholders before step/zp, float source, step, zp)."""
    x = te.placeholder((m, k), "float32", name="x")
    step = te.placeholder((1,), "float32", name="a_step")
    zp = te.placeholder((1,), "int32", name="a_zp")
    ins = [x]
    src = x
    if ln_eps is not None:
        g = te.placeholder((k,), "float32", name="ln_w")
        b = te.placeholder((k,), "float32", name="ln_b")
        ins += [g, b]
        src = _layernorm(x, g, b, ln_eps)
    return ins, src, step, zp


PACK_ROWS = "qvit_pack_rows"  # native/model/pack.c
PACK_BLOCK = 8  # rows per parallel iteration of the pack kernel


def _quantize_rows(fname: str, m: int, k: int, kout: int, bits: int, ln_eps: float | None, shape, dtype: str,
                   name: str, mp: int | None = None):
    """x [M, K] float (LayerNorm first with ln_eps: weight and bias inputs) -> one quantized output
    of `shape`, by a parallel loop over blocks of PACK_BLOCK rows calling the C micro-kernel `fname`
    (rows r0..r0+PACK_BLOCK; K of the input, kout words or codes per output row; mp output rows,
    rows_padded(m) unless given: a multiple of PACK_BLOCK)."""
    ins, _, step, zp = _act_input(m, k, None)
    if ln_eps is not None:
        ins += [te.placeholder((k,), "float32", name="ln_w"), te.placeholder((k,), "float32", name="ln_b")]
    ins += [step, zp]
    mp = mp or rows_padded(m)

    def body(bufs, outs):
        blk = tirx.Var("block", "int32")
        x = bufs[0]
        g, b = (bufs[1], bufs[2]) if ln_eps is not None else (x, x)  # unused when no LayerNorm
        i32 = lambda v: tirx.const(int(v), "int32")  # noqa: E731
        r0 = blk * PACK_BLOCK
        call = tirx.call_extern("int32", fname, r0, r0 + PACK_BLOCK, i32(m), i32(mp), i32(k), i32(kout),
                                i32(bits), i32(ln_eps is not None),
                                tirx.const(float(ln_eps or 0.0), "float32"), x.data, g.data, b.data,
                                bufs[-2].data, bufs[-1].data, outs[0].data)
        return tirx.For(blk, 0, -(-mp // PACK_BLOCK), tirx.ForKind.PARALLEL, tirx.Evaluate(call))

    out = te.extern([shape], ins, body, name=name, dtype=[dtype])
    return ins, [out]


def pack_act(m: int, k: int, bits: int, ln_eps: float | None = None):
    """x [M, K] float -> activation planes [bits, Mpad, KW] (rows >= M are 0). With ln_eps, a LayerNorm
    (weight, bias) runs first and its float output never hits memory (LayerNorm -> quantize -> pack).
    A parallel loop over blocks of PACK_BLOCK rows calling the C micro-kernel qvit_pack_rows
    (native/model/pack.c). The TE form it replaced (a 64-step bit reduction per word, LayerNorm as
    separate reductions) took, on DeiT-S (Zen 4), 115 vs 84 us per call at K = 1536 (1 thread) and
    0.73-2.5 vs 0.52 ms per run for the LayerNorm-fused packs at 2 threads."""
    kw = linear_words(k)
    return _quantize_rows(PACK_ROWS, m, k, kw, bits, ln_eps, (bits, rows_padded(m), kw), U64, "planes")


def bitserial_linear(m: int, n: int, k: int, a_bits: int, w_bits: int, epilogue: str = "none",
                     gelu_clip: float | None = None, nv: int = NV):
    """planes [ab, Mpad, KW] x weight panels [N/nv, wb, KW, nv] -> y [M, N] float32.
    y = scale[n] * (acc - corr[n]) + bias[n], corr[n] = z_a * sum_k w[n, k] (precomputed), then the
    epilogue: "gelu" (erf GELU, optional clip) or "add" (residual: + r[m, n])."""
    kw, npad, mp = linear_words(k), -(-n // nv) * nv, rows_padded(m)
    ap = te.placeholder((a_bits, mp, kw), U64, name="planes")
    wp = te.placeholder((npad // nv, w_bits, kw, nv), U64, name="wpanel")
    scale = te.placeholder((n,), "float32", name="scale")
    corr = te.placeholder((n,), "int32", name="corr")
    bias = te.placeholder((n,), "float32", name="bias")
    # part[i, j, m, n] = sum_w popcount(A_i & W_j) accumulates in uint64 lanes (and, popcount, add per
    # 512 bits); the plane weights 2^(i+j) and the sign plane apply once per output, not per word.
    w = te.reduce_axis((0, kw), name="w")
    part = te.compute((a_bits, w_bits, mp, npad), lambda i, j, r, c: te.sum(
        tirx.popcount(ap[i, r, w] & wp[c // nv, j, w, c % nv]), axis=w), name="part")
    i = te.reduce_axis((0, a_bits), name="i")
    j = te.reduce_axis((0, w_bits), name="j")
    ins = [ap, wp, scale, corr, bias]
    if w_bits == 1:  # {-1,+1} stored as bit (w+1)/2: a*w = 2 a*bit - a
        if kw == 1:  # (a one-step reduction block computed at the tile gave wrong sums: keep it spatial)
            apc = te.compute((a_bits, mp), lambda i, r: tirx.popcount(ap[i, r, 0]), name="apc")
        else:
            w2 = te.reduce_axis((0, kw), name="w2")
            apc = te.compute((a_bits, mp), lambda i, r: te.sum(tirx.popcount(ap[i, r, w2]), axis=w2),
                             name="apc")
        acc = te.compute((mp, npad), lambda r, c: te.sum(
            ((part[i, 0, r, c] << tirx.const(1, U64)) - apc[i, r]).astype("int32") << i, axis=[i]),
            name="acc")
    else:
        def term(i, j, r, c):
            v = part[i, j, r, c].astype("int32") << (i + j)
            return tirx.if_then_else(j == w_bits - 1, -v, v)  # two's complement sign plane
        acc = te.compute((mp, npad), lambda r, c: te.sum(term(i, j, r, c), axis=[i, j]), name="acc")

    def total(r, c):
        return acc[r, c] - corr[c]

    def lin(r, c):
        return scale[c] * total(r, c).astype("float32") + bias[c]

    if epilogue == "gelu":
        y = te.compute((m, n), lambda r, c: _gelu(lin(r, c), gelu_clip), name="y")
    elif epilogue == "add":
        res = te.placeholder((m, n), "float32", name="residual")
        ins.append(res)
        y = te.compute((m, n), lambda r, c: lin(r, c) + res[r, c], name="y")
    else:
        y = te.compute((m, n), lambda r, c: lin(r, c), name="y")
    return ins, [y]


INT8DOT_QUANT = "qvit_int8dot_quant"  # native/model/int8dot.c
INT8DOT_PANEL = "qvit_int8dot_panel"
INT8DOT_AMX_GROUP = "qvit_int8dot_amx_group"  # the int8dot-amx engine: 2 panels per call
INT8DOT_KBLOCK = 16  # codes and weight panels are zero padded along K to a multiple of this
# int8dot-amx: K to whole 64-byte tile rows, rows to whole 16-row A tiles (zeros add nothing)
INT8DOT_AMX_KBLOCK, INT8DOT_AMX_ROWS = 64, 16
EPILOGUES = {"none": 0, "gelu": 1, "add": 2}  # native/model/epilogue.h


def int8dot_k(k: int, amx: bool = False) -> int:
    b = INT8DOT_AMX_KBLOCK if amx else INT8DOT_KBLOCK
    return -(-k // b) * b


def int8dot_rows(m: int, amx: bool = False) -> int:
    """Rows of the codes buffer: rows_padded, and whole A tiles for int8dot-amx."""
    r = rows_padded(m)
    return -(-r // INT8DOT_AMX_ROWS) * INT8DOT_AMX_ROWS if amx else r


def int8dot_quant(m: int, k: int, bits: int, ln_eps: float | None = None, amx: bool = False):
    """x [M, K] float (LayerNorm first with ln_eps) -> activation codes [Mpad, Kp] int8 (unsigned
    values 0..2^b-1, zero past K and for rows >= M), row-major for the int8dot GEMM: a parallel loop
    over blocks of PACK_BLOCK rows calling qvit_int8dot_quant (native/model/int8dot.c), whose codes
    are qv_arith.h's quantize_row, as the bit-serial pack kernel's. amx: int8dot-amx's paddings."""
    kp, mp = int8dot_k(k, amx), int8dot_rows(m, amx)
    return _quantize_rows(INT8DOT_QUANT, m, k, kp, bits, ln_eps, (mp, kp), "int8", "acodes", mp)


def _c_gemm(fname: str, loop: str, extent: int, sizes: list, operands: list, m: int, n: int, epilogue: str,
            gelu_clip: float | None):
    """A C GEMM engine's TVM kernel: a parallel loop of `extent` over output-channel panels calling
    fname(i, *sizes, epilogue, has_clip, clip, *operands, scale, corr, bias, residual, y), with
    bitserial_linear's epilogue inputs (scale, corr, bias [N]; residual [M, N] for "add")."""
    ins = [*operands, te.placeholder((n,), "float32", name="scale"),
           te.placeholder((n,), "int32", name="corr"), te.placeholder((n,), "float32", name="bias")]
    if epilogue == "add":
        ins.append(te.placeholder((m, n), "float32", name="residual"))
    fixed = len(operands) + 3

    def body(bufs, outs):
        i = tirx.Var(loop, "int32")
        res = bufs[fixed] if epilogue == "add" else bufs[0]  # unused pointer without the residual
        i32 = [tirx.const(int(v), "int32") for v in (*sizes, EPILOGUES[epilogue], gelu_clip is not None)]
        call = tirx.call_extern("int32", fname, i, *i32, tirx.const(float(gelu_clip or 0.0), "float32"),
                                *[b.data for b in bufs[:fixed]], res.data, outs[0].data)
        return tirx.For(i, 0, extent, tirx.ForKind.PARALLEL, tirx.Evaluate(call))

    y = te.extern([(m, n)], ins, body, name="y", dtype=["float32"])
    return ins, [y]


def int8dot_linear(m: int, n: int, k: int, epilogue: str = "none", gelu_clip: float | None = None,
                   amx: bool = False):
    """codes [Mpad, Kp] int8 x weight panels [ceil(N/16), Kp/4, 16, 4] int8 (packing.int8_panel) ->
    y [M, N] float32, with bitserial_linear's epilogue (y = scale[n] * (acc - corr[n]) + bias[n], then
    GELU or + residual): a parallel loop over the 16-channel panels calling qvit_int8dot_panel, or
    with amx (int8dot-amx: int8dot_k / int8dot_rows paddings) over pairs of panels calling
    qvit_int8dot_amx_group."""
    mp, kp, npan = int8dot_rows(m, amx), int8dot_k(k, amx), -(-n // 16)
    a = te.placeholder((mp, kp), "int8", name="acodes")
    wp = te.placeholder((npan, kp // 4, 16, 4), "int8", name="wpanel8")
    if amx:
        return _c_gemm(INT8DOT_AMX_GROUP, "group", -(-npan // 2), [m, mp, n, kp], [a, wp], m, n, epilogue,
                       gelu_clip)
    return _c_gemm(INT8DOT_PANEL, "panel", npan, [m, mp, n, kp], [a, wp], m, n, epilogue, gelu_clip)


BSNEON_GROUP = "qvit_bsneon_group"  # native/model/bsneon.c
BSNEON_NV = 8  # channels per weight panel of the bitserial-neon engine (two panels per call)


def bsneon_linear(m: int, n: int, k: int, a_bits: int, w_bits: int, epilogue: str = "none",
                  gelu_clip: float | None = None):
    """bitserial_linear as the C micro-kernel qvit_bsneon_group (native/model/bsneon.c): the same
    planes [ab, Mpad, KW] and weight panels [ceil(N/16) * 2, wb, KW, 8] (packing.weight_panel of the
    weights padded to 16 channels), the same integers and epilogue; a parallel loop over groups of 16
    channels."""
    kw, mp, groups = linear_words(k), rows_padded(m), -(-n // 16)
    ap = te.placeholder((a_bits, mp, kw), U64, name="planes")
    wp = te.placeholder((2 * groups, w_bits, kw, BSNEON_NV), U64, name="wpanel")
    return _c_gemm(BSNEON_GROUP, "group", groups, [m, mp, n, kw, a_bits, w_bits], [ap, wp], m, n, epilogue,
                   gelu_clip)


LUT_ROWS = "qvit_lut_rows"  # native/model/lut.c


def lut_linear(m: int, n: int, k: int, a_bits: int, w_bits: int, epilogue: str = "none",
               gelu_clip: float | None = None):
    """bitserial_linear by table lookups, the C micro-kernel qvit_lut_rows (native/model/lut.c):
    int8dot's codes [Mpad, Kp] (int8dot_quant) x table indices [ceil(N/16), w_bits, Kp/8, 16]
    (packing.lut_panel) -> y [M, N] float32, the same integers and epilogue; a parallel loop over
    pairs of rows (each builds its rows' tables once for all channels)."""
    mp, kp, npan = rows_padded(m), int8dot_k(k), -(-n // 16)
    a = te.placeholder((mp, kp), "int8", name="acodes")
    wp = te.placeholder((npan, w_bits, kp // 8, 16), "uint8", name="lutpanel")
    return _c_gemm(LUT_ROWS, "rows", -(-m // 2), [m, mp, n, kp, a_bits, w_bits], [a, wp], m, n, epilogue,
                   gelu_clip)


def quant_codes(m: int, k: int, bits: int, ln_eps: float | None = None):
    """x [M, K] float -> int16 codes minus zero point (for the 8-bit integer GEMM)."""
    ins, src, step, zp = _act_input(m, k, ln_eps)
    codes = te.compute((m, k), lambda r, c: (_code(src[r, c], step[0], zp[0], bits) - zp[0]).astype("int16"),
                       name="codes")
    return ins + [step, zp], [codes]


def int_linear(m: int, n: int, k: int, epilogue: str = "none", gelu_clip: float | None = None):
    """codes-minus-zp [M, K] int16 x weights [N, K] int8 -> y [M, N] float32 (8-bit layers)."""
    a = te.placeholder((m, k), "int16", name="codes")
    wt = te.placeholder((n, k), "int8", name="weight")
    scale = te.placeholder((n,), "float32", name="scale")
    bias = te.placeholder((n,), "float32", name="bias")
    kk = te.reduce_axis((0, k), name="k")
    acc = te.compute((m, n), lambda r, c: te.sum(a[r, kk].astype("int32") * wt[c, kk].astype("int32"),
                                                 axis=kk), name="acc")
    ins = [a, wt, scale, bias]

    def lin(r, c):
        return scale[c] * acc[r, c].astype("float32") + bias[c]

    if epilogue == "gelu":
        y = te.compute((m, n), lambda r, c: _gelu(lin(r, c), gelu_clip), name="y")
    elif epilogue == "add":
        res = te.placeholder((m, n), "float32", name="residual")
        ins.append(res)
        y = te.compute((m, n), lambda r, c: lin(r, c) + res[r, c], name="y")
    else:
        y = te.compute((m, n), lambda r, c: lin(r, c), name="y")
    return ins, [y]


INT_GEMM_PANEL = "qvit_int_gemm_panel"  # native/model/igemm.c


def int_linear_c(m: int, n: int, k: int):
    """int_linear without an epilogue (patch embedding) as a parallel loop over 16-channel panels
    calling the C micro-kernel qvit_int_gemm_panel (native/model/igemm.c): weights as int16 pairs
    [N/16, K/2, 16, 2] (packing.int16_panel), N % 16 == 0 and K even. The TE kernel ran one scalar
    multiply-add at a time (DeiT-S patch embedding: 1.4 ms of a 30 ms run)."""
    a = te.placeholder((m, k), "int16", name="codes")
    wt = te.placeholder((n // 16, k // 2, 16, 2), "int16", name="weight")
    scale = te.placeholder((n,), "float32", name="scale")
    bias = te.placeholder((n,), "float32", name="bias")

    def body(bufs, outs):
        pn = tirx.Var("panel", "int32")
        i32 = lambda v: tirx.const(int(v), "int32")  # noqa: E731
        call = tirx.call_extern("int32", INT_GEMM_PANEL, pn, i32(m), i32(n), i32(k),
                                *[b.data for b in bufs], outs[0].data)
        return tirx.For(pn, 0, n // 16, tirx.ForKind.PARALLEL, tirx.Evaluate(call))

    y = te.extern([(m, n)], [a, wt, scale, bias], body, name="y", dtype=["float32"])
    return [a, wt, scale, bias], [y]


def im2col(c: int, h: int, w: int, patch: int):
    """image [1, C, H, W] -> patches [Hp*Wp, C*p*p] in (c, kh, kw) order, patches row-major."""
    img = te.placeholder((1, c, h, w), "float32", name="image")
    hp, wp_ = h // patch, w // patch
    kk = c * patch * patch
    out = te.compute((hp * wp_, kk), lambda p, q: img[0, q // (patch * patch), (p // wp_) * patch
                                                      + (q // patch) % patch, (p % wp_) * patch + q % patch],
                     name="patches")
    return [img], [out]


# ---------------------------------------------------------------------------------------------- #
# Attention: IRM + quantize + pack, bit-serial Q K^T + softmax + quantize, bit-serial P V
# ---------------------------------------------------------------------------------------------- #

ATTENTION_ITEM = "qvit_attention_item"  # native/model/attention.c, linked into model.so


IRM_MODES = {None: 0, "token": 1, "head": 2}  # qvit_attention_item's irm argument


def attention(bp: int, t: int, heads: int, d: int, bits: int, irm: int, eps: float, scale: float,
              n_bias: bool, n_mask: int):
    """The whole attention op as one kernel: a parallel loop over the B' * H (batch, head) items, each
    calling the C micro-kernel qvit_attention_item (native/model/attention.c) that runs the IRM (`irm`,
    IRM_MODES: 0 none, 1 per-token LayerNorm with weight, bias [d], 2 per-head with gamma, beta [H, d]),
    quantize + pack of q, k, v, bit-serial Q K^T, softmax, quantize + pack of P and bit-serial P V for
    one head while it is in cache (the three TE kernels this replaced spent 0.93 ms per DeiT-S block,
    mostly in scalar float glue). Outputs: Q, K planes [B', H, b, T, DW], V planes (transposed)
    [B', H, b, d, TW], code sums qs, ks [B', H, T] (over d), vs [B', H, d] (over T), probability planes
    [B', H, b, T, TW] and sums [B', H, T], and out [B', T, H*d]."""
    dim = heads * d
    dw, tw = words(d), words(t)
    qkv = te.placeholder((bp, t, 3 * dim), "float32", name="qkv")
    ins = [qkv]
    if irm:
        shape = (d,) if irm == IRM_MODES["token"] else (heads, d)
        ins += [te.placeholder(shape, "float32", name=n) for n in ("nq_w", "nq_b", "nk_w", "nk_b")]
    for s in "qkvp":
        ins += [te.placeholder((heads,), "float32", name=f"{s}_step"),
                te.placeholder((heads,), "int32", name=f"{s}_zp")]
    if n_bias:
        ins.append(te.placeholder((heads, t, t), "float32", name="rel_pos_bias"))
    if n_mask:
        ins.append(te.placeholder((n_mask, t, t), "float32", name="mask"))
    shapes = [(bp, heads, bits, t, dw), (bp, heads, bits, t, dw), (bp, heads, bits, d, tw),
              (bp, heads, t), (bp, heads, t), (bp, heads, d), (bp, heads, bits, t, tw), (bp, heads, t),
              (bp, t, dim)]
    dtypes = [U64, U64, U64, "int32", "int32", "int32", U64, "int32", "float32"]

    def body(bufs, outs):
        it = tirx.Var("item", "int32")
        b = list(bufs)
        x, rest = b[0], b[1:]
        nw = rest[:4] if irm else [x] * 4  # unused pointers when absent: any valid address
        rest = rest[4:] if irm else rest
        qz = rest[:8]
        bias = rest[8] if n_bias else x
        mask = rest[8 + int(n_bias)] if n_mask else x
        i32, f32 = (lambda v: tirx.const(int(v), "int32")), (lambda v: tirx.const(float(v), "float32"))
        call = tirx.call_extern(
            "int32", ATTENTION_ITEM, it, i32(t), i32(heads), i32(d), i32(bits), i32(irm), f32(eps),
            f32(scale), i32(n_bias), i32(n_mask), x.data, *[v.data for v in nw], *[v.data for v in qz],
            bias.data, mask.data, *[o.data for o in outs])
        return tirx.For(it, 0, bp * heads, tirx.ForKind.PARALLEL, tirx.Evaluate(call))

    outs = te.extern(shapes, ins, body, name="attention", dtype=dtypes)
    return ins, list(outs)


# ---------------------------------------------------------------------------------------------- #
# Float glue
# ---------------------------------------------------------------------------------------------- #

VLANES = 16  # partial sums per float reduction (vector lanes)


def _vreduce(lead, n, fn, kind, name):
    """Reduce fn(*lead, k) over k < n as VLANES interleaved partials and then across them: one
    sequential float chain of n adds is latency-bound; VLANES vectorized chains are not. (The order
    of additions differs from numpy's pairwise sum by rounding only; max is exact.)"""
    lanes = VLANES
    red = te.sum if kind == "sum" else te.max
    if n < 2 * lanes:  # a one-step partial loop inside a vectorized loop is miscompiled by TVM 0.27
        k = te.reduce_axis((0, n), name=name + "_k")
        return te.compute(lead, lambda *r: red(fn(*r, k), axis=k), name=name)
    q = te.reduce_axis((0, -(-n // lanes)), name=name + "_q")
    ident = tirx.const(0.0 if kind == "sum" else -3.4e38, "float32")

    def part(*a):
        k = q * lanes + a[-1]
        return red(tirx.if_then_else(k < n, fn(*a[:-1], tirx.min(k, n - 1)), ident), axis=q)

    p = te.compute((*lead, lanes), part, name=name + "_vpart")
    rl = te.reduce_axis((0, lanes), name=name + "_l")
    return te.compute(lead, lambda *r: red(p[(*r, rl)], axis=rl), name=name)


def _layernorm(x, g, b, eps):
    shape = [int(s) for s in x.shape]
    n = shape[-1]
    lead = shape[:-1]
    inv_n = tirx.const(1.0 / n, "float32")
    total = _vreduce(lead, n, lambda *a: x[a], "sum", "ln_sum")

    def centred(r, k):
        return x[(*r, k)] - total[r] / tirx.const(float(n), "float32")

    sq = _vreduce(lead, n, lambda *a: centred(a[:-1], a[-1]) * centred(a[:-1], a[-1]), "sum", "ln_sq")
    del inv_n
    return te.compute(shape, lambda *r: centred(r[:-1], r[-1])
                      / tirx.sqrt(sq[r[:-1]] / tirx.const(float(n), "float32") + tirx.const(eps, "float32"))
                      * g[r[-1]] + b[r[-1]], name="ln")


def _erf(x):
    """float32 erf as a rational polynomial (Eigen's / TVM topi's fast_erf, a few ulp): vectorizes,
    where tirx.erf becomes one libm call per element."""
    f = lambda v: tirx.const(v, "float32")  # noqa: E731
    x = tirx.max(tirx.min(x, f(4.0)), f(-4.0))
    x2 = x * x
    p = x2 * f(-2.72614225801306e-10) + f(2.77068142495902e-08)
    for a in (-2.10102402082508e-06, -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02):
        p = x2 * p + f(a)
    p = x * p
    q = x2 * f(-1.45660718464996e-05) + f(-2.13374055278905e-04)
    for b in (-1.68282697438203e-03, -7.37332916720468e-03, -1.42647390514189e-02):
        q = x2 * q + f(b)
    return p / q


def _gelu(v, clip):
    half, one = tirx.const(0.5, "float32"), tirx.const(1.0, "float32")
    g = v * half * (one + _erf(v * tirx.const(0.7071067811865476, "float32")))
    if clip is not None:
        g = tirx.max(tirx.min(g, tirx.const(clip, "float32")), tirx.const(-clip, "float32"))
    return g


def layernorm(shape: tuple, eps: float):
    x = te.placeholder(shape, "float32", name="x")
    g = te.placeholder((shape[-1],), "float32", name="weight")
    b = te.placeholder((shape[-1],), "float32", name="bias")
    return [x, g, b], [_layernorm(x, g, b, eps)]


def gelu(shape: tuple, clip: float | None):
    x = te.placeholder(shape, "float32", name="x")
    return [x], [te.compute(shape, lambda *r: _gelu(x[r], clip), name="y")]


def add(shape: tuple, shape_b: tuple | None = None, scale: float | None = None):
    """a + b (b broadcast over a leading batch of 1); scale: (a + b) * scale (for `average`)."""
    a = te.placeholder(shape, "float32", name="a")
    b = te.placeholder(shape_b or shape, "float32", name="b")

    def f(*r):
        v = a[r] + b[r]
        return v * tirx.const(scale, "float32") if scale is not None else v

    return [a, b], [te.compute(shape, f, name="y")]


def prepend(shape: tuple, n_tok: int):
    """[1, T, D] tokens, n_tok tensors [1, 1, D] -> [1, T + n_tok, D]."""
    x = te.placeholder(shape, "float32", name="x")
    toks = [te.placeholder((1, 1, shape[2]), "float32", name=f"tok{i}") for i in range(n_tok)]

    def f(b, r, c):
        v = x[b, tirx.max(r - n_tok, 0), c]
        for i in reversed(range(n_tok)):
            v = tirx.Select(r == i, toks[i][0, 0, c], v)
        return v

    return [x, *toks], [te.compute((1, shape[1] + n_tok, shape[2]), f, name="y")]


def token(shape: tuple, index: int):
    x = te.placeholder(shape, "float32", name="x")
    return [x], [te.compute((shape[0], shape[2]), lambda b, c: x[b, index, c], name="y")]


def mean_tokens(shape: tuple):
    x = te.placeholder(shape, "float32", name="x")
    r = te.reduce_axis((0, shape[1]), name="r")
    total = te.compute((shape[0], shape[2]), lambda b, c: te.sum(x[b, r, c], axis=r), name="total")
    n = tirx.const(float(shape[1]), "float32")
    return [x], [te.compute((shape[0], shape[2]), lambda b, c: total[b, c] / n, name="y")]


def window_partition(c: int, grid, window, shift):
    """[1, H*W, C] -> roll by -shift -> zero-pad to whole windows -> [nW, wh*ww, C], windows row-major."""
    (gh, gw), (wh, ww), (sh, sw) = grid, window, shift
    hp, wp = -(-gh // wh) * wh, -(-gw // ww) * ww
    x = te.placeholder((1, gh * gw, c), "float32", name="x")
    nwx = wp // ww

    def f(wi, p, ch):
        hh = (wi // nwx) * wh + p // ww
        w_ = (wi % nwx) * ww + p % ww
        src = x[0, tirx.min((hh + sh) % gh, gh - 1) * gw + tirx.min((w_ + sw) % gw, gw - 1), ch]
        if (hp, wp) == (gh, gw):
            return src
        return tirx.if_then_else(tirx.all(hh < gh, w_ < gw), src, tirx.const(0.0, "float32"))

    return [x], [te.compute(((hp // wh) * nwx, wh * ww, c), f, name="y")]


def window_reverse(c: int, grid, window, shift):
    """Inverse of window_partition (crop the padding, roll by +shift): [nW, wh*ww, C] -> [1, H*W, C]."""
    (gh, gw), (wh, ww), (sh, sw) = grid, window, shift
    hp, wp = -(-gh // wh) * wh, -(-gw // ww) * ww
    nwx = wp // ww
    x = te.placeholder(((hp // wh) * nwx, wh * ww, c), "float32", name="x")

    def f(b, t, ch):
        # the wrap is a select, not (v + g) % g: TVM 0.27 simplified that nested floordiv/floormod
        # wrongly for 7x7 windows (tests/test_compile.py::test_window_ops)
        h0, w0 = t // gw - sh, t % gw - sw
        hh = tirx.Select(h0 < 0, h0 + gh, h0)
        w_ = tirx.Select(w0 < 0, w0 + gw, w0)
        return x[(hh // wh) * nwx + w_ // ww, (hh % wh) * ww + w_ % ww, ch]

    return [x], [te.compute((1, gh * gw, c), f, name="y")]


def patch_merge(c: int, grid):
    """[1, H*W, C] -> [1, ceil(H/2)*ceil(W/2), 4C] in timm 1.0 PatchMerging order (odd sides zero-padded):
    x.reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3), i.e. q = (dw * 2 + dh) * C + ch."""
    gh, gw = grid
    h2, w2 = (gh + 1) // 2, (gw + 1) // 2
    x = te.placeholder((1, gh * gw, c), "float32", name="x")

    def f(b, t, q):
        i, j = t // w2, t % w2
        sel, ch = q // c, q % c
        dw, dh = sel // 2, sel % 2
        hh, ww_ = 2 * i + dh, 2 * j + dw
        src = x[0, tirx.min(hh, gh - 1) * gw + tirx.min(ww_, gw - 1), ch]
        if gh % 2 == 0 and gw % 2 == 0:
            return src
        return tirx.if_then_else(tirx.all(hh < gh, ww_ < gw), src, tirx.const(0.0, "float32"))

    return [x], [te.compute((1, h2 * w2, 4 * c), f, name="y")]
