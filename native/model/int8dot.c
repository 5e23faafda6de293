/* model.so micro-kernel: the `int8dot` GEMM engine of the quantized linear layers (compile/engines.py), the C
 * micro-kernels behind the TVM kernels `int8dot_quant` and `int8dot_gemm` (compile/kernels.py).
 *
 * 1-4-bit activation codes (unsigned, 0..2^b-1) and weight codes (signed) are exact in int8, so a
 * 4-byte dot-product instruction computes the same integers as the bit-serial AND/popcount GEMM:
 *   Arm:  SDOT (vdotq_laneq_s32: 4 channels x 4 consecutive k per register, one row's 4 codes
 *         broadcast from a lane), under __ARM_FEATURE_DOTPROD;
 *   x86:  vpdpbusd (unsigned codes x signed weights; AVX-512 VNNI, or AVX-VNNI on 256 bits);
 *   else: portable C on the same layout (the reference the vector paths must equal).
 * Define QVIT_INT8DOT_PORTABLE to compile the vector paths out (tests).
 *
 * Layouts. codes [Mpad, Kp] int8, row-major, Kp = K rounded up to 16 (zero codes), rows M..Mpad-1
 * zero. Weights, packed at compile time (compile/packing.py: int8_panel): [ceil(N/16), Kp/4, 16, 4]
 * int8, element [p, g, l, j] = w[16 p + l, 4 g + j] (zero past N and K): one 64-byte group holds 16
 * channels x 4 k, i.e. four SDOT registers or one vpdpbusd zmm.
 * acc[m, n] = sum_k a[m, k] w[n, k]; the epilogue subtracts corr[n] = z_a sum_k w[n, k] (epilogue.h).
 */
#include "epilogue.h"

#if !defined(QVIT_INT8DOT_PORTABLE) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define INT8DOT_SDOT 1
#elif !defined(QVIT_INT8DOT_PORTABLE) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define INT8DOT_VNNI512 1
#elif !defined(QVIT_INT8DOT_PORTABLE) && defined(__AVXVNNI__)
#define INT8DOT_VNNI256 1
#endif

#define KBLOCK 16 /* Kp is a multiple of this */
#define NP 16     /* channels per weight panel */

/* Which path this object was built with (tests read it): 0 portable, 1 SDOT, 2 AVX-512 VNNI, 3 AVX-VNNI */
int32_t qvit_int8dot_path(void) {
#if defined(INT8DOT_SDOT)
  return 1;
#elif defined(INT8DOT_VNNI512)
  return 2;
#elif defined(INT8DOT_VNNI256)
  return 3;
#else
  return 0;
#endif
}

/* x [M, K] float32 (LayerNorm first when ln) -> codes rows [r0, r1) of [Mpad, Kp]: the codes are
 * qv_arith.h's quantize_row, the function the bit-serial pack kernel uses. */
int32_t qvit_int8dot_quant(int32_t r0, int32_t r1, int32_t M, int32_t Mpad, int32_t K, int32_t Kp, int32_t bits,
                           int32_t ln, float eps, const float *x, const float *ln_w, const float *ln_b,
                           const float *step, const int32_t *zp, int8_t *codes) {
  if (r1 > Mpad) r1 = Mpad;
  float *row = ln ? (float *)malloc(sizeof(float) * (size_t)K) : 0;
  if (ln && !row) return -1;
  for (int r = r0; r < r1; r++) {
    uint8_t *dst = (uint8_t *)codes + (int64_t)r * Kp;
    if (r >= M) {
      memset(dst, 0, (size_t)Kp);
      continue;
    }
    ln_quantize_row(x + (int64_t)r * K, K, ln, ln_w, ln_b, eps, row, step[0], zp[0], bits, dst);
    memset(dst + K, 0, (size_t)(Kp - K));
  }
  free(row);
  return 0;
}

/* ------------------------------------------------------------------ 4 rows x 16 channels tiles */

#if defined(INT8DOT_SDOT)
#define ROWS 4
/* 4 rows x 16 channels: 16 int32x4 accumulators (v0-v15: row r, channels 4q..4q+3 in v(4r+q)),
 * the 4 rows' next 16 codes (v16-v19) and two 4-register weight groups (v20-v27) in flight. Per 16 k:
 * 4 + 8 loads and 64 SDOTs, which the core issues 2 per cycle (32 MACs/cycle). Assembly because gcc
 * 12 spilled and copied accumulators in the intrinsics version (39.5 instead of 32 cycles per 16 k in
 * llvm-mca's Neoverse N1 model, the A76's). */
