/* qvit-edge: the quantization arithmetic of every C path, defined once. Included by the model.so
 * micro-kernels (native/model/) and the runtime's kernels (native/'s own .c files, native/ref,
 * native/x86, native/arm): round half to even, activation quantize (codes), exp, erf / GELU, LayerNorm and the
 * IRM head statistics, numpy's pairwise sums, bit-plane packing and plane sums.
 *
 * Arithmetic is edge_runtime/quant.py's and the integer reference's (compile/intmodel), float32
 * without contraction (built with -ffp-contract=off): sums are numpy's pairwise summation (same
 * order, so LayerNorm means and the softmax denominator are numpy's bit for bit), quantization is
 * rint(x / step) + zp clipped (round half to even), exp is Cephes' expf (within 1 ulp of numpy's).
 *
 * Portable C on gcc vector extensions (16 float lanes: AVX-512 / 2x AVX2 / 4x NEON registers),
 * with intrinsics where the target has them: AVX-512 / AVX2 for max, min, floor and the bit
 * packing; on aarch64 NEON versions of the row functions (gcc lowers the 16-lane selects, the
 * 8-lane sums and the float -> byte conversions of the portable code to scalar code there). Every
 * vector loop has a scalar tail doing the same operations in the same order, and every SIMD path
 * computes the portable path's values. QV_PORTABLE compiles the intrinsic paths out (the
 * tests build both and compare). Intrinsics are chosen by the compile flags (__AVX512F__, ...):
 * a function built with a target attribute instead gets the portable vector code, compiled for
 * its target.
 */
#ifndef QV_ARITH_H
#define QV_ARITH_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if !defined(QV_PORTABLE)
#if defined(__AVX512F__)
#define QV_AVX512F 1
#endif
#if defined(__AVX512BW__)
#define QV_AVX512BW 1
#endif
#if defined(__AVX2__)
#define QV_AVX2 1
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#define QV_NEON 1
#endif
#endif
#if defined(__x86_64__) && !defined(QV_PORTABLE)
#include <immintrin.h> /* also for the target-attribute functions below (plane_word_avx2 / _avx512) */
#endif
#if defined(QV_NEON)
#include <arm_neon.h>
#endif

/* Every helper is always inlined: the runtime library calls them from functions built for another
 * ISA (target_clones / target attributes), where an out-of-line call passing 64-byte vectors would
 * not agree on the calling convention. pairwise_sum (recursive, scalar arguments) is the exception. */
#define QV_AI static inline __attribute__((always_inline))

#define WORD 64
#define VL 16

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint8_t vb __attribute__((vector_size(VL)));
typedef float vf8 __attribute__((vector_size(32)));

QV_AI int words(int n) { return (n + WORD - 1) / WORD; }

