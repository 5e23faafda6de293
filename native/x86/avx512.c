/* x86_64 AVX-512 kernels: VPOPCNTDQ bit-serial GEMM, VNNI int8 GEMM, mask-based bit packing.
 * Compiled with per-function target attributes, so the file builds with baseline flags and
 * only runs where dispatch.c found the features. */
#include "../qv_internal.h"
#ifdef QV_HAVE_X86
#include <immintrin.h>
#include <string.h>

#define MR 4  /* rows of A per register tile */

/* Epilogue of one row of up to 16 accumulators still in a register (see qv_epilogue_scalar for
 * the float order). */
QV_INLINE QV_TARGET_AVX512 void epi_row16(const qv_gemm_ctx *g, int64_t m, int64_t n0, int cols, __m512i acc) {
  const qv_epilogue *ep = g->ep;
  const int64_t o = m * ep->ldo + n0;
  /* masked loads / stores only on the ragged edge: they are much slower than plain ones on some
   * cores (AMD Zen 4) */
  if (cols >= 16) {
    acc = _mm512_add_epi32(_mm512_add_epi32(acc, _mm512_set1_epi32(g->rc[m])), _mm512_loadu_si512(g->cc + n0));
    if (ep->out_i) _mm512_storeu_si512(ep->out_i + o, acc);
    if (!ep->out_f && !ep->out_q) return;
    __m512 s = ep->scale ? _mm512_loadu_ps(ep->scale + n0) : _mm512_set1_ps(ep->scale0);
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
    if (ep->bias) y = _mm512_add_ps(y, _mm512_loadu_ps(ep->bias + n0));
    if (ep->out_f) _mm512_storeu_ps(ep->out_f + o, y);
    if (ep->out_q) {
      float yf[16];
      _mm512_storeu_ps(yf, y);
      quantize_row(yf, 16, ep->q_step, ep->q_zp, ep->q_bits, ep->out_q + o);
    }
    return;
  }
  const __mmask16 k = (__mmask16)((1u << cols) - 1);
  acc = _mm512_add_epi32(_mm512_add_epi32(acc, _mm512_set1_epi32(g->rc[m])), _mm512_maskz_loadu_epi32(k, g->cc + n0));
  if (ep->out_i) _mm512_mask_storeu_epi32(ep->out_i + o, k, acc);
  if (!ep->out_f && !ep->out_q) return;
  __m512 s = ep->scale ? _mm512_maskz_loadu_ps(k, ep->scale + n0) : _mm512_set1_ps(ep->scale0);
  __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
  if (ep->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(k, ep->bias + n0));
  if (ep->out_f) _mm512_mask_storeu_ps(ep->out_f + o, k, y);
  if (ep->out_q) {
    float yf[16];
    _mm512_storeu_ps(yf, y);
    quantize_row(yf, cols, ep->q_step, ep->q_zp, ep->q_bits, ep->out_q + o);
  }
}

/* Bit-serial tile: MR_ rows x NV_ blocks of 8 outputs. For every plane pair (i, j) the K loop
 * ANDs a broadcast A word with 8 interleaved B words and accumulates per-lane popcounts, so no
 * horizontal reduction is needed; the pair's count is then shifted by i + j into the total. */
QV_INLINE QV_TARGET_AVX512 void pair_popcounts(const qv_gemm_ctx *g, int64_t m, int64_t nb, int i, int j,
                                               const int MR_, const int NV_, __m512i acc[MR][2]) {
  const int64_t kw = g->kw;
  const int ab = g->a_bits, bb = g->b_bits;
  const uint64_t *a[MR], *b[2];
  for (int r = 0; r < MR_; r++) a[r] = g->a_planes + ((m + r) * ab + i) * kw;
  for (int v = 0; v < NV_; v++) b[v] = g->b_planes + (((nb + v) * bb + j) * kw) * QV_BS_NB;
  {  /* first word initialises the counters */
    __m512i bw[2];
    for (int v = 0; v < NV_; v++) bw[v] = _mm512_loadu_si512(b[v]);
    for (int r = 0; r < MR_; r++) {
      __m512i av = _mm512_set1_epi64((long long)a[r][0]);
      for (int v = 0; v < NV_; v++) acc[r][v] = _mm512_popcnt_epi64(_mm512_and_si512(av, bw[v]));
    }
  }
  for (int64_t w = 1; w < kw; w++) {
    __m512i bw[2];
    for (int v = 0; v < NV_; v++) bw[v] = _mm512_loadu_si512(b[v] + w * QV_BS_NB);
    for (int r = 0; r < MR_; r++) {
      __m512i av = _mm512_set1_epi64((long long)a[r][w]);
      for (int v = 0; v < NV_; v++)
        acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_popcnt_epi64(_mm512_and_si512(av, bw[v])));
    }
  }
}

