"""Validation of an integer model: everything a consumer could trip over is one IntModelError line.

Missing or mistyped fields (a bit width must be an int, not true or "two"), values out of range,
tensors of the wrong dtype or shape, NaN / Inf anywhere, steps that are not > 0, zero points
outside the code range, a graph whose shapes do not fit.
"""

from __future__ import annotations

import math

import numpy as np

from qvit_edge import quant

from .shapes import infer_shapes
from .spec import (
    ATTN_TENSORS,
    BIT_KEYS,
    CHANNELS,
    FAMILIES,
    FORMAT,
    FORMAT_VERSION,
    INTERPOLATIONS,
    IRM_STATS,
    IRM_TENSORS,
    OP_FIELDS,
    IntModelError,
    irm_stat,
    is_int,
)


def validate_model(model) -> None:
    """Raise IntModelError on the first problem of `model` (an IntModel)."""
    c = model.config
    if not isinstance(c, dict):
        raise IntModelError("config is not a JSON object")
    if c.get("format") != FORMAT:
        raise IntModelError(f"not a qvit integer model (format {c.get('format')!r}, expected {FORMAT!r})")
    v = c.get("format_version")
    if not is_int(v) or v != FORMAT_VERSION:
        raise IntModelError(
            f"unknown integer model format_version {v!r} (this reader knows {FORMAT_VERSION})"
        )
    for key in ("arch", "family", "bits", "input", "num_classes", "graph"):
        if key not in c:
            raise IntModelError(f"config lacks {key!r}")
    if not isinstance(c["arch"], str) or not c["arch"]:
        raise IntModelError(f"config arch {c['arch']!r} is not a name")
    if not isinstance(c["family"], str) or c["family"] not in FAMILIES:
        raise IntModelError(f"unknown family {c['family']!r} (known: {', '.join(FAMILIES)})")
    _check_bits_block(c["bits"])
    _check_input_block(c["input"])
    n = c["num_classes"]
    if not is_int(n) or n < 1:
        raise IntModelError(f"config num_classes={n!r} is not a whole number >= 1")
    classes = c.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(x, str) for x in classes):
            raise IntModelError("config classes must be a list of names")
        if len(classes) != n:
            raise IntModelError(f"{len(classes)} class names for num_classes={n}")
    for key in ("irm", "distilled"):
        if key in c and not isinstance(c[key], bool):
            raise IntModelError(f"config {key}={c[key]!r} is not true or false")
    if not isinstance(c["graph"], list) or not c["graph"]:
        raise IntModelError("graph is empty")
    for i, op in enumerate(c["graph"]):
        _check_op(model, i, op)
    shapes = infer_shapes(model)
    if "logits" not in shapes:
        raise IntModelError("graph never produces 'logits'")
    if shapes["logits"] != (n,):
        raise IntModelError(f"'logits' has shape {list(shapes['logits'])}, expected [{n}]")
    for name, t in model.tensors.items():
        if t.dtype.kind == "f" and not np.isfinite(t).all():
            raise IntModelError(f"tensor {name!r} holds NaN or Inf values")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_bits_block(bits) -> None:
    if not isinstance(bits, dict):
        raise IntModelError(f"config bits {bits!r} is not an object with {', '.join(BIT_KEYS)}")
    for k in BIT_KEYS:
        if k not in bits:
            raise IntModelError(f"config bits lacks {k!r}")
        b = bits[k]
        if not is_int(b) or not 1 <= b <= quant.MAX_BITS:
            raise IntModelError(f"config bits.{k}={b!r} is not a bit width in 1..{quant.MAX_BITS}")


