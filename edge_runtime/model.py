"""Load and run a compiled model.so on the device: numpy + cffi + the project's native library only.

A model.so (written by qvit_compile; its ABI is docs/model-so.md) holds TVM-generated kernels, the
packed weights (one blob), and a JSON document with the metadata and the op plan: the tensors, and
the sequence of kernel calls over them. This module

  1. verifies the file before loading it (qvit_edge.preflight.verify_model_file: ELF structure,
     format version, the checksum over code, metadata, plan and weights, the plan's schema),
  2. dlopens it (ctypes: no TVM library of any kind is needed or loaded) and checks the loader
     resolved the symbols the file was checked for,
  3. binds the runtime's backend (thread pool, workspace, error capture: native/tvm_backend.c)
     into the model's slots,
  4. builds one DLTensor per tensor and one argument array per step, once,
  5. and on run() hands the whole step list to the native loop in a single call per image.

    m = load("model.so", threads=2)
    logits = m.run(x)          # x float32 [B, C, H, W], already resized and normalised
"""
from __future__ import annotations

import ctypes
import os
import weakref

import numpy as np
from cffi import FFI

from qvit_edge import model_schema as schema
from qvit_edge import preflight
from qvit_edge.clikit import UserError

FORMAT = schema.FORMAT
FORMAT_VERSIONS = schema.FORMAT_VERSIONS
ABI_VERSIONS = preflight.ABI_VERSIONS