QV_AI vf loadf(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
QV_AI vi loadi(const int32_t *p) {
  vi v;
  memcpy(&v, p, sizeof v);
  return v;
}
QV_AI void storef(float *p, vf v) { memcpy(p, &v, sizeof v); }
QV_AI vf splat(float x) { return (vf){0} + x; }
QV_AI vf sel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
#if defined(QV_NEON)
/* a vf as its four NEON registers */
typedef union { vf v; float32x4_t q[4]; } vf_q;
#endif
/* a > b ? a : b and a < b ? a : b (one instruction on AVX-512: maxps / minps are defined so).
 * NEON's fmax / fmin differ for NaNs and a pair of zeros, so this is a compare and a bit select
 * (the row functions below use fmaxnm / fminnm where those cases cannot change a value). */
QV_AI vf vmax(vf a, vf b) {
#if defined(QV_AVX512F)
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#elif defined(QV_NEON)
  vf_q x = {a}, y = {b}, r;
  for (int k = 0; k < 4; k++) r.q[k] = vbslq_f32(vcgtq_f32(x.q[k], y.q[k]), x.q[k], y.q[k]);
  return r.v;
#else
  return sel(a > b, a, b);
#endif
}
QV_AI vf vmin(vf a, vf b) {
#if defined(QV_AVX512F)
  return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#elif defined(QV_NEON)
  vf_q x = {a}, y = {b}, r;
  for (int k = 0; k < 4; k++) r.q[k] = vbslq_f32(vcltq_f32(x.q[k], y.q[k]), x.q[k], y.q[k]);
  return r.v;
#else
  return sel(a < b, a, b);
#endif
}

/* ---------------------------------------------------------------------------- float helpers */

#if defined(QV_NEON)
/* numpy's reduction of its 8 accumulators, lo = r0..r3, hi = r4..r7:
 * ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)), by pairwise adds */
QV_AI float nq_hsum8(float32x4_t lo, float32x4_t hi) {
  const float32x4_t p = vpaddq_f32(lo, hi); /* r0+r1, r2+r3, r4+r5, r6+r7 */
  return vpadds_f32(vget_low_f32(vpaddq_f32(p, p)));
}

/* Exactly rounded division without fdiv (a 4-lane fdiv costs ~34 cycles in LLVM's model of the Pi 4's
 * core): a quotient y from a reciprocal r of q, y0 = p r, y = y0 + (p - q y0) r (fused), then a
 * check that proves y == RN(p / q), the IEEE quotient, lane by lane; the caller divides where a
 * lane fails. The check alone makes the result exact, whatever r is.
 *
 * Check: rem = RN(p - q y) (one fma), 2^E = y's exponent field as a float, s = RN(2^E 2^-24),
 * t = RN(q s); pass iff |rem| < |t| (facgt). Proof that a pass gives y = RN(p / q) (default FPCR:
 * round to nearest even, no flush to zero; RN is monotone and odd):
 * - y zero or subnormal: 2^E = 0, t = 0 or NaN. y inf or NaN: rem is inf or NaN. No pass.
 * - y normal: s = 2^(E-24) exactly when E >= -125, else s = 0 (2^-150 ties to even 0): s <=
 *   2^(E-24). p, q finite (else rem is inf or NaN) and q != 0 (else t = 0).
 * - |t| = inf: then |q| s >= 2^128 - 2^103, |q y| >= |q| 2^E >= 2^24 |q| s > 2^151 > |p| + 2^128,
 *   so rem = +-inf: no pass. So t is finite.
 * - If |p - q y| >= |q| s, then |rem| = RN(|p - q y|) >= RN(|q| s) = |t|. So a pass gives
 *   |p - q y| < |q| s <= |q| 2^(E-24): |p / q - y| < 2^(E-24), half the gap from y to either
 *   neighbour (2^(E-23); above FLT_MAX: to the overflow bound), except below y = +-2^E, where the
 *   gap is 2^(E-24). But no |p / q| lies in (2^E - 2^(E-24), 2^E): scaled by 2^-E it is P / Q
 *   with positive integers P, Q, one of them < 2^24 (significands times powers of two); P < Q
 *   gives P / Q <= 1 - 1 / Q, so above 1 - 2^-24 needs Q > 2^24, then P < 2^24 and P / Q <=
 *   (2^24 - 1) / (2^24 + 1) < 1 - 2^-24. So p / q lies strictly inside y's rounding interval:
 *   RN(p / q) = y, sign included.
 * Quotients rarely fail: with r within ~1 ulp of 1/q, y is RN(p / q) unless p / q lies within
 * ~2^-21 ulp of a rounding tie (then the check fails too), and y is normal. QV_NQ_DIV_MUTANT
 * weakens the check (the tests build it to show that their values catch that). Cost on the A72
 * (A57 model): 13 single-cycle vector operations per 4 quotients, 8 with a fixed divisor. */
#if QV_NQ_DIV_MUTANT == 2 /* a full ulp: accepts quotients one off */
#define NQ_HALF_ULP 0x1p-23f
#else
#define NQ_HALF_ULP 0x1p-24f
#endif
/* 2^E of y: its exponent field (0 for zero and subnormals, inf for inf and NaN) */
QV_AI float32x4_t nq_exp2(float32x4_t y) {
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), vdupq_n_u32(0x7f800000u)));
}
/* |rem| < |t| */
QV_AI uint32x4_t nq_div_pass(float32x4_t rem, float32x4_t t) {
#if QV_NQ_DIV_MUTANT == 1 /* no check */
  (void)rem, (void)t;
  return vdupq_n_u32(~0u);
#elif QV_NQ_DIV_MUTANT == 3 /* <=: accepts more */
  return vcageq_f32(t, rem);
#else
  return vcagtq_f32(t, rem);
#endif
}
QV_AI uint32x4_t nq_div_exact(float32x4_t p, float32x4_t q, float32x4_t y) {
  return nq_div_pass(vfmsq_f32(p, q, y), vmulq_f32(q, vmulq_f32(nq_exp2(y), vdupq_n_f32(NQ_HALF_ULP))));
}
/* The check for a divisor q fixed over many quotients, with qh = q 2^-24 made once: exact when
 * nq_div_fixed_ok(q), so t = RN(qh 2^E) = RN(q 2^(E-24)), the bound above without s's rounding. */
QV_AI int nq_div_fixed_ok(float q) {
  const float a = q < 0.0f ? -q : q;
  return a >= 0x1p-102f && a <= 0x1.fffffep127f;
}
QV_AI uint32x4_t nq_div_exact_fixed(float32x4_t p, float32x4_t q, float32x4_t qh, float32x4_t y) {
  return nq_div_pass(vfmsq_f32(p, q, y), vmulq_f32(qh, nq_exp2(y)));
}
/* y0 + (p - q y0) r, y0 = p r: the quotient nq_div_exact checks, r approximating 1 / q */
QV_AI float32x4_t nq_div_y(float32x4_t p, float32x4_t q, float32x4_t r) {
  const float32x4_t y0 = vmulq_f32(p, r);
  return vfmaq_f32(y0, vfmsq_f32(p, q, y0), r);
}
/* 1 / q to about float precision: the 8-bit estimate and two Newton steps */
QV_AI float32x4_t nq_recip(float32x4_t q) {
  float32x4_t r = vrecpeq_f32(q);
  r = vmulq_f32(r, vrecpsq_f32(q, r));
  return vmulq_f32(r, vrecpsq_f32(q, r));
}
QV_AI int nq_all(uint32x4_t m) { return vminvq_u32(m) != 0; }
/* p / q, IEEE's value: the checked quotient where every lane passes, else fdiv. r: nq_recip(q), or
 * a broadcast 1.0f / q for a divisor fixed over a row */
QV_AI float32x4_t nq_div_r(float32x4_t p, float32x4_t q, float32x4_t r) {
  const float32x4_t y = nq_div_y(p, q, r);
  return nq_all(nq_div_exact(p, q, y)) ? y : vdivq_f32(p, q);
}
QV_AI float32x4_t nq_div(float32x4_t p, float32x4_t q) { return nq_div_r(p, q, nq_recip(q)); }
/* y[k] = p[k] / q[k] for 4 registers: one test for all, the fdivs when any lane fails */
QV_AI void nq_div4(const float32x4_t p[4], const float32x4_t q[4], float32x4_t y[4]) {
  uint32x4_t ok = vdupq_n_u32(~0u);
  for (int k = 0; k < 4; k++) {
    y[k] = nq_div_y(p[k], q[k], nq_recip(q[k]));
#if QV_NQ_DIV_MUTANT == 4 /* the first register's test only */
    if (k == 0)
#endif
    ok = vandq_u32(ok, nq_div_exact(p[k], q[k], y[k]));
  }
  if (!nq_all(ok))
    for (int k = 0; k < 4; k++) y[k] = vdivq_f32(p[k], q[k]);
}
/* p / q on 16 lanes */
QV_AI vf nq_div_v(vf p, vf q) {
  vf_q a = {p}, b = {q}, y;
  nq_div4(a.q, b.q, y.q);
  return y.v;
}
#endif