QV_INLINE QV_TARGET_AVX512 void bs_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_, const int NV_,
                                        int cols) {
  const int ab = g->a_bits, bb = g->b_bits;
  const int binary_w = g->b_signed && bb == 1;
  __m512i tot[MR][2], acc[MR][2];
  /* pair (0, 0) starts the total: shift 0 (1 for binary weights, w = 2 * bit - 1), never negative */
  pair_popcounts(g, m, nb, 0, 0, MR_, NV_, tot);
  if (binary_w)
    for (int r = 0; r < MR_; r++)
      for (int v = 0; v < NV_; v++) tot[r][v] = _mm512_add_epi64(tot[r][v], tot[r][v]);
  for (int p = 1; p < ab * bb; p++) {
    const int i = p / bb, j = p % bb;
    pair_popcounts(g, m, nb, i, j, MR_, NV_, acc);
    const int shift = binary_w ? i + 1 : i + j;
    const int neg = !binary_w && g->b_signed && j == bb - 1;
    const __m128i sh = _mm_cvtsi32_si128(shift);
    for (int r = 0; r < MR_; r++)
      for (int v = 0; v < NV_; v++) {
        __m512i t = _mm512_sll_epi64(acc[r][v], sh);
        tot[r][v] = neg ? _mm512_sub_epi64(tot[r][v], t) : _mm512_add_epi64(tot[r][v], t);
      }
  }
  for (int r = 0; r < MR_; r++) {
    __m512i v16 = _mm512_castsi256_si512(_mm512_cvtepi64_epi32(tot[r][0]));
    if (NV_ == 2) v16 = _mm512_inserti64x4(v16, _mm512_cvtepi64_epi32(tot[r][1]), 1);
    epi_row16(g, m + r, nb * QV_BS_NB, cols, v16);
  }
}

/* The same for 1-bit x 1-bit (W1A1, and binary attention): one plane pair, so no running total,
 * no shifts and no zeroing; this overhead is most of a tile's work when K is one or a few words. */
QV_INLINE QV_TARGET_AVX512 void bs_tile1(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_, const int NV_,
                                         int cols) {
  const int64_t kw = g->kw;
  const uint64_t *a = g->a_planes + m * kw;
  const uint64_t *b = g->b_planes + nb * kw * QV_BS_NB;
  const int64_t bstride = kw * QV_BS_NB;
  __m512i acc[MR][2];
  {
    __m512i bw[2];
    for (int v = 0; v < NV_; v++) bw[v] = _mm512_loadu_si512(b + v * bstride);
    for (int r = 0; r < MR_; r++) {
      __m512i av = _mm512_set1_epi64((long long)a[r * kw]);
      for (int v = 0; v < NV_; v++) acc[r][v] = _mm512_popcnt_epi64(_mm512_and_si512(av, bw[v]));
    }
  }
  for (int64_t w = 1; w < kw; w++) {
    __m512i bw[2];
    for (int v = 0; v < NV_; v++) bw[v] = _mm512_loadu_si512(b + v * bstride + w * QV_BS_NB);
    for (int r = 0; r < MR_; r++) {
      __m512i av = _mm512_set1_epi64((long long)a[r * kw + w]);
      for (int v = 0; v < NV_; v++)
        acc[r][v] = _mm512_add_epi64(acc[r][v], _mm512_popcnt_epi64(_mm512_and_si512(av, bw[v])));
    }
  }
  const int binary_w = g->b_signed;  /* raw = 2 * popcount (the -sum(a) is in rc) */
  for (int r = 0; r < MR_; r++) {
    __m512i t0 = binary_w ? _mm512_add_epi64(acc[r][0], acc[r][0]) : acc[r][0];
    __m512i v16 = _mm512_castsi256_si512(_mm512_cvtepi64_epi32(t0));
    if (NV_ == 2) {
      __m512i t1 = binary_w ? _mm512_add_epi64(acc[r][1], acc[r][1]) : acc[r][1];
      v16 = _mm512_inserti64x4(v16, _mm512_cvtepi64_epi32(t1), 1);
    }
    epi_row16(g, m + r, nb * QV_BS_NB, cols, v16);
  }
}

