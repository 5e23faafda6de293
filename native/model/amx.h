/* AMX-INT8 tiles for model.so's C micro-kernels (x86-64 only): the run-time check, one tile
 * configuration and the instructions, for int8dot.c's int8dot-amx engine and any other kernel whose
 * integer products fit TDPBUSD / TDPBUUD (u8 x s8 / u8 x u8 -> s32, 4 k per int32, like vpdpbusd).
 *
 * qv_amx_state(): 1 when tiles may be used in this process, else why not: -1 the CPU lacks AMX-TILE
 * or AMX-INT8 (CPUID), -2 the OS does not enable the tile state (XCR0) or Linux refuses it
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), kernel >= 5.16), -3 $QVIT_NO_AMX is set (and
 * not "0"): run the kernel's other path, for comparisons. Checked once per translation unit and
 * process (the permission is process-wide, asking again is harmless; concurrent first calls only
 * repeat the check).
 *
 * A kernel calls qv_amx_config() before its tile instructions and qv_amx_release() after them, in
 * the same call: another library in the process (oneDNN, ONNX Runtime) may configure the tiles
 * differently on the same thread in between. The configuration: palette 1, tmm0-7 each 16 rows x 64
 * bytes (a 16 x 16 int32 C tile, 16 rows x 64 int8 of A, 16 groups of 4 k x 16 columns of B).
 * Inline asm mnemonics (binutils >= 2.36): no -march with AMX is needed to build them.
 */
#ifndef QV_MODEL_AMX_H
#define QV_MODEL_AMX_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#define QV_ARCH_REQ_XCOMP_PERM 0x1023
#define QV_XFEATURE_XTILEDATA 18

static int qv_amx_detect(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return -1;
  if (!((d >> 24) & 1) || !((d >> 25) & 1)) return -1; /* AMX-TILE, AMX-INT8 */
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return -2; /* OSXSAVE */
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3) != 3) return -2; /* XTILECFG, XTILEDATA enabled by the OS */
  const char *off = getenv("QVIT_NO_AMX");
  if (off && *off && strcmp(off, "0") != 0) return -3;
  return syscall(SYS_arch_prctl, QV_ARCH_REQ_XCOMP_PERM, QV_XFEATURE_XTILEDATA) == 0 ? 1 : -2;
}

static int qv_amx_state_cache; /* 0 not yet checked */

static inline int32_t qv_amx_state(void) {
  int s = __atomic_load_n(&qv_amx_state_cache, __ATOMIC_ACQUIRE);
  if (s == 0) {
    s = qv_amx_detect();
    __atomic_store_n(&qv_amx_state_cache, s, __ATOMIC_RELEASE);
  }
  return s;
}

static const struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} __attribute__((aligned(64))) qv_amx_cfg = {1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64},
                                             {16, 16, 16, 16, 16, 16, 16, 16}};

static inline void qv_amx_config(void) { __asm__ volatile("ldtilecfg %0" ::"m"(qv_amx_cfg)); }
static inline void qv_amx_release(void) { __asm__ volatile("tilerelease" ::: "memory"); }

/* tile t <- / -> rows at p, p + stride, ... (t a literal 0-7) */
#define TILE_LOAD(t, p, stride) \
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(p), "r"((int64_t)(stride)) : "memory")
#define TILE_STORE(t, p, stride) \
  __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(p), "r"((int64_t)(stride)) : "memory")
#define TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::)
/* c += a (u8) . b (s8), and the u8 x u8 form */
#define TDPBUSD(c, a, b) __asm__ volatile("tdpbusd %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define TDPBUUD(c, a, b) __asm__ volatile("tdpbuud %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)

#endif
