/* tb_count: a qemu-user TCG plugin that counts how often every translation block (TB) runs, per
 * step of a model run, for make pi-estimate (compile/pi_estimate.py).
 *
 *   QEMU_PLUGIN=tb_count.so,out=FILE[,mode=inline|vcpu] qemu-aarch64 ... python guest.py
 *
 * The guest steers it with a system call no kernel has (number TBC_SYSCALL; qemu answers ENOSYS
 * but shows the call to plugins first):
 *   syscall(TBC_SYSCALL, 3, addr)  a step starts whenever the TB at addr runs (a kernel's entry)
 *   syscall(TBC_SYSCALL, 1)        start counting (phase 0)
 *   syscall(TBC_SYSCALL, 2)        stop counting and write FILE
 * Each time a step-entry TB runs, the counts so far go to the current phase and the next phase
 * begins, so phase k (k >= 1) is step k-1 of the plan, and phase 0 what ran before the first step.
 *
 * mode=inline (default) adds to one counter per TB inside the generated code: cheapest, exact for
 * a single guest thread. mode=vcpu counts per guest thread (vCPU) through a callback, for runs
 * with worker threads (vCPU 0 is the main thread).
 *
 * FILE lines:  "C phase tb vcpu count" (count > 0), then "T tb vaddr insn,insn,..." (each insn its
 * bytes in hex, memory order) for every TB counted, then "E phases".
 *
 * Debian packages no qemu-plugin.h, so the few API functions used are declared here, as in
 * QEMU 7.2's include/qemu/qemu-plugin.h (plugin API version 1).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the QEMU plugin API (version 1) ---- */
#define QEMU_PLUGIN_EXPORT __attribute__((visibility("default")))
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_syscall_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index, int64_t num,
                                              uint64_t a1, uint64_t a2, uint64_t a3, uint64_t a4,
                                              uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_vcpu_syscall_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_syscall_cb_t cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

/* ---- state ---- */
#define TBC_SYSCALL 0x5156 /* "QV": no such system call on aarch64 or x86_64 */
#define MAX_VCPUS 16       /* vCPUs past this share the last counter */
#define CHUNK 4096         /* records live in fixed chunks: inline counters point into them */
#define MAX_CHUNKS 4096
#define MAX_ENTRIES 4096

typedef struct {
  uint64_t n[MAX_VCPUS];    /* executions (inline mode: all in n[0]) */
  uint64_t base[MAX_VCPUS]; /* n at the last snapshot */
  uint64_t vaddr;
  uint8_t *bytes;           /* the instructions, back to back */
  uint8_t *sizes;           /* byte size of each */
  uint32_t n_insns;
  int counted;              /* some count of it was written */
} tb_rec;

static tb_rec *chunks[MAX_CHUNKS];
static uint32_t n_recs;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static FILE *out;
static char *out_path;
static int per_vcpu;       /* mode=vcpu */
static int active;         /* between start and stop */
static int done;
static uint64_t phase;
static uint64_t entries[MAX_ENTRIES];
static int n_entries;

static tb_rec *rec(uint32_t i) { return &chunks[i / CHUNK][i % CHUNK]; }

/* Counts since the last snapshot go to the current phase (or are dropped outside start..stop). */
static void snapshot(void) {
  uint32_t n = __atomic_load_n(&n_recs, __ATOMIC_ACQUIRE);
  int nv = per_vcpu ? MAX_VCPUS : 1;
  for (uint32_t i = 0; i < n; i++) {
    tb_rec *r = rec(i);
    for (int v = 0; v < nv; v++) {
      uint64_t c = __atomic_load_n(&r->n[v], __ATOMIC_RELAXED);
      uint64_t d = c - r->base[v];
      if (!d) continue;
      r->base[v] = c;
      if (active) {
        fprintf(out, "C %" PRIu64 " %u %d %" PRIu64 "\n", phase, i, v, d);
        r->counted = 1;
      }
    }
  }
}

static void write_blocks(void) {
  for (uint32_t i = 0; i < n_recs; i++) {
    tb_rec *r = rec(i);
    if (!r->counted) continue;
    fprintf(out, "T %u 0x%" PRIx64 " ", i, r->vaddr);
    const uint8_t *b = r->bytes;
    for (uint32_t k = 0; k < r->n_insns; k++) {
      if (k) fputc(',', out);
      for (uint8_t j = 0; j < r->sizes[k]; j++) fprintf(out, "%02x", b[j]);
      b += r->sizes[k];
    }
    fputc('\n', out);
  }
  fprintf(out, "E %" PRIu64 "\n", phase + 1);
}

