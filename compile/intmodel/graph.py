"""Laying ops out: `GraphBuilder` appends ops and their tensors, `block` lays out one pre-norm
transformer block. The exporter (torch modules) and the synthetic builders (random codes) both
lay a model out through these; the per-family layouts are in deit.py and swin.py.

A layout reads its numbers from a "source" with four methods:
  linear(name, n, k, bias, role) -> linear int form   (role: "embed" | "block" | "head")
  attention(name, dim, heads) -> attention int form (qkv=, proj=, q=, k=, v=, p=, irm=, ...)
  layernorm(name, dim) -> (weight, bias, eps)
  tensor(name, shape) -> float array (cls_token, dist_token, pos_embed)
"""

from __future__ import annotations

import numpy as np

from .format import IntModel
from .spec import FORMAT, FORMAT_VERSION, IRM_STATS, IRM_TENSORS, compact, pair


class GraphBuilder:
    """Accumulates ops and tensors. Each method appends one op and returns its output name."""

    def __init__(self):
        self.graph: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}

    def _add(self, name: str, a, dtype) -> None:
        if name in self.tensors:
            raise ValueError(f"tensor {name!r} written twice")
        self.tensors[name] = np.array(a, dtype=dtype, order="C")  # (ascontiguousarray would make 0-d 1-d)

    def _linear(self, kind: str, x: str, out: str, param: str, form: dict, **extra) -> str:
        self._add(f"{param}.weight", form["weight"], np.int8)
        self._add(f"{param}.w_step", np.reshape(form["w_step"], (-1,)), np.float32)
        if form.get("bias") is not None:
            self._add(f"{param}.bias", form["bias"], np.float32)
        self._add(f"{param}.a_step", np.reshape(form["a_step"], ()), np.float32)
        self._add(f"{param}.a_zp", np.reshape(form["a_zp"], ()), np.int32)
        self.graph.append(
            {
                "op": kind,
                "in": x,
                "out": out,
                "param": param,
                **extra,
                "w_bits": int(form["w_bits"]),
                "a_bits": int(form["a_bits"]),
            }
        )
        return out

    def patch_embed(self, x: str, out: str, param: str, form: dict, patch: int) -> str:
        return self._linear("patch_embed", x, out, param, form, patch=int(patch))

    def qlinear(self, x: str, out: str, param: str, form: dict) -> str:
        return self._linear("qlinear", x, out, param, form)

    def prepend(self, x: str, out: str, tokens: dict[str, np.ndarray]) -> str:
        for name, t in tokens.items():
            self._add(name, t, np.float32)
        self.graph.append({"op": "prepend", "in": x, "out": out, "tensors": list(tokens)})
        return out

    def add_const(self, x: str, out: str, name: str, value) -> str:
        self._add(name, value, np.float32)
        self.graph.append({"op": "add_const", "in": x, "out": out, "tensor": name})
        return out

    def layernorm(self, x: str, out: str, param: str, weight, bias, eps: float) -> str:
        self._add(f"{param}.weight", weight, np.float32)
        self._add(f"{param}.bias", bias, np.float32)
        self.graph.append({"op": "layernorm", "in": x, "out": out, "param": param, "eps": float(eps)})
        return out

    def gelu(self, x: str, out: str, clip: float | None) -> str:
        self.graph.append({"op": "gelu", "in": x, "out": out, "clip": None if clip is None else float(clip)})
        return out

    def add(self, a: str, b: str, out: str) -> str:
        self.graph.append({"op": "add", "in": [a, b], "out": out})
        return out

    def average(self, a: str, b: str, out: str) -> str:
        self.graph.append({"op": "average", "in": [a, b], "out": out})
        return out

    def attention(self, qkv: str, out: str, param: str, form: dict, mask=None) -> str:
        """`form` is the attention part of an attention int_form: q, k, v, p act params ([H]),
        irm, heads, head_dim, scale, rel_pos_bias. irm: None or {"stat": "token" (default) with
        q_weight, q_bias, k_weight, k_bias [d], or "head" with q_gamma, q_beta, k_gamma, k_beta
        [H, d]; "eps"}."""
        h, d = int(form["heads"]), int(form["head_dim"])
        for a in "qkvp":
            self._add(
                f"{param}.{a}_step",
                np.broadcast_to(np.asarray(form[a]["step"], np.float32), (h,)),
                np.float32,
            )
            self._add(f"{param}.{a}_zp", np.broadcast_to(np.asarray(form[a]["zp"], np.int32), (h,)), np.int32)
        bits = {int(form[a]["bits"]) for a in "qkvp"}
        if len(bits) != 1:
            raise ValueError(f"{param}: q, k, v, p have different bit widths {sorted(bits)}")
        irm = form.get("irm")
        stat = irm.get("stat", "token") if irm is not None else "token"
        if stat not in IRM_STATS:
            raise ValueError(f"{param}: unknown IRM statistic {stat!r}")
        if irm is not None:
            for a in "qk":
                for t in IRM_TENSORS[stat][:2]:  # weight, bias or gamma, beta
                    key = t.split(".")[1]
                    self._add(f"{param}.norm_{a}.{key}", irm[f"{a}_{key}"], np.float32)
        if form.get("rel_pos_bias") is not None:
            self._add(f"{param}.rel_pos_bias", form["rel_pos_bias"], np.float32)
        if mask is not None:
            self._add(f"{param}.mask", mask, np.float32)
        self.graph.append(
            {
                "op": "attention",
                "in": qkv,
                "out": out,
                "param": param,
                "heads": h,
                "head_dim": d,
                "scale": float(form["scale"]),
                "bits": bits.pop(),
                "irm": irm is not None,
                "eps": float(irm["eps"]) if irm is not None else 1e-5,
                # absent means "token": token models stay byte for byte what they were
                **({"irm_stat": stat} if stat != "token" else {}),
            }
        )
        return out

    def window_partition(self, x: str, out: str, grid, window, shift) -> str:
        return self._window_op("window_partition", x, out, grid, window, shift)

    def window_reverse(self, x: str, out: str, grid, window, shift) -> str:
        return self._window_op("window_reverse", x, out, grid, window, shift)

    def _window_op(self, op: str, x: str, out: str, grid, window, shift) -> str:
        self.graph.append({"op": op, "in": x, "out": out, "grid": list(pair(grid)),
                           "window": compact(window), "shift": compact(shift)})
        return out

    def patch_merge(self, x: str, out: str, grid) -> str:
        self.graph.append({"op": "patch_merge", "in": x, "out": out, "grid": list(pair(grid))})
        return out

    def token(self, x: str, out: str, index: int) -> str:
        self.graph.append({"op": "token", "in": x, "out": out, "index": int(index)})
        return out

    def mean_tokens(self, x: str, out: str) -> str:
        self.graph.append({"op": "mean_tokens", "in": x, "out": out})
        return out

    def build(
        self,
        *,
        arch: str,
        family: str,
        bits: dict,
        input: dict,
        num_classes: int,
        classes: list[str] | None,
        irm: bool,
        **extra,
    ) -> IntModel:
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": arch,
            "family": family,
            "bits": dict(bits),
            "input": dict(input),
            "num_classes": int(num_classes),
            "classes": list(classes) if classes is not None else [str(i) for i in range(num_classes)],
            "irm": bool(irm),
            **extra,
            "graph": self.graph,
        }
        model = IntModel(config, self.tensors)
        model.validate()
        return model