#define BS_TILE_CASE(R, V) (one_pair ? bs_tile1(g, m, nb, R, V, cols) : bs_tile(g, m, nb, R, V, cols))

QV_TARGET_AVX512 void qv_bs_block_avx512(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  const int one_pair = g->a_bits == 1 && g->b_bits == 1;
  for (int64_t nb = nb0; nb < nb1; nb += 2) {
    const int nv = nb + 1 < nb1 ? 2 : 1;
    const int64_t n0 = nb * QV_BS_NB;
    const int cols = (int)(g->n - n0 < nv * QV_BS_NB ? g->n - n0 : nv * QV_BS_NB);
    for (int64_t m = m0; m < m1; m += MR) {
      const int rows = (int)(m1 - m < MR ? m1 - m : MR);
      if (nv == 2) {
        switch (rows) {
          case 4: BS_TILE_CASE(4, 2); break;
          case 3: BS_TILE_CASE(3, 2); break;
          case 2: BS_TILE_CASE(2, 2); break;
          default: BS_TILE_CASE(1, 2); break;
        }
      } else {
        switch (rows) {
          case 4: BS_TILE_CASE(4, 1); break;
          case 3: BS_TILE_CASE(3, 1); break;
          case 2: BS_TILE_CASE(2, 1); break;
          default: BS_TILE_CASE(1, 1); break;
        }
      }
    }
  }
}

/* int8 tile: MR_ rows x NV_ blocks of 16 outputs; VPDPBUSD multiplies 4 unsigned A bytes
 * (broadcast) by 4 signed B bytes per lane and adds into int32 without saturation. */
QV_INLINE QV_TARGET_AVX512 void i8_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_, const int NV_,
                                        int cols) {
  const int64_t kq = g->kw;
  __m512i acc[MR][2];
  for (int r = 0; r < MR_; r++)
    for (int v = 0; v < NV_; v++) acc[r][v] = _mm512_setzero_si512();
  const uint8_t *a[MR];
  for (int r = 0; r < MR_; r++) a[r] = g->a8 + (m + r) * kq * 4;
  const int8_t *b = g->b8 + nb * QV_I8_NB * kq * 4;
  for (int64_t q = 0; q < kq; q++) {
    __m512i bw[2];
    for (int v = 0; v < NV_; v++) bw[v] = _mm512_loadu_si512(b + (v * kq + q) * 64);
    for (int r = 0; r < MR_; r++) {
      int32_t a4;
      memcpy(&a4, a[r] + q * 4, 4);
      __m512i av = _mm512_set1_epi32(a4);
      for (int v = 0; v < NV_; v++) acc[r][v] = _mm512_dpbusd_epi32(acc[r][v], av, bw[v]);
    }
  }
  for (int r = 0; r < MR_; r++)
    for (int v = 0; v < NV_; v++)
      if (cols > 16 * v) epi_row16(g, m + r, (nb + v) * QV_I8_NB, cols - 16 * v, acc[r][v]);
}

#define I8_TILE_CASE(R, V) i8_tile(g, m, nb, R, V, cols)

QV_TARGET_AVX512 void qv_i8_block_avx512(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  for (int64_t nb = nb0; nb < nb1; nb += 2) {
    const int nv = nb + 1 < nb1 ? 2 : 1;
    const int64_t n0 = nb * QV_I8_NB;
    const int cols = (int)(g->n - n0 < nv * QV_I8_NB ? g->n - n0 : nv * QV_I8_NB);
    for (int64_t m = m0; m < m1; m += MR) {
      const int rows = (int)(m1 - m < MR ? m1 - m : MR);
      if (nv == 2) {
        switch (rows) {
          case 4: I8_TILE_CASE(4, 2); break;
          case 3: I8_TILE_CASE(3, 2); break;
          case 2: I8_TILE_CASE(2, 2); break;
          default: I8_TILE_CASE(1, 2); break;
        }
      } else {
        switch (rows) {
          case 4: I8_TILE_CASE(4, 1); break;
          case 3: I8_TILE_CASE(3, 1); break;
          case 2: I8_TILE_CASE(2, 1); break;
          default: I8_TILE_CASE(1, 1); break;
        }
      }
    }
  }
}

QV_TARGET_AVX512 void qv_packrow_avx512(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride) {
  pack_row_k(codes, k, bits, out, stride, plane_word_avx512);
}

#endif