/* numpy's pairwise_sum for float32 (numpy/_core/src/umath/loops_utils.h.src): runs of up to 128
 * summed with 8 interleaved accumulators (one 8-lane vector here), longer runs split in two at a
 * multiple of 8. */
static inline float pairwise_sum(const float *a, int n) {
  if (n < 8) {
    float res = 0.0f;
    for (int i = 0; i < n; i++) res += a[i];
    return res;
  }
  if (n <= 128) {
#if defined(QV_NEON)
    float32x4_t lo = vld1q_f32(a), hi = vld1q_f32(a + 4);
    int i;
    for (i = 8; i < n - (n % 8); i += 8) {
      lo = vaddq_f32(lo, vld1q_f32(a + i));
      hi = vaddq_f32(hi, vld1q_f32(a + i + 4));
    }
    float res = nq_hsum8(lo, hi);
#else
    vf8 r;
    int i;
    memcpy(&r, a, sizeof r);
    for (i = 8; i < n - (n % 8); i += 8) {
      vf8 v;
      memcpy(&v, a + i, sizeof v);
      r += v;
    }
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
#endif
    for (; i < n; i++) res += a[i];
    return res;
  }
  int n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* rint (half to even) for |x| <= 2^22: adding and removing 1.5 * 2^23 rounds in the default mode.
 * Larger values are clamped first: they clip to the same code either way. The scalar functions'
 * clamps are the vector ones' selects (vmin (vmax (x, lo), hi)), so a NaN goes where it goes in a
 * vector lane and a row's tail gives what its vector part would. */
QV_AI float round_even(float x) {
  const float big = 4194304.0f, magic = 12582912.0f;
  x = x > -big ? x : -big;
  x = x < big ? x : big;
  return (x + magic) - magic;
}
QV_AI vf round_even_v(vf x) {
  const vf big = splat(4194304.0f), nbig = splat(-4194304.0f);
  x = vmin(vmax(x, nbig), big);
#if defined(QV_NEON)
  /* frintn rounds half to even; it keeps a zero's sign (-0.5 -> -0), adding +0 makes the +0 that
   * the magic-number rounding gives */
  vf_q r = {x};
  for (int k = 0; k < 4; k++) r.q[k] = vaddq_f32(vrndnq_f32(r.q[k]), vdupq_n_f32(0.0f));
  return r.v;
#else
  const vf magic = splat(12582912.0f);
  return (x + magic) - magic;
#endif
}

/* quant.quantize_act of one value: clip(rint(x / step) + zp, 0, hi) */
QV_AI int32_t code_of(float x, float step, float fz, float hi) {
  float q = round_even(x / step) + fz;
  q = q > 0.0f ? q : 0.0f;
  q = q < hi ? q : hi;
  return (int32_t)q;
}
QV_AI vi code_of_v(vf x, float step, float fz, float hi) {
  vf q = round_even_v(x / step) + fz;
  q = vmin(vmax(q, splat(0.0f)), splat(hi));
  return __builtin_convertvector(q, vi);
}

/* Division by a multiplication: a 4-lane fdiv costs ~34 cycles in LLVM's model of the Pi 4's core,
 * the rest of a code a few. y = x * (1/s) gives the codes of q = x / s, or the caller divides.
 * For s in [2^-60, 2^60] (for the softmax's chain (x / s1) / s2: s1 and s2 in it, y = x * (1/(s1 s2)))
 * the reciprocal and the chain's steps are normal floats, so y and q differ by at most 3 (chain: 5)
 * roundings of the exact quotient: |y - q| < 2^-21 |y|; where a product or quotient falls below the
 * normal range, y and q are both far below 0.5 and round to the zero of x's sign. With L the power
 * of two >= hi + |zp| + 2: where |y| < L, rint(q) = rint(y) when y is more than 2^-21 L from every
 * half-integer, |y - rint(y)| < k = 0.5 - 2^-21 L (the difference is exact, a NaN fails); where
 * |y| >= L, y and q clip to the same end of [0, hi] whatever they round to. So the codes agree to
 * the last bit wherever every lane passes; otherwise (next to a tie, y not finite) the caller
 * redoes the 16 values dividing. k = 0 (nothing passes) for clip ranges past 2^19. */
QV_AI int recip_ok(float s) { return s >= 0x1p-60f && s <= 0x1p60f; }
QV_AI float recip_k(float hi, float fz) {
  const float need = hi + (fz < 0.0f ? -fz : fz) + 2.0f;
  float L = 1.0f;
  while (L < need && L <= 0x1p19f) L *= 2.0f;
  return L <= 0x1p19f ? 0.5f - L * 0x1p-21f : 0.0f;
}
#if defined(QV_AVX512F) && defined(QV_AVX512BW)
/* The same test on 16 AVX-512 lanes y = x * (1/s): clip(rint(y) + fz, 0, hi) as bytes at dst when
 * every lane passes (-> 1); else nothing is stored (-> 0). code_of's value: its round_even gives
 * rint too, and a zero's sign is gone after the clip and the conversion. */
QV_AI int codes16_y_avx512(__m512 y, __m512 fz, __m512 hi, __m512 k, uint8_t *dst) {
  const __m512 n = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  if (_mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(y, n)), k, _CMP_LT_OQ) != 0xFFFF) return 0;
  const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(n, fz), _mm512_setzero_ps()), hi);
  _mm_storeu_si128((__m128i *)dst, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(q)));
  return 1;
}
#endif

