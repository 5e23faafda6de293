/* GEMM driver: argument checks, operand packing, zero-point corrections and the split of the
 * output over the thread pool. The arithmetic of the kernels is in ref/scalar.c. */
#include <stdlib.h>
#include <string.h>

#include "qv_internal.h"
#include "qv_pool.h"

#define KMAX ((int64_t)1 << 24)

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

size_t qv_bs_a_words(int64_t m, int64_t k, int bits) { return (size_t)(m * bits * ceil_div(k, 64)); }
size_t qv_bs_b_words(int64_t n, int64_t k, int bits) {
  return (size_t)(ceil_div(n, QV_BS_NB) * QV_BS_NB * bits * ceil_div(k, 64));
}
size_t qv_i8_a_bytes(int64_t m, int64_t k) { return (size_t)(m * ceil_div(k, 4) * 4); }
size_t qv_i8_b_bytes(int64_t n, int64_t k) { return (size_t)(ceil_div(n, QV_I8_NB) * QV_I8_NB * ceil_div(k, 4) * 4); }

static int bad_shape(int64_t rows, int64_t k, int64_t ld) { return rows < 0 || k < 1 || k > KMAX || ld < k; }

static int32_t row_sum(const uint8_t *codes, int64_t k, int is_signed) {
  int32_t s = 0;
  if (is_signed) for (int64_t i = 0; i < k; i++) s += (int8_t)codes[i];
  else for (int64_t i = 0; i < k; i++) s += codes[i];
  return s;
}

/* Sum of the unsigned codes of one packed row, from its planes (qv_arith.h's plane_sum): cheaper
 * than a second pass over the bytes. */
#if defined(__x86_64__)
/* the POPCNT instruction instead of libgcc's bit tricks (baseline x86-64 has no POPCNT) */
__attribute__((target("popcnt"))) static int32_t plane_sum_popcnt(const uint64_t *planes, int64_t kw, int bits) {
  return plane_sum(planes, kw, kw, bits);
}
#endif

static int32_t packed_row_sum(const uint64_t *planes, int64_t kw, int bits) {
#if defined(__x86_64__)
  static int has_popcnt = -1;
  if (has_popcnt < 0) {
    __builtin_cpu_init();
    has_popcnt = __builtin_cpu_supports("popcnt") != 0;
  }
  if (has_popcnt) return plane_sum_popcnt(planes, kw, bits);
#endif
  return plane_sum(planes, kw, kw, bits);
}

int qv_bs_pack_a(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int bits, uint64_t *planes,
                 int32_t *rowsum) {
  if (bad_shape(m, k, lda) || bits < 1 || bits > 8) return QV_EINVAL;
  const qv_kernels *kn = qv_active_kernels();
  int64_t kw = ceil_div(k, 64);
  for (int64_t r = 0; r < m; r++) {
    kn->packrow(codes + r * lda, k, bits, planes + r * bits * kw, kw);
    if (rowsum) rowsum[r] = packed_row_sum(planes + r * bits * kw, kw, bits);
  }
  return QV_OK;
}

int qv_bs_pack_b(const uint8_t *codes, int64_t n, int64_t k, int64_t ldb, int bits, int is_signed,
                 uint64_t *planes, int32_t *colsum) {
  if (bad_shape(n, k, ldb) || bits < 1 || bits > 8) return QV_EINVAL;
  const qv_kernels *kn = qv_active_kernels();
  int64_t kw = ceil_div(k, 64), nb = ceil_div(n, QV_BS_NB);
  uint64_t *row = malloc((size_t)(bits * kw) * sizeof *row);
  uint8_t *bin = (is_signed && bits == 1) ? malloc((size_t)k) : NULL;
  if (!row || (is_signed && bits == 1 && !bin)) { free(row); free(bin); return QV_EINVAL; }
  memset(planes, 0, (size_t)(nb * QV_BS_NB * bits * kw) * sizeof *planes);
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *src = codes + r * ldb;
    if (bin) {  /* {-1, +1} -> bit (w + 1) / 2 */
      for (int64_t i = 0; i < k; i++) bin[i] = (int8_t)src[i] > 0;
      src = bin;
    }
    kn->packrow(src, k, bits, row, kw);
    uint64_t *dst = planes + (r / QV_BS_NB) * bits * kw * QV_BS_NB + (r % QV_BS_NB);
    for (int j = 0; j < bits; j++)
      for (int64_t w = 0; w < kw; w++) dst[(j * kw + w) * QV_BS_NB] = row[j * kw + w];
    if (colsum) colsum[r] = is_signed ? row_sum(codes + r * ldb, k, 1) : packed_row_sum(row, kw, bits);
  }
  free(row);
  free(bin);
  return QV_OK;
}

