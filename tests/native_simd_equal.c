/* The C micro-kernels' SIMD paths against their portable path (tests/test_native_simd.py).
 *
 * Built twice per target from the same source, once as the target compiles it (AVX-512 / AVX2 /
 * NEON paths) and once with -DQV_PORTABLE, it prints every result of the qv_arith.h helpers
 * (GELU included), the attention item and the pack kernel on edge values (ties at .5, values past
 * 2^22, signed zeros, infinities, NaN, the clip bounds, large negative exp inputs) and random data,
 * one value a line ("section index bits"); the two outputs must be the same text. NaNs print as
 * "nan" (their payload is not a value the kernels promise).
 */
#include "../native/model/attention.c"
#include "../native/model/pack.c"

#include <math.h>
#include <stdio.h>

#define XS_SEED 0x9E3779B97F4A7C15ULL
#include "xorshift.h"
static float unif(float lo, float hi) { return lo + (hi - lo) * (float)(rnd() >> 40) / 16777216.0f; }
static float gauss(float sd) { return sd * (unif(-1, 1) + unif(-1, 1) + unif(-1, 1)); }

static void pf(const char *sec, int i, float v) {
  if (v != v) {
    printf("%s %d nan\n", sec, i);
    return;
  }
  uint32_t u;
  memcpy(&u, &v, 4);
  printf("%s %d %08x\n", sec, i, u);
}
static void pfs(const char *sec, const float *v, int n) {
  for (int i = 0; i < n; i++) pf(sec, i, v[i]);
}
static void pis(const char *sec, const int32_t *v, int n) {
  for (int i = 0; i < n; i++) printf("%s %d %d\n", sec, i, v[i]);
}
static void pbs(const char *sec, const uint8_t *v, int n) {
  for (int i = 0; i < n; i++) printf("%s %d %u\n", sec, i, v[i]);
}
static void pws(const char *sec, const uint64_t *v, int64_t n) {
  for (int64_t i = 0; i < n; i++) printf("%s %lld %016llx\n", sec, (long long)i, (unsigned long long)v[i]);
}

/* edge values for rounding and clipping, then random values of several scales */
#define NE 512
static float edge[NE];
static void make_edges(void) {
  const float fixed[] = {0.0f, -0.0f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 3.5f, 14.5f, 15.5f, 16.5f, 254.5f,
                         255.5f, 256.5f, 0.49999997f, 0.50000006f, -0.49999997f, 1.4999999f, 2.5000002f,
                         4194303.5f, 4194304.0f, 4194305.0f, -4194305.0f, 5e6f, -5e6f, 8388607.5f, 8388609.0f,
                         16777217.0f, 1e10f, -1e10f, 3e38f, -3e38f, INFINITY, -INFINITY, NAN, -NAN, 1e-45f,
                         -1e-45f, 1.17549435e-38f, 7.0f, 7.5f, 8.0f, 1.0f, 3.0f, 15.0f, 255.0f, -1.0f, 0.25f,
                         0.75f, 1e-8f, -1e-8f};
  const int nf = (int)(sizeof fixed / sizeof fixed[0]);
  for (int i = 0; i < NE; i++) {
    if (i < nf) edge[i] = fixed[i];
    else if (i < 200) edge[i] = (float)(int)unif(-300, 300) + 0.5f; /* ties */
    else if (i < 300) edge[i] = unif(-20, 20);
    else if (i < 400) edge[i] = gauss(3.0f);
    else edge[i] = unif(-1e7f, 1e7f);
  }
}

