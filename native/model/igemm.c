/* model.so micro-kernel: the 8-bit integer GEMM (patch embedding) as a C micro-kernel behind the TVM kernel
 * `int_gemm` (compile/kernels.py: int_linear_c), for layers without a fused epilogue.
 *
 * y[m, n] = scale[n] * float(sum_k a[m, k] w[n, k]) + bias[n], a the int16 codes minus zero point,
 * w the int8 weights stored as int16 pairs [N / 16][K / 2][16][2] (compile/packing.py: int16_panel),
 * so one multiply-add of 16 lanes x 2 takes a broadcast pair of a row's codes against 16 channels
 * (AVX-512 VNNI vpdpwssd / AVX-512BW vpmaddwd). NEON: the pairs de-interleaved on load (LD2) into a
 * k-even and a k-odd vector of 8 channels, each multiplied by a lane of the row's codes (SMLAL by
 * element, 4 rows x 16 channels of int32 sums). Plain C elsewhere. The integer sums are exact; the
 * epilogue is the reference's float32 order. One call computes one 16-channel panel for all rows.
 */
#include "../qv_arith.h"

#if defined(QV_NEON) && !defined(QVIT_IGEMM_PORTABLE)
#define IGEMM_NEON 1
/* acc[q] (channels 4q..4q+3) += codes x0 (k even), x1 (k odd) against the LD2-split weights */
#define IGEMM_MAC(acc, we, wo, av, le, lo)                                         \
  do {                                                                             \
    acc[0] = vmlal_laneq_s16(acc[0], vget_low_s16(we[0]), av, le);                 \
    acc[1] = vmlal_high_laneq_s16(acc[1], we[0], av, le);                          \
    acc[2] = vmlal_laneq_s16(acc[2], vget_low_s16(we[1]), av, le);                 \
    acc[3] = vmlal_high_laneq_s16(acc[3], we[1], av, le);                          \
    acc[0] = vmlal_laneq_s16(acc[0], vget_low_s16(wo[0]), av, lo);                 \
    acc[1] = vmlal_high_laneq_s16(acc[1], wo[0], av, lo);                          \
    acc[2] = vmlal_laneq_s16(acc[2], vget_low_s16(wo[1]), av, lo);                 \
    acc[3] = vmlal_high_laneq_s16(acc[3], wo[1], av, lo);                          \
  } while (0)
#endif

int32_t qvit_int_gemm_panel(int32_t panel, int32_t M, int32_t N, int32_t K, const int16_t *a, const int16_t *wp,
                            const float *scale, const float *bias, float *y) {
  const int K2 = K / 2, c0 = panel * 16;
  const int16_t *w = wp + (int64_t)panel * K2 * 32;
  int r = 0;
#if defined(__AVX512BW__)
  const __m512 sc = _mm512_loadu_ps(scale + c0), bi = _mm512_loadu_ps(bias + c0);
  for (; r + 4 <= M; r += 4) {
    __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                      _mm512_setzero_si512()};
    const int16_t *ar = a + (int64_t)r * K;
    for (int k = 0; k < K2; k++) {
      const __m512i wv = _mm512_loadu_si512((const void *)(w + (int64_t)k * 32));
      for (int i = 0; i < 4; i++) {
        int32_t pair;
        memcpy(&pair, ar + (int64_t)i * K + 2 * k, 4);
#if defined(__AVX512VNNI__)
        acc[i] = _mm512_dpwssd_epi32(acc[i], _mm512_set1_epi32(pair), wv);
#else
        acc[i] = _mm512_add_epi32(acc[i], _mm512_madd_epi16(_mm512_set1_epi32(pair), wv));
#endif
      }
    }
    for (int i = 0; i < 4; i++)
      _mm512_storeu_ps(y + (int64_t)(r + i) * N + c0,
                       _mm512_add_ps(_mm512_mul_ps(sc, _mm512_cvtepi32_ps(acc[i])), bi));
  }
#endif
#if defined(IGEMM_NEON)
  if (K2 % 4 == 0) {
    const float32x4_t sc[4] = {vld1q_f32(scale + c0), vld1q_f32(scale + c0 + 4), vld1q_f32(scale + c0 + 8),
                               vld1q_f32(scale + c0 + 12)};
    const float32x4_t bi[4] = {vld1q_f32(bias + c0), vld1q_f32(bias + c0 + 4), vld1q_f32(bias + c0 + 8),
                               vld1q_f32(bias + c0 + 12)};
    for (; r + 4 <= M; r += 4) {
      int32x4_t acc[4][4];
      for (int i = 0; i < 4; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = vdupq_n_s32(0);
      const int16_t *ar = a + (int64_t)r * K;
      for (int k = 0; k < K2; k += 4) { /* 8 codes of each row: 4 pairs, one lane each */
        int16x8_t av[4];
        for (int i = 0; i < 4; i++) av[i] = vld1q_s16(ar + (int64_t)i * K + 2 * k);
#define IGEMM_STEP(t)                                                                  \
  {                                                                                    \
    const int16x8x2_t lo = vld2q_s16(w + (int64_t)(k + t) * 32), hi = vld2q_s16(w + (int64_t)(k + t) * 32 + 16); \
    const int16x8_t we[2] = {lo.val[0], hi.val[0]}, wo[2] = {lo.val[1], hi.val[1]};  \
    for (int i = 0; i < 4; i++) IGEMM_MAC(acc[i], we, wo, av[i], 2 * t, 2 * t + 1);   \
  }
        IGEMM_STEP(0) IGEMM_STEP(1) IGEMM_STEP(2) IGEMM_STEP(3)
#undef IGEMM_STEP
      }
      for (int i = 0; i < 4; i++)
        for (int q = 0; q < 4; q++)
          vst1q_f32(y + (int64_t)(r + i) * N + c0 + 4 * q,
                    vaddq_f32(vmulq_f32(sc[q], vcvtq_f32_s32(acc[i][q])), bi[q]));
    }
  }
#endif
  for (; r < M; r++) {
    int32_t acc[16] = {0};
    const int16_t *ar = a + (int64_t)r * K;
    for (int k = 0; k < K2; k++)
      for (int l = 0; l < 16; l++)
        acc[l] += (int32_t)ar[2 * k] * w[(int64_t)k * 32 + 2 * l] + (int32_t)ar[2 * k + 1] * w[(int64_t)k * 32 + 2 * l + 1];
    for (int l = 0; l < 16; l++) y[(int64_t)r * N + c0 + l] = scale[c0 + l] * (float)acc[l] + bias[c0 + l];
  }
  return 0;
}
