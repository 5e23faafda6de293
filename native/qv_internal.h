/* Internal glue between the GEMM driver (gemm.c) and the per-architecture kernels. */
#ifndef QV_INTERNAL_H
#define QV_INTERNAL_H

#include "qv_arith.h"
#include "qv_kernels.h"

#define QV_INLINE static inline __attribute__((always_inline))
#define QV_BS_NB 8    /* bit-serial B: rows interleaved per block */
#define QV_I8_NB 16   /* int8 B: rows per block */

#if defined(__x86_64__)
#define QV_HAVE_X86 1
#define QV_TARGET_AVX2 __attribute__((target("avx2,fma,popcnt,bmi2")))
#define QV_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq,avx512vnni,avx2,popcnt,bmi2")))
#endif
#if defined(__aarch64__)
#define QV_HAVE_NEON 1
#define QV_TARGET_DOT __attribute__((target("arch=armv8.2-a+dotprod")))
#endif

/* One GEMM call, shared by the tasks of a parallel run. */
typedef struct qv_gemm_ctx {
  int64_t m, n, k, kw;          /* kw: 64-bit words (bit-serial) or 4-byte groups (int8) of K */
  int a_bits, b_bits, b_signed;
  const uint64_t *a_planes, *b_planes;   /* bit-serial operands */
  const uint8_t *a8;                     /* int8 operands */
  const int8_t *b8;
  const int32_t *rc, *cc;       /* acc = raw + rc[m] + cc[n] (zero points, 1-bit weights, NEON bias) */
  const qv_epilogue *ep;
  int64_t n_blocks;             /* B blocks */
  int nb_per_task_unit;         /* blocks handed out together (a kernel's widest n tile) */
} qv_gemm_ctx;

/* A block kernel computes rows [m0, m1) x B blocks [nb0, nb1) and runs the epilogue on them. */
typedef void (*qv_block_fn)(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
/* Packs one row of K codes into `bits` plane words, plane j at out[j * stride] (stride in words). */
typedef void (*qv_packrow_fn)(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride);

/* Epilogue on a tile of raw accumulators tile[r * ldt + c], r < rows, c < cols, at (m0, n0). */
void qv_epilogue_scalar(const qv_gemm_ctx *g, const int32_t *tile, int ldt, int64_t m0, int rows, int64_t n0,
                        int cols);

void qv_bs_block_scalar(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_i8_block_scalar(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_packrow_scalar(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride);
#ifdef QV_HAVE_X86
void qv_bs_block_avx512(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_i8_block_avx512(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_packrow_avx512(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride);
void qv_bs_block_avx2(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_i8_block_avx2(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_packrow_avx2(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride);
void qv_epilogue_avx2(const qv_gemm_ctx *g, const int32_t *tile, int ldt, int64_t m0, int rows, int64_t n0,
                      int cols);
#endif
#ifdef QV_HAVE_NEON
void qv_bs_block_neon(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_i8_block_neon(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_i8_block_neon_dot(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1);
void qv_packrow_neon(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride);
void qv_epilogue_neon(const qv_gemm_ctx *g, const int32_t *tile, int ldt, int64_t m0, int rows, int64_t n0,
                      int cols);
#endif

/* Kernels of the path in effect (dispatch.c). */
typedef struct qv_kernels {
  qv_block_fn bs_block, i8_block;
  qv_packrow_fn packrow;
  int i8_bias128;   /* 1: i8_block computes sum (a - 128) * b (NEON), the driver adds 128 * sum b */
} qv_kernels;
const qv_kernels *qv_active_kernels(void);

#endif
