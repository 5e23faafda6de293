/* model.so micro-kernel: the attention micro-kernel linked into every model.so that has attention.
 *
 * The TVM kernel `attention` (compile/kernels.py: attention) checks its tensor arguments and runs
 * a parallel loop over the (window-batch b, head h) items; each iteration calls qvit_attention_item
 * below for one item, which does all of that head's work while it is in cache:
 *
 *   q, k rows -> IRM (optional: per-token LayerNorm, or per-head statistics) -> codes -> bit planes
 *             + code sums
 *   v rows    -> codes -> bit planes along tokens (V^T) + code sums
 *   Q K^T bit-serial (AND + popcount) -> zero-point corrections -> scores (+ rel_pos_bias, + mask)
 *   -> softmax -> probability codes -> bit planes + code sums
 *   P V bit-serial -> zero-point corrections -> float output [B', T, H*d]
 *
 * Arithmetic and vector conventions: ../qv_arith.h. The bit-serial products use AVX-512 VPOPCNTDQ
 * intrinsics where the target has them, NEON byte counts on aarch64. Where the target has AVX-512
 * VNNI, an item runs att_item_dot instead: both products are byte dot products of the codes (AMX
 * tiles where the CPU and the OS allow them, else vpdpbusd; the same integers), 16 rows at a time.
 * The planes and sums are written to the tensors the plan declares either way (tests read them).
 */
#include "../qv_arith.h"

/* planes [bits][rows][nw] -> [bits][nw][rpad] (rows padded with zero words) */
static void transpose_planes(const uint64_t *src, int bits, int rows, int nw, int rpad, uint64_t *dst) {
  memset(dst, 0, sizeof(uint64_t) * (size_t)bits * nw * rpad);
  for (int j = 0; j < bits; j++)
    for (int r = 0; r < rows; r++)
      for (int w = 0; w < nw; w++) dst[((int64_t)j * nw + w) * rpad + r] = src[((int64_t)j * rows + r) * nw + w];
}

/* out[c] = sum_{i, j < bits, w < nw} popcount(a[i * a_stride + w] & bt[(j * nw + w) * cpad + c]) << (i + j)
 * for c < cpad (a multiple of 32): one row of a bit-serial product against a transposed operand
 * (bt: [bits][nw][cpad], zero padded). The plane weights 2^(i+j) are applied Horner-style over
 * s = i + j (a doubling per s, not a shift per plane pair). */
static inline __attribute__((always_inline)) void bs_row_k(const uint64_t *a, int64_t a_stride, const int nw,
                                                           const int bits, const uint64_t *bt, int cpad,
                                                           int32_t *out) {
#if defined(QV_AVX512F) && defined(__AVX512VPOPCNTDQ__)
  for (int c = 0; c < cpad; c += 32) { /* 4 independent accumulators share each broadcast word */
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int s = 2 * bits - 2; s >= 0; s--) {
      a0 = _mm512_add_epi64(a0, a0);
      a1 = _mm512_add_epi64(a1, a1);
      a2 = _mm512_add_epi64(a2, a2);
      a3 = _mm512_add_epi64(a3, a3);
      for (int i = s < bits ? 0 : s - bits + 1; i <= s && i < bits; i++) {
        const uint64_t *bj = bt + (int64_t)(s - i) * nw * cpad + c;
        for (int w = 0; w < nw; w++) {
          const __m512i aw = _mm512_set1_epi64((long long)a[i * a_stride + w]);
          const uint64_t *bw = bj + (int64_t)w * cpad;
          a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_and_si512(aw, _mm512_loadu_si512(bw))));
          a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_and_si512(aw, _mm512_loadu_si512(bw + 8))));
          a2 = _mm512_add_epi64(a2, _mm512_popcnt_epi64(_mm512_and_si512(aw, _mm512_loadu_si512(bw + 16))));
          a3 = _mm512_add_epi64(a3, _mm512_popcnt_epi64(_mm512_and_si512(aw, _mm512_loadu_si512(bw + 24))));
        }
      }
    }
    _mm256_storeu_si256((__m256i *)(out + c), _mm512_cvtepi64_epi32(a0));
    _mm256_storeu_si256((__m256i *)(out + c + 8), _mm512_cvtepi64_epi32(a1));
    _mm256_storeu_si256((__m256i *)(out + c + 16), _mm512_cvtepi64_epi32(a2));
    _mm256_storeu_si256((__m256i *)(out + c + 24), _mm512_cvtepi64_epi32(a3));
  }