#if defined(QV_NEON)
/* code_of without the clip, as uint32: rint(x / step) + zp. The clamp at +-2^22 is left out: a
 * value beyond it is beyond the clip bounds either way (|zp| < 2^22); fcvtzu saturates, sending
 * negatives and NaN to 0 as the clip does, and nq_codes16's narrowing saturates, so
 * nq_codes16 = min(sat_u8(q), hi) = code_of for every input, infinities and NaN included. */
QV_AI uint32x4_t nq_code4(float32x4_t x, float32x4_t step, float32x4_t fz) {
  return vcvtq_u32_f32(vaddq_f32(vrndnq_f32(vdivq_f32(x, step)), fz));
}
QV_AI uint8x16_t nq_codes16(uint32x4_t u0, uint32x4_t u1, uint32x4_t u2, uint32x4_t u3, uint8x16_t hi) {
  const uint16x8_t h0 = vqmovn_high_u32(vqmovn_u32(u0), u1), h1 = vqmovn_high_u32(vqmovn_u32(u2), u3);
  return vminq_u8(vqmovn_high_u16(vqmovn_u16(h0), h1), hi);
}

/* nq_codes16 of nq_code4(x_t / s) for y_t = x_t * (1/s) into dst, when every lane passes (-> 1);
 * otherwise nothing is stored (-> 0) */
QV_AI int nq_codes16_y(float32x4_t y0, float32x4_t y1, float32x4_t y2, float32x4_t y3, float32x4_t fz, float k,
                       uint8x16_t hi, uint8_t *dst) {
  const float32x4_t n0 = vrndnq_f32(y0), n1 = vrndnq_f32(y1), n2 = vrndnq_f32(y2), n3 = vrndnq_f32(y3);
  /* fmax keeps a NaN, fmaxv too: a NaN lane fails the test */
  const float32x4_t d = vmaxq_f32(vmaxq_f32(vabdq_f32(y0, n0), vabdq_f32(y1, n1)),
                                  vmaxq_f32(vabdq_f32(y2, n2), vabdq_f32(y3, n3)));
  if (!(vmaxvq_f32(d) < k)) return 0;
  vst1q_u8(dst, nq_codes16(vcvtq_u32_f32(vaddq_f32(n0, fz)), vcvtq_u32_f32(vaddq_f32(n1, fz)),
                           vcvtq_u32_f32(vaddq_f32(n2, fz)), vcvtq_u32_f32(vaddq_f32(n3, fz)), hi));
  return 1;
}
#endif

/* codes of n values into uint8 (zero padding after n is the caller's) */
QV_AI void quantize_row(const float *x, int n, float step, int32_t zp, int bits, uint8_t *codes) {
  const float hi = (float)((1 << bits) - 1), fz = (float)zp;
  int i = 0;
#if defined(QV_NEON)
  const float32x4_t st = vdupq_n_f32(step), z = vdupq_n_f32(fz), r = vdupq_n_f32(1.0f / step);
  const uint8x16_t h8 = vdupq_n_u8((uint8_t)((1 << bits) - 1));
  const int recip = recip_ok(step);
  const float k = recip_k(hi, fz);
  for (; i + 16 <= n; i += 16) {
    if (recip && nq_codes16_y(vmulq_f32(vld1q_f32(x + i), r), vmulq_f32(vld1q_f32(x + i + 4), r),
                              vmulq_f32(vld1q_f32(x + i + 8), r), vmulq_f32(vld1q_f32(x + i + 12), r), z, k, h8,
                              codes + i))
      continue;
    vst1q_u8(codes + i, nq_codes16(nq_code4(vld1q_f32(x + i), st, z), nq_code4(vld1q_f32(x + i + 4), st, z),
                                   nq_code4(vld1q_f32(x + i + 8), st, z), nq_code4(vld1q_f32(x + i + 12), st, z),
                                   h8));
  }
#endif
  for (; i + VL <= n; i += VL) {
    vb cb = __builtin_convertvector(code_of_v(loadf(x + i), step, fz, hi), vb);
    memcpy(codes + i, &cb, sizeof cb);
  }
  for (; i < n; i++) codes[i] = (uint8_t)code_of(x[i], step, fz, hi);
}

