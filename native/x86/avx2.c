/* x86_64 AVX2 kernels (CPUs without AVX-512): bit-serial GEMM with a nibble-table popcount
 * (PSHUFB) summed per 64-bit lane by PSADBW, int8 GEMM with PMADDUBSW, MOVMSK bit packing. */
#include "../qv_internal.h"
#ifdef QV_HAVE_X86
#include <immintrin.h>
#include <string.h>

#define MR 4

/* per-64-bit-lane popcount of x */
QV_INLINE QV_TARGET_AVX2 __m256i popcnt64(__m256i x, __m256i lut, __m256i low4) {
  __m256i lo = _mm256_and_si256(x, low4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
  __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
  return _mm256_sad_epu8(bytes, _mm256_setzero_si256());
}

/* BS_MR rows x one block of 8 outputs (two 4-lane vectors), plane pairs as in avx512.c; counts,
 * totals, table and B words all stay in the 16 vector registers with 2 rows. */
#define BS_MR 2
QV_INLINE QV_TARGET_AVX2 void bs_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_,
                                      int32_t *tile /* [BS_MR][8] */) {
  const int64_t kw = g->kw;
  const int ab = g->a_bits, bb = g->b_bits;
  const int binary_w = g->b_signed && bb == 1;
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i tot[BS_MR][2];
  for (int r = 0; r < MR_; r++) tot[r][0] = tot[r][1] = _mm256_setzero_si256();
  for (int i = 0; i < ab; i++) {
    const uint64_t *a[BS_MR];
    for (int r = 0; r < MR_; r++) a[r] = g->a_planes + ((m + r) * ab + i) * kw;
    for (int j = 0; j < bb; j++) {
      const uint64_t *b = g->b_planes + ((nb * bb + j) * kw) * QV_BS_NB;
      __m256i acc[BS_MR][2];
      for (int r = 0; r < MR_; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
      for (int64_t w = 0; w < kw; w++) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)(b + w * QV_BS_NB));
        __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + w * QV_BS_NB + 4));
        for (int r = 0; r < MR_; r++) {
          __m256i av = _mm256_set1_epi64x((long long)a[r][w]);
          acc[r][0] = _mm256_add_epi64(acc[r][0], popcnt64(_mm256_and_si256(av, b0), lut, low4));
          acc[r][1] = _mm256_add_epi64(acc[r][1], popcnt64(_mm256_and_si256(av, b1), lut, low4));
        }
      }
      const __m128i sh = _mm_cvtsi32_si128(binary_w ? i + 1 : i + j);
      const int neg = !binary_w && g->b_signed && j == bb - 1;
      for (int r = 0; r < MR_; r++)
        for (int v = 0; v < 2; v++) {
          __m256i t = _mm256_sll_epi64(acc[r][v], sh);
          tot[r][v] = neg ? _mm256_sub_epi64(tot[r][v], t) : _mm256_add_epi64(tot[r][v], t);
        }
    }
  }
  for (int r = 0; r < MR_; r++)
    for (int v = 0; v < 2; v++) {  /* low 32 bits of each 64-bit lane (the sums fit int32) */
      __m256i lo = _mm256_permutevar8x32_epi32(tot[r][v], _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
      _mm_storeu_si128((__m128i *)(tile + r * 8 + 4 * v), _mm256_castsi256_si128(lo));
    }
}

QV_TARGET_AVX2 void qv_bs_block_avx2(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  int32_t tile[BS_MR * 8];
  for (int64_t nb = nb0; nb < nb1; nb++) {
    const int64_t n0 = nb * QV_BS_NB;
    const int cols = (int)(g->n - n0 < QV_BS_NB ? g->n - n0 : QV_BS_NB);
    for (int64_t m = m0; m < m1; m += BS_MR) {
      const int rows = m1 - m < BS_MR ? 1 : BS_MR;
      if (rows == 2) bs_tile(g, m, nb, 2, tile); else bs_tile(g, m, nb, 1, tile);
      qv_epilogue_avx2(g, tile, 8, m, rows, n0, cols);
    }
  }
}

/* int8: MR_ rows x one block of 16 outputs (two vectors of 8). PMADDUBSW saturates a pair sum
 * past 32767, which codes <= 127 never reach; 8-bit codes are split as a = lo7 + 128 * hi1. */