static void test_vector_helpers(void) {
  char sec[64];
  for (int i = 0; i + VL <= NE; i += VL) {
    vf x = loadf(edge + i), y = loadf(edge + (i + 37) % (NE - VL));
    float o[VL];
    storef(o, round_even_v(x));
    for (int l = 0; l < VL; l++) pf("round_even_v", i + l, o[l]);
    for (int l = 0; l < VL; l++) pf("round_even", i + l, round_even(edge[i + l]));
    storef(o, vmax(x, y));
    for (int l = 0; l < VL; l++) pf("vmax", i + l, o[l]);
    storef(o, vmin(x, y));
    for (int l = 0; l < VL; l++) pf("vmin", i + l, o[l]);
    storef(o, vmax(y, x));
    for (int l = 0; l < VL; l++) pf("vmax_r", i + l, o[l]);
    storef(o, vmin(y, x));
    for (int l = 0; l < VL; l++) pf("vmin_r", i + l, o[l]);
  }
  /* zero pairs and NaNs for vmax / vmin */
  const float za[VL] = {0.0f, -0.0f, 0.0f, -0.0f, NAN, 1.0f, NAN, -1.0f, 0, 0, 0, 0, 0, 0, 0, 0};
  const float zb[VL] = {-0.0f, 0.0f, 0.0f, -0.0f, 1.0f, NAN, NAN, -0.0f, 0, 0, 0, 0, 0, 0, 0, 0};
  float o[VL];
  storef(o, vmax(loadf(za), loadf(zb)));
  pfs("vmax_zero", o, VL);
  storef(o, vmin(loadf(za), loadf(zb)));
  pfs("vmin_zero", o, VL);
  /* codes: every bit width, several steps and zero points, row lengths with every tail */
  const float steps[] = {1.0f, 0.37f, 1e-3f, 3.0f, 0.5f};
  uint8_t codes[NE];
  for (int bits = 1; bits <= 8; bits++)
    for (int si = 0; si < 5; si++) {
      const int hi = (1 << bits) - 1;
      const int zps[] = {0, 1, hi / 2, hi};
      for (int zi = 0; zi < 4; zi++) {
        snprintf(sec, sizeof sec, "quantize_row.b%d.s%d.z%d", bits, si, zi);
        quantize_row(edge, NE, steps[si], zps[zi], bits, codes);
        pbs(sec, codes, NE);
        for (int i = 0; i + VL <= NE; i += VL) {
          int32_t c[VL];
          vi v = code_of_v(loadf(edge + i), steps[si], (float)zps[zi], (float)hi);
          memcpy(c, &v, sizeof c);
          snprintf(sec, sizeof sec, "code_of_v.b%d.s%d.z%d", bits, si, zi);
          for (int l = 0; l < VL; l++) printf("%s %d %d\n", sec, i + l, c[l]);
        }
      }
    }
  for (int n = 1; n <= 40; n++) {
    memset(codes, 0xAA, 64);
    quantize_row(edge + 20, n, 0.37f, 2, 4, codes); /* infinities, NaN in the tails too */
    snprintf(sec, sizeof sec, "quantize_row.n%d", n);
    pbs(sec, codes, 64); /* past n: untouched */
  }
  /* exp: the 16-lane exp_v, NEON's 4-lane nq_exp, and exp_f on softmax-like and edge inputs */
  float ex[NE];
  for (int i = 0; i < NE; i++) ex[i] = i < 300 ? -edge[i] * edge[i] * 0.25f : unif(-120.0f, 90.0f);
  const float fixed[] = {0.0f, -0.0f, -87.3365478515625f, -87.34f, -88.0f, -100.0f, -1e30f, -INFINITY, NAN,
                         88.3762626647949f, 89.0f, INFINITY, -1e-8f, -0.3465736f, -0.34657362f, -126.0f};
  memcpy(ex, fixed, sizeof fixed);
  for (int i = 0; i + VL <= NE; i += VL) {
    storef(o, exp_v(loadf(ex + i)));
    for (int l = 0; l < VL; l++) pf("exp_v", i + l, o[l]);
    for (int l = 0; l < VL; l++) pf("exp_f", i + l, exp_f(ex[i + l]));
  }
#if defined(QV_NEON)
  for (int i = 0; i < NE; i += 4) { /* NEON's softmax exp: exp_v's values (NaN -> the upper bound) */
    float q[4];
    vst1q_f32(q, nq_exp(vld1q_f32(ex + i)));
    for (int l = 0; l < 4; l++) pf("exp4", i + l, q[l]);
  }
#else
  for (int i = 0; i + VL <= NE; i += VL) {
    storef(o, exp_v(loadf(ex + i)));
    for (int l = 0; l < VL; l++) pf("exp4", i + l, o[l]);
  }
#endif
}

/* erf / GELU: NEON divides by nq_div_v (a checked reciprocal, fdiv where a lane fails), the
 * others by p / q; on edge values, tiny inputs (subnormal quotients: the fallback), the clamp at
 * +-4, a dense random sweep and H = +-0x1.7501ap+0, whose erf quotient before the check is one ulp
 * off (a scan of 35 M inputs found it), in the first and later registers of a vector */