/* reference.layernorm over one row of n (mean, variance: numpy's float32 mean), into out */
QV_AI float hsum8(vf8 r) { return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); }
QV_AI vf8 load8(const float *p) {
  vf8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

#if defined(QV_NEON)
/* the pairwise sum of (x[i] - m)^2 over one row of n; tmp[n] holds the squares when n is longer than
 * one pairwise block (otherwise they stay in registers) */
QV_AI float nq_sum_sqdev(const float *x, int n, float m, float *tmp) {
  const float32x4_t vm = vdupq_n_f32(m);
  int i = 0;
  if (n >= 8 && n <= 128) { /* pairwise_sum's one block, over the squares as they are made */
    float32x4_t c = vsubq_f32(vld1q_f32(x), vm), lo = vmulq_f32(c, c);
    c = vsubq_f32(vld1q_f32(x + 4), vm);
    float32x4_t hi = vmulq_f32(c, c);
    for (i = 8; i < n - (n % 8); i += 8) {
      c = vsubq_f32(vld1q_f32(x + i), vm);
      lo = vaddq_f32(lo, vmulq_f32(c, c));
      c = vsubq_f32(vld1q_f32(x + i + 4), vm);
      hi = vaddq_f32(hi, vmulq_f32(c, c));
    }
    float res = nq_hsum8(lo, hi);
    for (; i < n; i++) res += (x[i] - m) * (x[i] - m);
    return res;
  }
  for (; i + 4 <= n; i += 4) {
    const float32x4_t c = vsubq_f32(vld1q_f32(x + i), vm);
    vst1q_f32(tmp + i, vmulq_f32(c, c));
  }
  for (; i < n; i++) tmp[i] = (x[i] - m) * (x[i] - m);
  return pairwise_sum(tmp, n);
}
#endif

QV_AI void layernorm_row(const float *x, int n, const float *w, const float *b, float eps, float *out) {
#if defined(QV_NEON)
  {
    const float mu = pairwise_sum(x, n) / (float)n;
    const float den = __builtin_sqrtf(nq_sum_sqdev(x, n, mu, out) / (float)n + eps);
    /* the division by den: nq_div_y's quotients from den's rounded reciprocal, checked (a fixed
     * divisor), 8 at a time; the division where a lane fails */
    const float32x4_t vm = vdupq_n_f32(mu), vd = vdupq_n_f32(den), vr = vdupq_n_f32(1.0f / den);
    const float32x4_t vh = vdupq_n_f32(den * NQ_HALF_ULP);
    const int fixed = nq_div_fixed_ok(den);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      const float32x4_t c0 = vsubq_f32(vld1q_f32(x + i), vm), c1 = vsubq_f32(vld1q_f32(x + i + 4), vm);
      float32x4_t y0 = nq_div_y(c0, vd, vr), y1 = nq_div_y(c1, vd, vr);
      if (!fixed || !nq_all(vandq_u32(nq_div_exact_fixed(c0, vd, vh, y0), nq_div_exact_fixed(c1, vd, vh, y1))))
        y0 = vdivq_f32(c0, vd), y1 = vdivq_f32(c1, vd);
      vst1q_f32(out + i, vaddq_f32(vmulq_f32(y0, vld1q_f32(w + i)), vld1q_f32(b + i)));
      vst1q_f32(out + i + 4, vaddq_f32(vmulq_f32(y1, vld1q_f32(w + i + 4)), vld1q_f32(b + i + 4)));
    }
    for (; i + 4 <= n; i += 4)
      vst1q_f32(out + i, vaddq_f32(vmulq_f32(vdivq_f32(vsubq_f32(vld1q_f32(x + i), vm), vd), vld1q_f32(w + i)),
                                   vld1q_f32(b + i)));
    for (; i < n; i++) out[i] = (x[i] - mu) / den * w[i] + b[i];
    return;
  }
#endif
  if (n % 8 == 0 && n >= 8 && n <= 128) { /* one pairwise block: the 8 accumulators in registers */
    vf8 r = load8(x);
    for (int i = 8; i < n; i += 8) r += load8(x + i);
    const float mu = hsum8(r) / (float)n;
    vf8 c = load8(x) - mu, q = c * c;
    for (int i = 8; i < n; i += 8) {
      c = load8(x + i) - mu;
      q += c * c;
    }
    const float den = __builtin_sqrtf(hsum8(q) / (float)n + eps);
    int i = 0;
    for (; i + VL <= n; i += VL) storef(out + i, (loadf(x + i) - mu) / den * loadf(w + i) + loadf(b + i));
    for (; i < n; i += 8) {
      vf8 o = (load8(x + i) - mu) / den * load8(w + i) + load8(b + i);
      memcpy(out + i, &o, sizeof o);
    }
    return;
  }
  const float mu = pairwise_sum(x, n) / (float)n;
  int i = 0;
  for (; i + VL <= n; i += VL) {
    vf c = loadf(x + i) - mu;
    storef(out + i, c * c);
  }
  for (; i < n; i++) out[i] = (x[i] - mu) * (x[i] - mu);
  const float var = pairwise_sum(out, n) / (float)n;
  const float den = __builtin_sqrtf(var + eps);
  for (i = 0; i + VL <= n; i += VL) storef(out + i, (loadf(x + i) - mu) / den * loadf(w + i) + loadf(b + i));
  for (; i < n; i++) out[i] = (x[i] - mu) / den * w[i] + b[i];
}

/* one row of a quantized layer's input -> codes: LayerNorm first when ln (into tmp[n]), then
 * quantize_row; what every activation quantize kernel (bit planes, int8 codes) computes per row */
QV_AI void ln_quantize_row(const float *x, int n, int ln, const float *w, const float *b, float eps, float *tmp,
                                   float step, int32_t zp, int bits, uint8_t *codes) {
  if (ln) {
    layernorm_row(x, n, w, b, eps, tmp);
    x = tmp;
  }
  quantize_row(x, n, step, zp, bits, codes);
}

/* reference.head_norm's statistics of one (item, head) block of T rows of n at x + r * stride:
 * each row's numpy-order sum over n into rows[r], then the pairwise sum of the T row sums (numpy's
 * order for the contiguous vector of row sums); mean = sum / (T n), then the same two-level sum of
 * the squared deviations (one row of them in tmp[n]) for the variance. -> *mu, *sd = sqrt(var + eps) */
QV_AI void head_stats(const float *x, int64_t stride, int T, int n, float eps, float *rows, float *tmp,
                              float *mu, float *sd) {
  const float count = (float)(T * n);
  for (int r = 0; r < T; r++) rows[r] = pairwise_sum(x + r * stride, n);
  const float m = pairwise_sum(rows, T) / count;
#if defined(QV_NEON)
  for (int r = 0; r < T; r++) rows[r] = nq_sum_sqdev(x + r * stride, n, m, tmp);
  *mu = m;
  *sd = __builtin_sqrtf(pairwise_sum(rows, T) / count + eps);
  return;
#endif
  for (int r = 0; r < T; r++) {
    const float *xr = x + r * stride;
    int i = 0;
    for (; i + VL <= n; i += VL) {
      vf c = loadf(xr + i) - m;
      storef(tmp + i, c * c);
    }
    for (; i < n; i++) tmp[i] = (xr[i] - m) * (xr[i] - m);
    rows[r] = pairwise_sum(tmp, n);
  }
  *mu = m;
  *sd = __builtin_sqrtf(pairwise_sum(rows, T) / count + eps);
}

