"""The metadata document of a model.so (docs/model-so.md): its checksum and its schema.

The document drives what the executor allocates and which pointers it hands to native kernels: a
wrong offset, shape or kernel index in it becomes an out-of-bounds read or write. So before anything
is built from it, a document passes

  1. its format version (an older one gets "recompile it"),
  2. the checksum: model_sha256 (symbol qvit_model_sha256) = SHA-256 of the metadata symbol's bytes
     (the JSON text and its terminating NUL) followed by the weights blob, so damage anywhere in the
     metadata, the plan or the weights is caught,
  3. the schema (validate): types, ranges, names that resolve, every constant inside the blob, every
     activation inside one bounded arena, kernel indices inside the kernel table, so that even a
     document with a valid checksum cannot make the executor touch memory outside its buffers.

Standard library only: `qvit-edge info` uses it without numpy, cffi or the native library. Every
error is a SchemaError with one line naming the field.
"""
from __future__ import annotations

import hashlib
import json
import math
import re

FORMAT = "qvit-model-so"
FORMAT_VERSION = 2  # what qvit_compile writes
FORMAT_VERSIONS = (2,)  # what this runtime reads
OLD_FORMAT_VERSIONS = (1,)  # known, but without a checksum over metadata and plan: recompile

# Bounds on what a document may ask for. Generous for any ViT an edge device runs (DeiT-S: 0.3 MB of
# metadata, ~5 MB of activations), tight enough that a corrupt number cannot exhaust memory.
MAX_META_BYTES = 64 << 20
MAX_ACTIVATION_BYTES = 4 << 30  # the arena plus every tensor with its own buffer
MAX_INPUT_SIDE = 8192
MAX_INPUT_PIXELS = 1 << 24  # H * W (4096 x 4096)
MAX_CLASSES = 1_000_000
MAX_TENSORS = 1_000_000
MAX_STEPS = 1_000_000
MAX_KERNELS = 65536
MAX_ARGS = 1024
MAX_NDIM = 8
MAX_DIM = (1 << 31) - 1
MAX_TEXT = 4096
MAX_BITS = 8
ALIGN = 64  # the kernels use aligned vector loads: every buffer starts on a 64-byte boundary

# The dtypes the compiler writes (compile/lower.py, compile/kernels.py) and their sizes.
DTYPES = {"float32": 4, "int8": 1, "int16": 2, "int32": 4, "uint8": 1, "uint64": 8}
# The resampling filters qvit_edge.preprocess knows (a test keeps the two lists equal).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
TARGET_ARCHS = ("x86_64", "aarch64")
BITS_KEYS = ("weight", "act", "embed", "head")

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
_ISA_NAME = re.compile(r"[a-z0-9_]{1,32}")  # Linux's names: avx512_vnni, asimddp, ...
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAN_KEYS = ("input", "output", "kernels", "tensors", "steps")
_TENSOR_KEYS = ("shape", "dtype", "offset", "const", "view", "arena")
_STEP_KEYS = ("kernel", "kind", "op", "args")


class SchemaError(ValueError):
    """A document that is not a valid model.so document (one line, naming the field)."""


class VersionError(SchemaError):
    """A document of another format or format version."""


