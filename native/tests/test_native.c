/* Plain C test of the native kernels, no Python: every path this CPU runs (scalar and each SIMD
 * version) against a direct int64 reference, for both engines, every bit width pair in
 * {1,2,3,4,8}^2, awkward shapes (M = 1, N = 1, K not a multiple of any vector width), worst-case
 * codes at K = 3072, the fused epilogue, the float ops and the thread pool.
 * Runs natively (also under ASan + UBSan: `make sanitize`) and cross-compiled for aarch64
 * under qemu, where it checks the NEON paths (the scalar path itself is checked against numpy
 * by tests/test_kernels.py on the host). Exit status 0 = all passed. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qv_kernels.h"
#include "qv_pool.h"

static int failures, checks;
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static int rnd_int(int lo, int hi) { return lo + (int)(rnd() % (uint64_t)(hi - lo + 1)); }

#define CHECK(cond, ...)                                          \
  do {                                                            \
    checks++;                                                     \
    if (!(cond)) {                                                \
      if (failures++ < 20) { printf("FAIL: " __VA_ARGS__); printf("\n"); } \
    }                                                             \
  } while (0)

/* random weight code of `bits` bits (signed; 1 bit: -1 / +1) */
static int8_t rand_w(int bits) {
  if (bits == 1) return rnd() & 1 ? 1 : -1;
  return (int8_t)rnd_int(-(1 << (bits - 1)), (1 << (bits - 1)) - 1);
}

typedef struct {
  int64_t m, n, k;
  int a_bits, b_bits, b_signed;
  int32_t za, zb;
  uint8_t *a, *b;   /* codes (b as raw bytes) */
  int64_t *ref;     /* exact sum (a - za)(b - zb) */
} problem;

static void make_problem(problem *p, int64_t m, int64_t n, int64_t k, int ab, int bb, int b_signed, int worst) {
  p->m = m; p->n = n; p->k = k; p->a_bits = ab; p->b_bits = bb; p->b_signed = b_signed;
  p->a = malloc((size_t)(m * k));
  p->b = malloc((size_t)(n * k));
  p->ref = malloc((size_t)(m * n) * sizeof(int64_t));
  const int amax = (1 << ab) - 1;
  p->za = worst ? 0 : rnd_int(0, amax);
  p->zb = b_signed ? 0 : (worst ? 0 : rnd_int(0, (1 << bb) - 1));
  for (int64_t i = 0; i < m * k; i++) p->a[i] = (uint8_t)(worst ? amax : rnd_int(0, amax));
  for (int64_t i = 0; i < n * k; i++) {
    if (b_signed) p->b[i] = (uint8_t)(worst ? (bb == 1 ? -1 : -(1 << (bb - 1))) : rand_w(bb));
    else p->b[i] = (uint8_t)(worst ? (1 << bb) - 1 : rnd_int(0, (1 << bb) - 1));
  }
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      int64_t s = 0;
      for (int64_t t = 0; t < k; t++) {
        int64_t bv = b_signed ? (int8_t)p->b[j * k + t] : p->b[j * k + t];
        s += ((int64_t)p->a[i * k + t] - p->za) * (bv - p->zb);
      }
      p->ref[i * n + j] = s;
    }
}

static void free_problem(problem *p) { free(p->a); free(p->b); free(p->ref); }

