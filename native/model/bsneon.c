/* model.so micro-kernel: the `bitserial-neon` GEMM engine (compile/engines.py), the C micro-kernel behind the
 * TVM kernel `bsneon_gemm` (compile/kernels.py: bsneon_linear), for Arm cores without the dot
 * product (Cortex-A72 / Pi 4, A53), where AND/popcount over bit planes beats int8 multiplies.
 *
 * Same integers as kernels.bitserial_linear, from the same activation planes (pack kernel,
 * [ab, Mpad, KW] uint64) and weight planes [ceil(N/16) * 2, wb, KW, 8] (packing.weight_panel with 8
 * channels per panel, N padded to 16): sum_k a w = sum_{i,j} c_ij popcount(A_i & W_j), c_ij = 2^(i+j),
 * negative for the two's complement sign plane; 1-bit weights {-1,+1} stored as bits: a w = 2 a bit - a.
 *
 * NEON: CNT gives per-byte counts; they add up in uint8 for up to 31 words (8 * 31 < 256), then
 * widen pairwise into uint16 (UADALP; up to 4095 words), and once per plane pair into the int32
 * totals, shifted by the plane weight. A tile is 2 rows x 8 channels: 8 byte counters, 8 uint16
 * sums, 8 totals, 4 weight and 2 activation registers. Elsewhere: the same sums with popcount in C.
 */
#include "epilogue.h"

#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(QVIT_BSNEON_PORTABLE)
#include <arm_neon.h>
#define BSNEON_NEON 1
#endif

#define FLUSH 31
#define NB 8 /* channels per weight panel */

int32_t qvit_bsneon_path(void) {
#if defined(BSNEON_NEON)
  return 1;
#else
  return 0;
#endif
}

#if defined(BSNEON_NEON)
/* One plane pair of a 2 x 8 tile over words [k0, k1): the byte counts of x_r & w_j added to c (at
 * most 8 (k1 - k0) per byte). */
static inline __attribute__((always_inline)) void pair2x8(const uint64_t *pa0, const uint64_t *pa1,
                                                          const uint64_t *pw, int k0, int k1, uint8x16_t c[2][4]) {
  for (int k = k0; k < k1; k++) {
    const uint8x16_t b0 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB)),
                     b1 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB + 2)),
                     b2 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB + 4)),
                     b3 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB + 6));
    const uint8x16_t x0 = vreinterpretq_u8_u64(vld1q_dup_u64(pa0 + k));
    const uint8x16_t x1 = vreinterpretq_u8_u64(vld1q_dup_u64(pa1 + k));
    c[0][0] = vaddq_u8(c[0][0], vcntq_u8(vandq_u8(x0, b0)));
    c[0][1] = vaddq_u8(c[0][1], vcntq_u8(vandq_u8(x0, b1)));
    c[0][2] = vaddq_u8(c[0][2], vcntq_u8(vandq_u8(x0, b2)));
    c[0][3] = vaddq_u8(c[0][3], vcntq_u8(vandq_u8(x0, b3)));
    c[1][0] = vaddq_u8(c[1][0], vcntq_u8(vandq_u8(x1, b0)));
    c[1][1] = vaddq_u8(c[1][1], vcntq_u8(vandq_u8(x1, b1)));
    c[1][2] = vaddq_u8(c[1][2], vcntq_u8(vandq_u8(x1, b2)));
    c[1][3] = vaddq_u8(c[1][3], vcntq_u8(vandq_u8(x1, b3)));
  }
}

/* Whether horner2x8 holds the sums of a shape in its int16 lanes: a lane (two bytes of one
 * channel) ends within [-16 KW (2^ab - 1) 2^(wb-1), 16 KW (2^ab - 1) 2^(wb-1)). */
static inline int horner_fits(int KW, int ab, int wb) {
  return 16LL * KW * ((1 << ab) - 1) * (1 << (wb > 1 ? wb - 1 : 1)) <= 32768;
}

/* tile2x8 by plane weight levels s = i + j, Horner-style: the 16-bit sums are doubled once per
 * level (not a shift and a widening to 32 bits per plane pair), each plane pair's byte counts
 * added (or, sign plane, subtracted) into them once per 31 words. The lanes wrap modulo 2^16 in
 * between; horner_fits bounds the final value, which is what the lanes then hold. */
