/* cpu_clock: this core's clock while busy, in GHz (pi-estimate --calibrate turns its cycle estimate
 * into milliseconds with it). Times a chain of dependent integer adds (one cycle each on every
 * x86-64 and ARMv8 core) and prints the best of many short runs: on a busy machine some run
 * without being preempted. Built with the host gcc. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define ADDS_PER_ITER 8

/* register + register adds: recent x86 cores fold add-immediate chains at rename (several a cycle) */
static void chain(uint64_t iters) {
  uint64_t x = 0, y = 3;
#if defined(__x86_64__)
  __asm__ __volatile__(
      "1:\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
      "add %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\tadd %2, %0\n\t"
      "dec %1\n\tjnz 1b"
      : "+r"(x), "+r"(iters) : "r"(y) : "cc");
#elif defined(__aarch64__)
  __asm__ __volatile__(
      "1:\n\tadd %0, %0, %2\n\tadd %0, %0, %2\n\tadd %0, %0, %2\n\tadd %0, %0, %2\n\t"
      "add %0, %0, %2\n\tadd %0, %0, %2\n\tadd %0, %0, %2\n\tadd %0, %0, %2\n\t"
      "subs %1, %1, #1\n\tb.ne 1b"
      : "+r"(x), "+r"(iters) : "r"(y) : "cc");
#else
#error "cpu_clock: x86_64 or aarch64 only"
#endif
}

int main(void) {
  const uint64_t iters = 250u * 1000u; /* 2 M cycles: about a millisecond */
  double best = 1e30;
  chain(200 * iters); /* wake the core up to its working clock */
  for (int r = 0; r < 400; r++) {
    double t0 = now();
    chain(iters);
    double t = now() - t0;
    if (t < best) best = t;
  }
  printf("%.4f\n", (double)iters * ADDS_PER_ITER / best / 1e9);
  return 0;
}
