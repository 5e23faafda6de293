/* NEON's checked division (native/qv_arith.h: nq_div, nq_div_r, nq_div_v, nq_div_exact) against
 * IEEE division, under qemu-aarch64 (tests/test_native_div.py).
 *
 * Pairs (p, q) by kind: random quotients, random bit patterns (every exponent, subnormals,
 * infinities, NaN), quotients within ~2^-24 ulp of a rounding tie (built exactly, below), p / q
 * at and next to powers of two and just under one, q next to powers of two, tiny and huge
 * values (subnormal and overflowing quotients, q where the reciprocal estimate is 0 or inf) and
 * zeros / infinities / NaN. For every pair:
 * - nq_div, nq_div_r (r = 1.0f / q, as LayerNorm uses it) and nq_div_v give p / q's bits ("mismatch");
 * - the check alone (nq_div_exact) on candidates y = p / q and its 1, 2 float neighbours either side
 *   passes only y = p / q ("false_pass"), and passes it for most finite normal quotients.
 * It prints per-kind counts: "unchecked" (the quotient before the check differs from p / q: what a
 * missing check lets through), "fallback" (lanes that fail the check and divide). Exit status 1 on
 * any mismatch or false pass. Built with -DQV_NQ_DIV_MUTANT=k, a weakened check must fail here.
 */
#include "../native/qv_arith.h"

#include <math.h>
#include <stdio.h>

#if !defined(QV_NEON)
#error "nq_div is the NEON path: build for aarch64"
#endif

#define XS_SEED 0x243F6A8885A308D3ULL
#include "xorshift.h"
static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}
/* sign * (1 + random significand) * 2^e */
static float rnd_float(int elo, int ehi) {
  const int e = elo + (int)(rnd() % (uint64_t)(ehi - elo + 1));
  const float m = 1.0f + (float)(rnd() >> 41) * 0x1p-23f;
  return (rnd() & 1 ? -1.0f : 1.0f) * ldexpf(m, e);
}
static float nudge(float x, int j) {
  for (; j > 0; j--) x = nextafterf(x, INFINITY);
  for (; j < 0; j++) x = nextafterf(x, -INFINITY);
  return x;
}
static int same(float a, float b) { return (a != a && b != b) || bits_of(a) == bits_of(b); }

enum { K_RANDOM, K_BITS, K_TIE, K_POW2, K_QPOW2, K_RANGE, K_SPECIAL, NK };
static const char *kind_name[NK] = {"random", "bits", "tie", "pow2", "qpow2", "range", "special"};
static long n_pairs[NK], mismatch[NK], unchecked[NK], fallback[NK], false_pass[NK], true_pass[NK], normal_q[NK];

/* p / q within ~2^-24 ulp of a tie: Q odd < 2^24, e odd and small, M = -e / Q mod 2^25 (odd); when
 * 2^24 <= M (M / 2^25 a tie between two floats of [0.5, 1)), P = (Q M + e) / 2^25 < 2^24 is an
 * integer and P / Q = M / 2^25 + e / (Q 2^25). */
static int tie_pair(float *p, float *q) {
  const uint32_t Q = (uint32_t)(rnd() % (1u << 23)) * 2 + 1 + (rnd() & 1 ? 1u << 23 : 0);
  const int64_t e = (int64_t)(rnd() % 9) * 2 - 7; /* -7, -5, .. 9 */
  uint32_t inv = 1; /* Q^-1 mod 2^32 by Newton */
  for (int i = 0; i < 5; i++) inv *= 2 - Q * inv;
  const uint32_t M = (uint32_t)(-e * (int64_t)inv) & ((1u << 25) - 1);
  if (M < (1u << 24)) return 0;
  const uint64_t PQ = (uint64_t)Q * M + (uint64_t)e;
  const uint64_t P = PQ >> 25;
  if ((PQ & ((1u << 25) - 1)) != 0 || P == 0 || P >= (1u << 24)) return 0;
  const int a = (int)(rnd() % 200) - 100, b = (int)(rnd() % 200) - 100;
  *p = ldexpf((float)P, a) * (rnd() & 1 ? -1.0f : 1.0f);
  *q = ldexpf((float)Q, b) * (rnd() & 1 ? -1.0f : 1.0f);
  return 1;
}