def block(
    b: GraphBuilder,
    src,
    pre: str,
    x: str,
    dim: int,
    heads: int,
    hidden: int,
    clip,
    window_op: dict | None = None,
    mask: np.ndarray | None = None,
) -> str:
    """One pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).
    window_op: {grid, window, shift} for window attention (Swin), mask: its [nW, T, T] mask."""
    h = b.layernorm(x, f"{pre}.norm1", f"{pre}.norm1", *src.layernorm(f"{pre}.norm1", dim))
    form = src.attention(f"{pre}.attn", dim, heads)
    if window_op is not None:
        h = b.window_partition(h, f"{pre}.windows", **window_op)
    h = b.qlinear(h, f"{pre}.attn.qkv", f"{pre}.attn.qkv", form["qkv"])
    h = b.attention(h, f"{pre}.attn.core", f"{pre}.attn", form, mask=mask)
    h = b.qlinear(h, f"{pre}.attn.proj", f"{pre}.attn.proj", form["proj"])
    if window_op is not None:
        h = b.window_reverse(h, f"{pre}.attn.out", **window_op)
    x = b.add(x, h, f"{pre}.res1")
    h = b.layernorm(x, f"{pre}.norm2", f"{pre}.norm2", *src.layernorm(f"{pre}.norm2", dim))
    h = b.qlinear(
        h, f"{pre}.mlp.fc1", f"{pre}.mlp.fc1", src.linear(f"{pre}.mlp.fc1", hidden, dim, True, "block")
    )
    h = b.gelu(h, f"{pre}.mlp.act", clip)
    h = b.qlinear(
        h, f"{pre}.mlp.fc2", f"{pre}.mlp.fc2", src.linear(f"{pre}.mlp.fc2", dim, hidden, True, "block")
    )
    return b.add(x, h, f"{pre}.res2")
