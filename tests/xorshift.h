/* xorshift64* for the C test drivers: the same values on every machine and compiler, from the
 * seed the driver defines before including this (XS_SEED). */
#ifndef XORSHIFT_H
#define XORSHIFT_H
#include <stdint.h>
#ifndef XS_SEED
#error "define XS_SEED before including xorshift.h"
#endif
static uint64_t rng_state = XS_SEED;
static uint64_t rnd(void) {
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545F4914F6CDD1DULL;
}
#endif
