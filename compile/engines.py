"""GEMM engines of the quantized linear layers: which kernel computes a layer, per target CPU.

All engines compute the same integers (sum_k (a - z_a) w exactly) and the same float epilogue; they
differ only in speed, which depends on the CPU:

  bitserial  bit planes + AND/popcount (TVM-generated, kernels.bitserial_linear): every CPU;
  int8dot    int8 codes x int8 weights, 4-byte dot products (native/model/int8dot.c): Arm SDOT
             (vdotq_laneq_s32), x86 AVX-512 VNNI / AVX-VNNI (vpdpbusd), portable C elsewhere.
             1-4-bit codes are exact in int8, and one SDOT does 32 MACs/cycle on a Cortex-A76
             where the bit-serial kernel needs a_bits * w_bits binary products per MAC;
  int8dot-amx  int8dot's integers on AMX-INT8 tiles (TDPBUSD, 1024 MACs/cycle; int8dot.c): the same
             weight panels (one 64-k slice of a panel is one B tile) with K padded to 64 and rows to
             16. Checked at run time (CPUID, the OS's tile state, Linux's arch_prctl permission): where
             any is missing the same model.so runs int8dot's path of its build, so the file still
             runs on every CPU of its -march (QVIT_NO_AMX=1 forces that path, for comparisons);
  bitserial-neon  the bit-serial GEMM as a C micro-kernel (native/model/bsneon.c) with byte counters
             (CNT + UADALP, widened every 31 words) on the same planes: Arm cores without the dot
             product; portable C elsewhere (tests).
  lut-neon   table lookups (native/model/lut.c): per row and 4 k a 16-entry table of the codes'
             subset sums, indexed by 4 bits of a weight plane, 16 channels per NEON TBL: w_bits
             lookups per 4 k whatever a_bits, where bit-serial needs a_bits * w_bits plane pairs;
             Arm cores without the dot product; portable C elsewhere (tests).

The choice is made once per compile from (arch, CPU features of the target's mcpu, a_bits, w_bits)
by `choose` (the table below), or forced with `--engine` / QVIT_GEMM_ENGINE, or, with
`--engine measure` for this machine's own x86 CPU, by timing the candidates on the first layer of
each bit width (engine_measure.py), and recorded in the model.so metadata (field "gemm":
docs/model-so.md; a measured choice keeps its times).
"""
from __future__ import annotations

import os

from qvit_edge.clikit import UserError

BITSERIAL, INT8DOT, BITSERIAL_NEON = "bitserial", "int8dot", "bitserial-neon"
INT8DOT_AMX, LUT_NEON = "int8dot-amx", "lut-neon"
ENGINES = (BITSERIAL, INT8DOT, BITSERIAL_NEON, INT8DOT_AMX, LUT_NEON)
MEASURE = "measure"  # not an engine: time the candidates on this machine (engine_measure.py)
LOWBIT_MAX = 4  # layers with at most this many bits (weights and activations) have a choice
LUT_MIN_A_BITS = 3  # Arm without the dot product: lut-neon from this activation width up
INT16 = "int16"  # 8-bit layers (patch embedding, head): int16 codes x int8 weights, no choice
ENV = "QVIT_GEMM_ENGINE"

# CPU features (LLVM names) that make int8dot the faster engine, per arch; AMX_FEATURE: int8dot-amx.
INT8DOT_FEATURES = {"aarch64": ("dotprod",), "x86_64": ("avx512vnni", "avxvnni")}
AMX_FEATURE = "amx-int8"
# /proc/cpuinfo flag -> LLVM feature, for the compiling machine's CPU (see cpu_features): AMX only,
# which int8dot.c uses after a run-time check; VNNI is compiled in by -march, so LLVM's word decides
_HOST_FLAGS = {"amx_int8": AMX_FEATURE}


def choose(arch: str, features, a_bits: int, w_bits: int) -> str:
    """The engine table: the engine for a layer of a_bits x w_bits on a CPU with `features`."""
    if a_bits > LOWBIT_MAX or w_bits > LOWBIT_MAX:
        return INT16
    feats = set(features)
    if arch == "aarch64":
        # dot product (A55, A76, A78, Neoverse N1...): 32 int8 MACs/cycle beat a2*w2 binary planes;
        # without it (A53, A72) int8 runs on SMLAL at ~8 MACs/cycle: table lookups from 3-bit
        # activations up (w_bits TBLs per 4 k, against a_bits * w_bits plane pairs; estimated 1.6x
        # bit-serial's speed at W3A3 and W4A4 on the A72), the byte-counter bit-serial kernel below
        # (its 4 plane pairs at W2A2 cost less than 2 TBL planes with their uint8 accumulation)
        if feats & set(INT8DOT_FEATURES["aarch64"]):
            return INT8DOT
        return LUT_NEON if a_bits >= LUT_MIN_A_BITS else BITSERIAL_NEON
    if arch == "x86_64":
        # AMX-INT8 (Sapphire Rapids and later): 1024 MACs/cycle per TDPBUSD; measured 2.2-2.6x the
        # VNNI path per DeiT-S layer (docs/model-so.md). VNNI: 64 MACs/cycle per 512-bit vpdpbusd.
        # Without either (AVX2 only) the popcount kernel stays. A per-CPU measured choice (e.g.
        # VPOPCNTDQ machines at W1A1) would refine this branch.
        if AMX_FEATURE in feats:
            return INT8DOT_AMX
        return INT8DOT if feats & set(INT8DOT_FEATURES["x86_64"]) else BITSERIAL
    return BITSERIAL


