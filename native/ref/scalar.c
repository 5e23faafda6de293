/* Portable scalar reference: the meaning of every kernel, checked against numpy in the tests
 * and used as the oracle for the SIMD paths (also in the aarch64 qemu test). */
#include <string.h>

#include "../qv_internal.h"

/* Coefficient of plane pair (i, j) in raw = sum_ij coef * 2^(i+j) * popcount(A_i & B_j). */
static inline int64_t bs_coef(int i, int j, int b_bits, int b_signed) {
  if (b_signed && b_bits == 1) return (int64_t)2 << i;          /* w = 2 * bit - 1 */
  int64_t c = (int64_t)1 << (i + j);
  return (b_signed && j == b_bits - 1) ? -c : c;                 /* two's complement sign plane */
}

void qv_bs_block_scalar(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  const int64_t kw = g->kw;
  int32_t tile[QV_BS_NB];
  for (int64_t m = m0; m < m1; m++) {
    for (int64_t nb = nb0; nb < nb1; nb++) {
      int cols = (int)(g->n - nb * QV_BS_NB < QV_BS_NB ? g->n - nb * QV_BS_NB : QV_BS_NB);
      for (int l = 0; l < cols; l++) {
        int64_t raw = 0;
        for (int i = 0; i < g->a_bits; i++) {
          const uint64_t *a = g->a_planes + (m * g->a_bits + i) * kw;
          for (int j = 0; j < g->b_bits; j++) {
            const uint64_t *b = g->b_planes + ((nb * g->b_bits + j) * kw) * QV_BS_NB + l;
            int64_t p = 0;
            for (int64_t w = 0; w < kw; w++) p += __builtin_popcountll(a[w] & b[w * QV_BS_NB]);
            raw += bs_coef(i, j, g->b_bits, g->b_signed) * p;
          }
        }
        tile[l] = (int32_t)raw;
      }
      qv_epilogue_scalar(g, tile, QV_BS_NB, m, 1, nb * QV_BS_NB, cols);
    }
  }
}

void qv_i8_block_scalar(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  const int64_t k4 = g->kw * 4;
  int32_t tile[QV_I8_NB];
  for (int64_t m = m0; m < m1; m++) {
    const uint8_t *a = g->a8 + m * k4;
    for (int64_t nb = nb0; nb < nb1; nb++) {
      int cols = (int)(g->n - nb * QV_I8_NB < QV_I8_NB ? g->n - nb * QV_I8_NB : QV_I8_NB);
      const int8_t *blk = g->b8 + nb * QV_I8_NB * k4;
      for (int l = 0; l < cols; l++) {
        int32_t s = 0;
        for (int64_t q = 0; q < g->kw; q++)
          for (int t = 0; t < 4; t++) s += (int32_t)a[q * 4 + t] * blk[(q * QV_I8_NB + l) * 4 + t];
        tile[l] = s;
      }
      qv_epilogue_scalar(g, tile, QV_I8_NB, m, 1, nb * QV_I8_NB, cols);
    }
  }
}

void qv_packrow_scalar(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride) {
  pack_row_k(codes, k, bits, out, stride, plane_word_portable);
}

void qv_epilogue_scalar(const qv_gemm_ctx *g, const int32_t *tile, int ldt, int64_t m0, int rows, int64_t n0,
                        int cols) {
  const qv_epilogue *ep = g->ep;
  const float qmax = (float)((1 << ep->q_bits) - 1), fz = (float)ep->q_zp;
  for (int r = 0; r < rows; r++) {
    int64_t m = m0 + r;
    int64_t o = m * ep->ldo + n0;
    for (int c = 0; c < cols; c++) {
      int64_t n = n0 + c;
      int32_t acc = tile[r * ldt + c] + g->rc[m] + g->cc[n];
      if (ep->out_i) ep->out_i[o + c] = acc;
      if (!ep->out_f && !ep->out_q) continue;
      float y = (float)acc * (ep->scale ? ep->scale[n] : ep->scale0);
      if (ep->bias) y = y + ep->bias[n];
      if (ep->out_f) ep->out_f[o + c] = y;
      if (ep->out_q) ep->out_q[o + c] = (uint8_t)code_of(y, ep->q_step, fz, qmax);
    }
  }
}