#define SD(acc, w, a, l) "sdot v" #acc ".4s, v" #w ".16b, v" #a ".4b[" #l "]\n\t"
#define SD_GROUP(w0, w1, w2, w3, l)                                                                      \
  SD(0, w0, 16, l) SD(1, w1, 16, l) SD(2, w2, 16, l) SD(3, w3, 16, l) SD(4, w0, 17, l) SD(5, w1, 17, l) \
  SD(6, w2, 17, l) SD(7, w3, 17, l) SD(8, w0, 18, l) SD(9, w1, 18, l) SD(10, w2, 18, l) SD(11, w3, 18, l) \
  SD(12, w0, 19, l) SD(13, w1, 19, l) SD(14, w2, 19, l) SD(15, w3, 19, l)
static inline void tile(const int8_t *a, int64_t lda, const int8_t *w, int Kp, int32_t *out) {
  const int8_t *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda;
  int64_t n = Kp / KBLOCK; /* >= 1 */
  __asm__ volatile(
      "movi v0.4s, #0\n\t" "movi v1.4s, #0\n\t" "movi v2.4s, #0\n\t" "movi v3.4s, #0\n\t"
      "movi v4.4s, #0\n\t" "movi v5.4s, #0\n\t" "movi v6.4s, #0\n\t" "movi v7.4s, #0\n\t"
      "movi v8.4s, #0\n\t" "movi v9.4s, #0\n\t" "movi v10.4s, #0\n\t" "movi v11.4s, #0\n\t"
      "movi v12.4s, #0\n\t" "movi v13.4s, #0\n\t" "movi v14.4s, #0\n\t" "movi v15.4s, #0\n\t"
      "1:\n\t"
      "ldr q16, [%[a0]], #16\n\t"
      "ldr q17, [%[a1]], #16\n\t"
      "ldr q18, [%[a2]], #16\n\t"
      "ldr q19, [%[a3]], #16\n\t"
      "ldp q20, q21, [%[w]], #32\n\t"
      "ldp q22, q23, [%[w]], #32\n\t"
      "ldp q24, q25, [%[w]], #32\n\t"
      "ldp q26, q27, [%[w]], #32\n\t"
      SD_GROUP(20, 21, 22, 23, 0)
      "ldp q20, q21, [%[w]], #32\n\t"
      "ldp q22, q23, [%[w]], #32\n\t"
      SD_GROUP(24, 25, 26, 27, 1)
      "ldp q24, q25, [%[w]], #32\n\t"
      "ldp q26, q27, [%[w]], #32\n\t"
      SD_GROUP(20, 21, 22, 23, 2)
      SD_GROUP(24, 25, 26, 27, 3)
      "subs %[n], %[n], #1\n\t"
      "b.ne 1b\n\t"
      "stp q0, q1, [%[out]]\n\t" "stp q2, q3, [%[out], #32]\n\t"
      "stp q4, q5, [%[out], #64]\n\t" "stp q6, q7, [%[out], #96]\n\t"
      "stp q8, q9, [%[out], #128]\n\t" "stp q10, q11, [%[out], #160]\n\t"
      "stp q12, q13, [%[out], #192]\n\t" "stp q14, q15, [%[out], #224]\n\t"
      : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [w] "+r"(w), [n] "+r"(n)
      : [out] "r"(out)
      : "memory", "cc", "v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13",
        "v14", "v15", "v16", "v17", "v18", "v19", "v20", "v21", "v22", "v23", "v24", "v25", "v26", "v27");
}
#undef SD
#undef SD_GROUP

#elif defined(INT8DOT_VNNI512)
#define ROWS 8
/* 8 zmm accumulators (one per row, 16 channels each); per group of 4 k one weight zmm and one
 * broadcast of each row's 4 codes (the unsigned operand must be the register one). */
static inline void tile(const int8_t *a, int64_t lda, const int8_t *w, int Kp, int32_t *out) {
  __m512i c[ROWS];
  for (int i = 0; i < ROWS; i++) c[i] = _mm512_setzero_si512();
  for (int k = 0; k < Kp; k += 4) {
    const __m512i wv = _mm512_loadu_si512((const void *)(w + (int64_t)k * NP));
    for (int i = 0; i < ROWS; i++) {
      int32_t q;
      memcpy(&q, a + i * lda + k, 4);
      c[i] = _mm512_dpbusd_epi32(c[i], _mm512_set1_epi32(q), wv);
    }
  }
  for (int i = 0; i < ROWS; i++) _mm512_storeu_si512((void *)(out + 16 * i), c[i]);
}