static void test_gelu(void) {
  static float g[1 << 15];
  const float H = 0x1.7501ap+0f;
  const float fixed[] = {0.0f, -0.0f, 1e-45f, -1e-45f, 1e-40f, 1.17549435e-38f, 2e-38f, 1e-30f, 5.65685424949238f,
                         5.6568546f, -5.6568546f, 4.0f, 4.0000005f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN,
                         H, 1.0f, 1.0f, 1.0f, 1.0f, H, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, 1.0f, -H, 1.0f, 1.0f, 1.0f,
                         1.0f, 1.0f, 1.0f, 1.0f, -H};
  const int nf = (int)(sizeof fixed / sizeof fixed[0]), n = 1 << 15;
  for (int i = 0; i < n; i++)
    g[i] = i < nf ? fixed[i] : i < NE ? edge[i] : i % 3 ? unif(-7.0f, 7.0f) : gauss(1.0f) * (i % 5 ? 1.0f : 1e-3f);
  for (int i = 0; i + VL <= n; i += VL) {
    float o[VL];
    storef(o, erf_v(loadf(g + i)));
    for (int l = 0; l < VL; l++) pf("erf_v", i + l, o[l]);
    storef(o, gelu_v(loadf(g + i), i % 2, 3.0f));
    for (int l = 0; l < VL; l++) pf("gelu_v", i + l, o[l]);
    if (i < NE)
      for (int l = 0; l < VL; l++) pf("gelu_f", i + l, gelu_f(g[i + l], i % 2, 3.0f));
  }
}

static void test_rows(void) {
  char sec[64];
  static float x[16384], w[4096], b[4096], out[4096], rows[512], tmp[4096];
  for (int i = 0; i < 16384; i++) {
    x[i] = gauss(2.0f) + (i % 7 == 0 ? 100.0f : 0.0f);
    if (i < 4096) w[i] = gauss(1.0f), b[i] = gauss(0.5f);
  }
  const int ns[] = {1, 2, 5, 7, 8, 9, 12, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 96, 100, 127, 128, 129,
                    130, 192, 197, 256, 300, 384, 768, 1000, 1536, 3072};
  for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
    const int n = ns[k];
    snprintf(sec, sizeof sec, "pairwise_sum.n%d", n);
    pf(sec, 0, pairwise_sum(x + k, n));
    snprintf(sec, sizeof sec, "layernorm_row.n%d", n);
    layernorm_row(x + k, n, w, b, 1e-6f, out);
    pfs(sec, out, n);
  }
  const int shapes[][2] = {{1, 8}, {3, 5}, {49, 32}, {197, 64}, {50, 100}, {7, 130}, {16, 3}};
  for (int k = 0; k < 7; k++) {
    const int T = shapes[k][0], n = shapes[k][1];
    const int64_t stride = n + 11;
    float mu, sd;
    head_stats(x + k, stride, T, n, 1e-6f, rows, tmp, &mu, &sd);
    snprintf(sec, sizeof sec, "head_stats.T%d.n%d", T, n);
    pf(sec, 0, mu);
    pf(sec, 1, sd);
    snprintf(sec, sizeof sec, "headnorm_row.T%d.n%d", T, n);
    headnorm_row(x + k, n, mu, sd, w, b, out);
    pfs(sec, out, n);
  }
  /* bit planes: every bit width, codes of every value */
  static uint8_t codes[64 * 8];
  uint64_t planes[8 * 8];
  for (int bits = 1; bits <= 8; bits++) {
    for (int i = 0; i < 64 * 8; i++) codes[i] = (uint8_t)(rnd() & ((1u << bits) - 1));
    for (int i = 0; i < 8; i++) planes[i] = 0;
    for (int i = 0; i < bits; i++) {
      snprintf(sec, sizeof sec, "plane_word.b%d.i%d", bits, i);
      for (int w8 = 0; w8 < 8; w8++) {
        uint64_t word = plane_word(codes + 64 * w8, i);
        pws(sec, &word, 1);
      }
    }
    pack_row(codes, 8, bits, planes, 8);
    snprintf(sec, sizeof sec, "pack_row.b%d", bits);
    pws(sec, planes, 8 * bits);
    snprintf(sec, sizeof sec, "plane_sum.b%d", bits);
    int32_t ps = plane_sum(planes, 8, 8, bits);
    pis(sec, &ps, 1);
  }
}

