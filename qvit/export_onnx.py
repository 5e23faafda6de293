"""A standard QDQ ONNX model of a fully quantized network, built from its integer model.

Every quantized op becomes the usual QuantizeLinear -> DequantizeLinear pattern on its input and
a DequantizeLinear of its integer weight codes (per output channel) feeding MatMul / Conv, so
any QDQ-aware runtime can fuse them into integer kernels, and any ONNX runtime computes the same
function as the integer reference. q, k, v and the attention probabilities are Q/DQ'd per head
(per-axis on the head axis). Weight codes live in the narrowest ONNX integer type that holds
them: INT2 (opset 25) for 1-2 bits, INT4 (opset 21) for 3-4 bits, INT8 otherwise. Activation
codes are UINT4 for 1-4 bits and UINT8 above, never UINT2 (see `_act_type`). Where the code range
is narrower than its container (1-3 bits in UINT4, ...) the float input is clipped to the range
first (exact: the clip bounds quantize to the end codes).
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qvit_compile.intmodel import IntModel, irm_stat, padded_grid, pair
from qvit_edge import quant

F32 = np.float32


def _act_type(bits: int):
    # ONNX (opset 25) has UINT2, and ONNX Runtime 1.32 runs UINT2 activations with basic graph
    # optimizations, but its default level (ORT_ENABLE_ALL) moves a Q/DQ pair across a Reshape
    # whose CPU kernel has no uint2 type, and the session fails to load. So activations take
    # UINT4 at least (with the clip); weights are DequantizeLinear constants and run as INT2.
    if bits <= 4:
        return TensorProto.UINT4, 4
    return TensorProto.UINT8, 8


def _weight_type(bits: int):
    if bits <= 2:
        return TensorProto.INT2, 2
    if bits <= 4:
        return TensorProto.INT4, 4
    return TensorProto.INT8, 8


class _Graph:
    def __init__(self):
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}/{self._n}"

    def const(self, value, hint: str = "c", dtype=None) -> str:
        name = self.name(hint)
        a = np.asarray(value, dtype) if dtype is not None else np.asarray(value)
        self.inits.append(numpy_helper.from_array(a, name))
        return name

    def typed(self, hint: str, onnx_type, dims, values) -> str:
        name = self.name(hint)
        self.inits.append(
            helper.make_tensor(name, onnx_type, list(dims), np.asarray(values).ravel().tolist())
        )
        return name

    def op(
        self, op_type: str, inputs: list[str], out: str | None = None, hint: str | None = None, **attrs
    ) -> str:
        out = out or self.name(hint or op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def ints(self, values, hint="shape") -> str:
        return self.const(np.asarray(values, np.int64), hint)


def _qdq_act(g: _Graph, x: str, step, zp, bits: int, axis: int | None, hint: str) -> str:
    """Fake-quantize x with unsigned codes (per tensor, or per `axis` with 1-D step / zp)."""
    onnx_type, width = _act_type(bits)
    step = np.asarray(step, F32)
    zp = np.asarray(zp, np.int64)
    lo, hi = quant.act_range(bits)
    if hi < (1 << width) - 1:  # narrower than the container: clip the float input to the code range
        shape = [1] * 4 if axis is not None else []
        if axis is not None:
            shape[axis] = -1
        lo_f = ((lo - zp) * step).astype(F32).reshape(shape) if shape else ((lo - zp) * step).astype(F32)
        hi_f = ((hi - zp) * step).astype(F32).reshape(shape) if shape else ((hi - zp) * step).astype(F32)
        x = g.op("Min", [g.op("Max", [x, g.const(lo_f, "lo")]), g.const(hi_f, "hi")])
    s = g.const(step, f"{hint}.step")
    z = g.typed(f"{hint}.zp", onnx_type, step.shape, zp)
    attrs = {"axis": axis} if axis is not None else {}
    q = g.op("QuantizeLinear", [x, s, z], hint=f"{hint}.codes", **attrs)
    return g.op("DequantizeLinear", [q, s, z], hint=f"{hint}.dq", **attrs)


def _dq_weight(g: _Graph, codes: np.ndarray, w_step, bits: int, axis: int, hint: str) -> str:
    onnx_type, _ = _weight_type(bits)
    w = g.typed(f"{hint}.codes", onnx_type, codes.shape, codes.astype(np.int64))
    s = g.const(np.asarray(w_step, F32), f"{hint}.w_step")
    return g.op("DequantizeLinear", [w, s], hint=f"{hint}.w", axis=axis)


def _qlinear(g, op, prm, x):
    xd = _qdq_act(g, x, prm["a_step"], prm["a_zp"], op["a_bits"], None, op["param"])
    wd = _dq_weight(g, prm["weight"].T.copy(), prm["w_step"], op["w_bits"], 1, op["param"])  # [K, N]
    y = g.op("MatMul", [xd, wd])
    if "bias" in prm:
        y = g.op("Add", [y, g.const(prm["bias"].astype(F32), f"{op['param']}.bias")])
    return y


def _patch_embed(g, op, prm, x, in_chans):
    p = op["patch"]
    n = prm["weight"].shape[0]
    xd = _qdq_act(g, x, prm["a_step"], prm["a_zp"], op["a_bits"], None, op["param"])
    codes = prm["weight"].reshape(n, in_chans, p, p)
    wd = _dq_weight(g, codes, prm["w_step"], op["w_bits"], 0, op["param"])
    inputs = [xd, wd] + ([g.const(prm["bias"].astype(F32), f"{op['param']}.bias")] if "bias" in prm else [])
    y = g.op("Conv", inputs, kernel_shape=[p, p], strides=[p, p])
    y = g.op("Reshape", [y, g.ints([0, n, -1])])
    return g.op("Transpose", [y], perm=[0, 2, 1])


def _head_norm(g, x, gamma, beta, eps, hint):
    """Per-head IRM of x [B', H, T, d]: (x - mu + beta[h]) / (gamma[h] sqrt(var + eps)), mu and the
    biased var over each head's T x d values (reference.head_norm)."""
    axes = g.ints([-2, -1], "axes")
    xc = g.op("Sub", [x, g.op("ReduceMean", [x, axes], keepdims=1)])
    var = g.op("ReduceMean", [g.op("Mul", [xc, xc]), axes], keepdims=1)
    sd = g.op("Sqrt", [g.op("Add", [var, g.const(F32(eps), "eps")])])
    num = g.op("Add", [xc, g.const(np.asarray(beta, F32)[:, None, :], f"{hint}.beta")])
    return g.op("Div", [num, g.op("Mul", [g.const(np.asarray(gamma, F32)[:, None, :], f"{hint}.gamma"), sd])])


def _attention(g, op, prm, qkv):
    h, d, bits, par = op["heads"], op["head_dim"], op["bits"], op["param"]
    t = g.op("Reshape", [qkv, g.ints([0, 0, 3, h, d])])
    t = g.op("Transpose", [t], perm=[2, 0, 3, 1, 4])
    q, k, v = (g.op("Gather", [t, g.const(np.int64(i), "idx")], axis=0) for i in range(3))
    if op["irm"] and irm_stat(op) == "head":
        q = _head_norm(g, q, prm["norm_q.gamma"], prm["norm_q.beta"], op["eps"], f"{par}.norm_q")
        k = _head_norm(g, k, prm["norm_k.gamma"], prm["norm_k.beta"], op["eps"], f"{par}.norm_k")
    elif op["irm"]:
        q = g.op(
            "LayerNormalization",
            [q, g.const(prm["norm_q.weight"]), g.const(prm["norm_q.bias"])],
            axis=-1,
            epsilon=float(op["eps"]),
        )
        k = g.op(
            "LayerNormalization",
            [k, g.const(prm["norm_k.weight"]), g.const(prm["norm_k.bias"])],
            axis=-1,
            epsilon=float(op["eps"]),
        )
    qd = _qdq_act(g, q, prm["q_step"], prm["q_zp"], bits, 1, f"{par}.q")
    kd = _qdq_act(g, k, prm["k_step"], prm["k_zp"], bits, 1, f"{par}.k")
    vd = _qdq_act(g, v, prm["v_step"], prm["v_zp"], bits, 1, f"{par}.v")
    s = g.op("MatMul", [qd, g.op("Transpose", [kd], perm=[0, 1, 3, 2])])
    s = g.op("Mul", [s, g.const(F32(op["scale"]), "scale")])
    if "rel_pos_bias" in prm:
        s = g.op("Add", [s, g.const(prm["rel_pos_bias"], f"{par}.rel_pos_bias")])
    if "mask" in prm:
        nw, tt = prm["mask"].shape[0], prm["mask"].shape[1]
        s = g.op("Reshape", [s, g.ints([-1, nw, h, tt, tt])])
        s = g.op("Add", [s, g.const(prm["mask"][:, None], f"{par}.mask")])
        s = g.op("Reshape", [s, g.ints([-1, h, tt, tt])])
    p = g.op("Softmax", [s], axis=-1)
    pd = _qdq_act(g, p, prm["p_step"], prm["p_zp"], bits, 1, f"{par}.p")
    o = g.op("Transpose", [g.op("MatMul", [pd, vd])], perm=[0, 2, 1, 3])
    return g.op("Reshape", [o, g.ints([0, 0, h * d])])


def _roll(g, x, shift: int, axis: int, size: int) -> str:
    """numpy.roll(x, shift, axis) for a static axis length."""
    s = shift % size
    if s == 0:
        return x
    a = g.op("Slice", [x, g.ints([size - s]), g.ints([size]), g.ints([axis])])
    b = g.op("Slice", [x, g.ints([0]), g.ints([size - s]), g.ints([axis])])
    return g.op("Concat", [a, b], axis=axis)


def _window_partition(g, op, x, c):
    (gh, gw), (wh, ww), (sh, sw) = pair(op["grid"]), pair(op["window"]), pair(op["shift"])
    hp, wp = padded_grid(op["grid"], op["window"])
    m = g.op("Reshape", [x, g.ints([-1, gh, gw, c])])
    m = _roll(g, _roll(g, m, -sh, 1, gh), -sw, 2, gw)
    if (hp, wp) != (gh, gw):
        m = g.op("Pad", [m, g.ints([0, 0, 0, 0, 0, hp - gh, wp - gw, 0])])
    m = g.op("Reshape", [m, g.ints([-1, hp // wh, wh, wp // ww, ww, c])])
    m = g.op("Transpose", [m], perm=[0, 1, 3, 2, 4, 5])
    return g.op("Reshape", [m, g.ints([-1, wh * ww, c])])


def _window_reverse(g, op, x, c):
    (gh, gw), (wh, ww), (sh, sw) = pair(op["grid"]), pair(op["window"]), pair(op["shift"])
    hp, wp = padded_grid(op["grid"], op["window"])
    m = g.op("Reshape", [x, g.ints([-1, hp // wh, wp // ww, wh, ww, c])])
    m = g.op("Transpose", [m], perm=[0, 1, 3, 2, 4, 5])
    m = g.op("Reshape", [m, g.ints([-1, hp, wp, c])])
    if (hp, wp) != (gh, gw):
        m = g.op("Slice", [m, g.ints([0, 0]), g.ints([gh, gw]), g.ints([1, 2])])
    m = _roll(g, _roll(g, m, sh, 1, gh), sw, 2, gw)
    return g.op("Reshape", [m, g.ints([-1, gh * gw, c])])


def _patch_merge(g, op, x, c):
    gh, gw = pair(op["grid"])
    m = g.op("Reshape", [x, g.ints([-1, gh, gw, c])])
    if gh % 2 or gw % 2:
        m = g.op("Pad", [m, g.ints([0, 0, 0, 0, 0, gh % 2, gw % 2, 0])])
    h2, w2 = (gh + 1) // 2, (gw + 1) // 2
    m = g.op("Reshape", [m, g.ints([-1, h2, 2, w2, 2, c])])
    m = g.op("Transpose", [m], perm=[0, 1, 3, 4, 2, 5])
    return g.op("Reshape", [m, g.ints([-1, h2 * w2, 4 * c])])


def _gelu(g, x, clip):
    e = g.op("Erf", [g.op("Mul", [x, g.const(F32(1 / np.sqrt(2.0)))])])
    y = g.op("Mul", [g.op("Mul", [x, g.op("Add", [e, g.const(F32(1))])]), g.const(F32(0.5))])
    if clip is not None:  # Max/Min, not Clip: ORT's Clip->QuantizeLinear fusion rejects UINT4 (ORT 1.32)
        y = g.op("Min", [g.op("Max", [y, g.const(F32(-clip))]), g.const(F32(clip))])
    return y


def intmodel_to_onnx(im: IntModel) -> onnx.ModelProto:
    """The QDQ ONNX graph of an integer model: input "image" [batch, C, H, W], output "logits"."""
    g = _Graph()
    shapes = im.shapes()
    env = {"image": "image"}
    narrow = False
    for op in im.graph:
        kind, prm = op["op"], im.params(op)
        ins = [env[n] for n in (op["in"] if isinstance(op["in"], list) else [op["in"]])]
        x = ins[0]
        c = shapes[op["in"] if isinstance(op["in"], str) else op["in"][0]][-1]
        if kind in ("qlinear", "patch_embed", "attention"):
            bits = [op.get("a_bits", op.get("bits")), op.get("w_bits", 8)]
            narrow |= min(bits) <= 2
        if kind == "qlinear":
            y = _qlinear(g, op, prm, x)
        elif kind == "patch_embed":
            y = _patch_embed(g, op, prm, x, im.input_shape[0])
        elif kind == "attention":
            y = _attention(g, op, prm, x)
        elif kind == "prepend":
            batch = g.op("Slice", [g.op("Shape", [x]), g.ints([0]), g.ints([1])])
            toks = []
            for name in op["tensors"]:
                d = prm[name].shape[-1]
                shape = g.op("Concat", [batch, g.ints([1, d])], axis=0)
                toks.append(g.op("Expand", [g.const(prm[name], name), shape]))
            y = g.op("Concat", toks + [x], axis=1)
        elif kind == "add_const":
            y = g.op("Add", [x, g.const(prm[op["tensor"]], op["tensor"])])
        elif kind == "layernorm":
            y = g.op(
                "LayerNormalization",
                [x, g.const(prm["weight"]), g.const(prm["bias"])],
                axis=-1,
                epsilon=float(op["eps"]),
            )
        elif kind == "gelu":
            y = _gelu(g, x, op["clip"])
        elif kind == "add":
            y = g.op("Add", ins)
        elif kind == "average":
            y = g.op("Mul", [g.op("Add", ins), g.const(F32(0.5))])
        elif kind == "window_partition":
            y = _window_partition(g, op, x, c)
        elif kind == "window_reverse":
            y = _window_reverse(g, op, x, c)
        elif kind == "patch_merge":
            y = _patch_merge(g, op, x, c)
        elif kind == "token":
            y = g.op("Gather", [x, g.const(np.int64(op["index"]), "idx")], axis=1)
        elif kind == "mean_tokens":
            y = g.op("ReduceMean", [x, g.ints([1])], keepdims=0)
        else:  # pragma: no cover - IntModel.validate rejects unknown ops
            raise ValueError(f"unknown op {kind!r}")
        env[op["out"]] = y
    g.nodes.append(helper.make_node("Identity", [env["logits"]], ["logits"], name="logits"))
    c, h, w = im.input_shape
    graph = helper.make_graph(
        g.nodes,
        im.config["arch"],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", im.num_classes])],
        g.inits,
    )
    opset = 25 if narrow else 21  # INT2 needs opset 25, INT4/UINT4 opset 21
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qvit-edge"
    )
    model.ir_version = 11 if opset >= 25 else 10
    meta = {
        "arch": im.config["arch"],
        "bits": im.config["bits"],
        "input": im.config["input"],
        "classes": im.config.get("classes"),
        "source": "qvit export --onnx (QDQ)",
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=json.dumps(v))
    onnx.checker.check_model(model)
    return model


def export_onnx(im: IntModel, path: str) -> onnx.ModelProto:
    model = intmodel_to_onnx(im)
    tmp = f"{path}.tmp"
    onnx.save(model, tmp)
    os.replace(tmp, path)
    return model
