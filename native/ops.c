/* Float ops around the integer GEMMs (LayerNorm, softmax, GELU, activation quantization).
 * Plain C that the compiler vectorises where it can; quantization is bit-exact with
 * quant.quantize_act (float32 division, round half to even). */
#include <math.h>

#include "qv_kernels.h"

void qv_layernorm(const float *x, int64_t rows, int64_t n, const float *weight, const float *bias, float eps,
                  float *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *o = out + r * n;
    double s = 0.0, ss = 0.0;  /* double: no cancellation for wide rows */
    for (int64_t i = 0; i < n; i++) s += xr[i];
    const float mean = (float)(s / (double)n);
    for (int64_t i = 0; i < n; i++) {
      float d = xr[i] - mean;
      ss += (double)d * d;
    }
    const float inv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) {
      float y = (xr[i] - mean) * inv;
      if (weight) y = y * weight[i];
      if (bias) y = y + bias[i];
      o[i] = y;
    }
  }
}

void qv_softmax(const float *x, int64_t rows, int64_t n, float *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *o = out + r * n;
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = xr[i] > mx ? xr[i] : mx;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) {
      o[i] = expf(xr[i] - mx);
      s += o[i];
    }
    const float inv = 1.0f / s;
    for (int64_t i = 0; i < n; i++) o[i] *= inv;
  }
}

void qv_gelu(const float *x, int64_t count, float clip, float *out) {
  const float r2 = 0.70710678118654752f;
  for (int64_t i = 0; i < count; i++) {
    float y = 0.5f * x[i] * (1.0f + erff(x[i] * r2));
    if (clip > 0.0f) y = y > clip ? clip : (y < -clip ? -clip : y);
    out[i] = y;
  }
}

void qv_quantize(const float *x, int64_t count, float step, int32_t zp, int bits, uint8_t *out) {
  const float qmax = (float)((1 << bits) - 1), z = (float)zp;
  for (int64_t i = 0; i < count; i++) {
    float q = nearbyintf(x[i] / step) + z;
    q = q > 0.0f ? q : 0.0f;
    q = q < qmax ? q : qmax;
    out[i] = (uint8_t)q;
  }
}
