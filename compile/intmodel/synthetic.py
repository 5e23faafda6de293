"""Synthetic integer models: random codes and steps for the family layouts, so every later stage
can be tested on any architecture without torch. `random_deit` / `random_swin` (deit.py, swin.py)
lay their family out through `RandomSource`, then calibrate the steps on random images."""

from __future__ import annotations

import numpy as np

from qvit_edge import quant

from .spec import pair


class RandomSource:
    """Random integer forms for the layouts. `rel_pos_bias`: attention name -> [H, T, T] (Swin)."""

    def __init__(
        self,
        rng: np.random.Generator,
        bits: int,
        embed_bits: int,
        head_bits: int,
        irm: bool,
        rel_pos_bias: dict | None = None,
        irm_stat: str = "token",
    ):
        self.rng, self.bits, self.irm, self.irm_stat = rng, bits, irm, irm_stat
        self.role_bits = {"embed": embed_bits, "block": bits, "head": head_bits}
        self.rel_pos_bias = dict(rel_pos_bias or {})

    def linear(self, name, n, k, bias, role):
        wb = self.role_bits[role]
        levels = quant.weight_levels(wb)
        w = self.rng.choice(levels, size=(n, k)).astype(np.int8)
        var = float(np.mean(levels.astype(np.float64) ** 2))
        w_step = (self.rng.uniform(0.7, 1.3, n) / np.sqrt(k * var)).astype(np.float32)
        return {
            "weight": w,
            "w_step": w_step,
            "bias": (self.rng.normal(size=n) * 0.1).astype(np.float32) if bias else None,
            "a_step": np.float32(0.1),
            "a_zp": np.int32(0),
            "w_bits": wb,
            "a_bits": wb,
        }

    def attention(self, name, dim, heads):
        d = dim // heads
        act = {"step": np.full(heads, 0.1, np.float32), "zp": np.zeros(heads, np.int32), "bits": self.bits}
        irm = None
        if self.irm and self.irm_stat == "head":
            shape = (heads, d)
            irm = {"stat": "head", "eps": 1e-5}
            for a in "qk":
                irm[f"{a}_gamma"] = self.rng.uniform(0.8, 1.2, shape).astype(np.float32)
                irm[f"{a}_beta"] = (self.rng.normal(size=shape) * 0.1).astype(np.float32)
        elif self.irm:
            irm = {
                "q_weight": self.rng.uniform(0.8, 1.2, d).astype(np.float32),
                "q_bias": (self.rng.normal(size=d) * 0.1).astype(np.float32),
                "k_weight": self.rng.uniform(0.8, 1.2, d).astype(np.float32),
                "k_bias": (self.rng.normal(size=d) * 0.1).astype(np.float32),
                "eps": 1e-5,
            }
        return {
            "qkv": self.linear(f"{name}.qkv", 3 * dim, dim, True, "block"),
            "proj": self.linear(f"{name}.proj", dim, dim, True, "block"),
            "q": dict(act),
            "k": dict(act),
            "v": dict(act),
            "p": dict(act),
            "irm": irm,
            "heads": heads,
            "head_dim": d,
            "scale": d**-0.5,
            "rel_pos_bias": self.rel_pos_bias.pop(name, None),
        }

    def layernorm(self, name, dim):
        return (
            self.rng.uniform(0.8, 1.2, dim).astype(np.float32),
            (self.rng.normal(size=dim) * 0.1).astype(np.float32),
            1e-5 if "attn" in name else 1e-6,
        )

    def tensor(self, name, shape):
        return (self.rng.normal(size=shape) * 0.3).astype(np.float32)


def input_cfg(in_chans: int, img_size) -> dict:
    return {
        "channels": in_chans,
        "size": list(pair(img_size)),
        "mean": [0.5] * in_chans,
        "std": [0.25] * in_chans,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }
