/* aarch64 NEON kernels: bit-serial GEMM with CNT + pairwise widening accumulation, int8 GEMM
 * with SDOT (CPUs with the dot-product extension, e.g. Cortex-A76 / Pi 5) or SMULL + SADALP
 * (Cortex-A72 / Pi 4). NEON has signed x signed dot products only, so unsigned activation
 * codes enter as a - 128 (exact in int8); the driver adds 128 * sum(b) back (i8_bias128). */
#include "../qv_internal.h"
#ifdef QV_HAVE_NEON
#include <arm_neon.h>
#include <string.h>

#define MR 4
#define FLUSH 31  /* byte counters: at most 8 per word, 31 * 8 = 248 < 256 */

/* MR_ (<= 2) rows x one block of 8 outputs (four uint64x2 lanes pairs). Byte counters collect
 * CNT results for up to 31 words, then widen pairwise (UADDLP, UADALP) into per-lane 64-bit
 * sums; the plane pair's sum is shifted into a running total, all in vector registers
 * (2 rows: 8 byte counters + 8 wide sums + 8 totals + 4 B words + 1 A word = 29 of 32). */
#define BS_MR 2
QV_INLINE void bs_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_, int32_t *tile /* [BS_MR][8] */) {
  const int64_t kw = g->kw;
  const int ab = g->a_bits, bb = g->b_bits;
  const int binary_w = g->b_signed && bb == 1;
  int64x2_t tot[BS_MR][4];
  for (int r = 0; r < MR_; r++)
    for (int t = 0; t < 4; t++) tot[r][t] = vdupq_n_s64(0);
  for (int i = 0; i < ab; i++) {
    const uint64_t *a[BS_MR];
    for (int r = 0; r < MR_; r++) a[r] = g->a_planes + ((m + r) * ab + i) * kw;
    for (int j = 0; j < bb; j++) {
      const uint64_t *b = g->b_planes + ((nb * bb + j) * kw) * QV_BS_NB;
      uint64x2_t wide[BS_MR][4];
      for (int r = 0; r < MR_; r++)
        for (int t = 0; t < 4; t++) wide[r][t] = vdupq_n_u64(0);
      for (int64_t w0 = 0; w0 < kw; w0 += FLUSH) {
        const int64_t w1 = kw - w0 < FLUSH ? kw : w0 + FLUSH;
        uint8x16_t cnt[BS_MR][4];
        for (int r = 0; r < MR_; r++)
          for (int t = 0; t < 4; t++) cnt[r][t] = vdupq_n_u8(0);
        for (int64_t w = w0; w < w1; w++) {
          uint8x16_t bw[4];
          for (int t = 0; t < 4; t++) bw[t] = vreinterpretq_u8_u64(vld1q_u64(b + w * QV_BS_NB + 2 * t));
          for (int r = 0; r < MR_; r++) {
            uint8x16_t av = vreinterpretq_u8_u64(vld1q_dup_u64(a[r] + w));
            for (int t = 0; t < 4; t++) cnt[r][t] = vaddq_u8(cnt[r][t], vcntq_u8(vandq_u8(av, bw[t])));
          }
        }
        for (int r = 0; r < MR_; r++)
          for (int t = 0; t < 4; t++) wide[r][t] = vpadalq_u32(wide[r][t], vpaddlq_u16(vpaddlq_u8(cnt[r][t])));
      }
      const int64x2_t sh = vdupq_n_s64(binary_w ? i + 1 : i + j);
      const int neg = !binary_w && g->b_signed && j == bb - 1;
      for (int r = 0; r < MR_; r++)
        for (int t = 0; t < 4; t++) {
          int64x2_t x = vshlq_s64(vreinterpretq_s64_u64(wide[r][t]), sh);
          tot[r][t] = neg ? vsubq_s64(tot[r][t], x) : vaddq_s64(tot[r][t], x);
        }
    }
  }
  for (int r = 0; r < MR_; r++)
    for (int t = 0; t < 4; t++) vst1_s32(tile + r * 8 + 2 * t, vmovn_s64(tot[r][t]));
}

void qv_bs_block_neon(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  int32_t tile[BS_MR * 8];
  for (int64_t nb = nb0; nb < nb1; nb++) {
    const int64_t n0 = nb * QV_BS_NB;
    const int cols = (int)(g->n - n0 < QV_BS_NB ? g->n - n0 : QV_BS_NB);
    for (int64_t m = m0; m < m1; m += BS_MR) {
      const int rows = m1 - m < BS_MR ? 1 : BS_MR;
      if (rows == 2) bs_tile(g, m, nb, 2, tile); else bs_tile(g, m, nb, 1, tile);
      qv_epilogue_neon(g, tile, 8, m, rows, n0, cols);
    }
  }
}

QV_INLINE uint32_t a4_biased(const uint8_t *p) {
  uint32_t a4;
  memcpy(&a4, p, 4);
  return a4 ^ 0x80808080u;  /* a - 128 as int8, per byte */
}

