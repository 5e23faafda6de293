/* qvit_compile: the float epilogue of a quantized linear layer, for the C GEMM micro-kernels.
 *
 * y = scale[n] * float(acc - corr[n]) + bias[n], then GELU (with its optional clip) or + residual:
 * the operations of compile/kernels.py's bitserial_linear / _gelu / _erf, in the same order, in
 * float32 without contraction (built with -ffp-contract=off), so every engine writes the same floats
 * for the same integers. gelu_v (16 lanes) and gelu_f (one value) do identical operations.
 */
#ifndef QVIT_CSRC_EPILOGUE_H
#define QVIT_CSRC_EPILOGUE_H
#include "common.h"

enum { EPI_NONE = 0, EPI_GELU = 1, EPI_ADD = 2 };

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

static inline float erf_f(float x) {
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

static inline float gelu_f(float v, int has_clip, float clip) {
  float g = v * 0.5f * (1.0f + erf_f(v * GELU_RSQRT2));
  if (has_clip) {
    g = g < clip ? g : clip;
    g = g > -clip ? g : -clip;
  }
  return g;
}

static inline vf erf_v(vf x) {
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
  return p / q;
}

static inline vf gelu_v(vf v, int has_clip, float clip) {
  vf g = v * 0.5f * (1.0f + erf_v(v * GELU_RSQRT2));
  if (has_clip) {
    g = vmin(g, splat(clip));
    g = vmax(g, splat(-clip));
  }
  return g;
}

/* One row of 16 accumulators for channels c0..c0+15 (only those < N stored) -> y[c0..]. */
static inline void epilogue_row16(const int32_t *acc, int c0, int N, int epi, int has_clip, float clip,
                                  const float *scale, const int32_t *corr, const float *bias, const float *res,
                                  float *y) {
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