#elif defined(INT8DOT_VNNI256)
#define ROWS 4
static inline void tile(const int8_t *a, int64_t lda, const int8_t *w, int Kp, int32_t *out) {
  __m256i c[2 * ROWS];
  for (int i = 0; i < 2 * ROWS; i++) c[i] = _mm256_setzero_si256();
  for (int k = 0; k < Kp; k += 4) {
    const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + (int64_t)k * NP));
    const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + (int64_t)k * NP + 32));
    for (int i = 0; i < ROWS; i++) {
      int32_t q;
      memcpy(&q, a + i * lda + k, 4);
      const __m256i av = _mm256_set1_epi32(q);
      c[2 * i] = _mm256_dpbusd_avx_epi32(c[2 * i], av, w0);
      c[2 * i + 1] = _mm256_dpbusd_avx_epi32(c[2 * i + 1], av, w1);
    }
  }
  for (int i = 0; i < 2 * ROWS; i++) _mm256_storeu_si256((__m256i *)(out + 8 * i), c[i]);
}

#else
#define ROWS 4
/* Portable: unsigned codes x signed weights in int32, the same sums in the same layout. */
static inline void tile(const int8_t *a, int64_t lda, const int8_t *w, int Kp, int32_t *out) {
  int32_t c[ROWS][NP];
  memset(c, 0, sizeof c);
  for (int g = 0; g < Kp / 4; g++) {
    const int8_t *wg = w + (int64_t)g * 4 * NP;
    for (int i = 0; i < ROWS; i++) {
      const uint8_t *ai = (const uint8_t *)a + i * lda + 4 * g;
      for (int l = 0; l < NP; l++)
        c[i][l] += ai[0] * wg[4 * l] + ai[1] * wg[4 * l + 1] + ai[2] * wg[4 * l + 2] + ai[3] * wg[4 * l + 3];
    }
  }
  memcpy(out, c, sizeof c);
}
#endif

/* One 16-channel panel for all rows: y[:, 16 panel ..] (channels < N). Mpad is a multiple of ROWS
 * (kernels.ROW_PAD): the padded rows' sums are computed and dropped. */
int32_t qvit_int8dot_panel(int32_t panel, int32_t M, int32_t Mpad, int32_t N, int32_t Kp, int32_t epi,
                           int32_t has_clip, float clip, const int8_t *codes, const int8_t *wpanel,
                           const float *scale, const int32_t *corr, const float *bias, const float *res,
                           float *y) {
  const int c0 = panel * NP;
  const int8_t *w = wpanel + (int64_t)panel * Kp * NP;
  int32_t acc[ROWS * NP] __attribute__((aligned(64)));
  for (int r = 0; r < Mpad; r += ROWS) {
    tile(codes + (int64_t)r * Kp, Kp, w, Kp, acc);
    for (int i = 0; i < ROWS && r + i < M; i++) {
      const int64_t row = (int64_t)(r + i) * N;
      epilogue_row16(acc + NP * i, c0, N, epi, has_clip, clip, scale, corr, bias, epi == EPI_ADD ? res + row : 0,
                     y + row);
    }
  }
  return 0;
}

/* ------------------------------------------------------------------ AMX-INT8 (engine int8dot-amx) */

/* TDPBUSD (AMX-INT8) computes vpdpbusd's integers (u8 codes x s8 weights, 4 k per int32) on 16 x 16
 * tiles: a weight panel's 64 k (16 groups of 16 channels x 4 k, 1 KB) is exactly one B tile (row
 * stride 64), 16 rows x 64 codes one A tile (row stride Kp). So this engine reads int8dot's layouts
 * with two paddings (compile/kernels.py): Kp a multiple of 64 and Mpad a multiple of 16 (zero codes
 * and rows, which add 0). Per call a group of 2 panels (32 channels), all rows, in blocks of 2 x 2
 * C tiles (32 rows x 32 channels; tmm0-3) with 2 A (tmm4-5) and 2 B (tmm6-7) tiles per 64 k; the C
 * tiles go to a buffer and through the same epilogue_row16 as the other paths, so the floats are the
 * same bits.
 *
 * Checked at run time (amx.h: CPUID, the OS's tile state, Linux's permission; $QVIT_NO_AMX), so a
 * model.so with this engine runs on any x86-64 CPU of its ISA level: where the check fails the group
 * runs on this object's qvit_int8dot_panel (VNNI, or portable C), with the same results. The tile
 * configuration is loaded at every call and released at its end (amx.h says why). The part builds
 * without an AMX -march (the compile's -march is the target's, e.g. rocketlake where LLVM names a
 * VM's Sapphire Rapids so). */
#if defined(__x86_64__) && !defined(QVIT_INT8DOT_PORTABLE) && !defined(QVIT_INT8DOT_NO_AMX)
#define INT8DOT_AMX 1
#include "amx.h"

#define AMX_KB 64 /* k per tile step: Kp is a multiple of this */
#define AMX_MB 16 /* rows per A tile: Mpad is a multiple of this */