/* Runs one engine on the problem and compares acc, float and requantized outputs. */
static void run_engine(const problem *p, int engine, const char *path) {
  const int64_t m = p->m, n = p->n, k = p->k;
  int32_t *acc = malloc((size_t)(m * n) * sizeof *acc), *rowsum = malloc((size_t)m * 4), *colsum = malloc((size_t)n * 4);
  float *y = malloc((size_t)(m * n) * sizeof *y), *scale = malloc((size_t)n * 4), *bias = malloc((size_t)n * 4);
  uint8_t *q = malloc((size_t)(m * n));
  for (int64_t j = 0; j < n; j++) { scale[j] = 0.001f * (float)rnd_int(1, 900); bias[j] = 0.01f * (float)rnd_int(-500, 500); }
  qv_epilogue ep = {.scale = scale, .bias = bias, .q_step = 0.37f, .q_zp = 3, .q_bits = 4,
                    .out_f = y, .out_q = q, .out_i = acc, .ldo = n};
  int rc;
  if (engine == 0) {
    uint64_t *ap = malloc(qv_bs_a_words(m, k, p->a_bits) * 8), *bp = malloc(qv_bs_b_words(n, k, p->b_bits) * 8);
    rc = qv_bs_pack_a(p->a, m, k, k, p->a_bits, ap, rowsum) | qv_bs_pack_b(p->b, n, k, k, p->b_bits, p->b_signed, bp, colsum);
    rc |= qv_bs_gemm(ap, rowsum, p->a_bits, p->za, bp, colsum, p->b_bits, p->b_signed, p->zb, m, n, k, &ep);
    free(ap); free(bp);
  } else {
    uint8_t *ap = malloc(qv_i8_a_bytes(m, k));
    int8_t *bp = malloc(qv_i8_b_bytes(n, k));
    rc = qv_i8_pack_a(p->a, m, k, k, ap, rowsum) | qv_i8_pack_b(p->b, n, k, k, p->b_signed, bp, colsum);
    rc |= qv_i8_gemm(ap, rowsum, p->a_bits, p->za, bp, colsum, p->b_signed, p->zb, m, n, k, &ep);
    free(ap); free(bp);
  }
  CHECK(rc == 0, "%s %s rc=%d", path, engine ? "int8" : "bitserial", rc);
  int bad = 0;
  for (int64_t i = 0; i < m * n && !bad; i++) {
    int64_t j = i % n;
    float ey = (float)p->ref[i] * scale[j] + bias[j];
    float eq = nearbyintf(ey / 0.37f) + 3.0f;
    eq = eq > 0.0f ? eq : 0.0f;
    eq = eq < 15.0f ? eq : 15.0f;
    if (acc[i] != p->ref[i] || memcmp(&y[i], &ey, 4) != 0 || q[i] != (uint8_t)eq) {
      bad = 1;
      CHECK(0, "%s %s a%d b%d%s M=%lld N=%lld K=%lld at %lld: acc %d want %lld, y %g want %g, q %d want %d", path,
            engine ? "int8" : "bitserial", p->a_bits, p->b_bits, p->b_signed ? "s" : "u", (long long)m, (long long)n,
            (long long)k, (long long)i, acc[i], (long long)p->ref[i], y[i], ey, q[i], (int)eq);
    }
  }
  if (!bad) CHECK(1, "ok");
  free(acc); free(rowsum); free(colsum); free(y); free(scale); free(bias); free(q);
}

static void test_gemms(const char *path) {
  static const int bits[] = {1, 2, 3, 4, 8};
  static const int64_t shapes[][3] = {{1, 1, 1}, {1, 9, 70}, {5, 1, 64}, {6, 17, 127}, {9, 33, 200}, {4, 24, 513}};
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
    for (int ia = 0; ia < 5; ia++)
      for (int ib = 0; ib < 5; ib++)
        for (int sg = 0; sg < 2; sg++) {
          problem p;
          make_problem(&p, shapes[s][0], shapes[s][1], shapes[s][2], bits[ia], bits[ib], sg, 0);
          run_engine(&p, 0, path);
          run_engine(&p, 1, path);
          free_problem(&p);
        }
  /* worst case at DeiT-B K = 3072: all activations at max, all weights at the negative extreme */
  static const int worst[][2] = {{4, 4}, {8, 8}, {4, 1}};
  for (int w = 0; w < 3; w++) {
    problem p;
    make_problem(&p, 3, 20, 3072, worst[w][0], worst[w][1], 1, 1);
    run_engine(&p, 0, path);
    run_engine(&p, 1, path);
    free_problem(&p);
    make_problem(&p, 3, 20, 3072, worst[w][0], worst[w][0], 0, 1);
    run_engine(&p, 0, path);
    run_engine(&p, 1, path);
    free_problem(&p);
  }
}

