/* Float ops around the integer GEMMs (LayerNorm, softmax, GELU, activation quantization).
 * Plain C written so the compiler vectorises it (fixed-width lane accumulators, no libm calls
 * in the hot loops: exp and erf are polynomials), built per ISA with target_clones on x86_64
 * (AVX-512 / AVX2 / baseline, picked by the loader) and NEON on aarch64. Quantization is bit-exact with
 * quant.quantize_act (float32 division, round half to even). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "qv_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define QV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QV_CLONES
#endif

#define LANES 16

/* Round half to even without a libm call: adding 1.5 * 2^23 leaves no fraction bits, so the FPU
 * rounds (in the default mode: to nearest, ties to even). Exact for |x| < 2^23; beyond that
 * x is far outside every code range and only its sign and size matter to the clamp. */
static inline float round_even(float x) {
  const float magic = 12582912.0f;
  return x >= 0.0f ? (x + magic) - magic : (x - magic) + magic;
}

QV_CLONES void qv_quantize(const float *x, int64_t count, float step, int32_t zp, int bits, uint8_t *out) {
  const float qmax = (float)((1 << bits) - 1), z = (float)zp;
  for (int64_t i = 0; i < count; i++) {
    float q = round_even(x[i] / step) + z;
    q = q > 0.0f ? q : 0.0f;  /* NaN -> 0 */
    q = q < qmax ? q : qmax;
    out[i] = (uint8_t)(int32_t)q;
  }
}

QV_CLONES void qv_layernorm(const float *x, int64_t rows, int64_t n, const float *weight, const float *bias,
                            float eps, float *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *o = out + r * n;
    float acc[LANES] = {0}, acc2[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
      for (int l = 0; l < LANES; l++) acc[l] += xr[i + l];
    float s = 0.0f;
    for (; i < n; i++) s += xr[i];
    for (int l = 0; l < LANES; l++) s += acc[l];
    const float mean = s / (float)n;
    for (i = 0; i + LANES <= n; i += LANES)
      for (int l = 0; l < LANES; l++) {
        float d = xr[i + l] - mean;
        acc2[l] += d * d;
      }
    float ss = 0.0f;
    for (; i < n; i++) ss += (xr[i] - mean) * (xr[i] - mean);
    for (int l = 0; l < LANES; l++) ss += acc2[l];
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (i = 0; i < n; i++) {
      float y = (xr[i] - mean) * inv;
      y = y * (weight ? weight[i] : 1.0f);
      o[i] = y + (bias ? bias[i] : 0.0f);
    }
  }
}

/* exp(x) for x <= 0 (softmax after subtracting the row max): 2^n * p(r), x = n ln2 + r,
 * |r| <= ln2 / 2, degree-6 polynomial; relative error ~2e-7. Underflows to 0 below -87. */
static inline float exp_neg(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float magic = 12582912.0f;
  const float n = (x * 1.44269504088896341f - magic) + magic;  /* round(x / ln2); x <= 0 */
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union { int32_t i; float f; } e = {.i = ((int32_t)n + 127) << 23};
  return p * e.f;
}

QV_CLONES void qv_softmax(const float *x, int64_t rows, int64_t n, float *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *o = out + r * n;
    float mxl[LANES];
    for (int l = 0; l < LANES; l++) mxl[l] = -INFINITY;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
      for (int l = 0; l < LANES; l++) mxl[l] = xr[i + l] > mxl[l] ? xr[i + l] : mxl[l];
    float mx = -INFINITY;
    for (; i < n; i++) mx = xr[i] > mx ? xr[i] : mx;
    for (int l = 0; l < LANES; l++) mx = mxl[l] > mx ? mxl[l] : mx;
    for (i = 0; i < n; i++) o[i] = exp_neg(xr[i] - mx);
    float acc[LANES] = {0};
    for (i = 0; i + LANES <= n; i += LANES)
      for (int l = 0; l < LANES; l++) acc[l] += o[i + l];
    float s = 0.0f;
    for (; i < n; i++) s += o[i];
    for (int l = 0; l < LANES; l++) s += acc[l];
    const float inv = 1.0f / s;
    for (i = 0; i < n; i++) o[i] *= inv;
  }
}

/* erf(x) = 1 - poly(t) e^(-x^2), t = 1 / (1 + p|x|) (Abramowitz & Stegun 7.1.26, absolute error
 * <= 1.5e-7): no libm call, so the GELU loop vectorises; libm's erff runs ~20 ns an element. */
static inline float erf_as(float x) {
  const float ax = x < 0.0f ? -x : x;
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  const float y = 1.0f - p * t * exp_neg(-ax * ax);
  return x < 0.0f ? -y : y;
}

QV_CLONES void qv_gelu(const float *x, int64_t count, float clip, float *out) {
  const float r2 = 0.70710678118654752f;
  for (int64_t i = 0; i < count; i++) {
    float y = 0.5f * x[i] * (1.0f + erf_as(x[i] * r2));
    if (clip > 0.0f) y = y > clip ? clip : (y < -clip ? -clip : y);
    out[i] = y;
  }
}