#else
#if defined(QV_NEON)
  /* NEON counts bits per byte (cnt), two words of a row against two columns per register: a
   * level s's byte counts add up in u8 (at most bits * nw terms of <= 8 each), then each level is
   * doubled into u16 lanes Horner-style (uadalp: a lane holds 2 bytes' counts, at most
   * 16 nw (2^bits - 1)^2 at the end) and the lanes of a column are summed last. Shapes past
   * those bounds take the plain loop below. */
  if (8 * bits * nw <= 255 && 16 * nw * ((1 << bits) - 1) * ((1 << bits) - 1) <= 65535) {
    for (int c = 0; c < cpad; c += 8) {
      uint16x8_t h0 = vdupq_n_u16(0), h1 = h0, h2 = h0, h3 = h0;
      for (int s = 2 * bits - 2; s >= 0; s--) {
        uint8x16_t l0 = vdupq_n_u8(0), l1 = l0, l2 = l0, l3 = l0;
        for (int i = s < bits ? 0 : s - bits + 1; i <= s && i < bits; i++) {
          const uint64_t *bj = bt + (int64_t)(s - i) * nw * cpad + c;
          for (int w = 0; w < nw; w++) {
            const uint64x2_t aw = vld1q_dup_u64(a + i * a_stride + w);
            const uint64_t *bw = bj + (int64_t)w * cpad;
            l0 = vaddq_u8(l0, vcntq_u8(vreinterpretq_u8_u64(vandq_u64(aw, vld1q_u64(bw)))));
            l1 = vaddq_u8(l1, vcntq_u8(vreinterpretq_u8_u64(vandq_u64(aw, vld1q_u64(bw + 2)))));
            l2 = vaddq_u8(l2, vcntq_u8(vreinterpretq_u8_u64(vandq_u64(aw, vld1q_u64(bw + 4)))));
            l3 = vaddq_u8(l3, vcntq_u8(vreinterpretq_u8_u64(vandq_u64(aw, vld1q_u64(bw + 6)))));
          }
        }
        h0 = vpadalq_u8(vshlq_n_u16(h0, 1), l0);
        h1 = vpadalq_u8(vshlq_n_u16(h1, 1), l1);
        h2 = vpadalq_u8(vshlq_n_u16(h2, 1), l2);
        h3 = vpadalq_u8(vshlq_n_u16(h3, 1), l3);
      }
      /* per column: 4 u16 lanes -> 2 u32 (uaddlp) -> 1 (addp) */
      vst1q_s32(out + c, vreinterpretq_s32_u32(vpaddq_u32(vpaddlq_u16(h0), vpaddlq_u16(h1))));
      vst1q_s32(out + c + 4, vreinterpretq_s32_u32(vpaddq_u32(vpaddlq_u16(h2), vpaddlq_u16(h3))));
    }
    return;
  }
#endif
  for (int c = 0; c < cpad; c += 8) {
    uint32_t acc[8] = {0}; /* gcc vectorizes the 8 lanes where the target has vector popcount */
    for (int s = 2 * bits - 2; s >= 0; s--) {
      for (int l = 0; l < 8; l++) acc[l] += acc[l];
      for (int i = s < bits ? 0 : s - bits + 1; i <= s && i < bits; i++) {
        const int j = s - i;
        for (int w = 0; w < nw; w++) {
          const uint64_t aw = a[i * a_stride + w];
          const uint64_t *b = bt + ((int64_t)j * nw + w) * cpad + c;
          for (int l = 0; l < 8; l++) acc[l] += (uint32_t)__builtin_popcountll(aw & b[l]);
        }
      }
    }
    for (int l = 0; l < 8; l++) out[c + l] = (int32_t)acc[l];
  }
#endif
}

/* bs_row with the plane count and row words as compile-time constants for the common shapes (the
 * loops unroll and the broadcast words stay in registers), else as run-time values. */
static void bs_row(const uint64_t *a, int64_t a_stride, int nw, int bits, const uint64_t *bt, int cpad, int32_t *out) {
#define BS_CASE(B, W) \
  if (bits == (B) && nw == (W)) {                  \
    bs_row_k(a, a_stride, W, B, bt, cpad, out);     \
    return;                                         \
  }
  BS_CASE(2, 1) BS_CASE(2, 2) BS_CASE(2, 4) BS_CASE(3, 1) BS_CASE(3, 4) BS_CASE(4, 1) BS_CASE(4, 4)
#undef BS_CASE
  bs_row_k(a, a_stride, nw, bits, bt, cpad, out);
}

/* ------------------------------------------------------------------------------- one item */

/* Scores c0..T-1 of a row past the vector part, one at a time, into s; -> the running max mx */
static inline float scores_tail(const int32_t *acc, int c0, int T, int32_t rc, int32_t qz, const int32_t *ks,
                                float s_scale, const float *bias_r, const float *mask_r, float *s, float mx) {
  for (int c = c0; c < T; c++) {
    float v = s_scale * (float)(acc[c] + rc - qz * ks[c]);
    if (bias_r) v = v + bias_r[c];
    if (mask_r) v = v + mask_r[c];
    s[c] = v;
    mx = v > mx ? v : mx;
  }
  return mx;
}

/* One softmax row: scores from the accumulators (+ bias, + mask), max, exp, numpy-order sum,
 * probability codes into codes[0, T). */