/* SDOT: MR_ rows x 16 outputs, four int32x4 accumulators per row. */
QV_INLINE QV_TARGET_DOT void i8dot_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_,
                                        int32_t *tile /* [MR][16] */) {
  const int64_t kq = g->kw;
  int32x4_t acc[MR][4];
  for (int r = 0; r < MR_; r++)
    for (int t = 0; t < 4; t++) acc[r][t] = vdupq_n_s32(0);
  const int8_t *b = g->b8 + nb * QV_I8_NB * kq * 4;
  for (int64_t q = 0; q < kq; q++) {
    int8x16_t bw[4];
    for (int t = 0; t < 4; t++) bw[t] = vld1q_s8(b + q * 64 + 16 * t);
    for (int r = 0; r < MR_; r++) {
      int8x16_t av = vreinterpretq_s8_u32(vdupq_n_u32(a4_biased(g->a8 + (m + r) * kq * 4 + q * 4)));
      for (int t = 0; t < 4; t++) acc[r][t] = vdotq_s32(acc[r][t], bw[t], av);
    }
  }
  for (int r = 0; r < MR_; r++)
    for (int t = 0; t < 4; t++) vst1q_s32(tile + r * 16 + 4 * t, acc[r][t]);
}

QV_TARGET_DOT void qv_i8_block_neon_dot(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  int32_t tile[MR * 16];
  for (int64_t nb = nb0; nb < nb1; nb++) {
    const int64_t n0 = nb * QV_I8_NB;
    const int cols = (int)(g->n - n0 < QV_I8_NB ? g->n - n0 : QV_I8_NB);
    for (int64_t m = m0; m < m1; m += MR) {
      const int rows = (int)(m1 - m < MR ? m1 - m : MR);
      switch (rows) {
        case 4: i8dot_tile(g, m, nb, 4, tile); break;
        case 3: i8dot_tile(g, m, nb, 3, tile); break;
        case 2: i8dot_tile(g, m, nb, 2, tile); break;
        default: i8dot_tile(g, m, nb, 1, tile); break;
      }
      qv_epilogue_neon(g, tile, 16, m, rows, n0, cols);
    }
  }
}

/* No SDOT: SMULL (int8 x int8 -> int16, |p| <= 16384) then SADALP into int32 pairs. */
QV_INLINE void i8mul_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_, int32_t *tile /* [2][16] */) {
  const int64_t kq = g->kw;
  int32x4_t acc[2][4][2];
  for (int r = 0; r < MR_; r++)
    for (int t = 0; t < 4; t++) acc[r][t][0] = acc[r][t][1] = vdupq_n_s32(0);
  const int8_t *b = g->b8 + nb * QV_I8_NB * kq * 4;
  for (int64_t q = 0; q < kq; q++) {
    int8x16_t bw[4];
    for (int t = 0; t < 4; t++) bw[t] = vld1q_s8(b + q * 64 + 16 * t);
    for (int r = 0; r < MR_; r++) {
      int8x8_t av = vreinterpret_s8_u32(vdup_n_u32(a4_biased(g->a8 + (m + r) * kq * 4 + q * 4)));
      for (int t = 0; t < 4; t++) {
        acc[r][t][0] = vpadalq_s16(acc[r][t][0], vmull_s8(vget_low_s8(bw[t]), av));   /* rows 4t, 4t+1 */
        acc[r][t][1] = vpadalq_s16(acc[r][t][1], vmull_s8(vget_high_s8(bw[t]), av));  /* rows 4t+2, 4t+3 */
      }
    }
  }
  for (int r = 0; r < MR_; r++)
    for (int t = 0; t < 4; t++) vst1q_s32(tile + r * 16 + 4 * t, vpaddq_s32(acc[r][t][0], acc[r][t][1]));
}

void qv_i8_block_neon(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  int32_t tile[2 * 16];
  for (int64_t nb = nb0; nb < nb1; nb++) {
    const int64_t n0 = nb * QV_I8_NB;
    const int cols = (int)(g->n - n0 < QV_I8_NB ? g->n - n0 : QV_I8_NB);
    for (int64_t m = m0; m < m1; m += 2) {
      const int rows = m1 - m < 2 ? 1 : 2;
      if (rows == 2) i8mul_tile(g, m, nb, 2, tile); else i8mul_tile(g, m, nb, 1, tile);
      qv_epilogue_neon(g, tile, 16, m, rows, n0, cols);
    }
  }
}

void qv_packrow_neon(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride) {
  pack_row_k(codes, k, bits, out, stride, plane_word);
}

void qv_epilogue_neon(const qv_gemm_ctx *g, const int32_t *tile, int ldt, int64_t m0, int rows, int64_t n0,
                      int cols) {
  const qv_epilogue *ep = g->ep;
  const int full = cols & ~3;
  float yrow[16]; /* one tile row's floats: the quantizer runs on the whole row at once */
  for (int r = 0; r < rows; r++) {
    const int64_t m = m0 + r, o = m * ep->ldo + n0;
    const int32x4_t rc = vdupq_n_s32(g->rc[m]);
    for (int c = 0; c < full; c += 4) {
      int32x4_t acc = vaddq_s32(vaddq_s32(vld1q_s32(tile + r * ldt + c), rc), vld1q_s32(g->cc + n0 + c));
      if (ep->out_i) vst1q_s32(ep->out_i + o + c, acc);
      if (!ep->out_f && !ep->out_q) continue;
      float32x4_t s = ep->scale ? vld1q_f32(ep->scale + n0 + c) : vdupq_n_f32(ep->scale0);
      float32x4_t y = vmulq_f32(vcvtq_f32_s32(acc), s);
      if (ep->bias) y = vaddq_f32(y, vld1q_f32(ep->bias + n0 + c));
      if (ep->out_f) vst1q_f32(ep->out_f + o + c, y);
      vst1q_f32(yrow + c, y);
    }
    if (ep->out_q) quantize_row(yrow, full, ep->q_step, ep->q_zp, ep->q_bits, ep->out_q + o);
  }
  if (full < cols) qv_epilogue_scalar(g, tile + full, ldt, m0, rows, n0 + full, cols - full);
}
#endif