def _show(v, n: int = 40) -> str:
    """A value for an error line: repr (escapes newlines), shortened."""
    s = repr(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def digest(meta: bytes, blob_chunks=()) -> str:
    """model_sha256: SHA-256 of the metadata symbol's bytes (JSON text + NUL), then the blob."""
    h = hashlib.sha256(meta)
    for chunk in blob_chunks:
        h.update(chunk)
    return h.hexdigest()


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse(meta: bytes) -> dict:
    """The document held by a metadata symbol: JSON text followed by exactly one NUL."""
    if len(meta) > MAX_META_BYTES:
        raise SchemaError(f"metadata of {len(meta)} bytes (at most {MAX_META_BYTES})")
    if len(meta) < 3 or meta[-1:] != b"\0":
        raise SchemaError("metadata is not NUL-terminated")
    text = meta[:-1]
    if b"\0" in text:
        raise SchemaError("metadata holds a NUL byte")
    try:
        doc = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise SchemaError("metadata is not JSON") from None
    if not isinstance(doc, dict):
        raise SchemaError(f"metadata is a JSON {type(doc).__name__}, not an object")
    return doc


def check_version(doc: dict) -> None:
    """The format and its version, before anything else is read (a newer format may differ)."""
    fmt, ver = doc.get("format"), doc.get("format_version")
    if fmt == FORMAT and isinstance(ver, int) and not isinstance(ver, bool):
        if ver in FORMAT_VERSIONS:
            return
        if ver in OLD_FORMAT_VERSIONS:
            raise VersionError(f"format {FORMAT} version {ver} is from an older qvit_compile (no checksum "
                               f"over its metadata and plan): recompile it (make compile)")
    raise VersionError(f"format {_show(fmt)} version {_show(ver)} is not supported "
                       f"(this runtime reads {FORMAT} {list(FORMAT_VERSIONS)})")


# ---------------------------------------------------------------------------------------------- helpers


def _int(v, what: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SchemaError(f"{what}: {_show(v)} is not an integer")
    if not lo <= v <= hi:
        raise SchemaError(f"{what}: {v} out of range {lo}..{hi}")
    return v


def _num(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchemaError(f"{what}: {_show(v)} is not a finite number")
    return float(v)


def _text(v, what: str, empty: bool = False) -> str:
    if not isinstance(v, str):
        raise SchemaError(f"{what}: {_show(v)} is not a string")
    if (not v and not empty) or len(v) > MAX_TEXT:
        raise SchemaError(f"{what}: {len(v)} characters")
    if _CONTROL.search(v):
        raise SchemaError(f"{what}: {_show(v)} holds control characters")
    return v


def _obj(v, what: str) -> dict:
    if not isinstance(v, dict):
        raise SchemaError(f"{what}: {_show(v)} is not an object")
    return v


def _list(v, what: str, lo: int, hi: int) -> list:
    if not isinstance(v, list):
        raise SchemaError(f"{what}: {_show(v)} is not a list")
    if not lo <= len(v) <= hi:
        raise SchemaError(f"{what}: {len(v)} entries (must be {lo}..{hi})")
    return v


def _need(d: dict, key: str, where: str):
    if key not in d:
        raise SchemaError(f"{where}: no {key!r}" if where else f"no {key!r}")
    return d[key]


def _known_keys(d: dict, keys, where: str) -> None:
    for k in d:
        if k not in keys:
            raise SchemaError(f"{where}: unknown field {_show(k)}" if where else f"unknown field {_show(k)}")


def nbytes(t: dict) -> int:
    """Bytes of a tensor of a validated plan."""
    n = DTYPES[t["dtype"]]
    for s in t["shape"]:
        n *= s
    return n


# ---------------------------------------------------------------------------------------------- metadata


def _check_meta(doc: dict, blob_size: int) -> None:
    _text(_need(doc, "arch", ""), "arch")
    _text(_need(doc, "family", ""), "family")
    bits = _obj(_need(doc, "bits", ""), "bits")
    for k in BITS_KEYS:
        _int(_need(bits, k, "bits"), f"bits.{k}", 1, MAX_BITS)
    for k, v in bits.items():
        _int(v, f"bits.{_text(k, 'bits key')}", 1, MAX_BITS)

    inp = _obj(_need(doc, "input", ""), "input")
    c = _need(inp, "channels", "input")
    if isinstance(c, bool) or c not in (1, 3):
        raise SchemaError(f"input.channels: {_show(c)} (must be 1 or 3)")
    size = _list(_need(inp, "size", "input"), "input.size", 2, 2)
    h, w = (_int(s, "input.size", 1, MAX_INPUT_SIDE) for s in size)
    if h * w > MAX_INPUT_PIXELS:
        raise SchemaError(f"input.size: {h} x {w} is more than {MAX_INPUT_PIXELS} pixels")
    for key in ("mean", "std"):
        vals = _list(_need(inp, key, "input"), f"input.{key}", c, c)
        for v in vals:
            if _num(v, f"input.{key}") <= 0 and key == "std":
                raise SchemaError(f"input.std: {v} is not positive")
    if "interpolation" in inp and inp["interpolation"] not in INTERPOLATIONS:
        raise SchemaError(f"input.interpolation: {_show(inp['interpolation'])} "
                          f"(known: {', '.join(INTERPOLATIONS)})")
    if "crop_pct" in inp and not 0 < _num(inp["crop_pct"], "input.crop_pct") <= 4:
        raise SchemaError(f"input.crop_pct: {inp['crop_pct']} out of range (0, 4]")

    n = _int(_need(doc, "num_classes", ""), "num_classes", 1, MAX_CLASSES)
    if "classes" in doc:
        classes = _list(doc["classes"], "classes", n, n)
        for name in classes:
            _text(name, "classes", empty=True)
    if "irm" in doc and not isinstance(doc["irm"], bool):
        raise SchemaError(f"irm: {_show(doc['irm'])} is not true or false")
    target = _obj(_need(doc, "target", ""), "target")
    if _need(target, "arch", "target") not in TARGET_ARCHS:
        raise SchemaError(f"target.arch: {_show(target['arch'])} (known: {', '.join(TARGET_ARCHS)})")
    _text(_need(target, "mtriple", "target"), "target.mtriple")
    _text(_need(target, "mcpu", "target"), "target.mcpu")
    for f in _list(target.get("requires", []), "target.requires", 0, 64):  # absent in older files
        if not isinstance(f, str) or not _ISA_NAME.fullmatch(f):
            raise SchemaError(f"target.requires: {_show(f)} is not an instruction-set name")
    sha = _need(doc, "weights_sha256", "")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        raise SchemaError(f"weights_sha256: {_show(sha)} is not a SHA-256 hex digest")
    wb = _int(_need(doc, "weights_bytes", ""), "weights_bytes", 0, 1 << 62)
    if wb != blob_size:
        raise SchemaError(f"weights_bytes: {wb}, the weights blob holds {blob_size}")
    for key in ("source_digest", "compiler"):
        if key in doc:
            _text(doc[key], key, empty=True)
    if "gemm" in doc:  # absent in files from before the engines were recorded
        _check_gemm(doc["gemm"])


MAX_GEMM_ROWS = 1024


def _check_gemm(g) -> None:
    """The GEMM engines the compiler chose (compile/engines.py): informative only, the kernels are
    in the file, so any engine name is accepted (a newer compiler may know more)."""
    g = _obj(g, "gemm")
    _text(_need(g, "mcpu", "gemm"), "gemm.mcpu")
    for f in _list(g.get("features", []), "gemm.features", 0, 64):
        _text(f, "gemm.features")
    if "forced" in g and not isinstance(g["forced"], bool):
        raise SchemaError(f"gemm.forced: {_show(g['forced'])} is not true or false")
    for row in _list(_need(g, "layers", "gemm"), "gemm.layers", 0, MAX_GEMM_ROWS):
        row = _obj(row, "gemm.layers")
        _text(_need(row, "kind", "gemm.layers"), "gemm.layers.kind")
        _text(_need(row, "engine", "gemm.layers"), "gemm.layers.engine")
        for k in ("w_bits", "a_bits"):
            _int(_need(row, k, "gemm.layers"), f"gemm.layers.{k}", 1, MAX_BITS)
        _int(_need(row, "layers", "gemm.layers"), "gemm.layers.layers", 0, MAX_STEPS)
    for row in _list(g.get("measured", []), "gemm.measured", 0, MAX_GEMM_ROWS):  # --engine measure
        row = _obj(row, "gemm.measured")
        _text(_need(row, "engine", "gemm.measured"), "gemm.measured.engine")
        for k in ("w_bits", "a_bits"):
            _int(_need(row, k, "gemm.measured"), f"gemm.measured.{k}", 1, MAX_BITS)
        for e, ms in _obj(_need(row, "ms", "gemm.measured"), "gemm.measured.ms").items():
            _num(ms, f"gemm.measured.ms.{e}")


# ---------------------------------------------------------------------------------------------- plan


def _check_tensor(t, blob_size: int) -> None:
    """One entry of plan.tensors; messages without the tensor's name (the caller adds it: most of
    the time goes into building names otherwise)."""
    if not isinstance(t, dict):
        raise SchemaError(f"{_show(t)} is not an object")
    _known_keys(t, _TENSOR_KEYS, "")
    shape = _list(_need(t, "shape", ""), "shape", 1, MAX_NDIM)
    for s in shape:
        if type(s) is not int or not 1 <= s <= MAX_DIM:
            _int(s, "shape", 1, MAX_DIM)
    dtype = _need(t, "dtype", "")
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or object is unhashable: no `in`
        raise SchemaError(f"dtype {_show(t['dtype'])} (known: {', '.join(DTYPES)})")
    placed = [k for k in ("offset", "view", "arena") if k in t]
    if len(placed) > 1:
        raise SchemaError(f"both {placed[0]!r} and {placed[1]!r}")
    if ("const" in t) != ("offset" in t) or t.get("const", True) is not True:
        raise SchemaError("a constant needs both 'const': true and an 'offset'")
    if placed and placed[0] != "view":
        key = placed[0]
        bound = blob_size if key == "offset" else MAX_ACTIVATION_BYTES
        off = _int(t[key], key, 0, bound)
        if off % ALIGN:
            raise SchemaError(f"{key} {off} is not a multiple of {ALIGN}")
        size = nbytes(t)
        if off + size > bound:
            what = f"the weights blob ({blob_size} bytes)" if key == "offset" else \
                f"the activation limit ({bound} bytes)"
            raise SchemaError(f"{key} {off} + {size} bytes is past the end of {what}")


def _check_plan(plan: dict, doc: dict, blob_size: int, num_kernels) -> None:
    _known_keys(plan, _PLAN_KEYS, "plan")
    kernels = _list(_need(plan, "kernels", "plan"), "plan kernels", 1, MAX_KERNELS)
    for k in kernels:
        _text(k, "plan kernels")
    if num_kernels is not None and len(kernels) != num_kernels:
        raise SchemaError(f"plan: {len(kernels)} kernels, the kernel table holds {num_kernels}")

    tensors = _obj(_need(plan, "tensors", "plan"), "plan tensors")
    if not 1 <= len(tensors) <= MAX_TENSORS:
        raise SchemaError(f"plan tensors: {len(tensors)} entries (must be 1..{MAX_TENSORS})")
    arena_end, own = 0, 0
    for name, t in tensors.items():
        try:
            _check_tensor(t, blob_size)
        except SchemaError as e:
            raise SchemaError(f"plan tensor {_show(name)}: {e}") from None
        if "arena" in t:
            arena_end = max(arena_end, t["arena"] + nbytes(t))
        elif "offset" not in t and "view" not in t:  # a buffer of its own
            own += nbytes(t) + ALIGN
    if arena_end + own > MAX_ACTIVATION_BYTES:
        raise SchemaError(f"plan: {arena_end + own} bytes of activations (at most {MAX_ACTIVATION_BYTES})")
    for name, t in tensors.items():
        if "view" in t:
            where = f"plan tensor {_show(name)}"
            base = tensors.get(t["view"]) if isinstance(t["view"], str) else None
            if base is None:
                raise SchemaError(f"{where}: view of unknown tensor {_show(t['view'])}")
            if "view" in base:
                raise SchemaError(f"{where}: view of a view ({_show(t['view'])})")
            if nbytes(t) > nbytes(base):
                raise SchemaError(f"{where}: view of {nbytes(t)} bytes on {nbytes(base)} bytes")

    ends = {}
    for key in ("input", "output"):
        name = _need(plan, key, "plan")
        t = tensors.get(name) if isinstance(name, str) else None
        if t is None:
            raise SchemaError(f"plan {key}: unknown tensor {_show(name)}")
        if "offset" in t or "view" in t or t["dtype"] != "float32":
            raise SchemaError(f"plan {key}: {_show(name)} must be a float32 activation")
        ends[key] = name
    if ends["input"] == ends["output"]:
        raise SchemaError("plan: input and output are the same tensor")
    inp = doc["input"]
    want = {"input": [1, inp["channels"], *inp["size"]], "output": [1, doc["num_classes"]]}
    for key, name in ends.items():
        if tensors[name]["shape"] != want[key]:
            raise SchemaError(f"plan {key}: {_show(name)} has shape {tensors[name]['shape']}, "
                              f"the metadata says {want[key]}")

    steps = _list(_need(plan, "steps", "plan"), "plan steps", 1, MAX_STEPS)
    used = set()
    for i, st in enumerate(steps):
        where = f"plan step {i}"
        st = _obj(st, where)
        _known_keys(st, _STEP_KEYS, where)
        k = _need(st, "kernel", where)
        if isinstance(k, bool) or not isinstance(k, int):
            raise SchemaError(f"{where}: kernel {_show(k)} is not an integer")
        if not 0 <= k < len(kernels):
            raise SchemaError(f"{where}: kernel {k} out of range 0..{len(kernels) - 1}")
        _text(_need(st, "kind", where), f"{where}: kind")
        if "op" in st:
            _text(st["op"], f"{where}: op", empty=True)
        for a in _list(_need(st, "args", where), f"{where}: args", 1, MAX_ARGS):
            t = tensors.get(a) if isinstance(a, str) else None
            if t is None:
                raise SchemaError(f"{where}: unknown tensor {_show(a)}")
            used.add(t.get("view", a))
    for key, name in ends.items():
        if name not in used:
            raise SchemaError(f"plan {key}: no step uses {_show(name)}")


def validate(doc: dict, blob_size: int, num_kernels: int | None = None) -> None:
    """Checks a parsed document (plan included) against the blob and kernel table it comes with.
    Raises SchemaError naming the first field that is wrong."""
    _check_meta(doc, blob_size)
    plan = doc.get("plan")
    if plan is None:
        raise SchemaError("no plan")
    _check_plan(_obj(plan, "plan"), doc, blob_size, num_kernels)