static void softmax_row(const int32_t *acc, int T, int32_t rc, int32_t qz, const int32_t *ks, float s_scale,
                        const float *bias_r, const float *mask_r, float p_step, int32_t p_zp, int bits, float *s,
                        float *e, uint8_t *codes) {
#if defined(QV_NEON)
  /* The portable code's operations on NEON registers. The running max is fmaxnm: a NaN score is
   * skipped as vmax skips it, and where it picks +0 over -0 the row's max is used only as s - mx,
   * whose value (and exp) is the same for either zero. */
  {
    int c = 0;
    const float32x4_t sc = vdupq_n_f32(s_scale);
    const int32x4_t rcv = vdupq_n_s32(rc), qzv = vdupq_n_s32(qz);
    float32x4_t m = vdupq_n_f32(-3.4e38f);
    for (; c + 4 <= T; c += 4) {
      const int32x4_t iv = vsubq_s32(vaddq_s32(vld1q_s32(acc + c), rcv), vmulq_s32(qzv, vld1q_s32(ks + c)));
      float32x4_t v = vmulq_f32(sc, vcvtq_f32_s32(iv));
      if (bias_r) v = vaddq_f32(v, vld1q_f32(bias_r + c));
      if (mask_r) v = vaddq_f32(v, vld1q_f32(mask_r + c));
      vst1q_f32(s + c, v);
      m = vmaxnmq_f32(v, m);
    }
    float mx = vmaxnmvq_f32(m);
    mx = scores_tail(acc, c, T, rc, qz, ks, s_scale, bias_r, mask_r, s, mx);
    const float32x4_t vmx = vdupq_n_f32(mx);
    for (c = 0; c + 16 <= T; c += 16) { /* four independent chains: exp is latency-bound */
      const float32x4_t e0 = nq_exp(vsubq_f32(vld1q_f32(s + c), vmx));
      const float32x4_t e1 = nq_exp(vsubq_f32(vld1q_f32(s + c + 4), vmx));
      const float32x4_t e2 = nq_exp(vsubq_f32(vld1q_f32(s + c + 8), vmx));
      const float32x4_t e3 = nq_exp(vsubq_f32(vld1q_f32(s + c + 12), vmx));
      vst1q_f32(e + c, e0);
      vst1q_f32(e + c + 4, e1);
      vst1q_f32(e + c + 8, e2);
      vst1q_f32(e + c + 12, e3);
    }
    for (; c + 4 <= T; c += 4) vst1q_f32(e + c, nq_exp(vsubq_f32(vld1q_f32(s + c), vmx)));
    for (; c < T; c++) e[c] = exp_f(s[c] - mx);
    const float den = pairwise_sum(e, T);
    const float hi = (float)((1 << bits) - 1), fz = (float)p_zp;
    const float32x4_t vden = vdupq_n_f32(den), st = vdupq_n_f32(p_step), z = vdupq_n_f32(fz);
    const uint8x16_t h8 = vdupq_n_u8((uint8_t)((1 << bits) - 1));
    /* the codes of (e / den) / p_step from e * (1 / (den p_step)) where nq_codes16_y can vouch for
     * them (both divisors in its range), else by the two divisions */
    const int recip = recip_ok(den) && recip_ok(p_step);
    const float32x4_t r = vdupq_n_f32(1.0f / (den * p_step));
    const float k = recip_k(hi, fz);
    for (c = 0; c + 16 <= T; c += 16) {
      if (recip && nq_codes16_y(vmulq_f32(vld1q_f32(e + c), r), vmulq_f32(vld1q_f32(e + c + 4), r),
                                vmulq_f32(vld1q_f32(e + c + 8), r), vmulq_f32(vld1q_f32(e + c + 12), r), z, k, h8,
                                codes + c))
        continue;
      vst1q_u8(codes + c, nq_codes16(nq_code4(vdivq_f32(vld1q_f32(e + c), vden), st, z),
                                     nq_code4(vdivq_f32(vld1q_f32(e + c + 4), vden), st, z),
                                     nq_code4(vdivq_f32(vld1q_f32(e + c + 8), vden), st, z),
                                     nq_code4(vdivq_f32(vld1q_f32(e + c + 12), vden), st, z), h8));
    }
    for (; c < T; c++) codes[c] = (uint8_t)code_of(e[c] / den, p_step, fz, hi);
    return;
  }
#endif
  int c = 0;
  vf m = splat(-3.4e38f);
  for (; c + VL <= T; c += VL) {
    vf v = s_scale * __builtin_convertvector(loadi(acc + c) + rc - qz * loadi(ks + c), vf);
    if (bias_r) v = v + loadf(bias_r + c);
    if (mask_r) v = v + loadf(mask_r + c);
    storef(s + c, v);
    m = vmax(v, m);
  }
  float mx = m[0];
  for (int l = 1; l < VL; l++) mx = m[l] > mx ? m[l] : mx;
  mx = scores_tail(acc, c, T, rc, qz, ks, s_scale, bias_r, mask_r, s, mx);
  for (c = 0; c + VL <= T; c += VL) storef(e + c, exp_v(loadf(s + c) - mx));
  for (; c < T; c++) e[c] = exp_f(s[c] - mx);
  const float den = pairwise_sum(e, T);
  const float hi = (float)((1 << bits) - 1), fz = (float)p_zp;
  for (c = 0; c + VL <= T; c += VL) {
    vb cb = __builtin_convertvector(code_of_v(loadf(e + c) / den, p_step, fz, hi), vb);
    memcpy(codes + c, &cb, sizeof cb);
  }
  for (; c < T; c++) codes[c] = (uint8_t)code_of(e[c] / den, p_step, fz, hi);
}

/* One output row of P V from its accumulators: the zero-point corrections, then the scale. */
static inline void pv_row(const int32_t *acc, int d, int32_t rc, int32_t pz, const int32_t *vs, float o_scale,
                          float *o) {
  for (int e = 0; e < d; e++) o[e] = o_scale * (float)(acc[e] + rc - pz * vs[e]);
}

/* ------------------------------------------------------------- x86: byte dot products (AMX, VNNI) */

#if defined(QV_AVX512F) && defined(QV_AVX512BW) && defined(__AVX512VNNI__) && !defined(QVIT_ATT_NO_DOT)
/* Q K^T and P V as integer dot products of the codes instead of bit planes: codes are 0..15, exact
 * as u8 (and s8), so the integer sums are the planes' sums, at a cost that does not grow with
 * bits^2. AMX (TDPBUUD, u8 x u8, 16 x 16 int32 tiles) where the CPU and the OS allow it (amx.h's
 * run-time check, $QVIT_NO_AMX), else AVX-512 VNNI (vpdpbusd, u8 x s8). Both read the same layouts:
 *   A rows: one row's codes contiguous (Q [Tr][dk], P [16][tk]);
 *   B: groups of 4 reduction values per column, [k / 4][columns][4] (K: [dk / 4][T16][4],
 *      V: [tk / 4][d16][4]), zero padded.
 * The float glue (quantize, softmax codes) divides by a multiplication where that is exact, with
 * the division as fallback. The bit planes and code sums the plan declares are still written. */
