/* model.so micro-kernel: quantize + pack of a quantized linear layer's input (optionally LayerNorm first),
 * the C micro-kernel behind the TVM kernel `pack` (compile/kernels.py: pack_act).
 *
 * x [M, K] float32 -> planes [bits, Mpad, KW] uint64 (bit t of word w = bit of the code of
 * element 64 w + t; rows M..Mpad-1 and bits past K are zero). The TVM kernel runs a parallel loop
 * over blocks of rows; each iteration calls qvit_pack_rows for rows [r0, r1). With ln set, each
 * row is first normalised as reference.layernorm (numpy-order sums) and never stored.
 * Arithmetic: ../qv_arith.h.
 */
#include "../qv_arith.h"

int32_t qvit_pack_rows(int32_t r0, int32_t r1, int32_t M, int32_t Mpad, int32_t K, int32_t KW, int32_t bits,
                       int32_t ln, float eps, const float *x, const float *ln_w, const float *ln_b,
                       const float *step, const int32_t *zp, uint64_t *planes) {
  if (r1 > Mpad) r1 = Mpad;
  const int64_t plane = (int64_t)Mpad * KW;
  float *row = ln ? (float *)malloc(sizeof(float) * (size_t)K) : 0;
  uint8_t *codes = (uint8_t *)calloc((size_t)KW * WORD, 1);
  if (!codes || (ln && !row)) {
    free(row);
    free(codes);
    return -1;
  }
  for (int r = r0; r < r1; r++) {
    uint64_t *dst = planes + (int64_t)r * KW;
    if (r >= M) { /* padded rows: zero */
      for (int i = 0; i < bits; i++) memset(dst + i * plane, 0, sizeof(uint64_t) * (size_t)KW);
      continue;
    }
    ln_quantize_row(x + (int64_t)r * K, K, ln, ln_w, ln_b, eps, row, step[0], zp[0], bits, codes);
    pack_row(codes, KW, bits, dst, plane);
  }
  free(row);
  free(codes);
  return 0;
}
