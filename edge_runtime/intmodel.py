"""The integer model file (docs/integer-model.md): read, write, validate, build. numpy only.

An integer model is one safetensors file: integer codes, steps, zero points and the float
parameters of the float ops, plus a JSON config (in `__metadata__["qvit"]`) whose `graph` is a
flat list of ops. `qvit export` writes it; the numpy reference (`qvit_edge.reference`), the TVM
compile stage and the tests read it.

Besides the reader/writer this module has `GraphBuilder` (the one place that lays ops and their
tensors out, used by the exporter and by the synthetic builders) and `random_deit` /
`random_swin`: tiny integer models with random codes and calibrated steps, for tests of every
later stage without torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from qvit_edge import quant
from qvit_edge.clikit import UserError

FORMAT = "qvit-int"
FORMAT_VERSION = 1
FAMILIES = ("deit", "swin")
BIT_KEYS = ("weight", "act", "embed", "head")
CHANNELS = (1, 3)  # what the runtime's image preprocessing gives (gray, RGB)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


class IntModelError(UserError):
    """A bad or unreadable integer model file (one line)."""


# ---------------------------------------------------------------------------------------------
# safetensors, numpy only
# ---------------------------------------------------------------------------------------------

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_DTYPE_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """-> (tensors, metadata). Every problem is one IntModelError line."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise IntModelError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise IntModelError(f"{path}: is a directory, not an integer model file") from None
    except OSError as e:
        raise IntModelError(f"{path}: cannot read ({e.strerror})") from None
    if len(blob) < 8:
        raise IntModelError(f"{path}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n == 0 or n > _MAX_HEADER or 8 + n > len(blob):
        raise IntModelError(f"{path}: not a safetensors file (bad header length)")
    try:
        header = json.loads(blob[8 : 8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise IntModelError(f"{path}: not a safetensors file (header is not a JSON object)") from None
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise IntModelError(f"{path}: bad safetensors __metadata__ (must map strings to strings)")
    data = memoryview(blob)[8 + n :]
    tensors = {}
    for name, info in header.items():
        try:
            dt = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
            if not all(_is_int(v) for v in (*shape, start, end)):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise IntModelError(f"{path}: tensor {name!r}: bad safetensors entry {info!r}"[:300]) from None
        count = math.prod(shape)  # Python ints: a hostile shape cannot wrap around to the byte count
        if (
            min(shape, default=0) < 0
            or not (0 <= start <= end <= len(data))
            or end - start != count * dt.itemsize
        ):
            raise IntModelError(
                f"{path}: tensor {name!r}: data offsets do not match its shape (truncated file?)"
            )
        tensors[name] = np.frombuffer(data[start:end], dtype=dt.newbyteorder("<")).astype(dt).reshape(shape)
    return tensors, meta


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write atomically (temp file + rename), 8-byte aligned data as the format asks."""
    header: dict = {"__metadata__": dict(metadata)}
    chunks, offset = [], 0
    for name in sorted(tensors):
        a = np.asarray(tensors[name], order="C")
        if a.dtype not in _DTYPE_NAMES:
            raise IntModelError(f"tensor {name!r}: dtype {a.dtype} has no safetensors name")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _DTYPE_NAMES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * (-len(hb) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# the op table: fields every op must carry and the tensors under its `param` prefix
# ---------------------------------------------------------------------------------------------

_LINEAR_TENSORS = ("weight", "w_step", "a_step", "a_zp")  # + optional bias
_ATTN_TENSORS = ("q_step", "k_step", "v_step", "p_step", "q_zp", "k_zp", "v_zp", "p_zp")
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


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------


@dataclass
class IntModel:
    config: dict
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    # -- file ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, validate: bool = True) -> "IntModel":
        tensors, meta = read_safetensors(path)
        if "qvit" not in meta:
            raise IntModelError(
                f"{path}: not a qvit integer model (no 'qvit' entry in the safetensors metadata)"
            )
        try:
            config = json.loads(meta["qvit"])
        except ValueError:
            raise IntModelError(f"{path}: the 'qvit' metadata is not valid JSON") from None
        model = cls(config, tensors)
        if validate:
            try:
                model.validate()
            except IntModelError as e:
                raise IntModelError(f"{path}: {e}") from None
        return model

    def save(self, path: str) -> None:
        self.validate()
        write_safetensors(path, self.tensors, {"qvit": json.dumps(self.config, separators=(",", ":"))})

    # -- access -------------------------------------------------------------------------------
    @property
    def graph(self) -> list[dict]:
        return self.config["graph"]

    @property
    def family(self) -> str:
        return self.config["family"]

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of the "image" input (without the batch axis)."""
        inp = self.config["input"]
        return int(inp["channels"]), int(inp["size"][0]), int(inp["size"][1])

    def params(self, op: dict) -> dict[str, np.ndarray]:
        """The tensors of one op, keyed by their suffix (`weight`, `w_step`, `norm_q.bias`, ...)."""
        out = {}
        p = op.get("param")
        if p is not None:
            pre = p + "."
            out.update({k[len(pre) :]: v for k, v in self.tensors.items() if k.startswith(pre)})
        if op["op"] == "prepend":
            out.update({t: self.tensors[t] for t in op["tensors"]})
        if op["op"] == "add_const":
            out[op["tensor"]] = self.tensors[op["tensor"]]
        return out

    def ops(self, kind: str | None = None) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        """(op, its tensors) in graph order, optionally only ops of one kind."""
        for op in self.graph:
            if kind is None or op["op"] == kind:
                yield op, self.params(op)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every activation tensor without its batch axis. Swin's window ops multiply
        the batch: their outputs are reported per image, i.e. [nW, T, C] (batch axis B*nW)."""
        return _infer_shapes(self)

    def digest(self) -> str:
        """sha256 over tensor names, dtypes, shapes and bytes (sorted by name) and the config."""
        h = hashlib.sha256(json.dumps(self.config, sort_keys=True).encode())
        for name in sorted(self.tensors):
            a = np.asarray(self.tensors[name], order="C")
            h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise IntModelError (one line) on anything a consumer could trip over: missing or
        mistyped fields (a bit width must be an int, not true or "two"), values out of range,
        tensors of the wrong dtype or shape, NaN / Inf anywhere, steps that are not > 0, zero
        points outside the code range."""
        try:
            self._validate()
        except IntModelError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
            # a field of a type the checks below do not name one by one: still one line
            raise IntModelError(f"malformed config ({type(e).__name__}: {e})"[:300]) from None

    def _validate(self) -> None:
        c = self.config
        if not isinstance(c, dict):
            raise IntModelError("config is not a JSON object")
        if c.get("format") != FORMAT:
            raise IntModelError(f"not a qvit integer model (format {c.get('format')!r}, expected {FORMAT!r})")
        v = c.get("format_version")
        if not _is_int(v) or v != FORMAT_VERSION:
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
        if not _is_int(n) or n < 1:
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
            _check_op(self, i, op)
        shapes = self.shapes()
        if "logits" not in shapes:
            raise IntModelError("graph never produces 'logits'")
        if shapes["logits"] != (n,):
            raise IntModelError(f"'logits' has shape {list(shapes['logits'])}, expected [{n}]")
        for name, t in self.tensors.items():
            if t.dtype.kind == "f" and not np.isfinite(t).all():
                raise IntModelError(f"tensor {name!r} holds NaN or Inf values")


def _is_int(v) -> bool:
    """A JSON integer: not a bool (true == 1 in Python), not a float."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_bits_block(bits) -> None:
    if not isinstance(bits, dict):
        raise IntModelError(f"config bits {bits!r} is not an object with {', '.join(BIT_KEYS)}")
    for k in BIT_KEYS:
        if k not in bits:
            raise IntModelError(f"config bits lacks {k!r}")
        b = bits[k]
        if not _is_int(b) or not 1 <= b <= quant.MAX_BITS:
            raise IntModelError(f"config bits.{k}={b!r} is not a bit width in 1..{quant.MAX_BITS}")


def _check_input_block(inp) -> None:
    if not isinstance(inp, dict):
        raise IntModelError("config input is not an object")
    for key in ("channels", "size", "mean", "std"):
        if key not in inp:
            raise IntModelError(f"config input lacks {key!r}")
    ch = inp["channels"]
    if not _is_int(ch) or ch not in CHANNELS:
        raise IntModelError(f"config input.channels={ch!r} is not 1 (gray) or 3 (RGB)")
    size = inp["size"]
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v >= 1 for v in size):
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


def _need(model: IntModel, where: str, name: str, dtype, shape=None) -> np.ndarray:
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
    if not _is_int(b) or not 1 <= b <= quant.MAX_BITS:
        raise IntModelError(f"{where}: {key}={b!r} is not a bit width in 1..{quant.MAX_BITS}")
    return b


def _check_int(where: str, op: dict, key: str, lo: int | None = None) -> int:
    v = op[key]
    if not _is_int(v) or (lo is not None and v < lo):
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
    if len(vals) != 2 or not all(_is_int(x) and x >= lo for x in vals):
        raise IntModelError(f"{where}: {key}={v!r} is not a whole number >= {lo} or a pair of them")
    return vals[0], vals[1]


def _check_steps(where: str, model: IntModel, name: str) -> None:
    t = model.tensors[name]
    if not (np.isfinite(t).all() and (t > 0).all()):
        bad = t[~(np.isfinite(t) & (t > 0))].ravel()[0]
        raise IntModelError(f"{where}: tensor {name!r} holds a step of {bad} (steps must be finite and > 0)")


def _check_zero_points(where: str, model: IntModel, name: str, bits: int) -> None:
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


def _check_op(model: IntModel, i: int, op: dict) -> None:
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
        for s in _ATTN_TENSORS:
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


def _infer_shapes(model: IntModel) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"image": model.input_shape}

    def get(where, name):
        if name not in shapes:
            raise IntModelError(f"{where}: input {name!r} is not produced by an earlier op")
        return shapes[name]

    def bad(where, msg):
        raise IntModelError(f"{where}: {msg}")

    for i, op in enumerate(model.graph):
        kind, p = op["op"], op.get("param")
        where = f"graph[{i}] ({kind} {p or op['out']})"
        ins = op["in"] if isinstance(op["in"], list) else [op["in"]]
        s = [get(where, n) for n in ins]
        x = s[0]
        if kind == "patch_embed":
            c, hh, ww = x
            pt = int(op["patch"])
            w = model.tensors[f"{p}.weight"]
            if hh % pt or ww % pt:
                bad(where, f"image {hh}x{ww} is not a whole number of {pt}x{pt} patches")
            if w.shape[1] != c * pt * pt:
                bad(where, f"weight K={w.shape[1]} but C*patch^2={c * pt * pt}")
            out = ((hh // pt) * (ww // pt), w.shape[0])
        elif kind == "qlinear":
            w = model.tensors[f"{p}.weight"]
            if x[-1] != w.shape[1]:
                bad(where, f"input has {x[-1]} features, weight expects K={w.shape[1]}")
            out = x[:-1] + (w.shape[0],)
        elif kind == "prepend":
            t, d = x
            for name in op["tensors"]:
                if model.tensors[name].shape != (1, 1, d):
                    bad(
                        where,
                        f"token {name!r} has shape {list(model.tensors[name].shape)}, expected [1, 1, {d}]",
                    )
            out = (t + len(op["tensors"]), d)
        elif kind == "add_const":
            c = model.tensors[op["tensor"]]
            if c.shape != (1,) + x:
                bad(where, f"{op['tensor']!r} has shape {list(c.shape)}, expected {[1, *x]}")
            out = x
        elif kind == "layernorm":
            if model.tensors[f"{p}.weight"].shape != (x[-1],):
                bad(where, f"weight has shape {list(model.tensors[f'{p}.weight'].shape)}, expected [{x[-1]}]")
            out = x
        elif kind == "gelu":
            out = x
        elif kind in ("add", "average"):
            if s[0] != s[1]:
                bad(where, f"operand shapes differ: {list(s[0])} vs {list(s[1])}")
            out = x
        elif kind == "attention":
            h, d = int(op["heads"]), int(op["head_dim"])
            t = x[-2]
            if x[-1] != 3 * h * d:
                bad(where, f"qkv has {x[-1]} features, expected 3*heads*head_dim={3 * h * d}")
            rpb = model.tensors.get(f"{p}.rel_pos_bias")
            if rpb is not None and rpb.shape != (h, t, t):
                bad(where, f"rel_pos_bias has shape {list(rpb.shape)}, expected {[h, t, t]}")
            mask = model.tensors.get(f"{p}.mask")
            if mask is not None:
                if len(x) != 3 or mask.shape != (x[0], t, t):
                    bad(
                        where,
                        f"mask has shape {list(mask.shape)}, expected {[x[0] if len(x) == 3 else 1, t, t]}",
                    )
            out = x[:-1] + (h * d,)
        elif kind == "window_partition":
            gh, gw = pair(op["grid"])
            wh, ww = pair(op["window"])
            if x[0] != gh * gw:
                bad(where, f"{x[0]} tokens but grid {gh}x{gw}")
            out = (num_windows(op["grid"], op["window"]), wh * ww, x[1])
        elif kind == "window_reverse":
            gh, gw = pair(op["grid"])
            wh, ww = pair(op["window"])
            if len(x) != 3 or x[0] != num_windows(op["grid"], op["window"]) or x[1] != wh * ww:
                bad(where, f"input {list(x)} is not the windows of grid {gh}x{gw}, window {wh}x{ww}")
            out = (gh * gw, x[2])
        elif kind == "patch_merge":
            gh, gw = pair(op["grid"])
            if x[0] != gh * gw:
                bad(where, f"{x[0]} tokens but grid {gh}x{gw}")
            out = (((gh + 1) // 2) * ((gw + 1) // 2), 4 * x[1])
        elif kind == "token":
            if not -x[0] <= int(op["index"]) < x[0]:
                bad(where, f"token index {op['index']} out of range for {x[0]} tokens")
            out = x[1:]
        elif kind == "mean_tokens":
            out = x[1:]
        else:  # pragma: no cover - _check_op rejects unknown ops first
            bad(where, "unknown op")
        shapes[op["out"]] = tuple(int(v) for v in out)
    return shapes


# ---------------------------------------------------------------------------------------------
# building: the exporter and the synthetic builders lay ops out through this
# ---------------------------------------------------------------------------------------------


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
                           "window": _compact(window), "shift": _compact(shift)})
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


def _compact(v):
    a, b = pair(v)
    return a if a == b else [a, b]


def shift_window_mask(grid, window, shift) -> np.ndarray | None:
    """The shifted-window attention mask [nW, T, T] (0 inside a region, -100 across), as timm's
    SwinTransformerBlock.get_attn_mask; None without shift."""
    (wh, ww), (sh, sw) = pair(window), pair(shift)
    if sh == 0 and sw == 0:
        return None
    hp, wp = padded_grid(grid, window)
    img = np.zeros((hp, wp), np.float32)
    cnt = 0
    # timm's exact slices (with Python's -0 == 0 semantics when one axis has no shift)
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, np.float32(-100.0), np.float32(0.0)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# layouts: how a DeiT / Swin is laid out as ops. The exporter (torch modules) and the synthetic
# builders (random codes) both fill them through a "source" with four methods:
#   linear(name, n, k, bias, role) -> linear int form   (role: "embed" | "block" | "head")
#   attention(name, dim, heads) -> attention int form (qkv=, proj=, q=, k=, v=, p=, irm=, ...)
#   layernorm(name, dim) -> (weight, bias, eps)
#   tensor(name, shape) -> float array (cls_token, dist_token, pos_embed)
# ---------------------------------------------------------------------------------------------


def _block(
    b: GraphBuilder,
    src,
    pre: str,
    x: str,
    dim: int,
    heads: int,
    hidden: int,
    clip,
    window_op: dict | None = None,
) -> str:
    """One pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)).
    window_op: {grid, window, shift} for Swin's (shifted) window attention."""
    h = b.layernorm(x, f"{pre}.norm1", f"{pre}.norm1", *src.layernorm(f"{pre}.norm1", dim))
    form = src.attention(f"{pre}.attn", dim, heads)
    mask = None
    if window_op is not None:
        h = b.window_partition(h, f"{pre}.windows", **window_op)
        mask = shift_window_mask(**window_op)
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


def lay_out_deit(b: GraphBuilder, src, s: dict) -> None:
    """s: in_chans, img_size [H, W], patch, dim, depth, heads, mlp_hidden, num_classes, distilled,
    gelu_clip."""
    dim, p = s["dim"], s["patch"]
    tokens = (s["img_size"][0] // p) * (s["img_size"][1] // p)
    x = b.patch_embed(
        "image",
        "patch_embed",
        "patch_embed.proj",
        src.linear("patch_embed.proj", dim, s["in_chans"] * p * p, True, "embed"),
        p,
    )
    names = ["cls_token"] + (["dist_token"] if s["distilled"] else [])
    x = b.prepend(x, "tokens", {n: src.tensor(n, (1, 1, dim)) for n in names})
    x = b.add_const(x, "embedded", "pos_embed", src.tensor("pos_embed", (1, tokens + len(names), dim)))
    for i in range(s["depth"]):
        x = _block(b, src, f"blocks.{i}", x, dim, s["heads"], s["mlp_hidden"], s["gelu_clip"])
    x = b.layernorm(x, "norm", "norm", *src.layernorm("norm", dim))
    n = s["num_classes"]
    if s["distilled"]:
        c = b.qlinear(b.token(x, "cls", 0), "logits_cls", "head", src.linear("head", n, dim, True, "head"))
        d = b.qlinear(
            b.token(x, "dist", 1), "logits_dist", "head_dist", src.linear("head_dist", n, dim, True, "head")
        )
        b.average(c, d, "logits")
    else:
        b.qlinear(b.token(x, "cls", 0), "logits", "head", src.linear("head", n, dim, True, "head"))


def lay_out_swin(b: GraphBuilder, src, s: dict) -> None:
    """s: in_chans, img_size, patch, embed_dim, patch_norm, num_classes, gelu_clip, mlp_ratio, and
    stages: [{dim, heads, downsample (bool), blocks: [{window, shift}]}] (window/shift as timm
    resolved them for each block's grid)."""
    p = s["patch"]
    grid = (s["img_size"][0] // p, s["img_size"][1] // p)
    dim = s["embed_dim"]
    x = b.patch_embed(
        "image",
        "patch_embed",
        "patch_embed.proj",
        src.linear("patch_embed.proj", dim, s["in_chans"] * p * p, True, "embed"),
        p,
    )
    if s.get("patch_norm", True):
        x = b.layernorm(x, "patch_embed.norm", "patch_embed.norm", *src.layernorm("patch_embed.norm", dim))
    for i, st in enumerate(s["stages"]):
        pre = f"layers.{i}"
        if st["downsample"]:
            x = b.patch_merge(x, f"{pre}.downsample.merge", grid)
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            x = b.layernorm(
                x,
                f"{pre}.downsample.norm",
                f"{pre}.downsample.norm",
                *src.layernorm(f"{pre}.downsample.norm", 4 * dim),
            )
            x = b.qlinear(
                x,
                f"{pre}.downsample.reduction",
                f"{pre}.downsample.reduction",
                src.linear(f"{pre}.downsample.reduction", st["dim"], 4 * dim, False, "block"),
            )
        dim = st["dim"]
        for j, blk in enumerate(st["blocks"]):
            win = {"grid": grid, "window": blk["window"], "shift": blk["shift"]}
            x = _block(
                b,
                src,
                f"{pre}.blocks.{j}",
                x,
                dim,
                st["heads"],
                int(dim * s["mlp_ratio"]),
                s["gelu_clip"],
                window_op=win,
            )
    x = b.layernorm(x, "norm", "norm", *src.layernorm("norm", dim))
    x = b.mean_tokens(x, "pooled")
    b.qlinear(x, "logits", "head.fc", src.linear("head.fc", s["num_classes"], dim, True, "head"))


# ---------------------------------------------------------------------------------------------
# synthetic integer models (random codes, steps calibrated on random images), no torch
# ---------------------------------------------------------------------------------------------


class _RandomSource:
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


def _act_range(x: np.ndarray, bits: int, unsigned: bool = False) -> tuple[np.float32, np.int32]:
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
    from qvit_edge import reference as ref

    env = {"image": np.asarray(images, np.float32)}
    for op in model.graph:
        kind, p = op["op"], op.get("param")
        x = env[op["in"]] if isinstance(op["in"], str) else None
        if kind in ("qlinear", "patch_embed"):
            xin = ref.patches(x, op["patch"]) if kind == "patch_embed" else x
            model.tensors[f"{p}.a_step"], model.tensors[f"{p}.a_zp"] = (
                np.asarray(v) for v in _act_range(xin, op["a_bits"])
            )
        elif kind == "attention":
            prm = model.params(op)
            h, bits = op["heads"], op["bits"]
            q, k, v = ref.split_qkv(x, h, op["head_dim"])
            if op["irm"]:
                q, k = ref.irm(op, prm, q, k)
            for a, t in (("q", q), ("k", k), ("v", v)):
                st = [_act_range(t[:, i], bits) for i in range(h)]
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
            st = [_act_range(probs[:, i], bits, unsigned=True) for i in range(h)]
            model.tensors[f"{p}.p_step"] = np.array([s for s, _ in st], np.float32)
            model.tensors[f"{p}.p_zp"] = np.zeros(h, np.int32)
        env[op["out"]], _ = ref.run_op(model, op, env)
    return model


def _input_cfg(in_chans: int, img_size) -> dict:
    return {
        "channels": in_chans,
        "size": list(pair(img_size)),
        "mean": [0.5] * in_chans,
        "std": [0.25] * in_chans,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }


def random_deit(
    *,
    bits: int = 2,
    irm: bool = True,
    irm_stat: str = "token",
    distilled: bool = False,
    depth: int = 2,
    dim: int = 32,
    heads: int = 2,
    mlp_ratio: float = 2.0,
    patch: int = 4,
    img_size=28,
    in_chans: int = 1,
    num_classes: int = 10,
    embed_bits: int = 8,
    head_bits: int = 8,
    gelu_clip: float | None = 10.0,
    seed: int = 0,
    calib_batch: int = 8,
) -> IntModel:
    """A tiny DeiT integer model with random codes and steps calibrated on random images.
    irm_stat: the IRM statistic ("token" or "head") when irm."""
    rng = np.random.default_rng(seed)
    src = _RandomSource(rng, bits, embed_bits, head_bits, irm, irm_stat=irm_stat)
    b = GraphBuilder()
    spec = {
        "in_chans": in_chans,
        "img_size": pair(img_size),
        "patch": patch,
        "dim": dim,
        "depth": depth,
        "heads": heads,
        "mlp_hidden": int(dim * mlp_ratio),
        "num_classes": num_classes,
        "distilled": distilled,
        "gelu_clip": gelu_clip,
    }
    lay_out_deit(b, src, spec)
    name = f"random_deit{'_distilled' if distilled else ''}_d{dim}x{depth}_patch{patch}_{pair(img_size)[0]}"
    model = b.build(
        arch=name,
        family="deit",
        bits={"weight": bits, "act": bits, "embed": embed_bits, "head": head_bits},
        input=_input_cfg(in_chans, img_size),
        num_classes=num_classes,
        classes=None,
        irm=irm,
        distilled=distilled,
    )
    return calibrate(model, rng.normal(size=(calib_batch, in_chans, *pair(img_size))).astype(np.float32))


def random_swin(
    *,
    bits: int = 2,
    irm: bool = True,
    irm_stat: str = "token",
    embed_dim: int = 16,
    depths=(2, 2),
    heads=(2, 4),
    window: int = 4,
    patch: int = 2,
    img_size=28,
    in_chans: int = 1,
    num_classes: int = 10,
    mlp_ratio: float = 2.0,
    embed_bits: int = 8,
    head_bits: int = 8,
    gelu_clip: float | None = 10.0,
    seed: int = 0,
    calib_batch: int = 4,
) -> IntModel:
    """A tiny Swin integer model (window attention, relative position bias, shifted windows with
    their masks, patch merging) with random codes and calibrated steps. Window and shift are
    resolved per stage as timm does (window = grid and no shift once the grid fits in one window);
    a grid that is not a whole number of windows is zero-padded (timm's behaviour)."""
    rng = np.random.default_rng(seed)
    rel_pos_bias = {}
    grid = (pair(img_size)[0] // patch, pair(img_size)[1] // patch)
    stages, dim = [], embed_dim
    for i, (depth, h) in enumerate(zip(depths, heads)):
        if i > 0:
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
            dim *= 2
        ws = [min(window, g) for g in grid]
        blocks = []
        for j in range(depth):
            sh = [0 if g <= window or j % 2 == 0 else window // 2 for g in grid]
            blocks.append({"window": _compact(ws), "shift": _compact(sh)})
            t = ws[0] * ws[1]
            rel_pos_bias[f"layers.{i}.blocks.{j}.attn"] = (rng.normal(size=(h, t, t)) * 0.5).astype(
                np.float32
            )
        stages.append({"dim": dim, "heads": h, "downsample": i > 0, "blocks": blocks})
    src = _RandomSource(rng, bits, embed_bits, head_bits, irm, rel_pos_bias, irm_stat)
    spec = {
        "in_chans": in_chans,
        "img_size": pair(img_size),
        "patch": patch,
        "embed_dim": embed_dim,
        "patch_norm": True,
        "num_classes": num_classes,
        "gelu_clip": gelu_clip,
        "mlp_ratio": mlp_ratio,
        "stages": stages,
    }
    b = GraphBuilder()
    lay_out_swin(b, src, spec)
    model = b.build(
        arch=f"random_swin_d{embed_dim}_w{window}_patch{patch}_{pair(img_size)[0]}",
        family="swin",
        bits={"weight": bits, "act": bits, "embed": embed_bits, "head": head_bits},
        input=_input_cfg(in_chans, img_size),
        num_classes=num_classes,
        classes=None,
        irm=irm,
    )
    return calibrate(model, rng.normal(size=(calib_batch, in_chans, *pair(img_size))).astype(np.float32))
