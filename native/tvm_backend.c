/* The host side of TVM-generated kernels (see tvm_backend.h): parallel launch on the shared
 * qv_pool, workspace allocation with a small reuse cache, error capture, and the step loop. */
#define _GNU_SOURCE
#include "tvm_backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "qv_pool.h"

/* ---- the C ABI of tvm-ffi / TVM's c_backend_api.h, restated (we link no TVM library) ---- */
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union {
    int64_t v_int64;
    double v_float64;
    void *v_ptr;
  };
} qvit_any;
enum { kTVMFFINone = 0 };
typedef int (*qvit_kernel_fn)(void *self, const qvit_any *args, int32_t nargs, qvit_any *result);
typedef struct {
  void *sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

/* ---- errors: kernels report through TVMFFIErrorSetRaisedFromCStrParts, possibly from a pool
 * worker, so the message is process-wide (guarded), not thread-local. */
static pthread_mutex_t err_lock = PTHREAD_MUTEX_INITIALIZER;
static char err_msg[1024];

static void append(size_t *len, const char *s) {
  size_t n = strlen(s);
  if (*len + n >= sizeof err_msg) n = sizeof err_msg - 1 - *len;
  memcpy(err_msg + *len, s, n);
  *len += n;
  err_msg[*len] = 0;
}

static void error_set(const char *kind, const char **parts, int32_t n) {
  pthread_mutex_lock(&err_lock);
  size_t len = 0;
  err_msg[0] = 0;
  append(&len, kind ? kind : "Error");
  append(&len, ": ");
  for (int32_t i = 0; i < n; ++i)
    if (parts[i]) append(&len, parts[i]);
  pthread_mutex_unlock(&err_lock);
}

const char *qvit_tvm_last_error(void) { return err_msg; }

void qvit_tvm_clear_error(void) {
  pthread_mutex_lock(&err_lock);
  err_msg[0] = 0;
  pthread_mutex_unlock(&err_lock);
}

/* ---- workspace: kernels allocate their intermediates on every call; large blocks would go to
 * mmap/munmap each time, so each thread keeps a few freed blocks for reuse. */
#define WS_ALIGN 64
#define WS_CACHE 8
typedef struct {
  size_t size;
} ws_header;
static _Thread_local void *ws_cache[WS_CACHE];
static _Thread_local size_t ws_cache_size[WS_CACHE];

static void *ws_alloc(int dev_type, int dev_id, uint64_t nbytes, int code, int bits) {
  (void)dev_type, (void)dev_id, (void)code, (void)bits;
  for (int i = 0; i < WS_CACHE; ++i) {
    if (ws_cache[i] && ws_cache_size[i] >= nbytes && ws_cache_size[i] <= 2 * nbytes + 4096) {
      void *p = ws_cache[i];
      ws_cache[i] = NULL;
      return p;
    }
  }
  void *base = NULL;
  if (posix_memalign(&base, WS_ALIGN, WS_ALIGN + (nbytes ? nbytes : 1)) != 0) return NULL;
  ((ws_header *)base)->size = nbytes;
  return (char *)base + WS_ALIGN;
}

static int ws_free(int dev_type, int dev_id, void *ptr) {
  (void)dev_type, (void)dev_id;
  if (!ptr) return 0;
  void *base = (char *)ptr - WS_ALIGN;
  for (int i = 0; i < WS_CACHE; ++i) {
    if (!ws_cache[i]) {
      ws_cache[i] = ptr;
      ws_cache_size[i] = ((ws_header *)base)->size;
      return 0;
    }
  }
  free(base);
  return 0;
}

/* ---- parallel launch on qv_pool ---- */
typedef struct {
  FTVMParallelLambda f;
  void *cdata;
  int failed;
} launch_ctx;

static void trampoline(int task_id, int num_task, void *arg) {
  launch_ctx *c = (launch_ctx *)arg;
  TVMParallelGroupEnv env = {NULL, num_task};
  if (c->f(task_id, &env, c->cdata) != 0) __atomic_store_n(&c->failed, 1, __ATOMIC_RELAXED);
}

static int parallel_launch(FTVMParallelLambda f, void *cdata, int num_task) {
  launch_ctx c = {f, cdata, 0};
  qv_pool_run(trampoline, &c, num_task);
  return c.failed ? -1 : 0;
}

static int parallel_barrier(int task_id, TVMParallelGroupEnv *env) {
  (void)task_id, (void)env;
  qv_pool_barrier();
  return 0;
}

void qvit_tvm_backend_table(void **table) {
  table[QVIT_TVM_ALLOC_WORKSPACE] = (void *)ws_alloc;
  table[QVIT_TVM_FREE_WORKSPACE] = (void *)ws_free;
  table[QVIT_TVM_PARALLEL_LAUNCH] = (void *)parallel_launch;
  table[QVIT_TVM_PARALLEL_BARRIER] = (void *)parallel_barrier;
  table[QVIT_TVM_ERROR_SET] = (void *)error_set;
}

/* ---- the step loop ---- */
static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Refuses what would index outside the kernel table or the arguments before any step runs: the
 * Python side validates the plan, this is the last line. Messages go through the error function
 * kernels use, so the caller reports them the same way. */
static int step_error(int32_t i, int32_t *failed_step, const char *msg) {
  const char *parts[1] = {msg};
  error_set("IndexError", parts, 1);
  if (failed_step) *failed_step = i;
  return -1;
}

double qvit_tvm_now(void) { return now(); }

int qvit_tvm_run(const void *kernels, int32_t nkernels, const void *steps, int32_t nsteps, double *seconds,
                 int32_t *failed_step) {
  return qvit_tvm_run_traced(kernels, nkernels, steps, nsteps, seconds, NULL, failed_step);
}

int qvit_tvm_run_traced(const void *kernels, int32_t nkernels, const void *steps, int32_t nsteps,
                        double *seconds, double *stamps, int32_t *failed_step) {
  const qvit_kernel_fn *k = (const qvit_kernel_fn *)kernels;
  const qvit_tvm_step *s = (const qvit_tvm_step *)steps;
  char msg[160];
  if (nsteps > 0 && (!k || !s)) return step_error(0, failed_step, "no kernel table or no steps");
  for (int32_t i = 0; i < nsteps; ++i) {
    if (s[i].kernel < 0 || s[i].kernel >= nkernels) {
      snprintf(msg, sizeof msg, "kernel index %d out of range 0..%d", (int)s[i].kernel, (int)nkernels - 1);
      return step_error(i, failed_step, msg);
    }
    if (s[i].nargs < 0 || (s[i].nargs > 0 && !s[i].args)) {
      snprintf(msg, sizeof msg, "%d arguments", (int)s[i].nargs);
      return step_error(i, failed_step, msg);
    }
    if (!k[s[i].kernel]) return step_error(i, failed_step, "kernel table entry is NULL");
  }
  for (int32_t i = 0; i < nsteps; ++i) {
    qvit_any ret;
    memset(&ret, 0, sizeof ret);
    ret.type_index = kTVMFFINone;
    int timed = seconds || stamps;
    double t0 = timed ? now() : 0.0;
    int rc = k[s[i].kernel](NULL, (const qvit_any *)s[i].args, s[i].nargs, &ret);
    if (timed) {
      double t1 = now();
      if (seconds) seconds[i] += t1 - t0;
      if (stamps) {
        stamps[2 * i] = t0;
        stamps[2 * i + 1] = t1;
      }
    }
    if (rc != 0) {
      if (failed_step) *failed_step = i;
      return -1;
    }
  }
  return 0;
}
