"""Calibration: set every activation step / zero point of an integer model from the data flowing
through it (the synthetic models' steps; numpy only)."""

from __future__ import annotations

import numpy as np

from qvit_edge import quant

from . import reference as ref
from .format import IntModel


def act_range(x: np.ndarray, bits: int, unsigned: bool = False) -> tuple[np.float32, np.int32]:
    """A step and zero point covering the central 99% of x (and 0)."""
    x = np.asarray(x, np.float64).ravel()
    lo = 0.0 if unsigned else min(float(np.quantile(x, 0.005)), 0.0)
    hi = max(float(np.quantile(x, 0.995)), 0.0)
    step = max(hi - lo, 1e-6) / ((1 << bits) - 1)
    zp = int(np.clip(np.rint(-lo / step), 0, (1 << bits) - 1))
    return np.float32(step), np.int32(zp)


def calibrate(model: IntModel, images: np.ndarray) -> IntModel:
    """Set every activation step / zero point from the data flowing through the model (in
    place, op by op, so each layer sees the codes of the calibrated layers before it)."""
    env = {"image": np.asarray(images, np.float32)}
    for op in model.graph:
        kind, p = op["op"], op.get("param")
        x = env[op["in"]] if isinstance(op["in"], str) else None
        if kind in ("qlinear", "patch_embed"):
            xin = ref.patches(x, op["patch"]) if kind == "patch_embed" else x
            model.tensors[f"{p}.a_step"], model.tensors[f"{p}.a_zp"] = (
                np.asarray(v) for v in act_range(xin, op["a_bits"])
            )
        elif kind == "attention":
            prm = model.params(op)
            h, bits = op["heads"], op["bits"]
            q, k, v = ref.split_qkv(x, h, op["head_dim"])
            if op["irm"]:
                q, k = ref.irm(op, prm, q, k)
            for a, t in (("q", q), ("k", k), ("v", v)):
                st = [act_range(t[:, i], bits) for i in range(h)]
                model.tensors[f"{p}.{a}_step"] = np.array([s for s, _ in st], np.float32)
                model.tensors[f"{p}.{a}_zp"] = np.array([z for _, z in st], np.int32)
            prm = model.params(op)
            codes = {
                a: quant.quantize_act(
                    t, prm[f"{a}_step"].reshape(h, 1, 1), prm[f"{a}_zp"].reshape(h, 1, 1), bits
                )
                for a, t in (("q", q), ("k", k))
            }
            s_acc = quant.int_matmul_act(codes["q"], prm["q_zp"], codes["k"], prm["k_zp"])
            probs = ref.softmax(ref.attention_scores(op, prm, s_acc))
            st = [act_range(probs[:, i], bits, unsigned=True) for i in range(h)]
            model.tensors[f"{p}.p_step"] = np.array([s for s, _ in st], np.float32)
            model.tensors[f"{p}.p_zp"] = np.zeros(h, np.int32)
        env[op["out"]], _ = ref.run_op(model, op, env)
    return model