static inline __attribute__((always_inline)) void horner2x8(const uint64_t *a0, int64_t aplane, const uint64_t *w,
                                                            const int KW, const int ab, const int wb,
                                                            int32_t *out /* [2][16] */) {
  uint16x8_t h[2][4];
  for (int r = 0; r < 2; r++)
    for (int t = 0; t < 4; t++) h[r][t] = vdupq_n_u16(0);
  for (int s = ab + wb - 2; s >= 0; s--) {
    if (s < ab + wb - 2)
      for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) h[r][t] = vshlq_n_u16(h[r][t], 1);
    for (int i = s < wb ? 0 : s - wb + 1; i <= s && i < ab; i++) {
      const int j = s - i, neg = wb > 1 && j == wb - 1;
      const uint64_t *pa0 = a0 + i * aplane, *pw = w + (int64_t)j * KW * NB;
      for (int k0 = 0; k0 < KW; k0 += FLUSH) {
        const int k1 = KW - k0 < FLUSH ? KW : k0 + FLUSH;
        uint8x16_t c[2][4];
        for (int r = 0; r < 2; r++)
          for (int t = 0; t < 4; t++) c[r][t] = vdupq_n_u8(0);
        pair2x8(pa0, pa0 + KW, pw, k0, k1, c);
        for (int r = 0; r < 2; r++)
          for (int t = 0; t < 4; t++)
            h[r][t] = neg ? vsubq_u16(h[r][t], vpaddlq_u8(c[r][t])) : vpadalq_u8(h[r][t], c[r][t]);
      }
    }
  }
  for (int r = 0; r < 2; r++) {
    int32x4_t x[4];
    for (int t = 0; t < 4; t++) { /* lanes 0, 1: channel 2t; 2, 3: channel 2t + 1 */
      x[t] = vpaddlq_s16(vreinterpretq_s16_u16(h[r][t]));
      if (wb == 1) x[t] = vshlq_n_s32(x[t], 1); /* 1-bit weights: plane weight 2^(i+1) */
    }
    vst1q_s32(out + 16 * r, vpaddq_s32(x[0], x[1]));
    vst1q_s32(out + 16 * r + 4, vpaddq_s32(x[2], x[3]));
  }
}
#endif

/* rows r, r+1 (plane 0 at a0, a0 + KW; plane i at + i * aplane) x the 8 channels of panel w
 * ([wb][KW][8]) -> out[2][16] at column offset (out already offset): plane pair by plane pair, each
 * widened to 32 bits (any shape; horner2x8 where its sums fit 16 bits). */
static inline void tile2x8_pairs(const uint64_t *a0, int64_t aplane, const uint64_t *w, int KW, int ab, int wb,
                           int32_t *out /* [2][16] */) {
#if defined(BSNEON_NEON)
  int32x4_t tot[2][4];
  for (int r = 0; r < 2; r++)
    for (int t = 0; t < 4; t++) tot[r][t] = vdupq_n_s32(0);
  for (int i = 0; i < ab; i++) {
    const uint64_t *pa0 = a0 + i * aplane, *pa1 = pa0 + KW;
    for (int j = 0; j < wb; j++) {
      const uint64_t *pw = w + (int64_t)j * KW * NB;
      const int32x4_t sh = vdupq_n_s32(wb == 1 ? i + 1 : i + j);
      const int neg = wb > 1 && j == wb - 1;
      if (KW <= FLUSH) { /* every DeiT layer (K <= 1984): one pass of byte counters, no uint16 stage */
        uint8x16_t c[2][4];
        for (int r = 0; r < 2; r++)
          for (int t = 0; t < 4; t++) c[r][t] = vdupq_n_u8(0);
        pair2x8(pa0, pa1, pw, 0, KW, c);
        for (int r = 0; r < 2; r++)
          for (int t = 0; t < 4; t++) {
            const int32x4_t x = vshlq_s32(vreinterpretq_s32_u32(vpaddlq_u16(vpaddlq_u8(c[r][t]))), sh);
            tot[r][t] = neg ? vsubq_s32(tot[r][t], x) : vaddq_s32(tot[r][t], x);
          }
        continue;
      }
      uint16x8_t wide[2][4];
      for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) wide[r][t] = vdupq_n_u16(0);
      for (int w0 = 0; w0 < KW; w0 += FLUSH) {
        const int w1 = KW - w0 < FLUSH ? KW : w0 + FLUSH;
        uint8x16_t c00 = vdupq_n_u8(0), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00,
                   c13 = c00;
        for (int k = w0; k < w1; k++) {
          const uint8x16_t b0 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB)),
                           b1 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB + 2)),
                           b2 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB + 4)),
                           b3 = vreinterpretq_u8_u64(vld1q_u64(pw + k * NB + 6));
          const uint8x16_t x0 = vreinterpretq_u8_u64(vld1q_dup_u64(pa0 + k));
          const uint8x16_t x1 = vreinterpretq_u8_u64(vld1q_dup_u64(pa1 + k));
          c00 = vaddq_u8(c00, vcntq_u8(vandq_u8(x0, b0)));
          c01 = vaddq_u8(c01, vcntq_u8(vandq_u8(x0, b1)));
          c02 = vaddq_u8(c02, vcntq_u8(vandq_u8(x0, b2)));
          c03 = vaddq_u8(c03, vcntq_u8(vandq_u8(x0, b3)));
          c10 = vaddq_u8(c10, vcntq_u8(vandq_u8(x1, b0)));
          c11 = vaddq_u8(c11, vcntq_u8(vandq_u8(x1, b1)));
          c12 = vaddq_u8(c12, vcntq_u8(vandq_u8(x1, b2)));
          c13 = vaddq_u8(c13, vcntq_u8(vandq_u8(x1, b3)));
        }
        wide[0][0] = vpadalq_u8(wide[0][0], c00), wide[0][1] = vpadalq_u8(wide[0][1], c01);
        wide[0][2] = vpadalq_u8(wide[0][2], c02), wide[0][3] = vpadalq_u8(wide[0][3], c03);
        wide[1][0] = vpadalq_u8(wide[1][0], c10), wide[1][1] = vpadalq_u8(wide[1][1], c11);
        wide[1][2] = vpadalq_u8(wide[1][2], c12), wide[1][3] = vpadalq_u8(wide[1][3], c13);
      }
      for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) {
          /* lanes 0, 1: channel 2t; 2, 3: channel 2t + 1 */
          const int32x4_t x = vshlq_s32(vreinterpretq_s32_u32(vpaddlq_u16(wide[r][t])), sh);
          tot[r][t] = neg ? vsubq_s32(tot[r][t], x) : vaddq_s32(tot[r][t], x);
        }
    }
  }
  for (int r = 0; r < 2; r++) {
    vst1q_s32(out + 16 * r, vpaddq_s32(tot[r][0], tot[r][1]));
    vst1q_s32(out + 16 * r + 4, vpaddq_s32(tot[r][2], tot[r][3]));
  }
