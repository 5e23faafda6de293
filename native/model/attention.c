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
 * VNNI, both products are byte dot products of the codes instead (dot_row; the same integers), and
 * P V runs row by row right after that row's softmax. The planes and sums are written to the
 * tensors the plan declares either way (tests read them).
 */
#include "../qv_arith.h"

/* planes [bits][rows][nw] -> [bits][nw][rpad] (rows padded with zero words) */
__attribute__((unused)) static void transpose_planes(const uint64_t *src, int bits, int rows, int nw, int rpad, uint64_t *dst) {
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
__attribute__((unused)) static void bs_row(const uint64_t *a, int64_t a_stride, int nw, int bits, const uint64_t *bt,
                                           int cpad, int32_t *out) {
#define BS_CASE(B, W) \
  if (bits == (B) && nw == (W)) {                  \
    bs_row_k(a, a_stride, W, B, bt, cpad, out);     \
    return;                                         \
  }
  BS_CASE(2, 1) BS_CASE(2, 2) BS_CASE(2, 4) BS_CASE(3, 1) BS_CASE(3, 4) BS_CASE(4, 1) BS_CASE(4, 4)
#undef BS_CASE
  bs_row_k(a, a_stride, nw, bits, bt, cpad, out);
}

#if defined(QV_AVX512BW) && defined(__AVX512VNNI__)
/* AVX-512 VNNI: the products as byte dot products of the codes (vpdpbusd: u8 x s8 in groups of 4,
 * into int32), whose cost does not grow with bits^2 as the bit planes' does; codes <= 15 are exact
 * as s8, so the sums are the planes' sums. Operand b is laid out [kg][cpad][4]: group kg of 4
 * reduction values of column c at ((kg * cpad + c) * 4), 16 columns (64 bytes) per vector. */
#define ATT_VNNI 1

/* out[c] = sum_k a[k] b_k[c] for c < cpad (a multiple of 16), a: kp codes (a multiple of 4) */
static void dot_row(const uint8_t *a, int kp, const uint8_t *b, int cpad, int32_t *out) {
  int c = 0;
  for (; c + 64 <= cpad; c += 64) { /* 4 independent accumulators share each broadcast */
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (int g = 0; g < kp / 4; g++) {
      int32_t x;
      memcpy(&x, a + 4 * g, 4);
      const __m512i av = _mm512_set1_epi32(x);
      const uint8_t *bg = b + ((int64_t)g * cpad + c) * 4;
      s0 = _mm512_dpbusd_epi32(s0, av, _mm512_loadu_si512(bg));
      s1 = _mm512_dpbusd_epi32(s1, av, _mm512_loadu_si512(bg + 64));
      s2 = _mm512_dpbusd_epi32(s2, av, _mm512_loadu_si512(bg + 128));
      s3 = _mm512_dpbusd_epi32(s3, av, _mm512_loadu_si512(bg + 192));
    }
    _mm512_storeu_si512(out + c, s0);
    _mm512_storeu_si512(out + c + 16, s1);
    _mm512_storeu_si512(out + c + 32, s2);
    _mm512_storeu_si512(out + c + 48, s3);
  }
  for (; c < cpad; c += 16) {
    __m512i s0 = _mm512_setzero_si512();
    for (int g = 0; g < kp / 4; g++) {
      int32_t x;
      memcpy(&x, a + 4 * g, 4);
      s0 = _mm512_dpbusd_epi32(s0, _mm512_set1_epi32(x), _mm512_loadu_si512(b + ((int64_t)g * cpad + c) * 4));
    }
    _mm512_storeu_si512(out + c, s0);
  }
}
#endif

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
    const int recip = nq_recip_ok(den) && nq_recip_ok(p_step);
    const float32x4_t r = vdupq_n_f32(1.0f / (den * p_step));
    const float k = nq_recip_k(hi, fz);
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
  const int b = item / H, h = item % H, D = H * d;
  const int DW = words(d), TW = words(T), dpad = DW * WORD, tpad = TW * WORD;
  const int T8 = (T + 31) / 32 * 32, d8 = (d + 31) / 32 * 32; /* bs_row's column blocks */
  /* scratch: K planes transposed [bits][DW][T8], V planes transposed [bits][TW][d8], two float
   * rows and int32 accumulators [fl], codes of one row [cl], V^T codes [d][tpad] */
  const int fl = d8 > T8 ? d8 : T8, cl = dpad > tpad ? dpad : tpad;
#if defined(ATT_VNNI)
  const size_t n_kt = 0, n_vt = 0; /* the dot products read codes, not transposed planes */
#else
  const size_t n_kt = (size_t)bits * DW * T8, n_vt = (size_t)bits * TW * d8;
#endif
  size_t bytes = sizeof(uint64_t) * (n_kt + n_vt) + sizeof(float) * 3 * (size_t)fl + (size_t)cl +
                 (size_t)d * tpad;
#if defined(ATT_VNNI)
  /* q codes [T][d4], K codes [d4 / 4][T16][4], V codes [T4 / 4][d16][4] (zero padded) */
  const int d4 = (d + 3) / 4 * 4, T4 = (T + 3) / 4 * 4, T16 = (T + 15) / 16 * 16, d16 = (d + 15) / 16 * 16;
  const size_t n_qc = (size_t)T * d4, n_kc = (size_t)d4 * T16, n_vc = (size_t)T4 * d16;
  bytes += n_qc + n_kc + n_vc;
#endif
  char *mem = (char *)malloc(bytes);
  if (!mem) return -1;
  uint64_t *kt = (uint64_t *)mem, *vt = kt + n_kt; /* first: 8-byte aligned */
  float *f0 = (float *)(vt + n_vt), *f1 = f0 + fl;
  int32_t *acc = (int32_t *)(f1 + fl);
  uint8_t *codes = (uint8_t *)(acc + fl), *vc = codes + cl;
#if defined(ATT_VNNI)
  uint8_t *qc8 = vc + (size_t)d * tpad, *kc8 = qc8 + n_qc, *vc8 = kc8 + n_kc;
  memset(qc8, 0, n_qc + n_kc + n_vc);
#endif

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
#if defined(ATT_VNNI)
      if (s)
        for (int e = 0; e < d; e++) kc8[((int64_t)(e >> 2) * T16 + r) * 4 + (e & 3)] = codes[e];
      else
        memcpy(qc8 + (int64_t)r * d4, codes, (size_t)d);
#endif
      uint64_t *dst = (s ? kpi : qpi) + (int64_t)r * DW;
      pack_row(codes, DW, bits, dst, pq);
      (s ? ksi : qsi)[r] = plane_sum(dst, pq, DW, bits);
    }
    quantize_row(row + 2 * D, d, v_step[h], v_zp[h], bits, codes);
    for (int e = 0; e < d; e++) vc[(int64_t)e * tpad + r] = codes[e];
