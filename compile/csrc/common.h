/* qvit_compile: vector helpers shared by the C micro-kernels linked into model.so (compile/csrc).
 *
 * Arithmetic is edge_runtime/reference.py's, float32 without contraction (built with
 * -ffp-contract=off): sums are numpy's pairwise summation (same order, so LayerNorm means and the
 * softmax denominator are numpy's bit for bit), quantization is rint(x / step) + zp clipped
 * (round half to even), exp is Cephes' expf (within 1 ulp of numpy's).
 *
 * Portable C on gcc vector extensions (16 float lanes: AVX-512 / 2x AVX2 / 4x NEON registers),
 * with intrinsics for the bit packing where the target has them; every vector loop has a scalar
 * tail doing the same operations in the same order.
 */
#ifndef QVIT_CSRC_COMMON_H
#define QVIT_CSRC_COMMON_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#define WORD 64
#define VL 16

typedef float vf __attribute__((vector_size(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4)));
typedef uint8_t vb __attribute__((vector_size(VL)));
typedef float vf8 __attribute__((vector_size(32)));

static inline int words(int n) { return (n + WORD - 1) / WORD; }

static inline vf loadf(const float *p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline vi loadi(const int32_t *p) {
  vi v;
  memcpy(&v, p, sizeof v);
  return v;
}
static inline void storef(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf splat(float x) { return (vf){0} + x; }
static inline vf sel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
/* a > b ? a : b and a < b ? a : b (one instruction on AVX-512: maxps / minps are defined so) */
static inline vf vmax(vf a, vf b) {
#if defined(__AVX512F__)
  return (vf)_mm512_max_ps((__m512)a, (__m512)b);
#else
  return sel(a > b, a, b);
#endif
}
static inline vf vmin(vf a, vf b) {
#if defined(__AVX512F__)
  return (vf)_mm512_min_ps((__m512)a, (__m512)b);
#else
  return sel(a < b, a, b);
#endif
}

/* ---------------------------------------------------------------------------- float helpers */

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
    vf8 r;
    int i;
    memcpy(&r, a, sizeof r);
    for (i = 8; i < n - (n % 8); i += 8) {
      vf8 v;
      memcpy(&v, a + i, sizeof v);
      r += v;
    }
    float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[i];
    return res;
  }
  int n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* rint (half to even) for |x| <= 2^22: adding and removing 1.5 * 2^23 rounds in the default mode.
 * Larger values are clamped first: they clip to the same code either way. */
static inline float round_even(float x) {
  const float big = 4194304.0f, magic = 12582912.0f;
  x = x < -big ? -big : (x > big ? big : x);
  return (x + magic) - magic;
}
static inline vf round_even_v(vf x) {
  const vf big = splat(4194304.0f), nbig = splat(-4194304.0f), magic = splat(12582912.0f);
  x = vmin(vmax(x, nbig), big);
  return (x + magic) - magic;
}

/* quant.quantize_act of one value: clip(rint(x / step) + zp, 0, hi) */
static inline int32_t code_of(float x, float step, float fz, float hi) {
  float q = round_even(x / step) + fz;
  q = q < 0.0f ? 0.0f : (q > hi ? hi : q);
  return (int32_t)q;
}
static inline vi code_of_v(vf x, float step, float fz, float hi) {
  vf q = round_even_v(x / step) + fz;
  q = vmin(vmax(q, splat(0.0f)), splat(hi));
  return __builtin_convertvector(q, vi);
}

/* codes of n values into uint8 (zero padding after n is the caller's) */
static inline void quantize_row(const float *x, int n, float step, int32_t zp, int bits, uint8_t *codes) {
  const float hi = (float)((1 << bits) - 1), fz = (float)zp;
  int i = 0;
  for (; i + VL <= n; i += VL) {
    vb cb = __builtin_convertvector(code_of_v(loadf(x + i), step, fz, hi), vb);
    memcpy(codes + i, &cb, sizeof cb);
  }
  for (; i < n; i++) codes[i] = (uint8_t)code_of(x[i], step, fz, hi);
}

/* reference.layernorm over one row of n (mean, variance: numpy's float32 mean), into out */
static inline float hsum8(vf8 r) { return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7])); }
static inline vf8 load8(const float *p) {
  vf8 v;
  memcpy(&v, p, sizeof v);
  return v;
}