_CDEF = """
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct { void *data; DLDevice device; int32_t ndim; DLDataType dtype; int64_t *shape;
                 int64_t *strides; uint64_t byte_offset; } DLTensor;
typedef struct { int32_t type_index; uint32_t zero_padding; void *v_ptr; } qvit_any;
typedef struct { int32_t kernel; int32_t nargs; const void *args; } qvit_tvm_step;
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


_DL_DTYPES = {name: _dl_dtype(name) for name in schema.DTYPES}  # (DLPack type code, bits)


def _dlopen(path: str):
    # ctypes rather than cffi's ffi.dlopen: cffi keeps every library it ever opened (and a class
    # per library) in lists of its FFI object, about 13 KB per load that dlclose never frees.
    return ctypes.CDLL(os.path.abspath(path), mode=os.RTLD_NOW | os.RTLD_LOCAL)


def _dlclose(handle: int) -> None:
    try:
        import _ctypes

        _ctypes.dlclose(handle)
    except (ImportError, AttributeError, OSError):  # no dlclose: the library just stays mapped
        pass


class Model:
    """A loaded model.so. Not thread-safe: one run at a time per Model."""

    def __init__(self, path: str, threads: int = 1, profile: bool = False,
                 verified: preflight.ModelFile | None = None):
        """verified: what preflight.verify_model_file returned for this path (open_model passes it);
        None: verify here. Raises ModelError (or PreflightError from open_model's checks)."""
        self.path = path
        self.threads = max(1, int(threads))
        self._lib = None
        self._arrays: dict[str, np.ndarray] = {}
        self._tensors: dict = {}
        self._keep: list = []
        if verified is None:
            try:
                verified = preflight.verify_model_file(path)
            except preflight.PreflightError as e:
                raise ModelError(str(e)) from None
        self._nat = _native()
        doc = dict(verified.doc)
        self._plan = doc.pop("plan")
        self.meta: dict = doc
        self.sha256 = verified.sha256
        try:
            lib = _dlopen(path)
        except OSError as e:
            why = str(e).splitlines()[0] if str(e) else "dlopen failed"
            raise ModelError(f"{path}: cannot load ({why})") from None
        self._lib = lib
        self._close_lib = weakref.finalize(self, _dlclose, lib._handle)
        self._close_lib.atexit = False
        try:
            self._attach(verified)
            self._bind_backend()
            self._build_plan()
        except BaseException:
            self.close()
            raise
        self._profiling = bool(profile)
        self._seconds = _ffi.new("double[]", max(1, len(self._steps_kind)))
        self._runs = 0
        self._failed = self._nat.ffi.new("int32_t *")
        self._trace = None  # per-step start/end stamps of the last runs (record_trace)
        self._trace_slots = 0
        self._trace_count = 0

    # ------------------------------------------------------------------ setup
    def _attach(self, verified: preflight.ModelFile) -> None:
        """The symbols as the loader resolved them must be the ones verify_model_file checked in the
        file (same places relative to one load address, same values): the file cannot have changed
        between the check and the load."""
        try:
            addr = {n: ctypes.addressof(ctypes.c_char.in_dll(self._lib, n)) for n in verified.symbols}
        except ValueError as e:
            raise ModelError(f"{self.path}: not a qvit-edge model.so ({e})") from None
        base = addr["qvit_model_abi"] - verified.symbols["qvit_model_abi"]
        same = all(addr[n] - base == v for n, v in verified.symbols.items()) and \
            ctypes.c_int32.from_address(addr["qvit_model_abi"]).value == verified.abi and \
            ctypes.c_int32.from_address(addr["qvit_model_num_kernels"]).value == verified.num_kernels and \
            ctypes.c_uint64.from_address(addr["qvit_model_blob_size"]).value == verified.blob_size
        if not same:
            raise ModelError(f"{self.path}: the library loaded is not the file that was checked "
                             f"(was it replaced while loading?)")
        self._num_kernels = verified.num_kernels
        self._blob_addr = addr["qvit_model_blob"]
        self._blob = _ffi.buffer(_ffi.cast("char *", self._blob_addr), verified.blob_size)
        self._kernels_addr = addr["qvit_model_kernels"]
        self._bind_addr = addr["qvit_model_bind"]

    def _bind_backend(self):
        nat = self._nat
        table = nat.ffi.new("void *[8]")
        nat.lib.qvit_tvm_backend_table(table)
        bind = nat.ffi.cast("void (*)(void **)", self._bind_addr)
        bind(table)

    def _build_plan(self):
        """DLTensors over the validated plan (model_schema: every offset inside its buffer)."""
        plan = self._plan
        tensors = plan["tensors"]
        # Activations with an "arena" offset share one buffer (the compiler planned their lifetimes).
        arena_bytes = max([t["arena"] + schema.nbytes(t) for t in tensors.values() if "arena" in t],
                          default=0)
        try:
            self._arena = np.zeros(arena_bytes + 64, np.uint8)
            arena_off = -self._arena.ctypes.data % 64
            for name, t in tensors.items():
                if "offset" in t or "view" in t:
                    continue
                shape = tuple(t["shape"])
                if "arena" in t:
                    o = arena_off + t["arena"]
                    arr = self._arena[o:o + schema.nbytes(t)].view(t["dtype"]).reshape(shape)
                else:
                    arr = _aligned_zeros(shape, t["dtype"])
                self._arrays[name] = arr
        except MemoryError:
            raise ModelError(f"{self.path}: not enough memory for the model's activations") from None
        data = {}
        for name, t in tensors.items():  # views last: their base may come later in the document
            if "offset" in t:
                data[name] = self._blob_addr + t["offset"]
            elif "view" not in t:
                data[name] = self._arrays[name].ctypes.data
        for name, t in tensors.items():
            if "view" in t:  # the same bytes as another tensor, with another shape
                data[name] = data[t["view"]]
        # One cffi allocation per kind (tensors, shapes, arguments), not one per object: loading
        # stays fast and every pointer below stays inside these three arrays.
        names = list(tensors)
        dls = _ffi.new("DLTensor[]", len(names))
        shapes = _ffi.new("int64_t[]", [s for t in tensors.values() for s in t["shape"]])
        pos = 0
        for i, name in enumerate(names):
            t = tensors[name]
            dl = dls[i]
            dl.data = _ffi.cast("void *", data[name])
            dl.device.device_type = 1  # kDLCPU
            dl.ndim = len(t["shape"])
            dl.dtype.code, dl.dtype.bits = _DL_DTYPES[t["dtype"]]
            dl.dtype.lanes = 1
            dl.shape = shapes + pos
            dl.strides = _ffi.NULL
            pos += len(t["shape"])
            self._tensors[name] = dls + i
        steps = plan["steps"]
        anys = _ffi.new("qvit_any[]", sum(len(st["args"]) for st in steps))
        self._keep = [dls, shapes, anys]
        self._steps = _ffi.new("qvit_tvm_step[]", len(steps))
        self._steps_kind = []
        k = 0
        for i, st in enumerate(steps):
            self._steps[i].kernel = st["kernel"]
            self._steps[i].nargs = len(st["args"])
            self._steps[i].args = anys + k
            for name in st["args"]:
                anys[k].type_index = _K_DLTENSOR_PTR
                anys[k].v_ptr = self._tensors[name]
                k += 1
            self._steps_kind.append(st["kind"])
        nat = self._nat
        self._kernels = nat.ffi.cast("void *", self._kernels_addr)
        self._steps_n = nat.ffi.cast("void *", int(_ffi.cast("uintptr_t", self._steps)))
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
        if x.dtype.kind != "f":  # raw pixels would be "accepted" and give a confident wrong class
            raise ModelError(f"input must be normalised float [B, C, H, W], got dtype {x.dtype} "
                             "(qvit_edge.load(...).predict() prepares images and uint8 pixels)")
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
        nsteps = len(self._steps_kind)
        for b in range(x.shape[0]):
            self._in[0] = x[b]
            if self._trace is None:
                rc = nat.lib.qvit_tvm_run(self._kernels, self._num_kernels, self._steps_n, nsteps,
                                          secs, self._failed)
            else:  # this image's stamps go to the next slot of the ring
                slot = self._trace_count % self._trace_slots
                at = int(_ffi.cast("uintptr_t", self._trace)) + 16 * nsteps * slot  # 2 doubles a step
                stamps = nat.ffi.cast("double *", at)
                rc = nat.lib.qvit_tvm_run_traced(self._kernels, self._num_kernels, self._steps_n, nsteps,
                                                 secs, stamps, self._failed)
                if rc == 0:
                    self._trace_count += 1
            if rc != 0:
                i = self._failed[0]
                msg = nat.ffi.string(nat.lib.qvit_tvm_last_error()).decode(errors="replace")
                nat.lib.qvit_tvm_clear_error()
                line = msg.splitlines()[0] if msg else "?"
                kind = self._steps_kind[i] if 0 <= i < len(self._steps_kind) else "?"
                raise ModelError(f"kernel step {i} ({kind}) failed: {line}")
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

    def step_profile(self) -> list:
        """Seconds spent in each plan step since load / reset_profile(), in plan order."""
        if not self._profiling:
            raise ModelError("profiling is off: load the model with profile=True")
        return [float(self._seconds[i]) for i in range(len(self._steps_kind))]

    def reset_profile(self) -> None:
        for i in range(len(self._steps_kind)):
            self._seconds[i] = 0.0

    def record_trace(self, runs: int) -> None:
        """From now on keep when each step of the last `runs` single-image runs started and ended (the
        executor's own clock reads, native qvit_tvm_run_traced); 0 stops recording. Read with trace()."""
        runs = int(runs)
        if runs <= 0:
            self._trace, self._trace_slots, self._trace_count = None, 0, 0
            return
        if not hasattr(self._nat.lib, "qvit_tvm_run_traced"):
            raise ModelError("the native library qvit_edge._native predates per-step timestamps; "
                             "reinstall qvit-edge")
        self._trace = _ffi.new("double[]", 2 * len(self._steps_kind) * runs)
        self._trace_slots, self._trace_count = runs, 0

    def trace(self) -> list:
        """The recorded runs, oldest first: one float64 array [steps, 2] (start, end) per image run,
        in seconds of CLOCK_MONOTONIC (trace_clock())."""
        if self._trace is None:
            return []
        n = 2 * len(self._steps_kind)
        flat = np.frombuffer(_ffi.buffer(self._trace), np.float64).reshape(self._trace_slots, n // 2, 2)
        kept = min(self._trace_count, self._trace_slots)
        first = self._trace_count - kept
        return [flat[(first + j) % self._trace_slots].copy() for j in range(kept)]

    def trace_clock(self) -> float:
        """Now, on the clock trace() stamps are read from (CLOCK_MONOTONIC, seconds)."""
        return float(self._nat.lib.qvit_tvm_now())

    @property
    def steps(self) -> list:
        """The op plan: [{kernel, kind, args}] (for tools and tests)."""
        return list(self._plan["steps"])

    def tensor(self, name: str) -> np.ndarray:
        """A copy of a tensor after the last run (batch row of the last image); constants from the
        weights blob."""
        if self._lib is None:
            raise ModelError("model is closed")
        t = self._plan["tensors"].get(name)
        if t is None:
            raise ModelError(f"no tensor {name!r}")
        shape, dtype = t["shape"], np.dtype(t["dtype"])
        n = schema.nbytes(t)
        if name in self._arrays:
            return self._arrays[name].copy()
        if "view" in t:
            base = t["view"]
            if base in self._arrays:
                raw = self._arrays[base].reshape(-1).view(np.uint8)[:n].tobytes()
            else:
                o = self._plan["tensors"][base]["offset"]
                raw = bytes(self._blob[o:o + n])
        else:
            raw = bytes(self._blob[t["offset"]:t["offset"] + n])
        return np.frombuffer(raw, dtype).reshape(shape).copy()

    def close(self) -> None:
        """Frees the buffers and unloads the library (also when the Model is garbage-collected)."""
        if self._lib is not None:
            self._keep = []
            self._tensors = {}
            self._arrays = {}
            self._steps = None
            self._trace = None
            self._blob = None
            self._in = self._out = self._arena = None
            self._lib = None
            self._close_lib()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(path: str, threads: int = 1, profile: bool = False) -> Model:
    """Load a model.so: verifies it first (preflight.verify_model_file: ELF structure, format
    version, checksum, the plan's schema), then loads it. Raises ModelError (one line)."""
    return Model(path, threads=threads, profile=profile)
