/* The popcount peak of this core: the bit-serial inner step (AND, popcount, accumulate) on
 * register-resident data with enough independent chains to hide latency, for the path in
 * effect. docs/bench-kernels.md reports the GEMMs as a fraction of it. */
#include <time.h>

#include "qv_internal.h"

#if defined(QV_HAVE_X86)
#include <immintrin.h>
#endif
#if defined(QV_HAVE_NEON)
#include <arm_neon.h>
#endif

#define CHAINS 12

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* each returns a checksum so the loop is not optimised away; bits per step = vector width */
static uint64_t peak_scalar(int64_t iters) {
  uint64_t acc[CHAINS] = {0}, x = 0x0123456789abcdefull;
  for (int64_t i = 0; i < iters; i++) {
    for (int c = 0; c < CHAINS; c++) acc[c] += (uint64_t)__builtin_popcountll(x & (0x9e3779b97f4a7c15ull * (uint64_t)(c + 1)));
    __asm__ volatile("" : "+r"(x));
  }
  uint64_t s = 0;
  for (int c = 0; c < CHAINS; c++) s += acc[c];
  return s;
}

#if defined(QV_HAVE_X86)
QV_TARGET_AVX2 static uint64_t peak_scalar_popcnt(int64_t iters) {
  uint64_t acc[CHAINS] = {0}, x = 0x0123456789abcdefull;
  for (int64_t i = 0; i < iters; i++) {
    for (int c = 0; c < CHAINS; c++) acc[c] += (uint64_t)__builtin_popcountll(x & (0x9e3779b97f4a7c15ull * (uint64_t)(c + 1)));
    __asm__ volatile("" : "+r"(x));
  }
  uint64_t s = 0;
  for (int c = 0; c < CHAINS; c++) s += acc[c];
  return s;
}

QV_TARGET_AVX512 static uint64_t peak_avx512(int64_t iters) {
  __m512i acc[CHAINS], w[CHAINS], x = _mm512_set1_epi64(0x0123456789abcdefll);
  for (int c = 0; c < CHAINS; c++) { acc[c] = _mm512_setzero_si512(); w[c] = _mm512_set1_epi64((long long)(c * 0x9e3779b97f4a7c15ull)); }
  for (int64_t i = 0; i < iters; i++) {
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_add_epi64(acc[c], _mm512_popcnt_epi64(_mm512_and_si512(x, w[c])));
    __asm__ volatile("" : "+v"(x));
  }
  __m512i s = acc[0];
  for (int c = 1; c < CHAINS; c++) s = _mm512_add_epi64(s, acc[c]);
  return (uint64_t)_mm512_reduce_add_epi64(s);
}

QV_TARGET_AVX2 static uint64_t peak_avx2(int64_t iters) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                       0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  __m256i acc[CHAINS / 2], w[CHAINS / 2], x = _mm256_set1_epi64x(0x0123456789abcdefll);
  for (int c = 0; c < CHAINS / 2; c++) { acc[c] = _mm256_setzero_si256(); w[c] = _mm256_set1_epi64x((long long)(c * 0x9e3779b97f4a7c15ull)); }
  for (int64_t i = 0; i < iters; i++) {
    for (int c = 0; c < CHAINS / 2; c++) {
      __m256i v = _mm256_and_si256(x, w[c]);
      __m256i cnt = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v, low4)),
                                    _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4)));
      acc[c] = _mm256_add_epi64(acc[c], _mm256_sad_epu8(cnt, _mm256_setzero_si256()));
    }
    __asm__ volatile("" : "+x"(x));
  }
  __m256i s = acc[0];
  for (int c = 1; c < CHAINS / 2; c++) s = _mm256_add_epi64(s, acc[c]);
  return (uint64_t)_mm256_extract_epi64(s, 0) + (uint64_t)_mm256_extract_epi64(s, 3);
}
#endif

#if defined(QV_HAVE_NEON)
static uint64_t peak_neon(int64_t iters) {
  uint8x16_t acc[CHAINS], w[CHAINS], x = vdupq_n_u8(0x5b);
  uint64_t total = 0;
  for (int c = 0; c < CHAINS; c++) { acc[c] = vdupq_n_u8(0); w[c] = vdupq_n_u8((uint8_t)(c * 37 + 11)); }
  for (int64_t i = 0; i < iters; i++) {
    for (int c = 0; c < CHAINS; c++) acc[c] = vaddq_u8(acc[c], vcntq_u8(vandq_u8(x, w[c])));
    __asm__ volatile("" : "+w"(x));
    if ((i & 15) == 15) /* widen before the byte counters wrap, as the GEMM does every 31 words */
      for (int c = 0; c < CHAINS; c++) { total += vaddlvq_u8(acc[c]); acc[c] = vdupq_n_u8(0); }
  }
  for (int c = 0; c < CHAINS; c++) total += vaddlvq_u8(acc[c]);
  return total;
}
#endif

typedef uint64_t (*peak_fn)(int64_t);

static peak_fn pick(int path, int *bits_per_step) {
  peak_fn fn;
  int bits_per_chain, chains = CHAINS;
  switch (path) {
#if defined(QV_HAVE_X86)
    case QV_PATH_AVX512: fn = peak_avx512; bits_per_chain = 512; break;
    case QV_PATH_AVX2: fn = peak_avx2; bits_per_chain = 256; chains = CHAINS / 2; break;
    case QV_PATH_SCALAR: fn = qv_path_supported(QV_PATH_AVX2) ? peak_scalar_popcnt : peak_scalar; bits_per_chain = 64; break;
#else
    case QV_PATH_SCALAR: fn = peak_scalar; bits_per_chain = 64; break;
#endif
#if defined(QV_HAVE_NEON)
    case QV_PATH_NEON:
    case QV_PATH_NEON_DOT: fn = peak_neon; bits_per_chain = 128; break;
#endif
    default: return NULL;
  }
  if (!qv_path_supported(path)) return NULL;
  *bits_per_step = bits_per_chain * chains;
  return fn;
}

double qv_popcount_probe(int path, int64_t iters) {
  int bits;
  peak_fn fn = pick(path, &bits);
  if (!fn || iters < 1) return 0.0;
  volatile uint64_t sink = fn(iters);
  (void)sink;
  return (double)iters * bits;
}

double qv_popcount_peak(int path, double seconds) {
  int bits;
  peak_fn fn = pick(path, &bits);
  if (!fn) return 0.0;
  volatile uint64_t sink = 0;
  int64_t iters = 1 << 12;
  double t;
  for (;;) {  /* grow until one timing takes long enough to be meaningful */
    double t0 = now();
    sink += fn(iters);
    t = now() - t0;
    if (t > seconds || iters > ((int64_t)1 << 40)) break;
    iters *= 4;
  }
  (void)sink;
  return (double)iters * bits / t;  /* binary multiply-accumulates per second */
}