#if defined(ATT_VNNI)
    for (int e = 0; e < d; e++) vc8[((int64_t)(r >> 2) * d16 + e) * 4 + (r & 3)] = codes[e];
#endif
  }
  for (int e = 0; e < d; e++) {
    pack_row(vc + (int64_t)e * tpad, TW, bits, vpi + (int64_t)e * TW, pv);
    vsi[e] = plane_sum(vpi + (int64_t)e * TW, pv, TW, bits);
  }
#if !defined(ATT_VNNI)
  /* K and V planes transposed: the products' inner loops run over contiguous keys / channels */
  transpose_planes(kpi, bits, T, DW, T8, kt);
  transpose_planes(vpi, bits, d, TW, d8, vt);
#endif

  /* ---- scores, softmax, probability codes ---- */
  const float s_scale = scale * q_step[h] * k_step[h];
  const int32_t qz = q_zp[h], kz = k_zp[h];
  const float *bias_h = has_bias ? bias + (int64_t)h * T * T : 0;
  const float *mask_b = n_mask ? mask + (int64_t)(b % n_mask) * T * T : 0;
  const float o_scale = p_step[h] * v_step[h];
  const int32_t pz = p_zp[h], vz = v_zp[h];
  float *out_b = out + (int64_t)b * T * D + h * d;
  memset(codes, 0, (size_t)cl);
  for (int r = 0; r < T; r++) {
#if defined(ATT_VNNI)
    dot_row(qc8 + (int64_t)r * d4, d4, kc8, T16, acc);
#else
    bs_row(qpi + (int64_t)r * DW, pq, DW, bits, kt, T8, acc);
#endif
    softmax_row(acc, T, -kz * qsi[r] + d * qz * kz, qz, ksi, s_scale, bias_h ? bias_h + (int64_t)r * T : 0,
                mask_b ? mask_b + (int64_t)r * T : 0, p_step[h], p_zp[h], bits, f0, f1, codes);
    pack_row(codes, TW, bits, ppi + (int64_t)r * TW, pt);
    psi[r] = plane_sum(ppi + (int64_t)r * TW, pt, TW, bits);
#if defined(ATT_VNNI)
    /* P V of this row while its codes are at hand (zero past T) */
    dot_row(codes, T4, vc8, d16, acc);
    pv_row(acc, d, -vz * psi[r] + T * pz * vz, pz, vsi, o_scale, out_b + (int64_t)r * D);
#endif
  }

#if !defined(ATT_VNNI)
  /* ---- P V ---- */
  for (int r = 0; r < T; r++) {
    bs_row(ppi + (int64_t)r * TW, pt, TW, bits, vt, d8, acc);
    pv_row(acc, d, -vz * psi[r] + T * pz * vz, pz, vsi, o_scale, out_b + (int64_t)r * D);
  }
#endif
  free(mem);
  return 0;
}
