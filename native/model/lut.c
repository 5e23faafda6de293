/* model.so micro-kernel: the `lut-neon` GEMM engine (compile/engines.py), the C micro-kernel behind the
 * TVM kernel `lut_gemm` (compile/kernels.py: lut_linear): table lookups (NEON TBL) in place of
 * bit-serial AND/popcount, for Arm cores without the dot product (Cortex-A72 / Pi 4, A53).
 *
 * Same integers as kernels.bitserial_linear: sum_k a_k w_k with a the unsigned activation codes
 * (int8dot's codes buffer, [Mpad, Kp], Kp a multiple of 16) and w the signed weight codes as two's
 * complement bit planes (top plane weighted -2^(wb-1); 1-bit weights {-1, +1} stored as the bit,
 * a w = 2 a bit - a). Per row and group of 4 k, a 16-byte table holds the sums of the group's
 * codes over every subset: tab[g][s] = sum_{t < 4, bit t of s} a_{4g+t} (<= 4 * 15 = 60). A weight
 * plane's 4 bits of a group are an index into it, so one TBL gives 16 channels' partial sums for
 * 4 k of one plane, whatever the activation width: (wb TBLs) per 4 k x 16 channels, against
 * ab * wb AND + CNT pairs per 64 k x 2 channels in the bit-serial kernel, which wins below 3 bits.
 *
 * Weight panels [ceil(N/16), wb, Kp/8, 16] uint8 (packing.lut_panel): byte [p, j, h, l] holds the
 * index of groups 2h (low nibble) and 2h + 1 (high nibble) of plane j for channel 16 p + l.
 * A call does 2 rows against every panel: the rows' tables (8 Kp bytes) are built once and stay in
 * L1 while the weights stream. Per plane, the lookups add up in uint8 for 4 groups (<= 240), then
 * widen into uint16 (<= 60 Kp / 4, so Kp <= 4368; longer rows take the portable loop) and, plane by
 * plane, Horner-style into the int32 sums.
 */
#include "epilogue.h"

#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(QVIT_LUT_PORTABLE)
#include <arm_neon.h>
#define LUT_NEON 1
#endif

#define LUT_KMAX 4368 /* 60 * 4368 / 4 = 65520: one plane's uint16 sums cannot wrap */

int32_t qvit_lut_path(void) {
#if defined(LUT_NEON)
  return 1;
#else
  return 0;
#endif
}

/* The tables of one row: tab[g][s] for g < Kp / 4; returns the row's code sum. */
static int32_t build_tables(const uint8_t *a, int Kp, uint8_t *tab) {
  int32_t sum = 0;
#if defined(LUT_NEON)
  static const uint8_t bits[4][16] = {
      {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1}, {0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1},
      {0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1}, {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1}};
  const uint8x16_t b0 = vld1q_u8(bits[0]), b1 = vld1q_u8(bits[1]), b2 = vld1q_u8(bits[2]), b3 = vld1q_u8(bits[3]);
  for (int g = 0; g < Kp / 4; g++) {
    const uint8_t *x = a + 4 * g;
    uint8x16_t t = vmulq_u8(b0, vdupq_n_u8(x[0]));
    t = vmlaq_u8(t, b1, vdupq_n_u8(x[1]));
    t = vmlaq_u8(t, b2, vdupq_n_u8(x[2]));
    t = vmlaq_u8(t, b3, vdupq_n_u8(x[3]));
    vst1q_u8(tab + 16 * g, t);
    sum += x[0] + x[1] + x[2] + x[3];
  }
#else
  for (int g = 0; g < Kp / 4; g++) {
    const uint8_t *x = a + 4 * g;
    for (int s = 0; s < 16; s++)
      tab[16 * g + s] = (uint8_t)((s & 1 ? x[0] : 0) + (s & 2 ? x[1] : 0) + (s & 4 ? x[2] : 0) + (s & 8 ? x[3] : 0));
    sum += x[0] + x[1] + x[2] + x[3];
  }
#endif
  return sum;
}

/* acc[r][l] (2 rows x 16 channels) = sum over planes j of c_j sum_g tab_r[g][idx_j(l, g)],
 * c_j = 2^j (-2^(wb-1) for the sign plane of wb > 1) */