#define ATT_DOT 1
#include "amx.h"

/* Division by a multiplication where that is exact (qv_arith.h: recip_ok, recip_k, codes16_y_avx512);
 * lanes next to a tie (or not finite) fail its test and the caller divides. */

/* quantize_row's codes, multiplying by 1 / step where that is exact */
static inline __attribute__((always_inline)) void att_quantize_row(const float *x, int n, float step, int32_t zp,
                                                                   int bits, float kf, uint8_t *codes) {
  const float hi = (float)((1 << bits) - 1), fz = (float)zp;
  int i = 0;
  if (recip_ok(step)) {
    const __m512 r = _mm512_set1_ps(1.0f / step), z = _mm512_set1_ps(fz), h = _mm512_set1_ps(hi),
                 k = _mm512_set1_ps(kf);
    for (; i + 16 <= n; i += 16)
      if (!codes16_y_avx512(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), z, h, k, codes + i)) {
        vb cb = __builtin_convertvector(code_of_v(loadf(x + i), step, fz, hi), vb);
        memcpy(codes + i, &cb, sizeof cb);
      }
  }
  quantize_row(x + i, n - i, step, zp, bits, codes + i);
}

/* softmax_row (portable operations) with the probability codes by one multiplication where exact */
/* The row's last T % 16 lanes run as one masked vector of the same operations (lanes past T are
 * zero in, not stored), s and e hold whole vectors. exp_f is exp_v's lane, code_of code_of_v's. */
static void att_softmax_row(const int32_t *acc, int T, int32_t rc, int32_t qz, const int32_t *ks, float s_scale,
                            const float *bias_r, const float *mask_r, float p_step, int32_t p_zp, int bits, float kf,
                            float *s, float *e, uint8_t *codes) {
  const __mmask16 tail = (__mmask16)((1u << (T % 16)) - 1);
  int c = 0;
  vf m = splat(-3.4e38f);
  for (; c < T; c += VL) {
    const __mmask16 l = c + VL <= T ? (__mmask16)0xFFFF : tail;
    vf v = s_scale * __builtin_convertvector((vi)_mm512_maskz_loadu_epi32(l, acc + c) + rc -
                                                 qz * (vi)_mm512_maskz_loadu_epi32(l, ks + c), vf);
    if (bias_r) v = v + (vf)_mm512_maskz_loadu_ps(l, bias_r + c);
    if (mask_r) v = v + (vf)_mm512_maskz_loadu_ps(l, mask_r + c);
    storef(s + c, v);
    m = (vf)_mm512_mask_max_ps((__m512)m, l, (__m512)v, (__m512)m); /* vmax(v, m) on the row's lanes */
  }
  /* never NaN (vmax skips NaN scores); which of +-0 it is does not change s - mx */
  const float mx = _mm512_reduce_max_ps((__m512)m);
  for (c = 0; c < T; c += VL) storef(e + c, exp_v(loadf(s + c) - mx));
  const float den = pairwise_sum(e, T);
  const float hi = (float)((1 << bits) - 1), fz = (float)p_zp;
  const int recip = recip_ok(den) && recip_ok(p_step);
  const __m512 r = _mm512_set1_ps(1.0f / (den * p_step)), z = _mm512_set1_ps(fz), h = _mm512_set1_ps(hi),
               k = _mm512_set1_ps(kf);
  for (c = 0; c + 16 <= T; c += 16)
    if (!recip || !codes16_y_avx512(_mm512_mul_ps(_mm512_loadu_ps(e + c), r), z, h, k, codes + c)) {
      vb cb = __builtin_convertvector(code_of_v(loadf(e + c) / den, p_step, fz, hi), vb);
      memcpy(codes + c, &cb, sizeof cb);
    }
  if (c < T) { /* the tail's lanes through a whole vector of bytes (codes has room) */
    uint8_t buf[16];
    if (!recip || !codes16_y_avx512(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, e + c), r), z, h, k, buf))
      for (int l = 0; l < T - c; l++) buf[l] = (uint8_t)code_of(e[c + l] / den, p_step, fz, hi);
    memcpy(codes + c, buf, (size_t)(T - c));
  }
}

/* c[i][j] = sum_k a[i][k] b[k / 4][j][k % 4] for 16 rows i (a + i * as, c + i * cs), j < n (a
 * multiple of 16), k < kp (a multiple of 4): 4 rows x 4 vectors of columns per step, each b vector
 * loaded once for 4 rows and each a broadcast used for 4 vectors. */