def override(engine: str | None) -> str | None:
    """The forced engine: the argument (--engine), else $QVIT_GEMM_ENGINE, else None. Checked."""
    forced = engine or os.environ.get(ENV) or None
    if forced is not None and forced not in ENGINES + (MEASURE,):
        src = "--engine" if engine else ENV
        raise UserError(f"{src}: unknown GEMM engine {forced!r} (known: {', '.join(ENGINES)}; or {MEASURE})")
    return forced


def host_x86_features() -> set:
    """The table's features that this machine's CPU has, from /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return set()
    return {_HOST_FLAGS[f] for f in flags if f in _HOST_FLAGS}


def cpu_features(target) -> list:
    """The LLVM features of the target's CPU that the table reads (empty when LLVM cannot say).
    When the target is this machine's CPU (the x86_64 default), its AMX flag counts too: LLVM names
    a CPU by family and model, and a VM may report a model (e.g. a Sapphire Rapids guest as
    rocketlake) whose LLVM description lacks AMX. int8dot-amx checks the CPU again at run time, so
    a wrong guess here costs speed, never correctness."""
    wanted = INT8DOT_FEATURES.get(target.arch, ()) + ((AMX_FEATURE,) if target.arch == "x86_64" else ())
    try:
        from tvm.target import codegen
        feats = set(codegen.llvm_get_cpu_features(target.tvm()))
    except Exception:  # an LLVM without the query: the table's conservative branch
        return []
    if target.arch == "x86_64" and os.uname().machine == "x86_64":
        from .targets import host_x86_cpu
        if target.mcpu == host_x86_cpu():
            feats |= host_x86_features()
    return sorted(f for f in wanted if f in feats)


class Selection:
    """The engines of one compile: per layer, and the summary written into the metadata."""

    def __init__(self, target, engine: str | None = None, progress=None):
        self.target, self.arch, self.mcpu = target, target.arch, target.mcpu
        self.features = cpu_features(target)
        self.forced = override(engine)
        self.measuring = self.forced == MEASURE
        if self.measuring:
            from . import engine_measure
            engine_measure.check_host(target)
            self.forced = None
        self.progress = progress or (lambda line: None)
        self.measured: dict[tuple, dict] = {}  # (a_bits, w_bits) -> {"shape", "ms", "engine"}
        self.layers: dict[tuple, dict] = {}

    def pick(self, kind: str, a_bits: int, w_bits: int, shape: tuple | None = None) -> str:
        """The engine of one layer; shape (m, n, k, epilogue) is what --engine measure times."""
        e = choose(self.arch, self.features, a_bits, w_bits)
        if self.forced is not None and e != INT16:
            e = self.forced
        elif self.measuring and e != INT16 and shape is not None:
            e = self._measured(int(a_bits), int(w_bits), shape)["engine"]
        row = self.layers.setdefault((kind, int(w_bits), int(a_bits)),
                                     {"kind": kind, "w_bits": int(w_bits), "a_bits": int(a_bits),
                                      "engine": e, "layers": 0})
        row["layers"] += 1
        return e

    def _measured(self, a_bits: int, w_bits: int, shape: tuple) -> dict:
        key = (a_bits, w_bits)
        if key not in self.measured:
            from . import engine_measure
            m, n, k, epi = shape
            ms = engine_measure.measure(self.target, m, n, k, a_bits, w_bits, epi)
            best = engine_measure.fastest(ms)
            self.measured[key] = {"a_bits": a_bits, "w_bits": w_bits, "shape": [int(m), int(n), int(k)],
                                  "epilogue": epi, "ms": ms, "engine": best}
            self.progress(f"  measured W{w_bits}A{a_bits} on M{m} N{n} K{k} (+{epi}), 1 thread: "
                          + ", ".join(f"{e} {v:.3f} ms" for e, v in ms.items()) + f" -> {best}")
        return self.measured[key]

    def meta(self) -> dict:
        out = {"mcpu": self.mcpu, "features": list(self.features), "forced": self.forced is not None,
               "layers": [self.layers[k] for k in sorted(self.layers)]}
        if self.measuring:
            out["measured"] = [self.measured[k] for k in sorted(self.measured)]
        return out


def describe(gemm: dict) -> str:
    """One line for people: 'qlinear W2A2: int8dot (48), ... [mcpu cortex-a76, forced]'."""
    rows = [f"{r['kind']} W{r['w_bits']}A{r['a_bits']}: {r['engine']} ({r['layers']})"
            for r in gemm["layers"]]
    extra = f"mcpu {gemm['mcpu']}" + (", forced" if gemm.get("forced") else "") + \
        (", measured on this machine" if gemm.get("measured") else "")
    return f"{', '.join(rows) or 'no linear layers'} [{extra}]"
