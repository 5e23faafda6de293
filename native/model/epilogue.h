/* The float epilogue of a quantized linear layer, for model.so's C GEMM micro-kernels.
 *
 * y = scale[n] * float(acc - corr[n]) + bias[n], then GELU (with its optional clip) or + residual:
 * the operations of compile/kernels.py's bitserial_linear, in the same order, in float32 without
 * contraction, so every engine writes the same floats for the same integers.
 */
#ifndef QV_MODEL_EPILOGUE_H
#define QV_MODEL_EPILOGUE_H
#include "../qv_arith.h"

enum { EPI_NONE = 0, EPI_GELU = 1, EPI_ADD = 2 };

/* One row of 16 accumulators for channels c0..c0+15 (only those < N stored) -> y[c0..]. */
static inline void epilogue_row16(const int32_t *acc, int c0, int N, int epi, int has_clip, float clip,
                                  const float *scale, const int32_t *corr, const float *bias, const float *res,
                                  float *y) {
#if defined(QV_NEON)
  if (c0 + VL <= N) { /* the same operations on the four registers, without going through a vf */
    float32x4_t v[4];
    for (int k = 0; k < 4; k++) {
      const int c = c0 + 4 * k;
      const int32x4_t d = vsubq_s32(vld1q_s32(acc + 4 * k), vld1q_s32(corr + c));
      v[k] = vaddq_f32(vmulq_f32(vld1q_f32(scale + c), vcvtq_f32_s32(d)), vld1q_f32(bias + c));
    }
    if (epi == EPI_GELU) nq_gelu4(v, has_clip, clip);
    else if (epi == EPI_ADD)
      for (int k = 0; k < 4; k++) v[k] = vaddq_f32(v[k], vld1q_f32(res + c0 + 4 * k));
    for (int k = 0; k < 4; k++) vst1q_f32(y + c0 + 4 * k, v[k]);
    return;
  }
#endif
  if (c0 + VL <= N) {
    vf v = loadf(scale + c0) * __builtin_convertvector(loadi(acc) - loadi(corr + c0), vf) + loadf(bias + c0);
    if (epi == EPI_GELU) v = gelu_v(v, has_clip, clip);
    else if (epi == EPI_ADD) v = v + loadf(res + c0);
    storef(y + c0, v);
    return;
  }
  for (int l = 0; c0 + l < N; l++) {
    const int c = c0 + l;
    float v = scale[c] * (float)(acc[l] - corr[c]) + bias[c];
    if (epi == EPI_GELU) v = gelu_f(v, has_clip, clip);
    else if (epi == EPI_ADD) v = v + res[c];
    y[c] = v;
  }
}

#endif