static void vnni_block16(const uint8_t *a, int64_t as, int kp, const uint8_t *b, int n, int32_t *c, int64_t cs) {
  for (int i = 0; i < 16; i += 4) {
    const uint8_t *a0 = a + i * as, *a1 = a0 + as, *a2 = a1 + as, *a3 = a2 + as;
    int32_t *c0 = c + i * cs, *c1 = c0 + cs, *c2 = c1 + cs, *c3 = c2 + cs;
    int j = 0;
    for (; j + 64 <= n; j += 64) {
      __m512i s[4][4];
      for (int u = 0; u < 4; u++)
        for (int v = 0; v < 4; v++) s[u][v] = _mm512_setzero_si512();
      for (int g = 0; g < kp / 4; g++) {
        const uint8_t *bg = b + ((int64_t)g * n + j) * 4;
        const __m512i b0 = _mm512_loadu_si512(bg), b1 = _mm512_loadu_si512(bg + 64),
                      b2 = _mm512_loadu_si512(bg + 128), b3 = _mm512_loadu_si512(bg + 192);
        int32_t x[4];
        memcpy(x, a0 + 4 * g, 4), memcpy(x + 1, a1 + 4 * g, 4), memcpy(x + 2, a2 + 4 * g, 4);
        memcpy(x + 3, a3 + 4 * g, 4);
        for (int u = 0; u < 4; u++) {
          const __m512i av = _mm512_set1_epi32(x[u]);
          s[u][0] = _mm512_dpbusd_epi32(s[u][0], av, b0);
          s[u][1] = _mm512_dpbusd_epi32(s[u][1], av, b1);
          s[u][2] = _mm512_dpbusd_epi32(s[u][2], av, b2);
          s[u][3] = _mm512_dpbusd_epi32(s[u][3], av, b3);
        }
      }
      int32_t *cr[4] = {c0, c1, c2, c3};
      for (int u = 0; u < 4; u++)
        for (int v = 0; v < 4; v++) _mm512_storeu_si512(cr[u] + j + 16 * v, s[u][v]);
    }
    for (; j < n; j += 16) {
      __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
      for (int g = 0; g < kp / 4; g++) {
        const __m512i bv = _mm512_loadu_si512(b + ((int64_t)g * n + j) * 4);
        int32_t x[4];
        memcpy(x, a0 + 4 * g, 4), memcpy(x + 1, a1 + 4 * g, 4), memcpy(x + 2, a2 + 4 * g, 4);
        memcpy(x + 3, a3 + 4 * g, 4);
        s0 = _mm512_dpbusd_epi32(s0, _mm512_set1_epi32(x[0]), bv);
        s1 = _mm512_dpbusd_epi32(s1, _mm512_set1_epi32(x[1]), bv);
        s2 = _mm512_dpbusd_epi32(s2, _mm512_set1_epi32(x[2]), bv);
        s3 = _mm512_dpbusd_epi32(s3, _mm512_set1_epi32(x[3]), bv);
      }
      _mm512_storeu_si512(c0 + j, s0), _mm512_storeu_si512(c1 + j, s1);
      _mm512_storeu_si512(c2 + j, s2), _mm512_storeu_si512(c3 + j, s3);
    }
  }
}

/* vnni_block16 on AMX tiles, kp a multiple of 64 (amx.h's configuration: tmm0-7 16 x 64 bytes;
 * here tmm0-3 accumulators, tmm4 a, tmm5-7 b). Four column tiles share each a tile and keep four
 * independent products in flight. */
static void amx_block16(const uint8_t *a, int64_t as, int kp, const uint8_t *b, int n, int32_t *c, int64_t cs) {
  const int64_t bs = (int64_t)n * 4; /* bytes from one group of 4 k to the next */
  int j = 0;
  for (; j + 64 <= n; j += 64) {
    TILE_ZERO(0);
    TILE_ZERO(1);
    TILE_ZERO(2);
    TILE_ZERO(3);
    for (int k = 0; k < kp; k += 64) {
      const uint8_t *bk = b + ((int64_t)(k / 4) * n + j) * 4;
      TILE_LOAD(4, a + k, as);
      TILE_LOAD(5, bk, bs);
      TDPBUUD(0, 4, 5);
      TILE_LOAD(6, bk + 64, bs);
      TDPBUUD(1, 4, 6);
      TILE_LOAD(7, bk + 128, bs);
      TDPBUUD(2, 4, 7);
      TILE_LOAD(5, bk + 192, bs);
      TDPBUUD(3, 4, 5);
    }
    TILE_STORE(0, c + j, cs * 4);
    TILE_STORE(1, c + j + 16, cs * 4);
    TILE_STORE(2, c + j + 32, cs * 4);
    TILE_STORE(3, c + j + 48, cs * 4);
  }
  for (; j < n; j += 16) {
    TILE_ZERO(0);
    for (int k = 0; k < kp; k += 64) {
      TILE_LOAD(4, a + k, as);
      TILE_LOAD(5, b + ((int64_t)(k / 4) * n + j) * 4, bs);
      TDPBUUD(0, 4, 5);
    }
    TILE_STORE(0, c + j, cs * 4);
  }
}

/* sum of n codes (n a multiple of 64; the planes' plane_sum) */
static inline __attribute__((always_inline)) int32_t att_code_sum(const uint8_t *codes, int n) {
  __m512i s = _mm512_setzero_si512();
  for (int i = 0; i < n; i += 64)
    s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_loadu_si512(codes + i), _mm512_setzero_si512()));
  return (int32_t)_mm512_reduce_add_epi64(s);
}

/* 16 x 16 int32 transpose in registers: r[i][j] -> r[j][i] */
static inline __attribute__((always_inline)) void att_transpose16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) { /* u[i + c], 128-bit lane L: rows i..i+3 of column 4 L + c */
    u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; c++) {
    const __m512i x0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i y0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88),
                  y1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(x0, y0, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(x0, y0, 0xDD);
    r[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
  }
}

