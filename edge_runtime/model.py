"""Load and run a compiled model.so on the device: numpy + cffi + the project's native library only.

A model.so (written by qvit_compile; its ABI is docs/model-so.md) holds TVM-generated kernels, the
packed weights (one blob), and a JSON document with the metadata and the op plan: the tensors, and
the sequence of kernel calls over them. This module

  1. dlopens the file with cffi (no TVM library of any kind is needed or loaded),
  2. checks the format version and the weights' SHA-256,
  3. binds the runtime's backend (thread pool, workspace, error capture: native/tvm_backend.c)
     into the model's slots,
  4. builds one DLTensor per tensor and one argument array per step, once,
  5. and on run() hands the whole step list to the native loop in a single call per image.

    m = load("model.so", threads=2)
    logits = m.run(x)          # x float32 [B, C, H, W], already resized and normalised
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from cffi import FFI

from qvit_edge.clikit import UserError

FORMAT = "qvit-model-so"
FORMAT_VERSIONS = (1,)
ABI_VERSIONS = (1,)

_CDEF = """
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct { void *data; DLDevice device; int32_t ndim; DLDataType dtype; int64_t *shape;
                 int64_t *strides; uint64_t byte_offset; } DLTensor;
typedef struct { int32_t type_index; uint32_t zero_padding; void *v_ptr; } qvit_any;
typedef struct { int32_t kernel; int32_t nargs; const void *args; } qvit_tvm_step;
extern int32_t qvit_model_abi;
extern char qvit_model_meta[];
extern unsigned char qvit_model_blob[];
extern uint64_t qvit_model_blob_size;
extern void *qvit_model_kernels[];
extern int32_t qvit_model_num_kernels;
void qvit_model_bind(void **table);
"""
_ffi = FFI()
_ffi.cdef(_CDEF)

_DL_CODES = {"int": 0, "uint": 1, "float": 2}
_K_DLTENSOR_PTR = 7


class ModelError(UserError):
    """Any problem loading or running a model.so (one line)."""


def _native():
    try:
        from qvit_edge import _native as nat
    except ImportError as e:
        raise ModelError(f"the native library qvit_edge._native is not built ({e}); reinstall qvit-edge") \
            from None
    if not hasattr(nat.lib, "qvit_tvm_run"):
        raise ModelError("the native library qvit_edge._native lacks the TVM backend (tvm_backend.c)")
    return nat


def _aligned_zeros(shape, dtype, align: int = 64) -> np.ndarray:
    """TVM-generated kernels assume 64-byte aligned tensors (aligned vector loads/stores)."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    off = -raw.ctypes.data % align
    return raw[off:off + nbytes].view(dt).reshape(shape)


def _dl_dtype(name: str):
    dt = np.dtype(name)
    kind = {"i": "int", "u": "uint", "f": "float"}[dt.kind]
    return _DL_CODES[kind], dt.itemsize * 8