int qv_i8_pack_a(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, uint8_t *packed, int32_t *rowsum) {
  if (bad_shape(m, k, lda)) return QV_EINVAL;
  int64_t k4 = ceil_div(k, 4) * 4;
  for (int64_t r = 0; r < m; r++) {
    memcpy(packed + r * k4, codes + r * lda, (size_t)k);
    memset(packed + r * k4 + k, 0, (size_t)(k4 - k));
    if (rowsum) rowsum[r] = row_sum(codes + r * lda, k, 0);
  }
  return QV_OK;
}

int qv_i8_pack_b(const uint8_t *codes, int64_t n, int64_t k, int64_t ldb, int is_signed, int8_t *packed,
                 int32_t *colsum) {
  if (bad_shape(n, k, ldb)) return QV_EINVAL;
  int64_t kq = ceil_div(k, 4), nb = ceil_div(n, QV_I8_NB);
  memset(packed, 0, (size_t)(nb * QV_I8_NB * kq * 4));
  for (int64_t r = 0; r < n; r++) {
    const uint8_t *src = codes + r * ldb;
    int8_t *blk = packed + (r / QV_I8_NB) * QV_I8_NB * kq * 4 + (r % QV_I8_NB) * 4;
    /* 4 codes at a time (one 32-bit move per group); unsigned codes become b - 128 = b ^ 0x80 */
    const uint32_t flip = is_signed ? 0u : 0x80808080u;
    int64_t q = 0;
    for (; q < k / 4; q++) {
      uint32_t v;
      memcpy(&v, src + 4 * q, 4);
      v ^= flip;
      memcpy(blk + q * QV_I8_NB * 4, &v, 4);
    }
    for (int64_t i = 4 * q; i < k; i++)  /* ragged end; the pad stays 0 */
      blk[q * QV_I8_NB * 4 + (i - 4 * q)] = (int8_t)(src[i] ^ (uint8_t)flip);
    if (colsum) colsum[r] = row_sum(src, k, is_signed);
  }
  return QV_OK;
}

/* ---- parallel driver ------------------------------------------------------------------------ */
typedef struct { const qv_gemm_ctx *g; qv_block_fn fn; } run_args;

static void gemm_task(int t, int nt, void *p) {
  const run_args *ra = p;
  const qv_gemm_ctx *g = ra->g;
  /* Split B blocks (in units a kernel tiles together) evenly: each task keeps its B slice in
   * cache and streams all of A. */
  int64_t units = ceil_div(g->n_blocks, g->nb_per_task_unit);
  int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
  int64_t nb0 = u0 * g->nb_per_task_unit, nb1 = u1 * g->nb_per_task_unit;
  if (nb1 > g->n_blocks) nb1 = g->n_blocks;
  if (nb0 < nb1) ra->fn(g, 0, g->m, nb0, nb1);
}

static int run_gemm(qv_gemm_ctx *g, qv_block_fn fn) {
  run_args ra = {g, fn};
  int nt = qv_pool_threads();
  int64_t units = ceil_div(g->n_blocks, g->nb_per_task_unit);
  if (nt > units) nt = (int)(units > 0 ? units : 1);
  /* tiny problems: threads cost more than they save */
  if (g->m * g->n * g->kw < 4096) nt = 1;
  qv_pool_run(gemm_task, &ra, nt);
  return QV_OK;
}

static int bad_ep(const qv_epilogue *ep) {
  if (!ep) return 1;
  if (ep->out_q && (ep->q_bits < 1 || ep->q_bits > 8)) return 1;
  return 0;
}

/* rc / cc arrays on the stack when small, else heap */
#define SMALL 4096

int qv_bs_gemm(const uint64_t *a_planes, const int32_t *a_rowsum, int a_bits, int32_t za,
               const uint64_t *b_planes, const int32_t *b_colsum, int b_bits, int b_signed, int32_t zb,
               int64_t m, int64_t n, int64_t k, const qv_epilogue *ep) {
  if (m < 0 || n < 0 || k < 1 || k > KMAX || a_bits < 1 || a_bits > 8 || b_bits < 1 || b_bits > 8 || bad_ep(ep))
    return QV_EINVAL;
  if (m == 0 || n == 0) return QV_OK;
  int32_t rc_s[SMALL], cc_s[SMALL];
  int32_t *rc = m <= SMALL ? rc_s : malloc((size_t)m * sizeof *rc);
  int32_t *cc = n <= SMALL ? cc_s : malloc((size_t)n * sizeof *cc);
  if (!rc || !cc) { if (rc != rc_s) free(rc); if (cc != cc_s) free(cc); return QV_EINVAL; }
  int binary_w = b_signed && b_bits == 1;
  for (int64_t i = 0; i < m; i++)
    rc[i] = -(zb + binary_w) * a_rowsum[i] + (int32_t)(k * za * zb);
  for (int64_t j = 0; j < n; j++) cc[j] = -za * b_colsum[j];
  qv_gemm_ctx g = {.m = m, .n = n, .k = k, .kw = ceil_div(k, 64), .a_bits = a_bits, .b_bits = b_bits,
                   .b_signed = b_signed, .a_planes = a_planes, .b_planes = b_planes, .rc = rc, .cc = cc,
                   .ep = ep, .n_blocks = ceil_div(n, QV_BS_NB), .nb_per_task_unit = 2};
  int rcode = run_gemm(&g, qv_active_kernels()->bs_block);
  if (rc != rc_s) free(rc);
  if (cc != cc_s) free(cc);
  return rcode;
}