/* one row of reference.head_norm: ((x - mu) + beta) / (gamma * sd), gamma, beta the head's [n] */
QV_AI void headnorm_row(const float *x, int n, float mu, float sd, const float *gamma, const float *beta,
                                float *out) {
  int i = 0;
#if defined(QV_NEON)
  const float32x4_t vm = vdupq_n_f32(mu), vs = vdupq_n_f32(sd);
  for (; i + 8 <= n; i += 8) { /* the divisions checked (nq_div_exact), 8 at a time */
    const float32x4_t p0 = vaddq_f32(vsubq_f32(vld1q_f32(x + i), vm), vld1q_f32(beta + i));
    const float32x4_t p1 = vaddq_f32(vsubq_f32(vld1q_f32(x + i + 4), vm), vld1q_f32(beta + i + 4));
    const float32x4_t q0 = vmulq_f32(vld1q_f32(gamma + i), vs), q1 = vmulq_f32(vld1q_f32(gamma + i + 4), vs);
    float32x4_t y0 = nq_div_y(p0, q0, nq_recip(q0)), y1 = nq_div_y(p1, q1, nq_recip(q1));
    if (!nq_all(vandq_u32(nq_div_exact(p0, q0, y0), nq_div_exact(p1, q1, y1))))
      y0 = vdivq_f32(p0, q0), y1 = vdivq_f32(p1, q1);
    vst1q_f32(out + i, y0);
    vst1q_f32(out + i + 4, y1);
  }
  for (; i + 4 <= n; i += 4)
    vst1q_f32(out + i, nq_div(vaddq_f32(vsubq_f32(vld1q_f32(x + i), vm), vld1q_f32(beta + i)),
                              vmulq_f32(vld1q_f32(gamma + i), vs)));
#endif
  for (; i + VL <= n; i += VL) storef(out + i, ((loadf(x + i) - mu) + loadf(beta + i)) / (loadf(gamma + i) * sd));
  for (; i < n; i++) out[i] = ((x[i] - mu) + beta[i]) / (gamma[i] * sd);
}

/* Cephes expf: Cody-Waite reduction + degree-7 polynomial, within 1 ulp of libm's
 * for softmax inputs (<= 0). exp_f and exp_v do the same operations in the same order. */
QV_AI float exp_f(float x) {
  x = x < 88.3762626647949f ? x : 88.3762626647949f;
  x = x > -87.3365478515625f ? x : -87.3365478515625f;
  float t = x * 1.44269504088896341f + 0.5f;
  float n = (float)(int32_t)t;
  n = n > t ? n - 1.0f : n; /* floor */
  float r = x - n * 0.693359375f - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } two_n;
  two_n.i = ((int32_t)n + 127) << 23;
  return p * two_n.f;
}
QV_AI vf exp_v(vf x) {
  const vf hi = splat(88.3762626647949f), lo = splat(-87.3365478515625f);
  x = vmax(vmin(x, hi), lo);
  vf t = x * 1.44269504088896341f + 0.5f;
#if defined(QV_AVX512F)
  vf n = (vf)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); /* floor */
#elif defined(QV_NEON)
  vf_q f = {t}; /* frintm: floor */
  for (int k = 0; k < 4; k++) f.q[k] = vrndmq_f32(f.q[k]);
  vf n = f.v;
#else
  vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf);
  n = sel(n > t, n - 1.0f, n);
#endif
  vf r = x - n * 0.693359375f - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  vi two_n = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)two_n;
}
#if defined(QV_NEON)
/* exp_v on one NEON register: the same operations in the same order. fminnm / fmaxnm clamp as
 * vmin / vmax do here: a NaN x goes to the upper bound, and the bounds are not zero. */
QV_AI float32x4_t nq_exp(float32x4_t x) {
  x = vmaxnmq_f32(vminnmq_f32(x, vdupq_n_f32(88.3762626647949f)), vdupq_n_f32(-87.3365478515625f));
  const float32x4_t t = vaddq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)), vdupq_n_f32(0.5f));
  const float32x4_t n = vrndmq_f32(t);
  const float32x4_t r =
      vsubq_f32(vsubq_f32(x, vmulq_f32(n, vdupq_n_f32(0.693359375f))), vmulq_f32(n, vdupq_n_f32(-2.12194440e-4f)));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.3981999507e-3f));
  p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(8.3334519073e-3f));
  p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(4.1665795894e-2f));
  p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(1.6666665459e-1f));
  p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(5.0000001201e-1f));
  p = vaddq_f32(vaddq_f32(vmulq_f32(vmulq_f32(p, r), r), r), vdupq_n_f32(1.0f));
  const int32x4_t two_n = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(two_n));
}
#endif

/* erf and GELU: compile/kernels.py's _erf / _gelu (a rational approximation, float32), in the
 * same order, so every engine writes the same floats for the same integers. gelu_v (16 lanes) and
 * gelu_f (one value) do identical operations. */
/* kernels._erf's constants, float32 as TVM makes them (the Python double rounded once to float) */
#define ERF_P0 ((float)-2.72614225801306e-10)
#define ERF_P1 ((float)2.77068142495902e-08)
#define ERF_P2 ((float)-2.10102402082508e-06)
#define ERF_P3 ((float)-5.69250639462346e-05)
#define ERF_P4 ((float)-7.34990630326855e-04)
#define ERF_P5 ((float)-2.95459980854025e-03)
#define ERF_P6 ((float)-1.60960333262415e-02)
#define ERF_Q0 ((float)-1.45660718464996e-05)
#define ERF_Q1 ((float)-2.13374055278905e-04)
#define ERF_Q2 ((float)-1.68282697438203e-03)
#define ERF_Q3 ((float)-7.37332916720468e-03)
#define ERF_Q4 ((float)-1.42647390514189e-02)
#define GELU_RSQRT2 ((float)0.7071067811865476)