static void test_float_ops(void) {
  float x[3 * 50], o[3 * 50];
  uint8_t q[3 * 50];
  for (int i = 0; i < 150; i++) x[i] = 0.05f * (float)rnd_int(-200, 200);
  x[7] = 0.5f * 0.25f;  /* exactly half a step: ties to even */
  qv_quantize(x, 150, 0.25f, 2, 3, q);
  for (int i = 0; i < 150; i++) {
    float e = nearbyintf(x[i] / 0.25f) + 2.0f;
    e = e < 0 ? 0 : (e > 7 ? 7 : e);
    CHECK(q[i] == (uint8_t)e, "quantize %d: %d want %g", i, q[i], e);
  }
  qv_softmax(x, 3, 50, o);
  for (int r = 0; r < 3; r++) {
    float s = 0;
    for (int i = 0; i < 50; i++) s += o[r * 50 + i];
    CHECK(fabsf(s - 1.0f) < 1e-5f, "softmax row sum %g", s);
  }
  qv_layernorm(x, 3, 50, NULL, NULL, 1e-6f, o);
  for (int r = 0; r < 3; r++) {
    double s = 0, ss = 0;
    for (int i = 0; i < 50; i++) { s += o[r * 50 + i]; ss += (double)o[r * 50 + i] * o[r * 50 + i]; }
    CHECK(fabs(s / 50) < 1e-5 && fabs(ss / 50 - 1) < 1e-3, "layernorm mean %g var %g", s / 50, ss / 50);
  }
  qv_gelu(x, 150, 0.0f, o);
  for (int i = 0; i < 150; i++) {
    float e = 0.5f * x[i] * (1.0f + erff(x[i] / sqrtf(2.0f)));
    CHECK(fabsf(o[i] - e) <= 1e-6f * (1 + fabsf(e)), "gelu %g -> %g want %g", x[i], o[i], e);
  }
}

/* ---- thread pool ---- */
static atomic_int phase_a[QV_POOL_MAX_THREADS], seen_bad;
static void barrier_task(int t, int nt, void *ctx) {
  (void)ctx;
  for (int round = 1; round <= 50; round++) {
    atomic_store(&phase_a[t], round);
    qv_pool_barrier();
    for (int u = 0; u < nt; u++)
      if (atomic_load(&phase_a[u]) < round) atomic_store(&seen_bad, 1);
    qv_pool_barrier();
  }
}
static atomic_int nested_count;
static void inner_task(int t, int nt, void *ctx) { (void)t; (void)nt; (void)ctx; atomic_fetch_add(&nested_count, 1); }
static void outer_task(int t, int nt, void *ctx) {
  (void)t; (void)nt;
  qv_pool_run(inner_task, ctx, 3);
}

static void test_pool(void) {
  for (int nt = 1; nt <= 4; nt++) {
    for (int i = 0; i < QV_POOL_MAX_THREADS; i++) atomic_store(&phase_a[i], 0);
    atomic_store(&seen_bad, 0);
    int ran = qv_pool_run(barrier_task, NULL, nt);
    CHECK(ran == nt && !atomic_load(&seen_bad), "pool barrier with %d tasks (ran %d)", nt, ran);
  }
  atomic_store(&nested_count, 0);
  qv_pool_run(outer_task, NULL, 3);
  CHECK(atomic_load(&nested_count) == 9, "nested runs: %d inner tasks, want 9", atomic_load(&nested_count));
  /* a forked child (workers started in the parent above) must get its own workers; qemu-user
   * cannot fork a multi-threaded guest (it asserts), so the qemu run skips this */
  if (getenv("QV_TEST_SKIP_FORK")) {
    printf("pool fork test skipped: %s\n", getenv("QV_TEST_SKIP_FORK"));
    return;
  }
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    atomic_store(&seen_bad, 0);
    int ran = qv_pool_run(barrier_task, NULL, 3);
    _exit(ran == 3 && !atomic_load(&seen_bad) ? 0 : 1);
  }
  int status = -1;
  for (int waited = 0; waited < 3000 && waitpid(pid, &status, WNOHANG) == 0; waited++) usleep(10000);
  if (status == -1) kill(pid, SIGKILL), waitpid(pid, &status, 0);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pool in a forked child (status %d)", status);
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  qv_pool_set_threads(1);
  test_pool();
  test_float_ops();
  int tested = 0;
  for (int path = 0; path < QV_PATH_COUNT; path++) {
    if (!qv_path_supported(path)) continue;
    qv_set_path(path);
    for (int t = 1; t <= threads; t++) {
      qv_pool_set_threads(t);
      int before = failures;
      test_gemms(qv_path_name(path));
      printf("path %-8s threads %d: %s\n", qv_path_name(path), t, failures == before ? "ok" : "FAILED");
    }
    tested++;
  }
  qv_pool_shutdown();
  printf("%d paths, %d checks, %d failures\n", tested, checks, failures);
  return failures ? 1 : 0;
}
