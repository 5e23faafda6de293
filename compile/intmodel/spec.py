"""The integer model's vocabulary (docs/integer-model.md): format name and version, the op table
(fields every op carries, tensors under its `param` prefix), the window-op geometry and the one
error type every reader raises. numpy only; everything else in the package builds on this."""

from __future__ import annotations

import numpy as np

from qvit_edge.clikit import UserError

FORMAT = "qvit-int"
FORMAT_VERSION = 1
FAMILIES = ("deit", "swin")
BIT_KEYS = ("weight", "act", "embed", "head")
CHANNELS = (1, 3)  # what the runtime's image preprocessing gives (gray, RGB)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class IntModelError(UserError):
    """A bad or unreadable integer model file (one line)."""


def is_int(v) -> bool:
    """A JSON integer: not a bool (true == 1 in Python), not a float."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# ---------------------------------------------------------------------------------------------
# the op table: fields every op must carry and the tensors under its `param` prefix
# ---------------------------------------------------------------------------------------------

ATTN_TENSORS = ("q_step", "k_step", "v_step", "p_step", "q_zp", "k_zp", "v_zp", "p_zp")
# IRM tensors per statistic (an attention op's optional "irm_stat", absent = "token"): per-token
# LayerNorm affine [head_dim] shared across heads, or per-head (gamma, beta) [heads, head_dim]
IRM_STATS = ("token", "head")
IRM_TENSORS = {
    "token": ("norm_q.weight", "norm_q.bias", "norm_k.weight", "norm_k.bias"),
    "head": ("norm_q.gamma", "norm_q.beta", "norm_k.gamma", "norm_k.beta"),
}

OP_FIELDS: dict[str, tuple[str, ...]] = {
    "patch_embed": ("in", "out", "param", "patch", "w_bits", "a_bits"),
    "qlinear": ("in", "out", "param", "w_bits", "a_bits"),
    "prepend": ("in", "out", "tensors"),
    "add_const": ("in", "out", "tensor"),
    "layernorm": ("in", "out", "param", "eps"),
    "gelu": ("in", "out", "clip"),
    "add": ("in", "out"),
    "attention": ("in", "out", "param", "heads", "head_dim", "scale", "bits", "irm", "eps"),
    "window_partition": ("in", "out", "grid", "window", "shift"),
    "window_reverse": ("in", "out", "grid", "window", "shift"),
    "patch_merge": ("in", "out", "grid"),
    "token": ("in", "out", "index"),
    "mean_tokens": ("in", "out"),
    "average": ("in", "out"),
}
QUANTIZED_OPS = ("patch_embed", "qlinear", "attention")


def irm_stat(op: dict) -> str:
    """The IRM statistic of an attention op: "token" (also when the field is absent) or "head"."""
    return op.get("irm_stat", "token")


def pair(v) -> tuple[int, int]:
    """A window / shift field: an int (square) or [h, w]."""
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def padded_grid(grid, window) -> tuple[int, int]:
    """The grid rounded up to whole windows (timm pads the shifted map with zeros at the end)."""
    (h, w), (wh, ww) = pair(grid), pair(window)
    return -(-h // wh) * wh, -(-w // ww) * ww


def num_windows(grid, window) -> int:
    hp, wp = padded_grid(grid, window)
    wh, ww = pair(window)
    return (hp // wh) * (wp // ww)



def compact(v):
    """pair's inverse for the config: an int when square, else [h, w]."""
    a, b = pair(v)
    return a if a == b else [a, b]