int qv_i8_gemm(const uint8_t *a, const int32_t *a_rowsum, int a_bits, int32_t za,
               const int8_t *b, const int32_t *b_colsum, int b_signed, int32_t zb,
               int64_t m, int64_t n, int64_t k, const qv_epilogue *ep) {
  if (m < 0 || n < 0 || k < 1 || k > KMAX || a_bits < 1 || a_bits > 8 || bad_ep(ep)) return QV_EINVAL;
  if (m == 0 || n == 0) return QV_OK;
  const qv_kernels *kn = qv_active_kernels();
  int32_t rc_s[SMALL], cc_s[SMALL];
  int32_t *rc = m <= SMALL ? rc_s : malloc((size_t)m * sizeof *rc);
  int32_t *cc = n <= SMALL ? cc_s : malloc((size_t)n * sizeof *cc);
  if (!rc || !cc) { if (rc != rc_s) free(rc); if (cc != cc_s) free(cc); return QV_EINVAL; }
  int32_t bshift = b_signed ? 0 : 128;
  int64_t k4 = ceil_div(k, 4) * 4;
  for (int64_t i = 0; i < m; i++) rc[i] = (bshift - zb) * a_rowsum[i] + (int32_t)(k * za * zb);
  for (int64_t j = 0; j < n; j++) {
    cc[j] = -za * b_colsum[j];
    /* sum (a - 128) b' + 128 sum b' = sum a b'; stored b' sums to colsum - bshift * K (pads are 0) */
    if (kn->i8_bias128) cc[j] += 128 * (b_colsum[j] - bshift * (int32_t)k);
  }
  (void)k4;
  qv_gemm_ctx g = {.m = m, .n = n, .k = k, .kw = ceil_div(k, 4), .a_bits = a_bits, .b_bits = 8,
                   .b_signed = b_signed, .a8 = a, .b8 = b, .rc = rc, .cc = cc, .ep = ep,
                   .n_blocks = ceil_div(n, QV_I8_NB), .nb_per_task_unit = 2};
  int rcode = run_gemm(&g, kn->i8_block);
  if (rc != rc_s) free(rc);
  if (cc != cc_s) free(cc);
  return rcode;
}

/* ---- one-call entry points: pack the activations here, then GEMM --------------------------- */
int qv_bs_linear(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int a_bits, int32_t za,
                 const uint64_t *b_planes, const int32_t *b_colsum, int b_bits, int b_signed, int32_t zb, int64_t n,
                 const qv_epilogue *ep) {
  if (bad_shape(m, k, lda) || a_bits < 1 || a_bits > 8) return QV_EINVAL;
  uint64_t *planes = malloc(qv_bs_a_words(m, k, a_bits) * sizeof *planes + 8);
  int32_t *rowsum = malloc((size_t)m * sizeof *rowsum + 4);
  int rc = (planes && rowsum) ? qv_bs_pack_a(codes, m, k, lda, a_bits, planes, rowsum) : QV_EINVAL;
  if (rc == QV_OK) rc = qv_bs_gemm(planes, rowsum, a_bits, za, b_planes, b_colsum, b_bits, b_signed, zb, m, n, k, ep);
  free(planes);
  free(rowsum);
  return rc;
}

int qv_i8_linear(const uint8_t *codes, int64_t m, int64_t k, int64_t lda, int a_bits, int32_t za,
                 const int8_t *b, const int32_t *b_colsum, int b_signed, int32_t zb, int64_t n,
                 const qv_epilogue *ep) {
  if (bad_shape(m, k, lda) || a_bits < 1 || a_bits > 8) return QV_EINVAL;
  uint8_t *packed = malloc(qv_i8_a_bytes(m, k) + 4);
  int32_t *rowsum = malloc((size_t)m * sizeof *rowsum + 4);
  int rc = (packed && rowsum) ? qv_i8_pack_a(codes, m, k, lda, packed, rowsum) : QV_EINVAL;
  if (rc == QV_OK) rc = qv_i8_gemm(packed, rowsum, a_bits, za, b, b_colsum, b_signed, zb, m, n, k, ep);
  free(packed);
  free(rowsum);
  return rc;
}