def _check_input_block(inp) -> None:
    if not isinstance(inp, dict):
        raise IntModelError("config input is not an object")
    for key in ("channels", "size", "mean", "std"):
        if key not in inp:
            raise IntModelError(f"config input lacks {key!r}")
    ch = inp["channels"]
    if not is_int(ch) or ch not in CHANNELS:
        raise IntModelError(f"config input.channels={ch!r} is not 1 (gray) or 3 (RGB)")
    size = inp["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(is_int(v) and v >= 1 for v in size):
        raise IntModelError(f"config input.size={size!r} is not [height, width] in whole pixels >= 1")
    for key in ("mean", "std"):
        v = inp[key]
        if not isinstance(v, list) or len(v) != ch or not all(_is_number(x) for x in v):
            raise IntModelError(f"config input.{key}={v!r} is not {ch} finite number(s)")
    if min(inp["std"]) <= 0:
        raise IntModelError(f"config input.std={inp['std']!r} must be > 0")
    interp = inp.get("interpolation", "bicubic")
    if interp not in INTERPOLATIONS:
        raise IntModelError(
            f"config input.interpolation={interp!r} is not one of {', '.join(INTERPOLATIONS)}"
        )
    crop = inp.get("crop_pct", 1.0)
    if not _is_number(crop) or not 0 < crop <= 4:
        raise IntModelError(f"config input.crop_pct={crop!r} is not a number in (0, 4]")


def _need(model, where: str, name: str, dtype, shape=None) -> np.ndarray:
    t = model.tensors.get(name)
    if t is None:
        raise IntModelError(f"{where}: missing tensor {name!r}")
    if t.dtype != np.dtype(dtype):
        raise IntModelError(f"{where}: tensor {name!r} is {t.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise IntModelError(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)}")
    return t


def _check_bits(where: str, op: dict, key: str) -> int:
    b = op[key]
    if not is_int(b) or not 1 <= b <= quant.MAX_BITS:
        raise IntModelError(f"{where}: {key}={b!r} is not a bit width in 1..{quant.MAX_BITS}")
    return b


def _check_int(where: str, op: dict, key: str, lo: int | None = None) -> int:
    v = op[key]
    if not is_int(v) or (lo is not None and v < lo):
        at_least = f" >= {lo}" if lo is not None else ""
        raise IntModelError(f"{where}: {key}={v!r} is not a whole number{at_least}")
    return v


def _check_positive(where: str, op: dict, key: str, optional: bool = False) -> None:
    v = op[key]
    if optional and v is None:
        return
    if not _is_number(v) or v <= 0:
        or_null = " (or null)" if optional else ""
        raise IntModelError(f"{where}: {key}={v!r} is not a finite number > 0{or_null}")


def _check_pair(where: str, op: dict, key: str, lo: int) -> tuple[int, int]:
    """grid / window / shift: an int (square) or [h, w], each >= lo."""
    v = op[key]
    vals = v if isinstance(v, list) else [v, v]
    if len(vals) != 2 or not all(is_int(x) and x >= lo for x in vals):
        raise IntModelError(f"{where}: {key}={v!r} is not a whole number >= {lo} or a pair of them")
    return vals[0], vals[1]


def _check_steps(where: str, model, name: str) -> None:
    t = model.tensors[name]
    if not (np.isfinite(t).all() and (t > 0).all()):
        bad = t[~(np.isfinite(t) & (t > 0))].ravel()[0]
        raise IntModelError(f"{where}: tensor {name!r} holds a step of {bad} (steps must be finite and > 0)")


def _check_zero_points(where: str, model, name: str, bits: int) -> None:
    t = model.tensors[name]
    lo, hi = quant.act_range(bits)
    if t.size and (t.min() < lo or t.max() > hi):
        raise IntModelError(f"{where}: tensor {name!r} holds zero points outside the {bits}-bit code range")


def _check_names(where: str, op: dict) -> None:
    """in / out name tensors: strings (add and average: a list of two)."""
    if not isinstance(op["out"], str):
        raise IntModelError(f"{where}: 'out' must be a tensor name")
    if op["op"] in ("add", "average"):
        ins = op["in"]
        if not isinstance(ins, list) or len(ins) != 2 or not all(isinstance(x, str) for x in ins):
            raise IntModelError(f"{where}: 'in' must be a list of two tensor names")
    elif not isinstance(op["in"], str):
        raise IntModelError(f"{where}: 'in' must be a tensor name")


def _check_op(model, i: int, op: dict) -> None:
    if not isinstance(op, dict) or op.get("op") not in OP_FIELDS:
        kind = op.get("op") if isinstance(op, dict) else op
        raise IntModelError(f"graph[{i}]: unknown op {kind!r}")
    where = f"graph[{i}] ({op['op']} {op.get('param') or op.get('out')})"
    missing = [f for f in OP_FIELDS[op["op"]] if f not in op]
    if missing:
        raise IntModelError(f"{where}: missing field(s) {', '.join(missing)}")
    kind, p = op["op"], op.get("param")
    _check_names(where, op)
    if "param" in OP_FIELDS[kind] and not isinstance(p, str):
        raise IntModelError(f"{where}: 'param' must be a tensor name prefix")
    if kind in ("patch_embed", "qlinear"):
        wb = _check_bits(where, op, "w_bits")
        ab = _check_bits(where, op, "a_bits")
        if kind == "patch_embed":
            _check_int(where, op, "patch", 1)
        w = _need(model, where, f"{p}.weight", np.int8)
        if w.ndim != 2:
            raise IntModelError(f"{where}: weight must be [N, K], got {list(w.shape)}")
        n = w.shape[0]
        _need(model, where, f"{p}.w_step", np.float32, (n,))
        _need(model, where, f"{p}.a_step", np.float32, ())
        _need(model, where, f"{p}.a_zp", np.int32, ())
        if f"{p}.bias" in model.tensors:
            _need(model, where, f"{p}.bias", np.float32, (n,))
        lo, hi = quant.weight_range(wb)
        if w.size and (w.min() < lo or w.max() > hi or (wb == 1 and (w == 0).any())):
            raise IntModelError(f"{where}: weight codes outside the {wb}-bit range")
        _check_steps(where, model, f"{p}.w_step")
        _check_steps(where, model, f"{p}.a_step")
        _check_zero_points(where, model, f"{p}.a_zp", ab)
    elif kind == "layernorm":
        _check_positive(where, op, "eps")
        wt = _need(model, where, f"{p}.weight", np.float32)
        _need(model, where, f"{p}.bias", np.float32, wt.shape)
    elif kind == "gelu":
        _check_positive(where, op, "clip", optional=True)
    elif kind == "attention":
        h, d = _check_int(where, op, "heads", 1), _check_int(where, op, "head_dim", 1)
        bits = _check_bits(where, op, "bits")
        _check_positive(where, op, "scale")
        _check_positive(where, op, "eps")
        if not isinstance(op["irm"], bool):
            raise IntModelError(f"{where}: irm={op['irm']!r} is not true or false")
        for s in ATTN_TENSORS:
            _need(model, where, f"{p}.{s}", np.float32 if s.endswith("step") else np.int32, (h,))
            if s.endswith("step"):
                _check_steps(where, model, f"{p}.{s}")
            else:
                _check_zero_points(where, model, f"{p}.{s}", bits)
        stat = irm_stat(op)
        if not isinstance(stat, str) or stat not in IRM_STATS:
            raise IntModelError(f"{where}: irm_stat={stat!r} is not one of {', '.join(IRM_STATS)}")
        if op["irm"]:
            for s in IRM_TENSORS[stat]:
                _need(model, where, f"{p}.{s}", np.float32, (d,) if stat == "token" else (h, d))
        for s in ("rel_pos_bias", "mask"):
            if f"{p}.{s}" in model.tensors:
                _need(model, where, f"{p}.{s}", np.float32)
    elif kind in ("window_partition", "window_reverse"):
        _check_pair(where, op, "grid", 1)
        wh, ww = _check_pair(where, op, "window", 1)
        sh, sw = _check_pair(where, op, "shift", 0)
        if sh >= wh or sw >= ww:
            raise IntModelError(f"{where}: shift {op['shift']!r} is not smaller than window {op['window']!r}")
    elif kind == "patch_merge":
        _check_pair(where, op, "grid", 1)
    elif kind == "token":
        _check_int(where, op, "index")
    elif kind == "prepend":
        if not isinstance(op["tensors"], list) or not all(isinstance(t, str) for t in op["tensors"]):
            raise IntModelError(f"{where}: 'tensors' must be a list of tensor names")
        for t in op["tensors"]:
            _need(model, where, t, np.float32)
    elif kind == "add_const":
        if not isinstance(op["tensor"], str):
            raise IntModelError(f"{where}: 'tensor' must be a tensor name")
        _need(model, where, op["tensor"], np.float32)