static inline void layernorm_row(const float *x, int n, const float *w, const float *b, float eps, float *out) {
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

/* reference.head_norm's statistics of one (item, head) block of T rows of n at x + r * stride:
 * each row's numpy-order sum over n into rows[r], then the pairwise sum of the T row sums (numpy's
 * order for the contiguous vector of row sums); mean = sum / (T n), then the same two-level sum of
 * the squared deviations (one row of them in tmp[n]) for the variance. -> *mu, *sd = sqrt(var + eps) */
static inline void head_stats(const float *x, int64_t stride, int T, int n, float eps, float *rows, float *tmp,
                              float *mu, float *sd) {
  const float count = (float)(T * n);
  for (int r = 0; r < T; r++) rows[r] = pairwise_sum(x + r * stride, n);
  const float m = pairwise_sum(rows, T) / count;
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
static inline void headnorm_row(const float *x, int n, float mu, float sd, const float *gamma, const float *beta,
                                float *out) {
  int i = 0;
  for (; i + VL <= n; i += VL) storef(out + i, ((loadf(x + i) - mu) + loadf(beta + i)) / (loadf(gamma + i) * sd));
  for (; i < n; i++) out[i] = ((x[i] - mu) + beta[i]) / (gamma[i] * sd);
}

/* Cephes expf: Cody-Waite reduction + degree-7 polynomial, within 1 ulp of libm's
 * for softmax inputs (<= 0). exp_f and exp_v do the same operations in the same order. */
static inline float exp_f(float x) {
  x = x > 88.3762626647949f ? 88.3762626647949f : x;
  x = x < -87.3365478515625f ? -87.3365478515625f : x;
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
static inline vf exp_v(vf x) {
  const vf hi = splat(88.3762626647949f), lo = splat(-87.3365478515625f);
  x = vmax(vmin(x, hi), lo);
  vf t = x * 1.44269504088896341f + 0.5f;
#if defined(__AVX512F__)
  vf n = (vf)_mm512_roundscale_ps((__m512)t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); /* floor */
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

/* ------------------------------------------------------------------------------- bit planes */

/* Bit i of 64 codes -> one word (bit t = code t). AVX-512BW: one byte-test mask; AVX2: two
 * movemasks; otherwise 8 codes at a time by a multiply that gathers one bit per byte. */
static inline uint64_t plane_word(const uint8_t *c, int i) {
#if defined(__AVX512BW__)
  return (uint64_t)_mm512_test_epi8_mask(_mm512_loadu_si512((const void *)c), _mm512_set1_epi8((char)(1 << i)));
#elif defined(__AVX2__)
  __m256i lo = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)c), 7 - i);
  __m256i hi = _mm256_slli_epi16(_mm256_loadu_si256((const __m256i *)(c + 32)), 7 - i);
  return (uint64_t)(uint32_t)_mm256_movemask_epi8(lo) | (uint64_t)(uint32_t)_mm256_movemask_epi8(hi) << 32;
#else
  uint64_t word = 0;
  for (int g = 0; g < 8; g++) {
    uint64_t v;
    memcpy(&v, c + 8 * g, 8);
    v = (v >> i) & 0x0101010101010101ULL; /* codes < 16: one bit per byte */
    word |= ((v * 0x0102040810204080ULL) >> 56) << (8 * g);
  }
  return word;
#endif
}

/* codes (zero padded to a whole number of words) -> bits planes of nw words, plane i at
 * dst + i * plane_stride. */
static inline void pack_row(const uint8_t *codes, int nw, int bits, uint64_t *dst, int64_t plane_stride) {
  for (int i = 0; i < bits; i++)
    for (int w = 0; w < nw; w++) dst[i * plane_stride + w] = plane_word(codes + w * WORD, i);
}

/* sum of the codes packed in one row of planes (plane i at planes + i * plane_stride) */
static inline int32_t plane_sum(const uint64_t *planes, int64_t plane_stride, int nw, int bits) {
  int32_t s = 0;
  for (int i = 0; i < bits; i++)
    for (int w = 0; w < nw; w++) s += __builtin_popcountll(planes[i * plane_stride + w]) << i;
  return s;
}

#endif