/* Attention matmuls: the heads are split over the pool (one parallel run per call, not one per
 * head: a head's GEMM is small, and every run is a wake-up and a join). Inside a task the
 * GEMMs run on the calling thread (nested runs are sequential). */
typedef struct {
  int engine, a_bits, b_bits;
  const uint8_t *a, *b;
  int64_t a_bstride, lda, b_bstride, ldb, batch, m, n, k;
  const int32_t *za, *zb;
  const float *scale;
  float *out_f;
  int32_t *out_i;
  int rc[QV_POOL_MAX_THREADS];
} mm_ctx;

static void mm_task(int t, int nt, void *p) {
  mm_ctx *c = p;
  const int64_t m = c->m, n = c->n, k = c->k;
  const int64_t h0 = c->batch * t / nt, h1 = c->batch * (t + 1) / nt;
  int rc = QV_OK;
  size_t asz = c->engine == 0 ? qv_bs_a_words(m, k, c->a_bits) * 8 : qv_i8_a_bytes(m, k);
  size_t bsz = c->engine == 0 ? qv_bs_b_words(n, k, c->b_bits) * 8 : qv_i8_b_bytes(n, k);
  void *ap = malloc(asz + 8), *bp = malloc(bsz + 8);
  int32_t *rowsum = malloc((size_t)m * sizeof *rowsum + 4), *colsum = malloc((size_t)n * sizeof *colsum + 4);
  if (!ap || !bp || !rowsum || !colsum) rc = QV_EINVAL;
  for (int64_t h = h0; h < h1 && rc == QV_OK; h++) {
    qv_epilogue ep = {.scale0 = c->scale ? c->scale[h] : 1.0f, .ldo = n,
                      .out_f = c->out_f ? c->out_f + h * m * n : NULL,
                      .out_i = c->out_i ? c->out_i + h * m * n : NULL};
    const uint8_t *a = c->a + h * c->a_bstride, *b = c->b + h * c->b_bstride;
    if (c->engine == 0) {
      rc = qv_bs_pack_b(b, n, k, c->ldb, c->b_bits, 0, bp, colsum);
      if (rc == QV_OK) rc = qv_bs_pack_a(a, m, k, c->lda, c->a_bits, ap, rowsum);
      if (rc == QV_OK)
        rc = qv_bs_gemm(ap, rowsum, c->a_bits, c->za[h], bp, colsum, c->b_bits, 0, c->zb[h], m, n, k, &ep);
    } else {
      rc = qv_i8_pack_b(b, n, k, c->ldb, 0, bp, colsum);
      if (rc == QV_OK) rc = qv_i8_pack_a(a, m, k, c->lda, ap, rowsum);
      if (rc == QV_OK) rc = qv_i8_gemm(ap, rowsum, c->a_bits, c->za[h], bp, colsum, 0, c->zb[h], m, n, k, &ep);
    }
  }
  free(ap);
  free(bp);
  free(rowsum);
  free(colsum);
  c->rc[t] = rc;
}

int qv_matmul_act(int engine, const uint8_t *a, int64_t a_bstride, int64_t lda, int a_bits, const int32_t *za,
                  const uint8_t *b, int64_t b_bstride, int64_t ldb, int b_bits, const int32_t *zb, int64_t batch,
                  int64_t m, int64_t n, int64_t k, const float *scale, float *out_f, int32_t *out_i) {
  if (batch < 0 || bad_shape(m, k, lda) || bad_shape(n, k, ldb) || a_bits < 1 || a_bits > 8 || b_bits < 1 ||
      b_bits > 8 || (engine != 0 && engine != 1) || (!out_f && !out_i))
    return QV_EINVAL;
  if (batch == 0 || m == 0 || n == 0) return QV_OK;
  mm_ctx c = {.engine = engine, .a_bits = a_bits, .b_bits = b_bits, .a = a, .b = b, .a_bstride = a_bstride,
              .lda = lda, .b_bstride = b_bstride, .ldb = ldb, .batch = batch, .m = m, .n = n, .k = k,
              .za = za, .zb = zb, .scale = scale, .out_f = out_f, .out_i = out_i};
  int nt = qv_pool_threads();
  if (nt > batch) nt = (int)batch;
  nt = qv_pool_run(mm_task, &c, nt);
  for (int t = 0; t < nt; t++)
    if (c.rc[t] != QV_OK) return c.rc[t];
  return QV_OK;
}