static void pair_of(int kind, int i, float *p, float *q) {
  static const float sp[] = {0.0f, -0.0f, 1.0f, -1.0f, INFINITY, -INFINITY, NAN, 0x1p-149f, -0x1p-149f,
                             0x1p-126f, 0x1.fffffep127f, -0x1.fffffep127f, 3.0f, 0x1p126f, 0x1p127f, 0x1p-127f};
  const int ns = (int)(sizeof sp / sizeof sp[0]);
  switch (kind) {
  case K_RANDOM:
    *p = rnd_float(-20, 20), *q = rnd_float(-20, 20);
    return;
  case K_BITS:
    *p = from_bits((uint32_t)rnd()), *q = from_bits((uint32_t)rnd());
    return;
  case K_TIE:
    while (!tie_pair(p, q)) {
    }
    return;
  case K_POW2: { /* p / q at or next to +-2^k, and just under it (where a candidate 2^k would pass
                   with no halved bound, were a quotient there) */
    const float qq = rnd_float(-30, 30);
    const int k = (int)(rnd() % 60) - 30;
    if (i % 2) {
      *p = nudge(qq * ldexpf(1.0f, k), (int)(rnd() % 9) - 4); /* q 2^k exact, nudged */
    } else { /* p / q in (1 - 2^-24, 1 - 2^-25) and around: rounds below 1 */
      const double c = 1.0 - (1.0 + (double)(rnd() >> 40) * 0x1p-24) * 0x1p-25 * (i % 4 ? 1.0 : 2.5);
      *p = (float)((double)qq * c);
      *p = ldexpf(*p, k);
    }
    *q = qq;
    return;
  }
  case K_QPOW2:
    *q = nudge(ldexpf(rnd() & 1 ? -1.0f : 1.0f, (int)(rnd() % 240) - 120), (int)(rnd() % 7) - 3);
    *p = i % 3 ? rnd_float(-100, 100) : nudge(ldexpf(1.0f, (int)(rnd() % 240) - 120), (int)(rnd() % 7) - 3);
    return;
  case K_RANGE: { /* quotients near FLT_MAX, overflow, near 2^-126, subnormal; q past 2^126, below 2^-126 */
    const int which = i % 6;
    if (which == 0) *p = rnd_float(100, 127), *q = rnd_float(-27, 0);
    else if (which == 1) *p = rnd_float(-127, -100), *q = rnd_float(0, 27);
    else if (which == 2) *p = rnd_float(-30, 30), *q = rnd_float(120, 127);
    else if (which == 3) *p = rnd_float(-30, 30), *q = from_bits((uint32_t)(rnd() % 0x00800000u) | (rnd() & 1) << 31);
    else if (which == 4) *p = from_bits((uint32_t)(rnd() % 0x00800000u)), *q = rnd_float(-30, 30);
    else *p = rnd_float(-126, -120), *q = rnd_float(-5, 5);
    return;
  }
  default:
    *p = sp[i % ns], *q = sp[(i / ns) % ns];
    if (i >= ns * ns) *p = rnd_float(-5, 5);
    return;
  }
}

int main(void) {
  static const int count[NK] = {400000, 200000, 400000, 200000, 100000, 200000, 2048};
  for (int kind = 0; kind < NK; kind++) {
    for (int i0 = 0; i0 < count[kind]; i0 += 16) {
      float p[16], q[16], z[16], r[16];
      for (int l = 0; l < 16; l++) {
        pair_of(kind, i0 + l, p + l, q + l);
        volatile float vp = p[l], vq = q[l];
        z[l] = vp / vq; /* IEEE */
        volatile float one = 1.0f;
        r[l] = one / vq;
      }
      float got[16], got_r[16], got_v[16], y[16];
      uint32_t ok[16];
      for (int k = 0; k < 16; k += 4) {
        const float32x4_t vp = vld1q_f32(p + k), vq = vld1q_f32(q + k);
        vst1q_f32(got + k, nq_div(vp, vq));
        vst1q_f32(got_r + k, nq_div_r(vp, vq, vld1q_f32(r + k)));
        const float32x4_t vy = nq_div_y(vp, vq, nq_recip(vq));
        vst1q_f32(y + k, vy);
        vst1q_u32(ok + k, nq_div_exact(vp, vq, vy));
      }
      vf pv, qv;
      memcpy(&pv, p, sizeof pv);
      memcpy(&qv, q, sizeof qv);
      const vf gv = nq_div_v(pv, qv);
      memcpy(got_v, &gv, sizeof got_v);
      for (int l = 0; l < 16; l++) {
        n_pairs[kind]++;
        const int bad = !same(got[l], z[l]) || !same(got_r[l], z[l]) || !same(got_v[l], z[l]);
        if (bad && mismatch[kind]++ < 5)
          printf("mismatch %s p %a q %a: %a (r: %a, v: %a) != %a\n", kind_name[kind], p[l], q[l], got[l],
                 got_r[l], got_v[l], z[l]);
        unchecked[kind] += !same(y[l], z[l]);
        fallback[kind] += ok[l] == 0;
        /* the check alone on the quotient and its neighbours */
        for (int j = -2; j <= 2; j++) {
          if (z[l] != z[l]) break;
          const float c = nudge(z[l], j);
          const uint32x4_t m = nq_div_exact(vdupq_n_f32(p[l]), vdupq_n_f32(q[l]), vdupq_n_f32(c));
          if (vgetq_lane_u32(m, 0) == 0) continue;
          if (!same(c, z[l])) {
            if (false_pass[kind]++ < 5)
              printf("false_pass %s p %a q %a: candidate %a passes, p / q = %a\n", kind_name[kind], p[l], q[l],
                     c, z[l]);
          } else {
            true_pass[kind]++;
          }
        }
        const uint32_t ez = bits_of(z[l]) & 0x7f800000u;
        normal_q[kind] += ez != 0 && ez != 0x7f800000u;
      }
    }
    printf("kind %s pairs %ld mismatch %ld false_pass %ld unchecked %ld fallback %ld true_pass %ld normal %ld\n",
           kind_name[kind], n_pairs[kind], mismatch[kind], false_pass[kind], unchecked[kind], fallback[kind],
           true_pass[kind], normal_q[kind]);
  }
  long bad = 0;
  for (int kind = 0; kind < NK; kind++) bad += mismatch[kind] + false_pass[kind];
  printf("total bad %ld\n", bad);
  return bad != 0;
}
