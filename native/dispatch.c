/* Runtime CPU-feature dispatch: picks the kernels of the best path this CPU runs, unless
 * QVIT_NATIVE_PATH or qv_set_path() forces one. */
#include <stdlib.h>
#include <string.h>

#include "qv_internal.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

static const char *const names[QV_PATH_COUNT] = {"scalar", "avx2", "avx512", "neon", "neon_dot"};

static const qv_kernels table[QV_PATH_COUNT] = {
    [QV_PATH_SCALAR] = {qv_bs_block_scalar, qv_i8_block_scalar, qv_packrow_scalar, 0},
#ifdef QV_HAVE_X86
    [QV_PATH_AVX2] = {qv_bs_block_avx2, qv_i8_block_avx2, qv_packrow_avx2, 0},
    [QV_PATH_AVX512] = {qv_bs_block_avx512, qv_i8_block_avx512, qv_packrow_avx512, 0},
#endif
#ifdef QV_HAVE_NEON
    [QV_PATH_NEON] = {qv_bs_block_neon, qv_i8_block_neon, qv_packrow_neon, 1},
    [QV_PATH_NEON_DOT] = {qv_bs_block_neon, qv_i8_block_neon_dot, qv_packrow_neon, 1},
#endif
};

int qv_path_supported(int path) {
  switch (path) {
    case QV_PATH_SCALAR: return 1;
#ifdef QV_HAVE_X86
    case QV_PATH_AVX2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt") &&
             __builtin_cpu_supports("bmi2");
    case QV_PATH_AVX512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512vpopcntdq") && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("bmi2");
#endif
#ifdef QV_HAVE_NEON
    case QV_PATH_NEON: return 1;
    case QV_PATH_NEON_DOT:
#ifdef __linux__
      return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
      return 0;
#endif
#endif
    default: return 0;
  }
}

int qv_best_path(void) {
  static const int order[] = {QV_PATH_AVX512, QV_PATH_AVX2, QV_PATH_NEON_DOT, QV_PATH_NEON};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    if (qv_path_supported(order[i])) return order[i];
  return QV_PATH_SCALAR;
}

const char *qv_path_name(int path) { return path >= 0 && path < QV_PATH_COUNT ? names[path] : NULL; }

int qv_path_from_name(const char *name) {
  if (!name) return -2;
  if (!strcmp(name, "auto")) return QV_PATH_AUTO;
  for (int i = 0; i < QV_PATH_COUNT; i++)
    if (!strcmp(name, names[i])) return i;
  return -2;
}

static int current = -2;  /* -2: not chosen yet */

static void choose_default(void) {
  int p = qv_path_from_name(getenv("QVIT_NATIVE_PATH"));
  /* an unknown or unsupported forced path falls back to the best one; the Python layer reports it */
  current = (p >= 0 && qv_path_supported(p)) ? p : qv_best_path();
}

int qv_set_path(int path) {
  if (path == QV_PATH_AUTO) { current = qv_best_path(); return 0; }
  if (!qv_path_supported(path)) return -1;
  current = path;
  return 0;
}

int qv_get_path(void) {
  if (current == -2) choose_default();
  return current;
}

const qv_kernels *qv_active_kernels(void) { return &table[qv_get_path()]; }
