/* qv_pool: persistent worker threads woken by a generation counter (see qv_pool.h).
 * Workers spin for a while after a run (kernels come in bursts: one GEMM per layer, a model's
 * steps back to back), then sleep on a condition variable so an idle process costs no CPU. */
#define _GNU_SOURCE
#include "qv_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "glibc_symver.h" /* after the libc headers: it needs __GLIBC__ */

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield" ::: "memory")
#else
#define cpu_relax() ((void)0)
#endif

/* PAUSEs of the waits inside a run (the caller for its workers, a barrier) before yielding */
#define SPIN_ITERS 2000
/* How long an idle worker spins before it sleeps, by the clock (a PAUSE takes 10 to 140 cycles
 * depending on the core): past the longest serial gap between two parallel steps of a model,
 * so a worker sleeps only between inferences; short enough not to hold a core long after one
 * (OpenMP's default spin is 200 ms, ONNX Runtime's a few thousand PAUSE-loops). */
#define SPIN_NS 1000000LL

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;   /* one top-level run at a time */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;

static pthread_t workers[QV_POOL_MAX_THREADS];
static int n_workers;                       /* started workers; worker i runs task i + 1 */
static int default_threads;                 /* 0 = not read from the environment yet */

static qv_task_fn run_fn;
static void *run_ctx;
static int run_tasks;
static atomic_uint generation;
static atomic_int remaining;
static atomic_int quit;

static atomic_int barrier_count;
static atomic_uint barrier_sense;

static _Thread_local int tl_task_id = -1;
static _Thread_local unsigned tl_sense;
static _Thread_local int tl_nested;  /* >0 while a sequential (1-task or nested) run executes */

static int clamp_threads(int n) {
  return n < 1 ? 1 : (n > QV_POOL_MAX_THREADS ? QV_POOL_MAX_THREADS : n);
}

int qv_pool_set_threads(int n) {
  default_threads = clamp_threads(n);
  return default_threads;
}

int qv_pool_threads(void) {
  if (default_threads == 0) {
    const char *s = getenv("QVIT_NUM_THREADS");
    default_threads = clamp_threads(s ? atoi(s) : 1);
  }
  return default_threads;
}

int qv_pool_task_id(void) { return tl_task_id; }

static unsigned start_generation[QV_POOL_MAX_THREADS];

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Waits for a run other than `seen`: spins SPIN_NS, then sleeps until one is announced. */
static unsigned wait_for_run(unsigned seen) {
  const long long until = now_ns() + SPIN_NS;
  for (int spins = 1;; spins++) {
    const unsigned g = atomic_load_explicit(&generation, memory_order_acquire);
    if (g != seen) return g;
    cpu_relax();
    if ((spins & 63) == 0 && now_ns() > until) break;
  }
  unsigned g;
  pthread_mutex_lock(&wake_lock);
  while ((g = atomic_load(&generation)) == seen) pthread_cond_wait(&wake_cond, &wake_lock);
  pthread_mutex_unlock(&wake_lock);
  return g;
}

static void *worker_main(void *arg) {
  int task = (int)(long)arg;
  /* the generation when this worker was created (before the run that needs it was announced);
   * reading `generation` here instead could already see that run and skip it */
  unsigned seen = start_generation[task - 1];
  for (;;) {
    seen = wait_for_run(seen);
    if (atomic_load(&quit)) return NULL;
    if (task < run_tasks) {
      tl_task_id = task;
      tl_sense = atomic_load(&barrier_sense);
      run_fn(task, run_tasks, run_ctx);
      tl_task_id = -1;
      atomic_fetch_sub_explicit(&remaining, 1, memory_order_release);
    }
  }
}

/* A fork()ed child has only the forking thread: forget the parent's workers (and any lock state
 * the fork froze), so the child's first parallel run starts fresh ones instead of waiting for
 * threads that do not exist. */
static void after_fork_in_child(void) {
  pthread_mutex_t m0 = PTHREAD_MUTEX_INITIALIZER, m1 = PTHREAD_MUTEX_INITIALIZER;
  pthread_cond_t c0 = PTHREAD_COND_INITIALIZER;
  run_lock = m0;
  wake_lock = m1;
  wake_cond = c0;
  n_workers = 0;
  atomic_store(&quit, 0);
}

static int ensure_workers(int n) {
  static int atfork_done;
  if (!atfork_done) {
    pthread_atfork(NULL, NULL, after_fork_in_child);
    atfork_done = 1;
  }
  while (n_workers < n) {
    start_generation[n_workers] = atomic_load(&generation);
    if (pthread_create(&workers[n_workers], NULL, worker_main, (void *)(long)(n_workers + 1)) != 0)
      return n_workers;
    n_workers++;
  }
  return n;
}

int qv_pool_run(qv_task_fn fn, void *ctx, int num_task) {
  if (num_task <= 0) num_task = qv_pool_threads();
  num_task = clamp_threads(num_task);
  if (num_task == 1 || tl_task_id >= 0) {
    /* single task or nested run: in this thread, one after another */
    int outer = tl_task_id;
    tl_nested++;  /* sequential: barriers are no-ops */
    for (int t = 0; t < num_task; t++) {
      if (outer < 0) tl_task_id = t;
      fn(t, num_task, ctx);
    }
    tl_nested--;
    tl_task_id = outer;
    return num_task;
  }
  pthread_mutex_lock(&run_lock);
  num_task = ensure_workers(num_task - 1) + 1;
  run_fn = fn;
  run_ctx = ctx;
  run_tasks = num_task;
  atomic_store(&barrier_count, 0);
  atomic_store(&remaining, num_task - 1);
  pthread_mutex_lock(&wake_lock);
  atomic_fetch_add_explicit(&generation, 1, memory_order_release);
  pthread_cond_broadcast(&wake_cond);
  pthread_mutex_unlock(&wake_lock);

  tl_task_id = 0;
  tl_sense = atomic_load(&barrier_sense);
  fn(0, num_task, ctx);
  tl_task_id = -1;
  for (int spins = 0; atomic_load_explicit(&remaining, memory_order_acquire) > 0; spins++) {
    if (spins < SPIN_ITERS) cpu_relax(); else sched_yield();
  }
  pthread_mutex_unlock(&run_lock);
  return num_task;
}

void qv_pool_barrier(void) {
  if (tl_task_id < 0 || tl_nested) return;
  int n = run_tasks;
  if (n <= 1) return;
  unsigned my = tl_sense ^ 1u;
  tl_sense = my;
  if (atomic_fetch_add(&barrier_count, 1) == n - 1) {
    atomic_store(&barrier_count, 0);
    atomic_store_explicit(&barrier_sense, my, memory_order_release);
  } else {
    for (int spins = 0; atomic_load_explicit(&barrier_sense, memory_order_acquire) != my; spins++) {
      if (spins < SPIN_ITERS) cpu_relax(); else sched_yield();
    }
  }
}

void qv_pool_shutdown(void) {
  pthread_mutex_lock(&run_lock);
  atomic_store(&quit, 1);
  pthread_mutex_lock(&wake_lock);
  atomic_fetch_add(&generation, 1);
  pthread_cond_broadcast(&wake_cond);
  pthread_mutex_unlock(&wake_lock);
  for (int i = 0; i < n_workers; i++) pthread_join(workers[i], NULL);
  n_workers = 0;
  atomic_store(&quit, 0);
  pthread_mutex_unlock(&run_lock);
}