#else
  for (int r = 0; r < 2; r++)
    for (int l = 0; l < NB; l++) {
      int64_t s = 0;
      for (int i = 0; i < ab; i++)
        for (int j = 0; j < wb; j++) {
          const uint64_t *pa = a0 + r * KW + i * aplane, *pw = w + (int64_t)j * KW * NB + l;
          int64_t c = 0;
          for (int k = 0; k < KW; k++) c += __builtin_popcountll(pa[k] & pw[(int64_t)k * NB]);
          c <<= wb == 1 ? i + 1 : i + j;
          s += wb > 1 && j == wb - 1 ? -c : c;
        }
      out[16 * r + l] = (int32_t)s;
    }
#endif
}

#if defined(BSNEON_NEON)
/* 2-bit activations x 2-bit weights (W2A2), one row x the 8 channels of panel w: all four plane
 * pairs in one pass over the words (16 byte counters, each activation word and weight word loaded
 * once), flushed into 16-bit sums once per 31 words: sum = c00 + 2 (c10 - c01) - 4 c11 (c_ij: plane
 * i of the row against weight plane j, the sign plane). */
static inline void tile1x8_22(const uint64_t *a0, int64_t aplane, const uint64_t *w, const int KW, int32_t *out) {
  const uint64_t *a1 = a0 + aplane, *w1 = w + (int64_t)KW * NB;
  int16x8_t h[4];
  for (int t = 0; t < 4; t++) h[t] = vdupq_n_s16(0);
  for (int k0 = 0; k0 < KW; k0 += FLUSH) {
    const int k1 = KW - k0 < FLUSH ? KW : k0 + FLUSH;
    uint8x16_t c00[4], c01[4], c10[4], c11[4];
    for (int t = 0; t < 4; t++) c00[t] = c01[t] = c10[t] = c11[t] = vdupq_n_u8(0);
    for (int k = k0; k < k1; k++) {
      const uint8x16_t x0 = vreinterpretq_u8_u64(vld1q_dup_u64(a0 + k)),
                       x1 = vreinterpretq_u8_u64(vld1q_dup_u64(a1 + k));
      for (int t = 0; t < 4; t++) {
        const uint8x16_t b0 = vreinterpretq_u8_u64(vld1q_u64(w + k * NB + 2 * t)),
                         b1 = vreinterpretq_u8_u64(vld1q_u64(w1 + k * NB + 2 * t));
        c00[t] = vaddq_u8(c00[t], vcntq_u8(vandq_u8(x0, b0)));
        c01[t] = vaddq_u8(c01[t], vcntq_u8(vandq_u8(x0, b1)));
        c10[t] = vaddq_u8(c10[t], vcntq_u8(vandq_u8(x1, b0)));
        c11[t] = vaddq_u8(c11[t], vcntq_u8(vandq_u8(x1, b1)));
      }
    }
    for (int t = 0; t < 4; t++) {
      int16x8_t d = vreinterpretq_s16_u16(vsubq_u16(vpaddlq_u8(c10[t]), vpaddlq_u8(c01[t])));
      d = vsubq_s16(d, vreinterpretq_s16_u16(vshlq_n_u16(vpaddlq_u8(c11[t]), 1)));
      h[t] = vaddq_s16(h[t], vreinterpretq_s16_u16(vpadalq_u8(vreinterpretq_u16_s16(vshlq_n_s16(d, 1)), c00[t])));
    }
  }
  int32x4_t x[4];
  for (int t = 0; t < 4; t++) x[t] = vpaddlq_s16(h[t]); /* lanes 0, 1: channel 2t; 2, 3: channel 2t + 1 */
  vst1q_s32(out, vpaddq_s32(x[0], x[1]));
  vst1q_s32(out + 4, vpaddq_s32(x[2], x[3]));
}
#endif