QV_AI float erf_f(float x) {
  x = x < 4.0f ? x : 4.0f;
  x = x > -4.0f ? x : -4.0f;
  const float x2 = x * x;
  float p = x2 * ERF_P0 + ERF_P1;
  p = x2 * p + ERF_P2;
  p = x2 * p + ERF_P3;
  p = x2 * p + ERF_P4;
  p = x2 * p + ERF_P5;
  p = x2 * p + ERF_P6;
  p = x * p;
  float q = x2 * ERF_Q0 + ERF_Q1;
  q = x2 * q + ERF_Q2;
  q = x2 * q + ERF_Q3;
  q = x2 * q + ERF_Q4;
  return p / q;
}

QV_AI float gelu_f(float v, int has_clip, float clip) {
  float g = v * 0.5f * (1.0f + erf_f(v * GELU_RSQRT2));
  if (has_clip) {
    g = g < clip ? g : clip;
    g = g > -clip ? g : -clip;
  }
  return g;
}

QV_AI vf erf_v(vf x) {
  x = vmin(x, splat(4.0f));
  x = vmax(x, splat(-4.0f));
  const vf x2 = x * x;
  vf p = x2 * ERF_P0 + ERF_P1;
  p = x2 * p + ERF_P2;
  p = x2 * p + ERF_P3;
  p = x2 * p + ERF_P4;
  p = x2 * p + ERF_P5;
  p = x2 * p + ERF_P6;
  p = x * p;
  vf q = x2 * ERF_Q0 + ERF_Q1;
  q = x2 * q + ERF_Q2;
  q = x2 * q + ERF_Q3;
  q = x2 * q + ERF_Q4;
#if defined(QV_NEON)
  return nq_div_v(p, q);
#else
  return p / q;
#endif
}

#if defined(QV_NEON)
/* gelu_v on 4 NEON registers, in place: the same operations in the same order, the quotients by
 * nq_div4. x = v * rsqrt2 is a product, so a NaN in it is quiet: fminnm / fmaxnm clamp it to 4 as
 * vmin / vmax do, and the bounds are not zero. The clip likewise when clip > 0 (a NaN g goes to
 * clip, no pair of zeros); otherwise the compare and select of vmin / vmax. */
QV_AI void nq_gelu4(float32x4_t v[4], int has_clip, float clip) {
  float32x4_t p[4], q[4], e[4];
  for (int k = 0; k < 4; k++) {
    float32x4_t x = vmulq_f32(v[k], vdupq_n_f32(GELU_RSQRT2));
    x = vmaxnmq_f32(vminnmq_f32(x, vdupq_n_f32(4.0f)), vdupq_n_f32(-4.0f));
    const float32x4_t x2 = vmulq_f32(x, x);
    float32x4_t a = vaddq_f32(vmulq_f32(x2, vdupq_n_f32(ERF_P0)), vdupq_n_f32(ERF_P1));
    a = vaddq_f32(vmulq_f32(x2, a), vdupq_n_f32(ERF_P2));
    a = vaddq_f32(vmulq_f32(x2, a), vdupq_n_f32(ERF_P3));
    a = vaddq_f32(vmulq_f32(x2, a), vdupq_n_f32(ERF_P4));
    a = vaddq_f32(vmulq_f32(x2, a), vdupq_n_f32(ERF_P5));
    a = vaddq_f32(vmulq_f32(x2, a), vdupq_n_f32(ERF_P6));
    p[k] = vmulq_f32(x, a);
    float32x4_t b = vaddq_f32(vmulq_f32(x2, vdupq_n_f32(ERF_Q0)), vdupq_n_f32(ERF_Q1));
    b = vaddq_f32(vmulq_f32(x2, b), vdupq_n_f32(ERF_Q2));
    b = vaddq_f32(vmulq_f32(x2, b), vdupq_n_f32(ERF_Q3));
    q[k] = vaddq_f32(vmulq_f32(x2, b), vdupq_n_f32(ERF_Q4));
  }
  nq_div4(p, q, e);
  const float32x4_t c = vdupq_n_f32(clip), nc = vdupq_n_f32(-clip);
  for (int k = 0; k < 4; k++) {
    float32x4_t g = vmulq_f32(vmulq_f32(v[k], vdupq_n_f32(0.5f)), vaddq_f32(vdupq_n_f32(1.0f), e[k]));
    if (has_clip && clip > 0.0f) {
      g = vmaxnmq_f32(vminnmq_f32(g, c), nc);
    } else if (has_clip) {
      g = vbslq_f32(vcltq_f32(g, c), g, c);
      g = vbslq_f32(vcgtq_f32(g, nc), g, nc);
    }
    v[k] = g;
  }
}
#endif

QV_AI vf gelu_v(vf v, int has_clip, float clip) {
#if defined(QV_NEON)
  vf_q r = {v};
  nq_gelu4(r.q, has_clip, clip);
  return r.v;
#endif
  vf g = v * 0.5f * (1.0f + erf_v(v * GELU_RSQRT2));
  if (has_clip) {
    g = vmin(g, splat(clip));
    g = vmax(g, splat(-clip));
  }
  return g;
}

/* ------------------------------------------------------------------------------- bit planes */

