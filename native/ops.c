/* Float ops around the integer GEMMs (LayerNorm, softmax, GELU, activation quantization) for
 * qvit_edge.kernels. The arithmetic is qv_arith.h's, the same functions model.so's micro-kernels
 * run: numpy's pairwise sums, rint(x / step) + zp clipped, Cephes' exp, the rational erf of the
 * compile stage's GELU. So LayerNorm and quantize are numpy's (quant.quantize_act, the integer
 * reference) bit for bit. Built per ISA with target_clones on x86_64 (AVX-512 / AVX2 / baseline,
 * picked by the loader: qv_arith.h's portable vector code, compiled for each) and with the NEON
 * paths on aarch64. */
#include <stdint.h>
#include <stdlib.h>

#include "qv_arith.h"
#include "qv_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define QV_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define QV_CLONES
#endif

/* qv_arith.h's row functions take an int length; longer runs go in pieces */
#define PIECE (1 << 30)

QV_CLONES void qv_quantize(const float *x, int64_t count, float step, int32_t zp, int bits, uint8_t *out) {
  for (int64_t i = 0; i < count; i += PIECE)
    quantize_row(x + i, (int)(count - i < PIECE ? count - i : PIECE), step, zp, bits, out + i);
}

/* weight / bias may be NULL (1 and 0): y * 1 + 0 is y, so one row function serves both */
QV_CLONES void qv_layernorm(const float *x, int64_t rows, int64_t n, const float *weight, const float *bias,
                            float eps, float *out) {
  float *ones = NULL, *zeros = NULL;
  if (!weight || !bias) {
    ones = malloc((size_t)n * sizeof *ones);
    zeros = calloc((size_t)n, sizeof *zeros);
    if (!ones || !zeros) {
      free(ones);
      free(zeros);
      return;
    }
    for (int64_t i = 0; i < n; i++) ones[i] = 1.0f;
  }
  for (int64_t r = 0; r < rows; r++)
    layernorm_row(x + r * n, (int)n, weight ? weight : ones, bias ? bias : zeros, eps, out + r * n);
  free(ones);
  free(zeros);
}

/* reference.softmax: e = exp(x - max), e / sum(e) with numpy's pairwise sum */
QV_CLONES void qv_softmax(const float *x, int64_t rows, int64_t n, float *out) {
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * n;
    float *o = out + r * n;
    int64_t i = 0;
    float mx = -3.4e38f;
    if (n >= VL) {
      vf m = loadf(xr);
      for (i = VL; i + VL <= n; i += VL) m = vmax(loadf(xr + i), m);
      for (int l = 0; l < VL; l++) mx = m[l] > mx ? m[l] : mx;
    }
    for (; i < n; i++) mx = xr[i] > mx ? xr[i] : mx;
    for (i = 0; i + VL <= n; i += VL) storef(o + i, exp_v(loadf(xr + i) - mx));
    for (; i < n; i++) o[i] = exp_f(xr[i] - mx);
    const float den = pairwise_sum(o, (int)n);
    for (i = 0; i + VL <= n; i += VL) storef(o + i, loadf(o + i) / den);
    for (; i < n; i++) o[i] = o[i] / den;
  }
}

QV_CLONES void qv_gelu(const float *x, int64_t count, float clip, float *out) {
  const int has_clip = clip > 0.0f;
  int64_t i = 0;
  for (; i + VL <= count; i += VL) storef(out + i, gelu_v(loadf(x + i), has_clip, clip));
  for (; i < count; i++) out[i] = gelu_f(x[i], has_clip, clip);
}
