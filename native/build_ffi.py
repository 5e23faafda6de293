"""cffi (API mode) build of the device runtime's native library, the extension `qvit_edge._native`:
the thread pool, the low-bit GEMMs and float ops that `qvit_edge.kernels` binds, and the TVM
backend (tvm_backend.c) that runs a model.so's kernels on that thread pool.

Used by the runtime's setup.py (`cffi_modules`) at install time. Other builds reuse the same lists
`SOURCES`, `INCLUDE_DIRS`, `CFLAGS` and `CDEF`: the aarch64 cross build under qemu
(scripts/aarch64-python.sh), the build on the board (scripts/pi-bench.sh) and the C tests and
sanitizer runs (native/tests/). A model.so links none of these sources: it carries its TVM kernels
and the library's model/ room (native/model/, compiled for its target by the compile stage; the
same arithmetic header qv_arith.h), and reaches this module only through the backend table the
runtime hands it when it loads (native/tvm_backend.h). The compiler and extra flags
come from the usual CC / CFLAGS environment variables (distutils honours them); every source
builds unchanged for x86_64 and aarch64 because SIMD code is selected per function with target
attributes and #ifdefs, never with global -m flags.
"""
from __future__ import annotations

import os

import cffi

NATIVE_DIR = os.path.dirname(os.path.abspath(__file__))

SOURCE_NAMES = [
    "pool.c",
    "dispatch.c",
    "gemm.c",
    "ops.c",
    "ref/scalar.c",
    "x86/avx512.c",
    "x86/avx2.c",
    "arm/neon.c",
    "peak.c",
]
# The TVM backend (tvm_backend.c: runs a model.so's kernels on this library's thread pool) joins
# the same module when present.
TVM_BACKEND = "tvm_backend.c"
if os.path.exists(os.path.join(NATIVE_DIR, TVM_BACKEND)):
    SOURCE_NAMES.append(TVM_BACKEND)
SOURCES = [os.path.join(NATIVE_DIR, s) for s in SOURCE_NAMES]
INCLUDE_DIRS = [NATIVE_DIR]
# -ffp-contract=off: no FMA contraction, so the float epilogue rounds exactly like numpy.
# -Wno-psabi: qv_arith.h's 64-byte vector helpers are always inlined, so gcc's note that such
# arguments pass differently with AVX-512 concerns no call that is made.
CFLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-strict-aliasing", "-pthread", "-Wall", "-Wno-psabi"]
LDFLAGS = ["-pthread", "-lm"]

CDEF = """
int qv_pool_set_threads(int n);
int qv_pool_threads(void);
void qv_pool_shutdown(void);

int qv_path_supported(int path);
int qv_best_path(void);
int qv_set_path(int path);
int qv_get_path(void);
const char *qv_path_name(int path);
int qv_path_from_name(const char *name);

typedef struct qv_epilogue {
  const float *scale;
  float scale0;
  const float *bias;
  float q_step;
  int32_t q_zp;
  int32_t q_bits;
  float *out_f;
  uint8_t *out_q;
  int32_t *out_i;
  int64_t ldo;
} qv_epilogue;

size_t qv_bs_a_words(int64_t m, int64_t k, int bits);
size_t qv_bs_b_words(int64_t n, int64_t k, int bits);
int qv_bs_pack_a(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int bits,
                 uint64_t *planes, int32_t *rowsum);
int qv_bs_pack_b(const uint8_t *codes, int64_t n, int64_t k, int64_t ldb, int bits, int is_signed,
                 uint64_t *planes, int32_t *colsum);
int qv_bs_gemm(const uint64_t *a_planes, const int32_t *a_rowsum, int a_bits, int32_t za,
               const uint64_t *b_planes, const int32_t *b_colsum, int b_bits, int b_signed, int32_t zb,
               int64_t m, int64_t n, int64_t k, const qv_epilogue *ep);

size_t qv_i8_a_bytes(int64_t m, int64_t k);
size_t qv_i8_b_bytes(int64_t n, int64_t k);
int qv_i8_pack_a(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, uint8_t *packed, int32_t *rowsum);
int qv_i8_pack_b(const uint8_t *codes, int64_t n, int64_t k, int64_t ldb, int is_signed,
                 int8_t *packed, int32_t *colsum);
int qv_i8_gemm(const uint8_t *a, const int32_t *a_rowsum, int a_bits, int32_t za,
               const int8_t *b, const int32_t *b_colsum, int b_signed, int32_t zb,
               int64_t m, int64_t n, int64_t k, const qv_epilogue *ep);

int qv_bs_linear(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int a_bits, int32_t za,
                 const uint64_t *b_planes, const int32_t *b_colsum, int b_bits, int b_signed, int32_t zb,
                 int64_t n, const qv_epilogue *ep);
int qv_i8_linear(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int a_bits, int32_t za,
                 const int8_t *b, const int32_t *b_colsum, int b_signed, int32_t zb, int64_t n,
                 const qv_epilogue *ep);
int qv_matmul_act(int engine, const uint8_t *a, int64_t a_bstride, int64_t lda, int a_bits, const int32_t *za,
                  const uint8_t *b, int64_t b_bstride, int64_t ldb, int b_bits, const int32_t *zb,
                  int64_t batch, int64_t m, int64_t n, int64_t k, const float *scale, float *out_f,
                  int32_t *out_i);

void qv_layernorm(const float *x, int64_t rows, int64_t n, const float *weight, const float *bias,
                  float eps, float *out);
void qv_softmax(const float *x, int64_t rows, int64_t n, float *out);
void qv_gelu(const float *x, int64_t count, float clip, float *out);
void qv_quantize(const float *x, int64_t count, float step, int32_t zp, int bits, uint8_t *out);

double qv_popcount_peak(int path, double seconds);
double qv_popcount_probe(int path, int64_t iters);
"""

# native/tvm_backend.h (plain C types only)
CDEF_TVM_BACKEND = """
void qvit_tvm_backend_table(void **table);
int qvit_tvm_run(const void *kernels, int32_t nkernels, const void *steps, int32_t nsteps,
                 double *seconds, int32_t *failed_step);
int qvit_tvm_run_traced(const void *kernels, int32_t nkernels, const void *steps, int32_t nsteps,
                        double *seconds, double *stamps, int32_t *failed_step);
double qvit_tvm_now(void);
const char *qvit_tvm_last_error(void);
void qvit_tvm_clear_error(void);
"""
PREAMBLE = '#include "qv_kernels.h"\n#include "qv_pool.h"\n'
if TVM_BACKEND in SOURCE_NAMES:
    CDEF += CDEF_TVM_BACKEND
    PREAMBLE += '#include "tvm_backend.h"\n'


def _rel(path: str) -> str:
    """setuptools wants source paths relative to the setup.py folder (the build's cwd)."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "qvit_edge._native",
    PREAMBLE,
    sources=[_rel(s) for s in SOURCES],
    include_dirs=[_rel(d) for d in INCLUDE_DIRS],
    extra_compile_args=CFLAGS,
    extra_link_args=LDFLAGS,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