static void on_exec(unsigned int vcpu, void *udata) {
  tb_rec *r = (tb_rec *)udata;
  __atomic_fetch_add(&r->n[vcpu < MAX_VCPUS ? vcpu : MAX_VCPUS - 1], 1, __ATOMIC_RELAXED);
}

static void on_step(unsigned int vcpu, void *udata) {
  (void)vcpu, (void)udata;
  pthread_mutex_lock(&lock);
  snapshot();
  if (active) phase++;
  pthread_mutex_unlock(&lock);
}

static int is_entry(uint64_t vaddr) {
  for (int i = 0; i < n_entries; i++)
    if (entries[i] == vaddr) return 1;
  return 0;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  size_t n = qemu_plugin_tb_n_insns(tb);
  size_t total = 0;
  for (size_t k = 0; k < n; k++) total += qemu_plugin_insn_size(qemu_plugin_tb_get_insn(tb, k));
  uint8_t *bytes = malloc(total ? total : 1), *sizes = malloc(n ? n : 1);
  if (!bytes || !sizes) abort();
  size_t at = 0;
  for (size_t k = 0; k < n; k++) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, k);
    size_t s = qemu_plugin_insn_size(insn);
    memcpy(bytes + at, qemu_plugin_insn_data(insn), s);
    sizes[k] = (uint8_t)s;
    at += s;
  }
  pthread_mutex_lock(&lock);
  uint32_t i = n_recs;
  if (i / CHUNK >= MAX_CHUNKS) abort();
  if (!chunks[i / CHUNK] && !(chunks[i / CHUNK] = calloc(CHUNK, sizeof(tb_rec)))) abort();
  tb_rec *r = rec(i);
  r->vaddr = qemu_plugin_tb_vaddr(tb);
  r->bytes = bytes;
  r->sizes = sizes;
  r->n_insns = (uint32_t)n;
  int entry = is_entry(r->vaddr);
  __atomic_store_n(&n_recs, i + 1, __ATOMIC_RELEASE);
  pthread_mutex_unlock(&lock);
  /* the step boundary first, so this execution already counts in the new phase */
  if (entry) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_step, QEMU_PLUGIN_CB_NO_REGS, NULL);
  if (per_vcpu)
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec, QEMU_PLUGIN_CB_NO_REGS, r);
  else
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &r->n[0], 1);
}

static void finish(void) {
  if (done || !out) return;
  done = 1;
  write_blocks();
  fclose(out);
  out = NULL;
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2,
                       uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id, (void)vcpu, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
  if (num != TBC_SYSCALL) return;
  pthread_mutex_lock(&lock);
  if (a1 == 1 && !active && !done) {        /* start */
    snapshot();                             /* drops what ran before */
    active = 1;
    phase = 0;
  } else if (a1 == 2 && active) {           /* stop */
    snapshot();
    active = 0;
    finish();
  } else if (a1 == 3 && n_entries < MAX_ENTRIES) {
    entries[n_entries++] = a2;
  }
  pthread_mutex_unlock(&lock);
}

static void on_atexit(qemu_plugin_id_t id, void *udata) {
  (void)id, (void)udata;
  pthread_mutex_lock(&lock);
  if (active) fprintf(out, "X not stopped\n");  /* the guest never said stop: the file is incomplete */
  finish();
  pthread_mutex_unlock(&lock);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const void *info, int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; i++) {
    if (!strncmp(argv[i], "out=", 4)) {
      out_path = argv[i] + 4;
    } else if (!strcmp(argv[i], "mode=vcpu")) {
      per_vcpu = 1;
    } else if (!strcmp(argv[i], "mode=inline")) {
      per_vcpu = 0;
    } else {
      fprintf(stderr, "tb_count: unknown argument %s (out=FILE, mode=inline|vcpu)\n", argv[i]);
      return -1;
    }
  }
  if (!out_path) {
    fprintf(stderr, "tb_count: no out=FILE\n");
    return -1;
  }
  out = fopen(out_path, "w");
  if (!out) {
    fprintf(stderr, "tb_count: cannot write %s\n", out_path);
    return -1;
  }
  fprintf(out, "# tb_count 1 mode=%s\n", per_vcpu ? "vcpu" : "inline");
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
  qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
  return 0;
}