/* bit-serial rows: every shape bs_row specializes, the NEON bounds' edges and past them */
static void test_bs_rows(void) {
  char sec[64];
  const int cases[][2] = {{1, 1}, {2, 1}, {2, 2}, {2, 4}, {3, 1}, {3, 4}, {4, 1}, {4, 4}, {2, 7}, {3, 5}, {4, 7},
                          {4, 8}, {4, 18}, {4, 19}, {3, 10}, {3, 11}, {2, 16}, {5, 2}, {6, 1}, {8, 1}};
  static uint64_t a[8 * 32], bt[8 * 32 * 64];
  int32_t out[64];
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    const int bits = cases[k][0], nw = cases[k][1];
    for (int cpad = 32; cpad <= 64; cpad += 32) {
      for (int i = 0; i < bits * nw; i++) a[i] = k == 0 ? ~0ULL : rnd() | rnd(); /* dense bits */
      for (int i = 0; i < bits * nw * cpad; i++) bt[i] = k == 0 ? ~0ULL : rnd() | rnd();
      bs_row(a, nw, nw, bits, bt, cpad, out);
      snprintf(sec, sizeof sec, "bs_row.b%d.w%d.c%d", bits, nw, cpad);
      pis(sec, out, cpad);
      for (int i = 0; i < bits * nw * cpad; i++) bt[i] = ~0ULL; /* all ones: each bound at its largest */
      for (int i = 0; i < bits * nw; i++) a[i] = ~0ULL;
      bs_row(a, nw, nw, bits, bt, cpad, out);
      snprintf(sec, sizeof sec, "bs_row_ones.b%d.w%d.c%d", bits, nw, cpad);
      pis(sec, out, cpad);
    }
  }
}

static void test_softmax_rows(void) {
  char sec[64];
  static int32_t acc[256], ks[256];
  static float bias[256], mask[256], s[256], e[256];
  static uint8_t codes[256];
  const int Ts[] = {1, 3, 4, 5, 15, 16, 17, 20, 49, 64, 197, 256};
  for (int k = 0; k < 12; k++) {
    const int T = Ts[k];
    for (int bits = 1; bits <= 4; bits++)
      for (int v = 0; v < 5; v++) {
        for (int c = 0; c < T; c++) {
          acc[c] = (int32_t)(rnd() % 900);
          ks[c] = (int32_t)(rnd() % 200);
          bias[c] = gauss(1.0f);
          mask[c] = rnd() % 5 == 0 ? (v == 3 ? -INFINITY : -100.0f) : 0.0f;
        }
        if (v == 2) /* ties in the scores: equal maxima, zeros of both signs */
          for (int c = 0; c < T; c++) acc[c] = c % 3 ? 17 : 0, ks[c] = 0;
        if (v == 4) /* NaN scores, in vector parts and tails */
          for (int c = 0; c < T; c++) bias[c] = c % 7 == 3 ? NAN : bias[c];
        const float scale = v == 1 ? 1e-3f : 0.125f * 0.05f;
        softmax_row(acc, T, -37 * (v & 1), v == 2 ? 0 : 3, ks, scale, v & 1 || v == 4 ? bias : 0,
                    v == 2 || v == 3 ? mask : 0,
                    1.0f / (float)((1 << bits) - 1) * (v == 1 ? 0.5f : 1.0f), 0, bits, s, e, codes);
        snprintf(sec, sizeof sec, "softmax.s.T%d.b%d.v%d", T, bits, v);
        pfs(sec, s, T);
        snprintf(sec, sizeof sec, "softmax.e.T%d.b%d.v%d", T, bits, v);
        pfs(sec, e, T);
        snprintf(sec, sizeof sec, "softmax.codes.T%d.b%d.v%d", T, bits, v);
        pbs(sec, codes, T);
      }
  }
}

/* Quotients next to ties, where x * (1 / step) can round to the other code than x / step: the NEON
 * quantize multiplies by the reciprocal and must fall back to the division there (and at the ends
 * of its step range). "recip.hard N" counts the values where the plain product rounds otherwise;
 * the test requires some, so a broken fallback shows. */