/* qvit_attention_item on this path (same arguments, same results) */
static int32_t att_item_dot(int32_t item, int32_t T, int32_t H, int32_t d, int32_t bits, int32_t irm, float eps,
                            float scale, int32_t has_bias, int32_t n_mask, const float *qkv, const float *nq_w,
                            const float *nq_b, const float *nk_w, const float *nk_b, const float *q_step,
                            const int32_t *q_zp, const float *k_step, const int32_t *k_zp, const float *v_step,
                            const int32_t *v_zp, const float *p_step, const int32_t *p_zp, const float *bias,
                            const float *mask, uint64_t *qp, uint64_t *kp, uint64_t *vp, int32_t *qs, int32_t *ks,
                            int32_t *vs, uint64_t *pp, int32_t *ps, float *out) {
  const int b = item / H, h = item % H, D = H * d;
  const int DW = words(d), TW = words(T), dpad = DW * WORD, tpad = TW * WORD;
  /* dk, tk: the reductions padded to whole 64-byte tile rows (Q K^T over d, P V over tokens);
   * Tr: rows in blocks of 16; T16, d16: columns in 16-lane vectors / tiles */
  const int dk = dpad, tk = tpad, Tr = (T + 15) / 16 * 16, T16 = Tr, d16 = (d + 15) / 16 * 16;
  const int fl = T16 > dpad ? T16 : dpad;
  /* scratch: float rows f0, f1 [fl]; score accumulators [16][T16], P V accumulators [16][d16];
   * Q codes [Tr][dk], K codes [dk / 4][T16][4], V codes by rows [tk][d16] and as B [tk / 4][d16][4],
   * P codes [16][tk], one row's codes [dpad] */
  const size_t n_f = 2 * (size_t)fl + 16 * (size_t)T16 + 16 * (size_t)d16;
  const size_t n_q = (size_t)Tr * dk, n_k = (size_t)dk * T16, n_v = (size_t)tk * d16, n_p = (size_t)16 * tk;
  char *mem = (char *)malloc(4 * n_f + n_q + n_k + 2 * n_v + n_p + (size_t)dpad);
  if (!mem) return -1;
  float *f0 = (float *)mem, *f1 = f0 + fl;
  int32_t *sacc = (int32_t *)(f1 + fl), *oacc = sacc + 16 * (size_t)T16;
  uint8_t *qc = (uint8_t *)(oacc + 16 * (size_t)d16), *kc = qc + n_q, *vr = kc + n_k, *vc = vr + n_v,
          *pc = vc + n_v, *codes = pc + n_p;
  memset(qc, 0, n_q + n_k + 2 * n_v + n_p + (size_t)dpad);
  const float hi = (float)((1 << bits) - 1); /* the reciprocal tests' bounds (recip_k) */
  const float kq = recip_k(hi, (float)q_zp[h]), kk = recip_k(hi, (float)k_zp[h]),
              kv = recip_k(hi, (float)v_zp[h]), kp_ = recip_k(hi, (float)p_zp[h]);

  const float *base = qkv + (int64_t)b * T * 3 * D;
  const int64_t pq = (int64_t)T * DW, pv = (int64_t)d * TW, pt = (int64_t)T * TW;
  uint64_t *qpi = qp + (int64_t)item * bits * pq, *kpi = kp + (int64_t)item * bits * pq;
  uint64_t *vpi = vp + (int64_t)item * bits * pv, *ppi = pp + (int64_t)item * bits * pt;
  int32_t *qsi = qs + (int64_t)item * T, *ksi = ks + (int64_t)item * T, *vsi = vs + (int64_t)item * d;
  int32_t *psi = ps + (int64_t)item * T;

  /* ---- q, k, v codes (+ planes and sums) ---- */
  float mu[2] = {0.0f, 0.0f}, sd[2] = {1.0f, 1.0f};
  if (irm == 2)
    for (int s = 0; s < 2; s++) head_stats(base + s * D + h * d, 3 * D, T, d, eps, f1, f0, mu + s, sd + s);
  for (int r = 0; r < T; r++) {
    const float *row = base + (int64_t)r * 3 * D + h * d;
    for (int s = 0; s < 2; s++) { /* q, k */
      const float *x = row + s * D;
      if (irm == 1) {
        layernorm_row(x, d, s ? nk_w : nq_w, s ? nk_b : nq_b, eps, f0);
        x = f0;
      } else if (irm == 2) {
        headnorm_row(x, d, mu[s], sd[s], (s ? nk_w : nq_w) + (int64_t)h * d, (s ? nk_b : nq_b) + (int64_t)h * d, f0);
        x = f0;
      }
      att_quantize_row(x, d, (s ? k_step : q_step)[h], (s ? k_zp : q_zp)[h], bits, s ? kk : kq, codes);
      if (s)
        for (int g = 0; g < dk / 4; g++) memcpy(kc + ((int64_t)g * T16 + r) * 4, codes + 4 * g, 4);
      else
        memcpy(qc + (int64_t)r * dk, codes, (size_t)d);
      uint64_t *dst = (s ? kpi : qpi) + (int64_t)r * DW;
      pack_row(codes, DW, bits, dst, pq);
      (s ? ksi : qsi)[r] = att_code_sum(codes, dpad);
    }
    att_quantize_row(row + 2 * D, d, v_step[h], v_zp[h], bits, kv, vr + (int64_t)r * d16);
  }
  /* V rows -> groups of 4 tokens per column: 4 rows' bytes into one int32 lane each */
  for (int g = 0; g < (T + 3) / 4; g++)
    for (int e = 0; e < d16; e += 16) {
      const uint8_t *r0 = vr + (int64_t)4 * g * d16 + e;
      __m512i x = _mm512_setzero_si512();
      for (int j = 0; j < 4; j++)
        x = _mm512_or_si512(
            x, _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(r0 + j * d16))), 8 * j));
      _mm512_storeu_si512(vc + ((int64_t)g * d16 + e) * 4, x);
    }
  /* V planes along tokens: 16 groups (64 tokens) x 16 columns of that layout transposed are 16
   * columns' 64 token codes in order, one plane word per test */
  memset(vsi, 0, sizeof(int32_t) * (size_t)d);
  for (int w = 0; w < TW; w++)
    for (int e0 = 0; e0 < d; e0 += 16) {
      __m512i x[16];
      for (int g = 0; g < 16; g++) x[g] = _mm512_loadu_si512(vc + ((int64_t)(16 * w + g) * d16 + e0) * 4);
      att_transpose16(x);
      for (int j = 0; j < 16 && e0 + j < d; j++) {
        for (int i = 0; i < bits; i++)
          vpi[(int64_t)i * pv + (int64_t)(e0 + j) * TW + w] =
              plane_word_avx512_v(x[j], i);
        vsi[e0 + j] += (int32_t)_mm512_reduce_add_epi64(_mm512_sad_epu8(x[j], _mm512_setzero_si512()));
      }
    }

  /* ---- per block of 16 rows: scores, softmax, probability codes, P V ---- */
  const float s_scale = scale * q_step[h] * k_step[h];
  const int32_t qz = q_zp[h], kz = k_zp[h];
  const float *bias_h = has_bias ? bias + (int64_t)h * T * T : 0;
  const float *mask_b = n_mask ? mask + (int64_t)(b % n_mask) * T * T : 0;
  const float o_scale = p_step[h] * v_step[h];
  const int32_t pz = p_zp[h], vz = v_zp[h];
  float *out_b = out + (int64_t)b * T * D + h * d;
  const int amx = qv_amx_state() == 1;
  if (amx) qv_amx_config();
  for (int r0 = 0; r0 < T; r0 += 16) {
    const int nr = T - r0 < 16 ? T - r0 : 16;
    if (amx) amx_block16(qc + (int64_t)r0 * dk, dk, dk, kc, T16, sacc, T16);
    else vnni_block16(qc + (int64_t)r0 * dk, dk, dk, kc, T16, sacc, T16);
    for (int i = 0; i < nr; i++) {
      const int r = r0 + i;
      uint8_t *pr = pc + (int64_t)i * tk;
      att_softmax_row(sacc + (int64_t)i * T16, T, -kz * qsi[r] + d * qz * kz, qz, ksi, s_scale,
                      bias_h ? bias_h + (int64_t)r * T : 0, mask_b ? mask_b + (int64_t)r * T : 0, p_step[h], pz,
                      bits, kp_, f0, f1, pr);
      pack_row(pr, TW, bits, ppi + (int64_t)r * TW, pt);
      psi[r] = att_code_sum(pr, tk);
    }
    if (amx) amx_block16(pc, tk, tk, vc, d16, oacc, d16);
    else vnni_block16(pc, tk, tk, vc, d16, oacc, d16);
    for (int i = 0; i < nr; i++)
      pv_row(oacc + (int64_t)i * d16, d, -vz * psi[r0 + i] + T * pz * vz, pz, vsi, o_scale,
             out_b + (int64_t)(r0 + i) * D);
  }
  if (amx) qv_amx_release();
  free(mem);
  return 0;
}
#endif