/* 1 when the AMX path runs here, else why not (amx.h: -1 CPU, -2 OS, -3 $QVIT_NO_AMX set and not 0). */
int32_t qvit_int8dot_amx_state(void) { return qv_amx_state(); }

/* C tiles: acc[(tile row) * 2 + panel][16 rows][16 channels]. nr row tiles (1, 2) x nc panels (1, 2)
 * from codes a (row stride Kp) and panels w0, w1 (stride 64). */
static inline __attribute__((always_inline)) void amx_block(const int8_t *a, const int8_t *w0,
                                                             const int8_t *w1, int Kp, int nr, int nc,
                                                             int32_t *acc) {
  TILE_ZERO(0);
  TILE_ZERO(1);
  TILE_ZERO(2);
  TILE_ZERO(3);
  const int8_t *a1 = a + (int64_t)AMX_MB * Kp;
  for (int k = 0; k < Kp; k += AMX_KB) {
    const int64_t wo = (int64_t)k * 16;
    TILE_LOAD(4, a + k, Kp);
    TILE_LOAD(6, w0 + wo, 64);
    TDPBUSD(0, 4, 6);
    if (nc == 2) {
      TILE_LOAD(7, w1 + wo, 64);
      TDPBUSD(1, 4, 7);
    }
    if (nr == 2) {
      TILE_LOAD(5, a1 + k, Kp);
      TDPBUSD(2, 5, 6);
      if (nc == 2) TDPBUSD(3, 5, 7);
    }
  }
  TILE_STORE(0, acc, 64);
  if (nc == 2) TILE_STORE(1, acc + 256, 64);
  if (nr == 2) TILE_STORE(2, acc + 512, 64);
  if (nr == 2 && nc == 2) TILE_STORE(3, acc + 768, 64);
}

/* Panels 2 group, 2 group + 1 (those < ceil(N/16)) for all rows: y[:, 32 group ..]. */
int32_t qvit_int8dot_amx_group(int32_t group, int32_t M, int32_t Mpad, int32_t N, int32_t Kp, int32_t epi,
                               int32_t has_clip, float clip, const int8_t *codes, const int8_t *wpanel,
                               const float *scale, const int32_t *corr, const float *bias, const float *res,
                               float *y) {
  const int p0 = 2 * group, nc = 16 * (p0 + 1) < N ? 2 : 1;
  if (Kp % AMX_KB || Mpad % AMX_MB || qvit_int8dot_amx_state() != 1) {
    for (int p = p0; p < p0 + nc; p++)
      qvit_int8dot_panel(p, M, Mpad, N, Kp, epi, has_clip, clip, codes, wpanel, scale, corr, bias, res, y);
    return 0;
  }
  const int8_t *w0 = wpanel + (int64_t)p0 * Kp * NP, *w1 = w0 + (int64_t)Kp * NP;
  int32_t acc[4 * 256] __attribute__((aligned(64)));
  qv_amx_config();
  for (int r = 0; r < M; r += 2 * AMX_MB) {
    const int nr = r + AMX_MB < M ? 2 : 1;
    const int8_t *a = codes + (int64_t)r * Kp;
    if (nr == 2 && nc == 2) amx_block(a, w0, w1, Kp, 2, 2, acc);
    else if (nr == 2) amx_block(a, w0, w1, Kp, 2, 1, acc);
    else if (nc == 2) amx_block(a, w0, w1, Kp, 1, 2, acc);
    else amx_block(a, w0, w1, Kp, 1, 1, acc);
    for (int t = 0; t < nr; t++)
      for (int i = 0; i < AMX_MB && r + AMX_MB * t + i < M; i++) {
        const int64_t row = (int64_t)(r + AMX_MB * t + i) * N;
        for (int c = 0; c < nc; c++)
          epilogue_row16(acc + 512 * t + 256 * c + NP * i, NP * (p0 + c), N, epi, has_clip, clip, scale, corr, bias,
                         epi == EPI_ADD ? res + row : 0, y + row);
      }
  }
  qv_amx_release();
  return 0;
}

#else
/* Not x86-64 (or built without the AMX path): the group is its panels on this object's path. */
int32_t qvit_int8dot_amx_state(void) { return 0; }

int32_t qvit_int8dot_amx_group(int32_t group, int32_t M, int32_t Mpad, int32_t N, int32_t Kp, int32_t epi,
                               int32_t has_clip, float clip, const int8_t *codes, const int8_t *wpanel,
                               const float *scale, const int32_t *corr, const float *bias, const float *res,
                               float *y) {
  for (int p = 2 * group; p < 2 * group + 2 && 16 * p < N; p++)
    qvit_int8dot_panel(p, M, Mpad, N, Kp, epi, has_clip, clip, codes, wpanel, scale, corr, bias, res, y);
  return 0;
}
#endif