#if defined(QV_NEON)
/* bit i of the 64 codes in c0..c3 -> one word: a byte test, each byte's bit weighted by its place
 * in its group of 8, and pairwise adds down to the 8 bytes of the word */
QV_AI uint64_t nq_plane_word(uint8x16_t c0, uint8x16_t c1, uint8x16_t c2, uint8x16_t c3, int i) {
  static const uint8_t place[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  const uint8x16_t wv = vld1q_u8(place), bit = vdupq_n_u8((uint8_t)(1 << i));
  const uint8x16_t m0 = vandq_u8(vtstq_u8(c0, bit), wv), m1 = vandq_u8(vtstq_u8(c1, bit), wv);
  const uint8x16_t m2 = vandq_u8(vtstq_u8(c2, bit), wv), m3 = vandq_u8(vtstq_u8(c3, bit), wv);
  uint8x16_t p = vpaddq_u8(vpaddq_u8(m0, m1), vpaddq_u8(m2, m3)); /* sums of 4 */
  p = vpaddq_u8(p, p);                                              /* sums of 8: the word's bytes */
  return vgetq_lane_u64(vreinterpretq_u64_u8(p), 0);
}
#endif

/* Bit i of 64 codes -> one word (bit t = code t), by 8 codes at a time: a multiply gathers one bit
 * per byte. The portable definition; the SIMD versions below compute the same word. */
QV_AI uint64_t plane_word_portable(const uint8_t *c, int i) {
  uint64_t word = 0;
  for (int g = 0; g < 8; g++) {
    uint64_t v;
    memcpy(&v, c + 8 * g, 8);
    v = (v >> i) & 0x0101010101010101ULL; /* bit i of each byte, one bit per byte */
    word |= ((v * 0x0102040810204080ULL) >> 56) << (8 * g);
  }
  return word;
}
#if defined(__x86_64__) && !defined(QV_PORTABLE)
/* AVX2: shifting 16-bit lanes left by 7 - i puts bit i of each byte into its top bit; two movemasks.
 * AVX-512BW: one byte-test mask. Target attributes, so the runtime library (built for baseline
 * x86-64, dispatching at run time) uses them too. */
QV_AI __attribute__((target("avx2"))) uint64_t plane_word_avx2(const uint8_t *c, int i) {
  __m256i lo = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)c), 7 - i);
  __m256i hi = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)(c + 32)), 7 - i);
  return (uint64_t)(uint32_t)_mm256_movemask_epi8(lo) | (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
}
/* bit i of the 64 codes in x */
QV_AI __attribute__((target("avx512f,avx512bw"))) uint64_t plane_word_avx512_v(__m512i x, int i) {
  return (uint64_t)_mm512_test_epi8_mask(x, _mm512_set1_epi8((char)(1 << i)));
}
QV_AI __attribute__((target("avx512f,avx512bw"))) uint64_t plane_word_avx512(const uint8_t *c, int i) {
  return plane_word_avx512_v(_mm512_loadu_si512((const void *)c), i);
}
#endif

/* plane_word for the compile flags' ISA */
QV_AI uint64_t plane_word(const uint8_t *c, int i) {
#if defined(QV_AVX512BW)
  return plane_word_avx512(c, i);
#elif defined(QV_AVX2)
  return plane_word_avx2(c, i);
#elif defined(QV_NEON)
  return nq_plane_word(vld1q_u8(c), vld1q_u8(c + 16), vld1q_u8(c + 32), vld1q_u8(c + 48), i);
#else
  return plane_word_portable(c, i);
#endif
}

/* codes (zero padded to a whole number of words) -> bits planes of nw words, plane i at
 * dst + i * plane_stride. */
QV_AI void pack_row(const uint8_t *codes, int nw, int bits, uint64_t *dst, int64_t plane_stride) {
#if defined(QV_NEON) /* each word's codes loaded once for all its planes */
  for (int w = 0; w < nw; w++) {
    const uint8_t *c = codes + w * WORD;
    const uint8x16_t c0 = vld1q_u8(c), c1 = vld1q_u8(c + 16), c2 = vld1q_u8(c + 32), c3 = vld1q_u8(c + 48);
    for (int i = 0; i < bits; i++) dst[i * plane_stride + w] = nq_plane_word(c0, c1, c2, c3, i);
  }
  return;
#endif
  for (int i = 0; i < bits; i++)
    for (int w = 0; w < nw; w++) dst[i * plane_stride + w] = plane_word(codes + w * WORD, i);
}

/* K codes (no padding needed) -> bits planes of ceil(K / 64) words, plane i at out + i * stride,
 * with the given plane-word function (one of the above: the caller's ISA); the last word's codes
 * past K are zeros. */
QV_AI void pack_row_k(const uint8_t *codes, int64_t k, int bits,
                                                               uint64_t *out, int64_t stride,
                                                               uint64_t (*word_fn)(const uint8_t *, int)) {
  const int64_t full = k / WORD;
  for (int64_t w = 0; w < full; w++)
    for (int i = 0; i < bits; i++) out[i * stride + w] = word_fn(codes + w * WORD, i);
  if (full * WORD < k) {
    uint8_t buf[WORD] = {0};
    memcpy(buf, codes + full * WORD, (size_t)(k - full * WORD));
    for (int i = 0; i < bits; i++) out[i * stride + full] = word_fn(buf, i);
  }
}

/* sum of the codes packed in one row of planes (plane i at planes + i * plane_stride) */
QV_AI int32_t plane_sum(const uint64_t *planes, int64_t plane_stride, int64_t nw, int bits) {
  int64_t s = 0;
  for (int i = 0; i < bits; i++)
    for (int64_t w = 0; w < nw; w++) s += (int64_t)__builtin_popcountll(planes[i * plane_stride + w]) << i;
  return (int32_t)s;
}

#endif