static void tile2x16(const uint8_t *tab0, const uint8_t *tab1, const uint8_t *w, int Kp, int wb, int32_t *acc) {
  const int H = Kp / 8; /* index bytes per plane and channel */
#if defined(LUT_NEON)
  if (Kp <= LUT_KMAX) {
    int32x4_t c[2][4];
    for (int r = 0; r < 2; r++)
      for (int q = 0; q < 4; q++) c[r][q] = vdupq_n_s32(0);
    const uint8x16_t lo4 = vdupq_n_u8(0x0f);
    for (int j = wb - 1; j >= 0; j--) {
      const uint8_t *wj = w + (int64_t)j * H * 16;
      uint16x8_t s[2][2];
      for (int r = 0; r < 2; r++) s[r][0] = s[r][1] = vdupq_n_u16(0);
      for (int h0 = 0; h0 < H; h0 += 2) { /* 4 groups per uint8 round (<= 240) */
        uint8x16_t u0 = vdupq_n_u8(0), u1 = u0;
        for (int h = h0; h < h0 + 2; h++) { /* H is even: Kp is a multiple of 16 */
          const uint8x16_t idx = vld1q_u8(wj + 16 * h);
          const uint8x16_t i0 = vandq_u8(idx, lo4), i1 = vshrq_n_u8(idx, 4);
          u0 = vaddq_u8(u0, vqtbl1q_u8(vld1q_u8(tab0 + 32 * h), i0));
          u1 = vaddq_u8(u1, vqtbl1q_u8(vld1q_u8(tab1 + 32 * h), i0));
          u0 = vaddq_u8(u0, vqtbl1q_u8(vld1q_u8(tab0 + 32 * h + 16), i1));
          u1 = vaddq_u8(u1, vqtbl1q_u8(vld1q_u8(tab1 + 32 * h + 16), i1));
        }
        s[0][0] = vaddw_u8(s[0][0], vget_low_u8(u0));
        s[0][1] = vaddw_high_u8(s[0][1], u0);
        s[1][0] = vaddw_u8(s[1][0], vget_low_u8(u1));
        s[1][1] = vaddw_high_u8(s[1][1], u1);
      }
      /* Horner over planes: c = 2 c + s_j, the sign plane (first) entering negated */
      const int neg = wb > 1 && j == wb - 1;
      for (int r = 0; r < 2; r++)
        for (int q = 0; q < 4; q++) {
          const uint16x4_t part = q & 1 ? vget_high_u16(s[r][q >> 1]) : vget_low_u16(s[r][q >> 1]);
          const int32x4_t v = vreinterpretq_s32_u32(vmovl_u16(part));
          c[r][q] = neg ? vnegq_s32(v) : vaddq_s32(vshlq_n_s32(c[r][q], 1), v);
        }
    }
    for (int r = 0; r < 2; r++)
      for (int q = 0; q < 4; q++) vst1q_s32(acc + 16 * r + 4 * q, c[r][q]);
    return;
  }
#endif
  for (int r = 0; r < 2; r++) {
    const uint8_t *tab = r ? tab1 : tab0;
    for (int l = 0; l < 16; l++) {
      int64_t c = 0;
      for (int j = wb - 1; j >= 0; j--) {
        const uint8_t *wj = w + (int64_t)j * H * 16 + l;
        int64_t s = 0;
        for (int h = 0; h < H; h++) {
          const uint8_t b = wj[16 * h];
          s += tab[32 * h + (b & 15)] + tab[32 * h + 16 + (b >> 4)];
        }
        c = wb > 1 && j == wb - 1 ? -s : 2 * c + s;
      }
      acc[16 * r + l] = (int32_t)c;
    }
  }
}

/* Rows 2 rb and 2 rb + 1 (those < M) against every 16-channel panel -> y[row, :]. Mpad is even (row
 * 2 rb + 1 exists, zero codes when >= M). Returns 0, or -1 when scratch memory cannot be had. */
int32_t qvit_lut_rows(int32_t rb, int32_t M, int32_t Mpad, int32_t N, int32_t Kp, int32_t ab, int32_t wb,
                      int32_t epi, int32_t has_clip, float clip, const int8_t *codes, const uint8_t *wpanel,
                      const float *scale, const int32_t *corr, const float *bias, const float *res, float *y) {
  (void)ab;
  (void)Mpad;
  const int r0 = 2 * rb;
  uint8_t *tab = (uint8_t *)malloc((size_t)8 * Kp);
  if (!tab) return -1;
  uint8_t *tab1 = tab + 4 * (int64_t)Kp;
  int32_t rsum[2];
  rsum[0] = build_tables((const uint8_t *)codes + (int64_t)r0 * Kp, Kp, tab);
  rsum[1] = build_tables((const uint8_t *)codes + (int64_t)(r0 + 1) * Kp, Kp, tab1);
  const int64_t pstride = (int64_t)wb * (Kp / 8) * 16;
  int32_t acc[2 * 16] __attribute__((aligned(64)));
  for (int p = 0; p < (N + 15) / 16; p++) {
    tile2x16(tab, tab1, wpanel + p * pstride, Kp, wb, acc);
    for (int i = 0; i < 2 && r0 + i < M; i++) {
      if (wb == 1) /* a w = 2 a bit - a: the tile holds sum a bit */
        for (int l = 0; l < 16; l++) acc[16 * i + l] = 2 * acc[16 * i + l] - rsum[i];
      const int64_t row = (int64_t)(r0 + i) * N;
      epilogue_row16(acc + 16 * i, 16 * p, N, epi, has_clip, clip, scale, corr, bias, epi == EPI_ADD ? res + row : 0,
                     y + row);
    }
  }
  free(tab);
  return 0;
}
