"""The integer model file (docs/integer-model.md): `IntModel`, read and written as one safetensors
file with numpy alone (8-byte header length, JSON header, raw data).

An integer model is integer codes, steps, zero points and the float parameters of the float ops,
plus a JSON config (in `__metadata__["qvit"]`) whose `graph` is a flat list of ops. Checking it is
validate.py's job, its activation shapes shapes.py's.
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

from .shapes import infer_shapes
from .spec import IntModelError, is_int
from .validate import validate_model

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
            if not all(is_int(v) for v in (*shape, start, end)):
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
        return infer_shapes(self)

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
            validate_model(self)
        except IntModelError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
            # a field of a type the checks do not name one by one: still one line
            raise IntModelError(f"malformed config ({type(e).__name__}: {e})"[:300]) from None