static float nudge(float x, int j) {
  for (; j > 0; j--) x = nextafterf(x, INFINITY);
  for (; j < 0; j++) x = nextafterf(x, -INFINITY);
  return x;
}
static void test_recip_codes(void) {
  char sec[64];
  static float x[1200];
  static uint8_t codes[1200];
  const float steps[] = {0.37f, 1e-3f, 3.0f, 0.1f, 1.0f / 3.0f, 1.0f / 7.0f, 1.0f / 15.0f, 0.0123f,
                         0x1p-60f, 0x1.8p-61f, 0x1.fffffep59f, 0x1p60f, 0x1.000002p60f, 1e-30f, 1e-40f, 0.0f,
                         -0.37f, INFINITY, NAN};
  int hard = 0;
  for (int si = 0; si < (int)(sizeof steps / sizeof steps[0]); si++) {
    const float step = steps[si];
    int n = 0;
    for (int k = -40; k < 40; k++)
      for (int j = -7; j <= 7; j++) {
        const float v = nudge((float)k * step + 0.5f * step, j);
        volatile float r = 1.0f / step, y = v * r, q = v / step;
        hard += nearbyintf(y) != nearbyintf(q) && q == q;
        x[n++] = v;
      }
    for (int i = 0; i < 16; i++) x[n++] = edge[20 + i]; /* 2^22, 1e10, 3e38, infinities, NaN, tiny */
    for (int bits = 4; bits <= 8; bits += 4)
      for (int zi = 0; zi < 4; zi++) { /* zero points: 0, mid-range, negative, past 2^19 (no passing lane) */
        const int zp = zi == 0 ? 0 : zi == 1 ? (1 << bits) / 2 : zi == 2 ? -3 : 600000;
        quantize_row(x, n, step, zp, bits, codes);
        snprintf(sec, sizeof sec, "recip.quantize.s%d.b%d.z%d", si, bits, zp);
        pbs(sec, codes, n);
      }
  }
  /* softmax: codes of (e / den) / p_step; scores 0 and b (the others far below), p_step putting
   * e_b / den next to a tie, where e_b * (1 / (den p_step)) can round otherwise */
  static int32_t acc[32], ks[32];
  static float bias[32], s[32], e[32];
  int rows = 0;
  for (int it = 0; it < 400; it++) {
    const int T = it % 2 ? 32 : 16;
    for (int c = 0; c < T; c++) bias[c] = -200.0f;
    bias[0] = 0.0f;
    bias[1 + it % 5] = unif(-3.0f, -0.01f);
    const float mx = 0.0f;
    for (int c = 0; c < T; c++) e[c] = exp_f(bias[c] - mx);
    const float den = pairwise_sum(e, T), p = e[1 + it % 5] / den;
    const int k = (int)(rnd() % 14);
    const float p_step = nudge(p / ((float)k + 0.5f), (int)(rnd() % 9) - 4);
    volatile float r = 1.0f / (den * p_step), y = e[1 + it % 5] * r, q = p / p_step;
    if (nearbyintf(y) == nearbyintf(q)) continue;
    hard++;
    softmax_row(acc, T, 0, 0, ks, 1.0f, bias, 0, p_step, 0, 4, s, e, codes);
    snprintf(sec, sizeof sec, "recip.softmax.%d", rows++);
    pbs(sec, codes, T);
  }
  printf("recip.hard %d\n", hard);
}

