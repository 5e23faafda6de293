/* qvit_compile: the `int8dot` GEMM engine of the quantized linear layers (compile/engines.py), the C
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
 * common.h's quantize_row, the function the bit-serial pack kernel uses. */
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
    const float *src = x + (int64_t)r * K;
    if (ln) {
      layernorm_row(src, K, ln_w, ln_b, eps, row);
      src = row;
    }
    quantize_row(src, K, step[0], zp[0], bits, dst);
    memset(dst + K, 0, (size_t)(Kp - K));
  }
  free(row);
  return 0;
}

/* ------------------------------------------------------------------ 4 rows x 16 channels tiles */

#if defined(INT8DOT_SDOT)
#define ROWS 4
/* 16 int32x4 accumulators (4 rows x 4 registers of 4 channels), 4 activation and 4 weight
 * registers: 24 of the 32 q-registers, no spills. Per 16 k: 4 + 16 loads, 64 SDOTs. */
static inline void tile(const int8_t *a, int64_t lda, const int8_t *w, int Kp, int32_t *out) {
  int32x4_t c00 = vdupq_n_s32(0), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00,
            c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
  for (int k = 0; k < Kp; k += KBLOCK) {
    const int8x16_t a0 = vld1q_s8(a + k), a1 = vld1q_s8(a + lda + k), a2 = vld1q_s8(a + 2 * lda + k),
                    a3 = vld1q_s8(a + 3 * lda + k);
    const int8_t *wk = w + (int64_t)k * NP;
#define SDOT_GROUP(g)                                                                                   \
  do {                                                                                                  \
    const int8x16_t w0 = vld1q_s8(wk + 64 * (g)), w1 = vld1q_s8(wk + 64 * (g) + 16),                    \
                    w2 = vld1q_s8(wk + 64 * (g) + 32), w3 = vld1q_s8(wk + 64 * (g) + 48);               \
    c00 = vdotq_laneq_s32(c00, w0, a0, g); c01 = vdotq_laneq_s32(c01, w1, a0, g);                       \
    c02 = vdotq_laneq_s32(c02, w2, a0, g); c03 = vdotq_laneq_s32(c03, w3, a0, g);                       \
    c10 = vdotq_laneq_s32(c10, w0, a1, g); c11 = vdotq_laneq_s32(c11, w1, a1, g);                       \
    c12 = vdotq_laneq_s32(c12, w2, a1, g); c13 = vdotq_laneq_s32(c13, w3, a1, g);                       \
    c20 = vdotq_laneq_s32(c20, w0, a2, g); c21 = vdotq_laneq_s32(c21, w1, a2, g);                       \
    c22 = vdotq_laneq_s32(c22, w2, a2, g); c23 = vdotq_laneq_s32(c23, w3, a2, g);                       \
    c30 = vdotq_laneq_s32(c30, w0, a3, g); c31 = vdotq_laneq_s32(c31, w1, a3, g);                       \
    c32 = vdotq_laneq_s32(c32, w2, a3, g); c33 = vdotq_laneq_s32(c33, w3, a3, g);                       \
  } while (0)
    SDOT_GROUP(0);
    SDOT_GROUP(1);
    SDOT_GROUP(2);
    SDOT_GROUP(3);
#undef SDOT_GROUP
  }
  vst1q_s32(out + 0, c00), vst1q_s32(out + 4, c01), vst1q_s32(out + 8, c02), vst1q_s32(out + 12, c03);
  vst1q_s32(out + 16, c10), vst1q_s32(out + 20, c11), vst1q_s32(out + 24, c12), vst1q_s32(out + 28, c13);
  vst1q_s32(out + 32, c20), vst1q_s32(out + 36, c21), vst1q_s32(out + 40, c22), vst1q_s32(out + 44, c23);
  vst1q_s32(out + 48, c30), vst1q_s32(out + 52, c31), vst1q_s32(out + 56, c32), vst1q_s32(out + 60, c33);
}

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