class Model:
    """A loaded model.so. Not thread-safe: one run at a time per Model."""

    def __init__(self, path: str, threads: int = 1, profile: bool = False):
        self.path = path
        self.threads = max(1, int(threads))
        self._nat = _native()
        try:
            self._lib = _ffi.dlopen(os.path.abspath(path))
        except OSError as e:
            raise ModelError(f"{path}: cannot load ({str(e).splitlines()[0]})") from None
        try:
            abi = int(self._lib.qvit_model_abi)
            meta_c = _ffi.string(self._lib.qvit_model_meta)
        except AttributeError:
            raise ModelError(f"{path}: not a qvit-edge model.so (no qvit_model_* symbols)") from None
        if abi not in ABI_VERSIONS:
            raise ModelError(f"{path}: model ABI {abi} is not supported by this runtime "
                             f"(knows {ABI_VERSIONS})")
        try:
            doc = json.loads(meta_c.decode())
        except ValueError:
            raise ModelError(f"{path}: corrupt metadata") from None
        if doc.get("format") != FORMAT or doc.get("format_version") not in FORMAT_VERSIONS:
            raise ModelError(f"{path}: format {doc.get('format')!r} version {doc.get('format_version')!r} "
                             f"is not supported (this runtime reads {FORMAT} {FORMAT_VERSIONS})")
        self._plan = doc.pop("plan")
        self.meta: dict = doc
        n_bytes = int(self._lib.qvit_model_blob_size)
        self._blob = _ffi.buffer(self._lib.qvit_model_blob, n_bytes)
        digest = hashlib.sha256(self._blob).hexdigest()
        if digest != doc.get("weights_sha256"):
            raise ModelError(f"{path}: weights checksum mismatch (file damaged?)")
        if int(self._lib.qvit_model_num_kernels) != len(self._plan["kernels"]):
            raise ModelError(f"{path}: kernel table does not match the plan")
        self._bind_backend()
        self._build_plan()
        self._profiling = bool(profile)
        self._seconds = _ffi.new("double[]", max(1, len(self._steps_kind)))
        self._runs = 0
        self._failed = self._nat.ffi.new("int32_t *")

    # ------------------------------------------------------------------ setup
    def _bind_backend(self):
        nat = self._nat
        table_n = nat.ffi.new("void *[8]")
        nat.lib.qvit_tvm_backend_table(table_n)
        table = _ffi.new("void *[8]", [_ffi.cast("void *", int(nat.ffi.cast("uintptr_t", table_n[i])))
                                       for i in range(8)])
        self._lib.qvit_model_bind(table)

    def _build_plan(self):
        plan = self._plan
        self._keep = []  # cffi objects that must outlive the pointers into them
        self._arrays: dict[str, np.ndarray] = {}
        self._tensors = {}
        blob_addr = int(_ffi.cast("uintptr_t", self._lib.qvit_model_blob))
        # Activations with an "arena" offset share one buffer (the compiler planned their lifetimes).
        arena_bytes = max([int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize + int(t["arena"])
                           for t in plan["tensors"].values() if "arena" in t], default=0)
        self._arena = np.zeros(arena_bytes + 64, np.uint8)
        arena_addr = -(-self._arena.ctypes.data // 64) * 64
        arena_off = arena_addr - self._arena.ctypes.data
        for name, t in plan["tensors"].items():
            shape = tuple(int(s) for s in t["shape"])
            if "offset" in t:
                data = _ffi.cast("void *", blob_addr + int(t["offset"]))
            elif "view" in t:  # the same bytes as another tensor, with another shape
                data = self._tensors[t["view"]].data
            else:
                if "arena" in t:
                    o = arena_off + int(t["arena"])
                    nbytes = int(np.prod(shape)) * np.dtype(t["dtype"]).itemsize
                    arr = self._arena[o:o + nbytes].view(t["dtype"]).reshape(shape)
                else:
                    arr = _aligned_zeros(shape, t["dtype"])
                self._arrays[name] = arr
                data = _ffi.cast("void *", arr.ctypes.data)
            code, bits = _dl_dtype(t["dtype"])
            shp = _ffi.new("int64_t[]", list(shape) or [1])
            dl = _ffi.new("DLTensor *")
            dl.data = data
            dl.device.device_type = 1  # kDLCPU
            dl.ndim = len(shape)
            dl.dtype.code, dl.dtype.bits, dl.dtype.lanes = code, bits, 1
            dl.shape = shp
            dl.strides = _ffi.NULL
            self._keep += [shp, dl]
            self._tensors[name] = dl
        steps = plan["steps"]
        self._steps = _ffi.new("qvit_tvm_step[]", len(steps))
        self._steps_kind = []
        for i, st in enumerate(steps):
            args = _ffi.new("qvit_any[]", len(st["args"]))
            for a, name in enumerate(st["args"]):
                args[a].type_index = _K_DLTENSOR_PTR
                args[a].v_ptr = self._tensors[name]
            self._keep.append(args)
            self._steps[i].kernel = int(st["kernel"])
            self._steps[i].nargs = len(st["args"])
            self._steps[i].args = args
            self._steps_kind.append(st["kind"])
        self._kernels = self._nat.ffi.cast("void *",
                                           int(_ffi.cast("uintptr_t", self._lib.qvit_model_kernels)))
        self._steps_n = self._nat.ffi.cast("void *", int(_ffi.cast("uintptr_t", self._steps)))
        self._in = self._arrays[plan["input"]]
        self._out = self._arrays[plan["output"]]

    # ------------------------------------------------------------------ running
    @property
    def input_shape(self) -> tuple:
        """Shape of one image: (C, H, W)."""
        return tuple(self._in.shape[1:])

    def run(self, x: np.ndarray) -> np.ndarray:
        """x float32 [B, C, H, W] (normalised) -> logits float32 [B, num_classes]."""
        if self._lib is None:
            raise ModelError("model is closed")
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            want = ", ".join(map(str, self.input_shape))
            raise ModelError(f"input must be [B, {want}], got {list(x.shape)}")
        x = x.astype(np.float32, copy=False)
        out = np.empty((x.shape[0],) + self._out.shape[1:], np.float32)
        nat = self._nat
        nat.lib.qv_pool_set_threads(self.threads)
        secs = self._nat.ffi.cast("double *", int(_ffi.cast("uintptr_t", self._seconds))) \
            if self._profiling else nat.ffi.NULL
        for b in range(x.shape[0]):
            self._in[0] = x[b]
            rc = nat.lib.qvit_tvm_run(self._kernels, self._steps_n, len(self._steps_kind), secs, self._failed)
            if rc != 0:
                i = self._failed[0]
                msg = nat.ffi.string(nat.lib.qvit_tvm_last_error()).decode(errors="replace")
                nat.lib.qvit_tvm_clear_error()
                line = msg.splitlines()[0] if msg else "?"
                raise ModelError(f"kernel step {i} ({self._steps_kind[i]}) failed: {line}")
            out[b] = self._out[0]
            self._runs += 1
        return out

    # ------------------------------------------------------------------ profiling
    def profile(self) -> dict:
        """Seconds spent per op kind since load / reset_profile() (load(..., profile=True))."""
        if not self._profiling:
            raise ModelError("profiling is off: load the model with profile=True")
        out: dict[str, float] = {}
        for i, kind in enumerate(self._steps_kind):
            out[kind] = out.get(kind, 0.0) + float(self._seconds[i])
        return out

    def reset_profile(self) -> None:
        for i in range(len(self._steps_kind)):
            self._seconds[i] = 0.0

    @property
    def steps(self) -> list:
        """The op plan: [{kernel, kind, args}] (for tools and tests)."""
        return list(self._plan["steps"])

    def tensor(self, name: str) -> np.ndarray:
        """A copy of an intermediate tensor after the last run (batch row of the last image)."""
        if name in self._arrays:
            return self._arrays[name].copy()
        t = self._plan["tensors"].get(name)
        if t is None:
            raise ModelError(f"no tensor {name!r}")
        nbytes = int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize
        raw = bytes(self._blob[int(t["offset"]):int(t["offset"]) + nbytes])
        return np.frombuffer(raw, t["dtype"]).reshape(t["shape"]).copy()

    def close(self) -> None:
        if self._lib is not None:
            self._keep = []
            self._tensors = {}
            self._steps = None
            self._blob = None
            lib, self._lib = self._lib, None
            try:
                _ffi.dlclose(lib)
            except (OSError, ValueError):
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(path: str, threads: int = 1, profile: bool = False) -> Model:
    """Load a model.so; verifies format version and weights checksum. Raises ModelError."""
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such file")
    return Model(path, threads=threads, profile=profile)