QV_INLINE QV_TARGET_AVX2 void i8_tile(const qv_gemm_ctx *g, int64_t m, int64_t nb, const int MR_, const int split,
                                      int32_t *tile /* [MR][16] */) {
  const int64_t kq = g->kw;
  const __m256i ones = _mm256_set1_epi16(1), c128 = _mm256_set1_epi16(128);
  const __m256i lo7 = _mm256_set1_epi8(0x7f), hi1 = _mm256_set1_epi8(0x01);
  __m256i acc[MR][2];
  for (int r = 0; r < MR_; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int8_t *b = g->b8 + nb * QV_I8_NB * kq * 4;
  for (int64_t q = 0; q < kq; q++) {
    __m256i b0 = _mm256_loadu_si256((const __m256i *)(b + q * 64));
    __m256i b1 = _mm256_loadu_si256((const __m256i *)(b + q * 64 + 32));
    for (int r = 0; r < MR_; r++) {
      int32_t a4;
      memcpy(&a4, g->a8 + (m + r) * kq * 4 + q * 4, 4);
      __m256i av = _mm256_set1_epi32(a4);
      if (!split) {
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones));
      } else {
        __m256i lo = _mm256_and_si256(av, lo7), hi = _mm256_and_si256(_mm256_srli_epi32(av, 7), hi1);
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, b0), ones));
        acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, b0), c128));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(lo, b1), ones));
        acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(hi, b1), c128));
      }
    }
  }
  for (int r = 0; r < MR_; r++) {
    _mm256_storeu_si256((__m256i *)(tile + r * 16), acc[r][0]);
    _mm256_storeu_si256((__m256i *)(tile + r * 16 + 8), acc[r][1]);
  }
}

QV_TARGET_AVX2 void qv_i8_block_avx2(const qv_gemm_ctx *g, int64_t m0, int64_t m1, int64_t nb0, int64_t nb1) {
  int32_t tile[MR * 16];
  const int split = g->a_bits > 7;
  for (int64_t nb = nb0; nb < nb1; nb++) {
    const int64_t n0 = nb * QV_I8_NB;
    const int cols = (int)(g->n - n0 < QV_I8_NB ? g->n - n0 : QV_I8_NB);
    for (int64_t m = m0; m < m1; m += MR) {
      const int rows = (int)(m1 - m < MR ? m1 - m : MR);
      switch (rows * 2 + split) {
        case 8: i8_tile(g, m, nb, 4, 0, tile); break;
        case 9: i8_tile(g, m, nb, 4, 1, tile); break;
        case 6: i8_tile(g, m, nb, 3, 0, tile); break;
        case 7: i8_tile(g, m, nb, 3, 1, tile); break;
        case 4: i8_tile(g, m, nb, 2, 0, tile); break;
        case 5: i8_tile(g, m, nb, 2, 1, tile); break;
        case 2: i8_tile(g, m, nb, 1, 0, tile); break;
        default: i8_tile(g, m, nb, 1, 1, tile); break;
      }
      qv_epilogue_avx2(g, tile, 16, m, rows, n0, cols);
    }
  }
}

QV_TARGET_AVX2 void qv_packrow_avx2(const uint8_t *codes, int64_t k, int bits, uint64_t *out, int64_t stride) {
  pack_row_k(codes, k, bits, out, stride, plane_word_avx2);
}

QV_TARGET_AVX2 void qv_epilogue_avx2(const qv_gemm_ctx *g, const int32_t *tile, int ldt, int64_t m0, int rows,
                                     int64_t n0, int cols) {
  const qv_epilogue *ep = g->ep;
  const int full = cols & ~7;
  for (int r = 0; r < rows; r++) {
    const int64_t m = m0 + r, o = m * ep->ldo + n0;
    const __m256i rc = _mm256_set1_epi32(g->rc[m]);
    for (int c = 0; c < full; c += 8) {
      __m256i acc = _mm256_loadu_si256((const __m256i *)(tile + r * ldt + c));
      acc = _mm256_add_epi32(_mm256_add_epi32(acc, rc), _mm256_loadu_si256((const __m256i *)(g->cc + n0 + c)));
      if (ep->out_i) _mm256_storeu_si256((__m256i *)(ep->out_i + o + c), acc);
      if (!ep->out_f && !ep->out_q) continue;
      __m256 s = ep->scale ? _mm256_loadu_ps(ep->scale + n0 + c) : _mm256_set1_ps(ep->scale0);
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), s);
      if (ep->bias) y = _mm256_add_ps(y, _mm256_loadu_ps(ep->bias + n0 + c));
      if (ep->out_f) _mm256_storeu_ps(ep->out_f + o + c, y);
      if (ep->out_q) {
        float yf[8];
        _mm256_storeu_ps(yf, y);
        quantize_row(yf, 8, ep->q_step, ep->q_zp, ep->q_bits, ep->out_q + o + c);
      }
    }
  }
  if (full < cols) qv_epilogue_scalar(g, tile + full, ldt, m0, rows, n0 + full, cols - full);
}
#endif