/* whole attention items and pack kernels on random data */
static void test_kernels(void) {
  char sec[64];
  const int cases[][5] = {/* T, H, d, bits, irm */ {197, 2, 64, 2, 1}, {197, 2, 64, 2, 2}, {49, 3, 32, 3, 0},
                          {49, 2, 32, 4, 2},  {65, 2, 64, 4, 1},   {17, 1, 24, 1, 0}};
  for (int k = 0; k < 6; k++) {
    const int T = cases[k][0], H = cases[k][1], d = cases[k][2], bits = cases[k][3], irm = cases[k][4];
    const int D = H * d, DW = words(d), TW = words(T), hi = (1 << bits) - 1;
    float *qkv = malloc(sizeof(float) * T * 3 * D), *out = calloc((size_t)T * D, sizeof(float));
    float *nw_ = malloc(sizeof(float) * H * d * 4), *bias = malloc(sizeof(float) * H * T * T);
    float st[4][8];
    int32_t zp[4][8];
    for (int i = 0; i < T * 3 * D; i++) qkv[i] = gauss(1.5f);
    for (int i = 0; i < H * d * 4; i++) nw_[i] = gauss(1.0f) + (i % 2 ? 0.0f : 1.0f);
    for (int i = 0; i < H * T * T; i++) bias[i] = gauss(0.3f);
    for (int j = 0; j < 4; j++)
      for (int h = 0; h < H; h++) {
        st[j][h] = j == 3 ? 1.0f / hi : unif(0.2f, 0.8f);
        zp[j][h] = j == 3 ? 0 : (int32_t)(rnd() % (hi + 1));
      }
    const size_t npq = (size_t)H * bits * T * DW, npv = (size_t)H * bits * d * TW, npp = (size_t)H * bits * T * TW;
    uint64_t *qp = calloc(npq, 8), *kp = calloc(npq, 8), *vp = calloc(npv, 8), *pp = calloc(npp, 8);
    int32_t *qs = calloc((size_t)H * T, 4), *ks = calloc((size_t)H * T, 4), *vs = calloc((size_t)H * d, 4);
    int32_t *ps = calloc((size_t)H * T, 4);
    const float *g = nw_, *be = nw_ + H * d, *g2 = nw_ + 2 * H * d, *be2 = nw_ + 3 * H * d;
    for (int item = 0; item < H; item++)
      if (qvit_attention_item(item, T, H, d, bits, irm, 1e-6f, 0.125f, k % 2, 0, qkv, g, be, g2, be2, st[0], zp[0],
                              st[1], zp[1], st[2], zp[2], st[3], zp[3], bias, 0, qp, kp, vp, qs, ks, vs, pp, ps,
                              out) != 0)
        printf("attention_item failed\n");
    snprintf(sec, sizeof sec, "attn%d.out", k);
    pfs(sec, out, T * D);
    snprintf(sec, sizeof sec, "attn%d.qp", k);
    pws(sec, qp, (int64_t)npq);
    snprintf(sec, sizeof sec, "attn%d.kp", k);
    pws(sec, kp, (int64_t)npq);
    snprintf(sec, sizeof sec, "attn%d.vp", k);
    pws(sec, vp, (int64_t)npv);
    snprintf(sec, sizeof sec, "attn%d.pp", k);
    pws(sec, pp, (int64_t)npp);
    snprintf(sec, sizeof sec, "attn%d.sums", k);
    pis(sec, qs, H * T);
    pis(sec, ks, H * T);
    pis(sec, vs, H * d);
    pis(sec, ps, H * T);
    free(qkv), free(out), free(nw_), free(bias), free(qp), free(kp), free(vp), free(pp);
    free(qs), free(ks), free(vs), free(ps);
  }
  const int packs[][4] = {/* M, K, bits, ln */ {13, 384, 2, 1}, {13, 384, 2, 0}, {9, 100, 3, 1}, {5, 1536, 4, 0},
                          {6, 77, 1, 1}};
  for (int k = 0; k < 5; k++) {
    const int M = packs[k][0], K = packs[k][1], bits = packs[k][2], ln = packs[k][3];
    const int Mpad = (M + 7) / 8 * 8, KW = words(K);
    float *x = malloc(sizeof(float) * M * K), *lw = malloc(sizeof(float) * K), *lb = malloc(sizeof(float) * K);
    for (int i = 0; i < M * K; i++) x[i] = gauss(1.0f) + (i % 97 == 0 ? 30.0f : 0.0f);
    for (int i = 0; i < K; i++) lw[i] = gauss(1.0f), lb[i] = gauss(0.2f);
    uint64_t *planes = calloc((size_t)bits * Mpad * KW, 8);
    const float step = 0.3f;
    const int32_t zp = (1 << bits) / 2;
    qvit_pack_rows(0, Mpad, M, Mpad, K, KW, bits, ln, 1e-6f, x, lw, lb, &step, &zp, planes);
    snprintf(sec, sizeof sec, "pack%d", k);
    pws(sec, planes, (int64_t)bits * Mpad * KW);
    free(x), free(lw), free(lb), free(planes);
  }
}

int main(void) {
  make_edges();
#if defined(QV_NEON)
  printf("# path neon\n");
#elif defined(QV_AVX512F)
  printf("# path avx512\n");
#elif defined(QV_AVX2)
  printf("# path avx2\n");
#else
  printf("# path portable\n");
#endif
  test_vector_helpers();
  test_gelu();
  test_rows();
  test_bs_rows();
  test_softmax_rows();
  test_recip_codes();
  test_kernels();
  return 0;
}
