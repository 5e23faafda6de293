"""Integer model (docs/integer-model.md) -> op plan: scheduled TVM kernels, constants, tensors, steps.

Batch 1, static shapes (the executor loops over the images of a batch). Every quantized matmul
becomes a bit-serial kernel pair (quantize+pack, AND/popcount GEMM + float epilogue) when both
operands have at most 4 bits; 8-bit layers (patch embedding, head) run an int16 x int8 integer GEMM.
Nothing quantized runs as a float matmul.

Fusions (peephole, over the graph order):
  * layernorm whose only consumer is a quantized linear layer: LayerNorm -> quantize -> pack in one
    kernel, the float LayerNorm output never exists;
  * qlinear followed by its only consumer gelu: GELU (and its clip) in the GEMM epilogue;
  * qlinear followed by its only consumer add (residual): the add in the GEMM epilogue.
Kernels are shared by every layer with the same shapes and bits (the scales are tensor arguments).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import engines, packing, schedules
from . import kernels as K
from .intmodel import IRM_TENSORS, irm_stat, pair

BITSERIAL_MAX_BITS = engines.LOWBIT_MAX


@dataclass
class Plan:
    funcs: dict = field(default_factory=dict)  # kernel name -> scheduled PrimFunc
    kernels: list = field(default_factory=list)  # kernel names, index = plan kernel id
    keys: dict = field(default_factory=dict)  # dedup key -> kernel id
    tensors: dict = field(default_factory=dict)  # name -> {"shape", "dtype"[, "view"]}
    consts: dict = field(default_factory=dict)  # name -> np.ndarray (goes into the blob)
    steps: list = field(default_factory=list)

    def kernel(self, key: tuple, kind: str, build) -> int:
        if key not in self.keys:
            name = f"qvit_k{len(self.kernels)}_{kind}"
            self.funcs[name] = build(name)
            self.keys[key] = len(self.kernels)
            self.kernels.append(name)
        return self.keys[key]

    def const(self, name: str, arr: np.ndarray) -> str:
        arr = np.ascontiguousarray(arr)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        self.consts[name] = arr
        self.tensors[name] = {"shape": list(arr.shape), "dtype": arr.dtype.name, "const": True}
        return name

    def act(self, name: str, shape, dtype: str = "float32") -> str:
        self.tensors[name] = {"shape": [int(s) for s in shape], "dtype": dtype}
        return name

    def view(self, name: str, shape) -> str:
        """`name` seen with another shape (same bytes): a kernel checks the exact shape it expects."""
        t = self.tensors[name]
        shape = [int(s) for s in shape]
        if t["shape"] == shape:
            return name
        base = t.get("view", name)
        v = f"{base}@{'x'.join(map(str, shape))}"
        if v not in self.tensors:
            assert int(np.prod(shape)) == int(np.prod(t["shape"])), (name, shape)
            self.tensors[v] = {"shape": shape, "dtype": t["dtype"], "view": base}
        return v

    def step(self, kid: int, kind: str, args: list, op: str) -> None:
        self.steps.append({"kernel": kid, "kind": kind, "op": op, "args": list(args)})

    def shape(self, name: str) -> list:
        return self.tensors[name]["shape"]


def _inputs(op: dict) -> list:
    return op["in"] if isinstance(op["in"], list) else [op["in"]]


def _is_quant_linear(op: dict) -> bool:
    return op["op"] == "qlinear"


class Lowering:
    def __init__(self, model, target_kind: str, select=None):
        self.model = model
        self.target_kind = target_kind
        # engines.Selection: the GEMM engine of each quantized linear layer (None: bit-serial for all)
        self.select = select
        self.plan = Plan()
        self.consumers: dict[str, list[int]] = {}
        self.producer: dict[str, int] = {"image": -1}
        for i, op in enumerate(model.graph):
            for n in _inputs(op):
                self.consumers.setdefault(n, []).append(i)
            self.producer[op["out"]] = i

    # ----------------------------------------------------------------------------------- helpers
    def _only_consumer(self, name: str):
        c = self.consumers.get(name, [])
        if len(c) == 1 and name != "logits":
            return c[0]
        return None

    def _prm(self, op):
        return self.model.params(op)

    def _generic(self, key, kind, builder, *bargs, keep=()):
        def build(name):
            ins, outs = builder(*bargs)
            return schedules.generic(schedules.prim_func(name, ins, outs), name, keep)
        return self.plan.kernel(key, kind, build)

    # ----------------------------------------------------------------------------------- lowering
    def run(self) -> Plan:
        p = self.plan
        c, h, w = self.model.input_shape
        p.act("image", (1, c, h, w))
        graph = self.model.graph
        skip: set[int] = set()
        ln_fused: dict[str, dict] = {}
        for i, op in enumerate(graph):
            if i in skip:
                continue
            kind = op["op"]
            if kind == "layernorm":
                j = self._only_consumer(op["out"])
                if j is not None and _is_quant_linear(graph[j]):
                    ln_fused[op["out"]] = op
                    continue
                self._layernorm(op)
            elif kind in ("qlinear", "patch_embed"):
                epi, out, clip = "none", op["out"], None
                j = self._only_consumer(op["out"])
                if kind == "qlinear" and j is not None:
                    nxt = graph[j]
                    if nxt["op"] == "gelu":
                        epi, out, clip = "gelu", nxt["out"], nxt["clip"]
                        skip.add(j)
                    elif nxt["op"] == "add" and nxt["in"][0] != nxt["in"][1]:
                        res = nxt["in"][1] if nxt["in"][0] == op["out"] else nxt["in"][0]
                        if self.producer.get(res, len(graph)) < i:  # computed before this layer
                            epi, out = "add", nxt["out"]
                            skip.add(j)
                            self._residual = res
                self._linear(op, epi, out, clip, ln_fused.get(op["in"]))
            elif kind == "attention":
                self._attention(op)
            else:
                getattr(self, "_" + kind)(op)
        p.tensors["logits"]  # the graph produced it
        return p

    def _linear(self, op, epi, out, clip, ln_op):
        p, prm = self.plan, self._prm(op)
        wt = prm["weight"]
        n, k = wt.shape
        ab, wb = int(op["a_bits"]), int(op["w_bits"])
        name = op["param"]
        if op["op"] == "patch_embed":
            c, hh, ww = self.model.input_shape
            patch = int(op["patch"])
            m = (hh // patch) * (ww // patch)
            cols = p.act(f"{op['out']}.patches", (m, k))
            kid = self._generic(("im2col", c, hh, ww, patch), "im2col", K.im2col, c, hh, ww, patch)
            p.step(kid, "patch_embed", ["image", cols], op["out"])
            x2, lead = cols, (1, m)
        else:
            src = ln_op["in"] if ln_op is not None else op["in"]
            lead = tuple(p.shape(src)[:-1])
            m = int(np.prod(lead))
            x2 = p.view(src, (m, k))
        kind = op["op"]
        eps = float(ln_op["eps"]) if ln_op is not None else None
        ln_args = []
        if ln_op is not None:
            lp = self._prm(ln_op)
            ln_args = [p.const(f"{ln_op['param']}.weight", lp["weight"]),
                       p.const(f"{ln_op['param']}.bias", lp["bias"])]
        a_step = p.const(f"{name}.a_step", np.asarray(prm["a_step"], np.float32))
        a_zp = p.const(f"{name}.a_zp", np.asarray(prm["a_zp"], np.int32))
        # a_step * w_step[n] in float32, as the reference's epilogue
        scale = p.const(f"{name}.scale", (np.float32(prm["a_step"]) * prm["w_step"].astype(np.float32))
                        .astype(np.float32))
        bias = p.const(f"{name}.bias", prm["bias"] if "bias" in prm else np.zeros(n, np.float32))
        y = p.act(out, (*lead, n))
        y2 = p.view(y, (m, n))
        res = []
        if epi == "add":
            res = [p.view(self._residual, (m, n))]
        clip_v = None if clip is None else float(clip)
        engine = (self.select.pick(kind, ab, wb, (m, n, k, epi)) if self.select is not None
                  else engines.choose("", (), ab, wb))
        if engine in (engines.INT8DOT, engines.INT8DOT_AMX):
            amx = engine == engines.INT8DOT_AMX  # the same kernels with AMX tile paddings
            kp = K.int8dot_k(k, amx)
            codes = p.act(f"{op['out']}.acodes", (K.int8dot_rows(m, amx), kp), "int8")
            kid = self._generic(("quant8", m, k, ab, eps, amx), "int8dot_quant", K.int8dot_quant,
                                m, k, ab, eps, amx)
            p.step(kid, kind, [x2, *ln_args, a_step, a_zp, codes], op["out"])
            panel = p.const(f"{name}.wpanel8", packing.int8_panel(wt, kp))
            corr = p.const(f"{name}.corr", packing.zero_point_correction(wt, int(prm["a_zp"])))
            ins_outs = K.int8dot_linear(m, n, k, epi, clip_v, amx)
            kid = p.kernel(("int8dot", m, n, k, epi, clip_v, amx), "int8dot_gemm",
                           lambda fname: schedules.prim_func(fname, *ins_outs))
            p.step(kid, kind, [codes, panel, scale, corr, bias, *res, y2], op["out"])
        elif engine == engines.LUT_NEON:
            kp = K.int8dot_k(k)
            codes = p.act(f"{op['out']}.acodes", (K.rows_padded(m), kp), "int8")
            kid = self._generic(("quant8", m, k, ab, eps, False), "int8dot_quant", K.int8dot_quant,
                                m, k, ab, eps, False)
            p.step(kid, kind, [x2, *ln_args, a_step, a_zp, codes], op["out"])
            panel = p.const(f"{name}.lutpanel", packing.lut_panel(wt, wb, kp))
            corr = p.const(f"{name}.corr", packing.zero_point_correction(wt, int(prm["a_zp"])))
            ins_outs = K.lut_linear(m, n, k, ab, wb, epi, clip_v)
            kid = p.kernel(("lut", m, n, k, ab, wb, epi, clip_v), "lut_gemm",
                           lambda fname: schedules.prim_func(fname, *ins_outs))
            p.step(kid, kind, [codes, panel, scale, corr, bias, *res, y2], op["out"])
        elif engine == engines.BITSERIAL_NEON:
            planes = p.act(f"{op['out']}.planes", (ab, K.rows_padded(m), K.linear_words(k)), "uint64")
            kid = self._generic(("pack", m, k, ab, eps), "pack", K.pack_act, m, k, ab, eps)
            p.step(kid, kind, [x2, *ln_args, a_step, a_zp, planes], op["out"])
            panel = p.const(f"{name}.wpanel", packing.bsneon_panel(wt, wb))
            corr = p.const(f"{name}.corr", packing.zero_point_correction(wt, int(prm["a_zp"])))
            ins_outs = K.bsneon_linear(m, n, k, ab, wb, epi, clip_v)
            kid = p.kernel(("bsneon", m, n, k, ab, wb, epi, clip_v), "bsneon_gemm",
                           lambda fname: schedules.prim_func(fname, *ins_outs))
            p.step(kid, kind, [planes, panel, scale, corr, bias, *res, y2], op["out"])
        elif engine == engines.BITSERIAL:
            planes = p.act(f"{op['out']}.planes", (ab, K.rows_padded(m), K.linear_words(k)), "uint64")
            kid = self._generic(("pack", m, k, ab, eps), "pack", K.pack_act, m, k, ab, eps)
            p.step(kid, kind, [x2, *ln_args, a_step, a_zp, planes], op["out"])
            mtile, nv = K.gemm_tile(epi)
            panel = p.const(f"{name}.wpanel", packing.weight_panel(wt, wb, nv))
            corr = p.const(f"{name}.corr", packing.zero_point_correction(wt, int(prm["a_zp"])))

            def build(fname):
                ins, outs = K.bitserial_linear(m, n, k, ab, wb, epi, clip_v, nv)
                func = schedules.prim_func(fname, ins, outs)
                return schedules.bitserial_linear(func, fname, m, n, self.target_kind, mtile, nv,
                                                  panel_epilogue=epi != "add")
            kid = p.kernel(("bsgemm", m, n, k, ab, wb, epi, clip_v), "bitserial_gemm", build)
            p.step(kid, kind, [planes, panel, scale, corr, bias, *res, y2], op["out"])
        else:
            codes = p.act(f"{op['out']}.codes", (m, k), "int16")
            kid = self._generic(("quant", m, k, ab, eps), "quantize", K.quant_codes, m, k, ab, eps)
            p.step(kid, kind, [x2, *ln_args, a_step, a_zp, codes], op["out"])
            if epi == "none" and n % 16 == 0 and k % 2 == 0:  # the C micro-kernel (native/model/igemm.c)
                w16 = p.const(f"{name}.weight16", packing.int16_panel(wt))
                kid = p.kernel(("igemm_c", m, n, k), "int_gemm",
                               lambda fname: schedules.prim_func(fname, *K.int_linear_c(m, n, k)))
                p.step(kid, kind, [codes, w16, scale, bias, y2], op["out"])
            else:
                w8 = p.const(f"{name}.weight", wt.astype(np.int8))
                kid = self._generic(("igemm", m, n, k, epi, clip_v), "int_gemm", K.int_linear,
                                    m, n, k, epi, clip_v)
                p.step(kid, kind, [codes, w8, scale, bias, *res, y2], op["out"])

    def _attention(self, op):
        p, prm = self.plan, self._prm(op)
        bp, t, three_d = p.shape(op["in"])
        h, d, bits = int(op["heads"]), int(op["head_dim"]), int(op["bits"])
        stat = irm_stat(op) if op["irm"] else None
        irm, eps = K.IRM_MODES[stat], float(op["eps"])
        name = op["param"]
        dw, tw = K.words(d), K.words(t)
        c = {s: p.const(f"{name}.{s}", prm[s]) for s in ("q_step", "k_step", "v_step", "p_step",
                                                           "q_zp", "k_zp", "v_zp", "p_zp")}
        o = op["out"]
        qp = p.act(f"{o}.qp", (bp, h, bits, t, dw), "uint64")
        kp = p.act(f"{o}.kp", (bp, h, bits, t, dw), "uint64")
        vp = p.act(f"{o}.vp", (bp, h, bits, d, tw), "uint64")
        qs, ks = p.act(f"{o}.qs", (bp, h, t), "int32"), p.act(f"{o}.ks", (bp, h, t), "int32")
        vs = p.act(f"{o}.vs", (bp, h, d), "int32")
        irm_args = []
        if stat is not None:
            irm_args = [p.const(f"{name}.{s}", prm[s]) for s in IRM_TENSORS[stat]]
        extra = []
        has_bias = "rel_pos_bias" in prm
        n_mask = 0
        if has_bias:
            extra.append(p.const(f"{name}.rel_pos_bias", prm["rel_pos_bias"]))
        if "mask" in prm:
            n_mask = int(prm["mask"].shape[0])
            extra.append(p.const(f"{name}.mask", prm["mask"]))
        pp = p.act(f"{o}.pp", (bp, h, bits, t, tw), "uint64")
        ps = p.act(f"{o}.ps", (bp, h, t), "int32")
        out = p.act(o, (bp, t, h * d))
        scale = float(op["scale"])
        key = ("attention", bp, t, h, d, bits, irm, eps, scale, has_bias, n_mask)
        kid = p.kernel(key, "attention", lambda fname: schedules.prim_func(
            fname, *K.attention(bp, t, h, d, bits, irm, eps, scale, has_bias, n_mask)))
        p.step(kid, "attention", [op["in"], *irm_args, c["q_step"], c["q_zp"], c["k_step"], c["k_zp"],
                                  c["v_step"], c["v_zp"], c["p_step"], c["p_zp"], *extra,
                                  qp, kp, vp, qs, ks, vs, pp, ps, out], o)

    # --------------------------------------------------------------------------------- float ops
    def _layernorm(self, op):
        p, prm = self.plan, self._prm(op)
        shape = tuple(p.shape(op["in"]))
        eps = float(op["eps"])
        kid = self._generic(("layernorm", shape, eps), "layernorm", K.layernorm, shape, eps)
        out = p.act(op["out"], shape)
        p.step(kid, "layernorm", [op["in"], p.const(f"{op['param']}.weight", prm["weight"]),
                                  p.const(f"{op['param']}.bias", prm["bias"]), out], op["out"])

    def _gelu(self, op):
        p = self.plan
        shape = tuple(p.shape(op["in"]))
        clip = None if op["clip"] is None else float(op["clip"])
        kid = self._generic(("gelu", shape, clip), "gelu", K.gelu, shape, clip)
        p.step(kid, "gelu", [op["in"], p.act(op["out"], shape)], op["out"])

    def _add(self, op, scale=None, kind="add"):
        p = self.plan
        a, b = op["in"]
        shape = tuple(p.shape(a))
        kid = self._generic(("add", shape, shape, scale), kind, K.add, shape, None, scale)
        p.step(kid, kind, [a, b, p.act(op["out"], shape)], op["out"])

    def _average(self, op):
        self._add(op, 0.5, "average")

    def _add_const(self, op):
        p, prm = self.plan, self._prm(op)
        shape = tuple(p.shape(op["in"]))
        cst = prm[op["tensor"]].astype(np.float32)
        kid = self._generic(("add", shape, tuple(cst.shape), None), "add", K.add, shape, tuple(cst.shape))
        p.step(kid, "add", [op["in"], p.const(op["tensor"], cst), p.act(op["out"], shape)], op["out"])

    def _prepend(self, op):
        p, prm = self.plan, self._prm(op)
        shape = tuple(p.shape(op["in"]))
        toks = [p.const(t, prm[t].astype(np.float32).reshape(1, 1, -1)) for t in op["tensors"]]
        kid = self._generic(("prepend", shape, len(toks)), "prepend", K.prepend, shape, len(toks))
        out = p.act(op["out"], (1, shape[1] + len(toks), shape[2]))
        p.step(kid, "prepend", [op["in"], *toks, out], op["out"])

    def _token(self, op):
        p = self.plan
        shape = tuple(p.shape(op["in"]))
        idx = int(op["index"])
        kid = self._generic(("token", shape, idx), "token", K.token, shape, idx)
        p.step(kid, "token", [op["in"], p.act(op["out"], (shape[0], shape[2]))], op["out"])

    def _mean_tokens(self, op):
        p = self.plan
        shape = tuple(p.shape(op["in"]))
        kid = self._generic(("mean_tokens", shape), "mean_tokens", K.mean_tokens, shape)
        p.step(kid, "mean_tokens", [op["in"], p.act(op["out"], (shape[0], shape[2]))], op["out"])

    def _window_partition(self, op, reverse=False):
        p = self.plan
        shape = p.shape(op["in"])
        c = int(shape[-1])
        g, w, s = pair(op["grid"]), pair(op["window"]), pair(op["shift"])
        kind = "window_reverse" if reverse else "window_partition"
        builder = K.window_reverse if reverse else K.window_partition
        kid = self._generic((kind, c, g, w, s), "window", builder, c, g, w, s)
        ins, outs = builder(c, g, w, s)
        out = p.act(op["out"], [int(v) for v in outs[0].shape])
        p.step(kid, "window", [op["in"], out], op["out"])

    def _window_reverse(self, op):
        self._window_partition(op, reverse=True)

    def _patch_merge(self, op):
        p = self.plan
        c = int(p.shape(op["in"])[-1])
        g = pair(op["grid"])
        kid = self._generic(("patch_merge", c, g), "patch_merge", K.patch_merge, c, g)
        out = p.act(op["out"], (1, ((g[0] + 1) // 2) * ((g[1] + 1) // 2), 4 * c))
        p.step(kid, "patch_merge", [op["in"], out], op["out"])


def lower(model, target_kind: str, select=None) -> Plan:
    return Lowering(model, target_kind, select).run()
