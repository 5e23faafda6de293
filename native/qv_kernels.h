/* qv_kernels: low-bit integer kernels of qvit-edge (issue #4), plain C API.
 *
 * Arithmetic follows edge_runtime/quant.py: activations are unsigned b-bit codes a with an
 * integer zero point z; weights are signed b-bit codes (two's complement; 1 bit = {-1, +1}).
 * Every GEMM computes the exact int32
 *     acc[m, n] = sum_k (a[m, k] - za) * (b[n, k] - zb)
 * where b is a weight (zb = 0) or a second activation (Q*K^T, A*V). Both operands are "rows
 * of K codes": pass V^T for A*V.
 *
 * Two exact engines, same results:
 *   bit-serial (qv_bs_*): codes split into bit planes, AND + popcount, b in 1..4 (up to 8 works);
 *   int8 dot   (qv_i8_*): VNNI / AVX2 maddubs / SDOT / NEON widening multiply, any b <= 8.
 * Operands are packed first. The B operand (weights: once, ahead of time) and the A operand
 * (activations: every call) have their own layouts; sizes come from the *_size functions and
 * the caller owns all memory. Every path (scalar reference and each SIMD version) reads the
 * same packed layout, so one packed buffer can be checked on every path.
 *
 * Paths: runtime CPU-feature dispatch picks the best path; QVIT_NATIVE_PATH=scalar|avx2|
 * avx512|neon|neon_dot (read once) or qv_set_path() forces one.
 * Threads: qv_pool_threads() (native/qv_pool.h), 1 by default.
 */
#ifndef QV_KERNELS_H
#define QV_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- dispatch ------------------------------------------------------------------------ */
enum qv_path { QV_PATH_AUTO = -1, QV_PATH_SCALAR = 0, QV_PATH_AVX2 = 1, QV_PATH_AVX512 = 2,
               QV_PATH_NEON = 3, QV_PATH_NEON_DOT = 4, QV_PATH_COUNT = 5 };

int qv_path_supported(int path);          /* 1 if this CPU and build can run the path */
int qv_best_path(void);                   /* the path AUTO resolves to */
int qv_set_path(int path);                /* 0 ok; -1 unsupported (nothing changes) */
int qv_get_path(void);                    /* the path in effect (never AUTO) */
const char *qv_path_name(int path);       /* "scalar", "avx2", ... ; NULL when out of range */
int qv_path_from_name(const char *name);  /* -2 when unknown */

/* ---- error codes ------------------------------------------------------------------------- */
#define QV_OK 0
#define QV_EINVAL -1   /* bad shape / bit width / argument */

/* ---- fused epilogue ---------------------------------------------------------------------- */
/* Applied to each acc[m, n] while it is hot, in this exact float32 order (no FMA):
 *     y = (float)acc * scale[n] + bias[n]          scale NULL -> scale0; bias NULL -> 0
 *     out_f[m * ldo + n] = y                       when out_f
 *     out_q[m * ldo + n] = clamp(rint(y / q_step) + q_zp, 0, 2^q_bits - 1)   when out_q
 *                          (round half to even, float32 division: quant.quantize_act)
 *     out_i[m * ldo + n] = acc                     when out_i (raw accumulators)
 * A linear layer passes scale[n] = float32(s_a) * s_w[n] (computed in float32). */
typedef struct qv_epilogue {
  const float *scale;
  float scale0;
  const float *bias;
  float q_step;
  int32_t q_zp;
  int32_t q_bits;
  float *out_f;
  uint8_t *out_q;
  int32_t *out_i;
  int64_t ldo;      /* row stride of the outputs, in elements */
} qv_epilogue;

/* ---- bit-serial engine ------------------------------------------------------------------- */
/* K is stored in 64-bit words, KW = ceil(K / 64); bits past K are zero.
 * A layout: [M][bits][KW] uint64 + rowsum[M] (sum of the codes).
 * B layout: [ceil(N / 8)][bits][KW][8] uint64 (8 rows interleaved per word column), padded
 *           rows zero, + colsum[N] (sum of the code values: signed for signed operands). */
size_t qv_bs_a_words(int64_t m, int64_t k, int bits);
size_t qv_bs_b_words(int64_t n, int64_t k, int bits);

/* codes: M rows of K uint8 codes, row stride lda bytes, values must fit in `bits` bits. */
int qv_bs_pack_a(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int bits,
                 uint64_t *planes, int32_t *rowsum);
/* codes as raw bytes. is_signed = 1: int8 two's complement weights, range quant.weight_range
 * (bits == 1: -1 / +1, stored as the bit (w + 1) / 2). is_signed = 0: unsigned codes. */