/* tile2x8_pairs' sums, by horner2x8 where they fit, with the plane counts of the common shapes
 * as constants (the level and pair loops unroll) */
static inline void tile2x8(const uint64_t *a0, int64_t aplane, const uint64_t *w, int KW, int ab, int wb,
                           int32_t *out) {
#if defined(BSNEON_NEON)
  if (horner_fits(KW, ab, wb)) {
    if (ab == 2 && wb == 2) horner2x8(a0, aplane, w, KW, 2, 2, out);
    else if (ab == 3 && wb == 3) horner2x8(a0, aplane, w, KW, 3, 3, out);
    else if (ab == 4 && wb == 4) horner2x8(a0, aplane, w, KW, 4, 4, out);
    else horner2x8(a0, aplane, w, KW, ab, wb, out);
    return;
  }
#endif
  tile2x8_pairs(a0, aplane, w, KW, ab, wb, out);
}

/* One group of 16 channels (weight panels 2 g and 2 g + 1) for all rows -> y[:, 16 g ..] (< N). */
int32_t qvit_bsneon_group(int32_t g, int32_t M, int32_t Mpad, int32_t N, int32_t KW, int32_t ab, int32_t wb,
                          int32_t epi, int32_t has_clip, float clip, const uint64_t *planes, const uint64_t *wpanel,
                          const float *scale, const int32_t *corr, const float *bias, const float *res, float *y) {
  const int64_t aplane = (int64_t)Mpad * KW, wstride = (int64_t)wb * KW * NB;
  const uint64_t *w0 = wpanel + (int64_t)(2 * g) * wstride, *w1 = w0 + wstride;
  int32_t acc[2 * 16] __attribute__((aligned(64)));
#if defined(BSNEON_NEON)
  const int one_row = ab == 2 && wb == 2 && horner_fits(KW, 2, 2);
#else
  const int one_row = 0;
#endif
  for (int r = 0; r < M; r += 2) { /* Mpad is even: row r + 1 exists (zero codes when >= M) */
    const uint64_t *a = planes + (int64_t)r * KW;
    if (one_row) {
#if defined(BSNEON_NEON)
      for (int i = 0; i < 2 && r + i < M; i++) {
        tile1x8_22(a + i * KW, aplane, w0, KW, acc + 16 * i);
        tile1x8_22(a + i * KW, aplane, w1, KW, acc + 16 * i + NB);
      }
#endif
    } else {
      tile2x8(a, aplane, w0, KW, ab, wb, acc);
      tile2x8(a, aplane, w1, KW, ab, wb, acc + NB);
    }
    for (int i = 0; i < 2 && r + i < M; i++) {
      if (wb == 1) { /* a w = 2 a bit - a: minus the row's code sum */
        const int32_t s = plane_sum(a + i * KW, aplane, KW, ab);
        for (int l = 0; l < 16; l++) acc[16 * i + l] -= s;
      }
      const int64_t row = (int64_t)(r + i) * N;
      epilogue_row16(acc + 16 * i, 16 * g, N, epi, has_clip, clip, scale, corr, bias, epi == EPI_ADD ? res + row : 0,
                     y + row);
    }
  }
  return 0;
}
