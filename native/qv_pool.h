/* qv_pool: a small persistent thread pool shared by the native kernels and the TVM backend shim.
 *
 * One pool per process. The calling thread always runs task 0 itself; tasks 1..n-1 run on
 * lazily created worker threads. All tasks of one qv_pool_run are live at the same time, so
 * they may meet at qv_pool_barrier() (this is what TVM's __TVMBackendParallelBarrier needs).
 *
 * Serving TVM (native/tvm_backend.c, helper E):
 *   int __TVMBackendParallelLaunch(FTVMParallelLambda f, void *cdata, int num_task)
 *     -> qv_pool_run(trampoline, &{f, cdata}, num_task)  where the trampoline builds
 *        TVMParallelGroupEnv{sync_handle = NULL, num_task} and calls f(task_id, &env, cdata);
 *   int __TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv)
 *     -> qv_pool_barrier()
 *   num_task <= 0 means "use qv_pool_threads()".
 *
 * Calls from inside a running task (nesting) and calls that race from several host threads
 * do not deadlock: a nested run executes its tasks one after another in the calling thread
 * (then qv_pool_barrier is a no-op, so nested code must not rely on it; the same holds for a
 * run of one task), and concurrent
 * top-level runs are serialised.
 */
#ifndef QV_POOL_H
#define QV_POOL_H

#ifdef __cplusplus
extern "C" {
#endif

/* Largest num_task one run accepts. */
#define QV_POOL_MAX_THREADS 64

/* A task: task_id in [0, num_task), ctx passed through unchanged. */
typedef void (*qv_task_fn)(int task_id, int num_task, void *ctx);

/* Default thread count for kernels (and for qv_pool_run(num_task <= 0)). Starts at 1, or at
 * the value of the environment variable QVIT_NUM_THREADS when set. n is clamped to
 * [1, QV_POOL_MAX_THREADS]. Returns the value now in effect. */
int qv_pool_set_threads(int n);
int qv_pool_threads(void);

/* Runs fn(t, num_task, ctx) for every t in [0, num_task) concurrently and returns when all
 * have finished. num_task <= 0: qv_pool_threads(). num_task > QV_POOL_MAX_THREADS: clamped
 * (tasks are then numbered up to the clamp). Returns the number of tasks run. */
int qv_pool_run(qv_task_fn fn, void *ctx, int num_task);

/* Waits until every task of the current run has reached it. Only valid inside a task. */
void qv_pool_barrier(void);

/* Task id of the calling thread inside the current run, -1 outside a run. */
int qv_pool_task_id(void);

/* Stops and joins the worker threads (they restart lazily on the next run). */
void qv_pool_shutdown(void);

#ifdef __cplusplus
}
#endif
#endif