int qv_bs_pack_b(const uint8_t *codes, int64_t n, int64_t k, int64_t ldb, int bits, int is_signed,
                 uint64_t *planes, int32_t *colsum);
int qv_bs_gemm(const uint64_t *a_planes, const int32_t *a_rowsum, int a_bits, int32_t za,
               const uint64_t *b_planes, const int32_t *b_colsum, int b_bits, int b_signed, int32_t zb,
               int64_t m, int64_t n, int64_t k, const qv_epilogue *ep);

/* ---- int8 dot-product engine ------------------------------------------------------------- */
/* K padded to K4 = ceil(K / 4) * 4 with zeros.
 * A layout: [M][K4] uint8 + rowsum[M].
 * B layout: [ceil(N / 16)][K4 / 4][16][4] int8 holding b - bshift (bshift = 0 signed, 128
 *           unsigned), padded rows zero, + colsum[N] (sum of the true code values). */
size_t qv_i8_a_bytes(int64_t m, int64_t k);
size_t qv_i8_b_bytes(int64_t n, int64_t k);
int qv_i8_pack_a(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, uint8_t *packed, int32_t *rowsum);
int qv_i8_pack_b(const uint8_t *codes, int64_t n, int64_t k, int64_t ldb, int is_signed,
                 int8_t *packed, int32_t *colsum);
/* a_bits: largest activation bit width in A (the x86 AVX2 path needs to know whether codes
 * exceed 127); b_signed as packed. */
int qv_i8_gemm(const uint8_t *a, const int32_t *a_rowsum, int a_bits, int32_t za,
               const int8_t *b, const int32_t *b_colsum, int b_signed, int32_t zb,
               int64_t m, int64_t n, int64_t k, const qv_epilogue *ep);

/* ---- one call per layer ---------------------------------------------------------------------
 * A linear layer: the activation codes [M][K] (row stride lda) are packed here, B was packed
 * ahead of time by qv_bs_pack_b / qv_i8_pack_b. */
int qv_bs_linear(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int a_bits, int32_t za,
                 const uint64_t *b_planes, const int32_t *b_colsum, int b_bits, int b_signed, int32_t zb, int64_t n,
                 const qv_epilogue *ep);
int qv_i8_linear(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int a_bits, int32_t za,
                 const int8_t *b, const int32_t *b_colsum, int b_signed, int32_t zb, int64_t n,
                 const qv_epilogue *ep);
/* Attention matmuls over a batch of heads, both operands unsigned codes packed here:
 *   acc[h][m][n] = sum_k (a[h][m][k] - za[h]) * (b[h][n][k] - zb[h])
 * (Q K^T: b = K; A V: b = V^T). a[h] starts at a + h * a_bstride, rows lda apart (b likewise).
 * engine 0 = bit-serial, 1 = int8. Outputs [batch][M][N]: out_i the accumulators, out_f
 * float32(acc) * scale[h] (scale NULL: 1). */
int qv_matmul_act(int engine, const uint8_t *a, int64_t a_bstride, int64_t lda, int a_bits, const int32_t *za,
                  const uint8_t *b, int64_t b_bstride, int64_t ldb, int b_bits, const int32_t *zb, int64_t batch,
                  int64_t m, int64_t n, int64_t k, const float *scale, float *out_f, int32_t *out_i);

/* ---- float ops around the GEMMs (rows of length n, contiguous) --------------------------- */
void qv_layernorm(const float *x, int64_t rows, int64_t n, const float *weight, const float *bias,
                  float eps, float *out);
void qv_softmax(const float *x, int64_t rows, int64_t n, float *out);
/* exact (erf) GELU (erf to 1.5e-7 absolute); clip > 0 clips the result to [-clip, clip] */
void qv_gelu(const float *x, int64_t count, float clip, float *out);
/* quant.quantize_act with one step / zero point: clamp(rint(x / step) + zp, 0, 2^bits - 1) */
void qv_quantize(const float *x, int64_t count, float step, int32_t zp, int bits, uint8_t *out);

/* ---- benchmarking ------------------------------------------------------------------------- */
/* Binary multiply-accumulates per second one thread reaches with the path's AND + popcount +
 * accumulate step on register-resident data (timed for about `seconds`); 0 if unsupported. */
double qv_popcount_peak(int path, double seconds);
/* The same step run `iters` times (no timing): returns the binary MACs done, 0 if unsupported.
 * For benchmarks that time it themselves, interleaved with the GEMMs. */
double qv_popcount_probe(int path, int64_t iters);

#ifdef __cplusplus
}
#endif
#endif