/* One item (b, h) of attention over T tokens, head_dim d, `bits`-bit codes everywhere.
 * Tensors (shapes as the plan declares them, batch b' = item / H):
 *   qkv [B', T, 3 H d]; steps / zero points [H]; irm: 0 none, 1 per token (nq_w, nq_b, nk_w,
 *   nk_b: LayerNorm weight, bias [d]), 2 per head (the same pointers: gamma, beta [H, d]);
 *   bias [H, T, T] (has_bias), mask [n_mask, T, T] (n_mask > 0);
 *   qp, kp [B', H, bits, T, DW], vp [B', H, bits, d, TW], qs, ks [B', H, T], vs [B', H, d],
 *   pp [B', H, bits, T, TW], ps [B', H, T], out [B', T, H d].
 * Returns 0, or -1 when scratch memory cannot be had. */
int32_t qvit_attention_item(int32_t item, int32_t T, int32_t H, int32_t d, int32_t bits, int32_t irm,
                            float eps, float scale, int32_t has_bias, int32_t n_mask,
                            const float *qkv, const float *nq_w, const float *nq_b, const float *nk_w,
                            const float *nk_b, const float *q_step, const int32_t *q_zp,
                            const float *k_step, const int32_t *k_zp, const float *v_step,
                            const int32_t *v_zp, const float *p_step, const int32_t *p_zp,
                            const float *bias, const float *mask, uint64_t *qp, uint64_t *kp,
                            uint64_t *vp, int32_t *qs, int32_t *ks, int32_t *vs, uint64_t *pp,
                            int32_t *ps, float *out) {
#if defined(ATT_DOT)
  return att_item_dot(item, T, H, d, bits, irm, eps, scale, has_bias, n_mask, qkv, nq_w, nq_b, nk_w, nk_b, q_step,
                      q_zp, k_step, k_zp, v_step, v_zp, p_step, p_zp, bias, mask, qp, kp, vp, qs, ks, vs, pp, ps,
                      out);
#endif
  const int b = item / H, h = item % H, D = H * d;
  const int DW = words(d), TW = words(T), dpad = DW * WORD, tpad = TW * WORD;
  const int T8 = (T + 31) / 32 * 32, d8 = (d + 31) / 32 * 32; /* bs_row's column blocks */
  /* scratch: K planes transposed [bits][DW][T8], V planes transposed [bits][TW][d8], two float
   * rows and int32 accumulators [fl], codes of one row [cl], V^T codes [d][tpad] */
  const int fl = d8 > T8 ? d8 : T8, cl = dpad > tpad ? dpad : tpad;
  const size_t n_kt = (size_t)bits * DW * T8, n_vt = (size_t)bits * TW * d8;
  size_t bytes = sizeof(uint64_t) * (n_kt + n_vt) + sizeof(float) * 3 * (size_t)fl + (size_t)cl +
                 (size_t)d * tpad;
  char *mem = (char *)malloc(bytes);
  if (!mem) return -1;
  uint64_t *kt = (uint64_t *)mem, *vt = kt + n_kt; /* first: 8-byte aligned */
  float *f0 = (float *)(vt + n_vt), *f1 = f0 + fl;
  int32_t *acc = (int32_t *)(f1 + fl);
  uint8_t *codes = (uint8_t *)(acc + fl), *vc = codes + cl;

  const float *base = qkv + (int64_t)b * T * 3 * D;
  const int64_t pq = (int64_t)T * DW, pv = (int64_t)d * TW, pt = (int64_t)T * TW;
  uint64_t *qpi = qp + (int64_t)item * bits * pq, *kpi = kp + (int64_t)item * bits * pq;
  uint64_t *vpi = vp + (int64_t)item * bits * pv, *ppi = pp + (int64_t)item * bits * pt;
  int32_t *qsi = qs + (int64_t)item * T, *ksi = ks + (int64_t)item * T, *vsi = vs + (int64_t)item * d;
  int32_t *psi = ps + (int64_t)item * T;

  /* ---- q, k, v codes ---- */
  /* per-head IRM: the head's q and k statistics over all T rows first (f1: row sums, f0: a row) */
  float mu[2] = {0.0f, 0.0f}, sd[2] = {1.0f, 1.0f};
  if (irm == 2)
    for (int s = 0; s < 2; s++) head_stats(base + s * D + h * d, 3 * D, T, d, eps, f1, f0, mu + s, sd + s);
  memset(codes, 0, (size_t)cl);
  memset(vc, 0, (size_t)d * tpad);
  for (int r = 0; r < T; r++) {
    const float *row = base + (int64_t)r * 3 * D + h * d;
    for (int s = 0; s < 2; s++) { /* q, k */
      const float *x = row + s * D;
      if (irm == 1) {
        layernorm_row(x, d, s ? nk_w : nq_w, s ? nk_b : nq_b, eps, f0);
        x = f0;
      } else if (irm == 2) {
        headnorm_row(x, d, mu[s], sd[s], (s ? nk_w : nq_w) + (int64_t)h * d, (s ? nk_b : nq_b) + (int64_t)h * d, f0);
        x = f0;
      }
      quantize_row(x, d, (s ? k_step : q_step)[h], (s ? k_zp : q_zp)[h], bits, codes);
      uint64_t *dst = (s ? kpi : qpi) + (int64_t)r * DW;
      pack_row(codes, DW, bits, dst, pq);
      (s ? ksi : qsi)[r] = plane_sum(dst, pq, DW, bits);
    }
    quantize_row(row + 2 * D, d, v_step[h], v_zp[h], bits, codes);
    for (int e = 0; e < d; e++) vc[(int64_t)e * tpad + r] = codes[e];
  }
  for (int e = 0; e < d; e++) {
    pack_row(vc + (int64_t)e * tpad, TW, bits, vpi + (int64_t)e * TW, pv);
    vsi[e] = plane_sum(vpi + (int64_t)e * TW, pv, TW, bits);
  }
  /* K and V planes transposed: the products' inner loops run over contiguous keys / channels */
  transpose_planes(kpi, bits, T, DW, T8, kt);
  transpose_planes(vpi, bits, d, TW, d8, vt);

  /* ---- scores, softmax, probability codes ---- */
  const float s_scale = scale * q_step[h] * k_step[h];
  const int32_t qz = q_zp[h], kz = k_zp[h];
  const float *bias_h = has_bias ? bias + (int64_t)h * T * T : 0;
  const float *mask_b = n_mask ? mask + (int64_t)(b % n_mask) * T * T : 0;
  memset(codes, 0, (size_t)cl);
  for (int r = 0; r < T; r++) {
    bs_row(qpi + (int64_t)r * DW, pq, DW, bits, kt, T8, acc);
    softmax_row(acc, T, -kz * qsi[r] + d * qz * kz, qz, ksi, s_scale, bias_h ? bias_h + (int64_t)r * T : 0,
                mask_b ? mask_b + (int64_t)r * T : 0, p_step[h], p_zp[h], bits, f0, f1, codes);
    pack_row(codes, TW, bits, ppi + (int64_t)r * TW, pt);
    psi[r] = plane_sum(ppi + (int64_t)r * TW, pt, TW, bits);
  }

  /* ---- P V ---- */
  const float o_scale = p_step[h] * v_step[h];
  const int32_t pz = p_zp[h], vz = v_zp[h];
  for (int r = 0; r < T; r++) {
    bs_row(ppi + (int64_t)r * TW, pt, TW, bits, vt, d8, acc);
    pv_row(acc, d, -vz * psi[r] + T * pz * vz, pz, vsi, o_scale, out + ((int64_t)b * T + r) * D + h * d);
  }
  free(mem);
  return 0;
}
