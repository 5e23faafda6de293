/* Binds the glibc symbols whose default version is newer than the wheels' baseline
 * (manylinux_2_17: glibc 2.17 or newer, which every 64-bit Raspberry Pi OS has) to the
 * old version, which every later glibc still exports. Without this, building on a glibc >= 2.34
 * references pthread_create@GLIBC_2.34 and the wheel needs glibc 2.34 on the board.
 * scripts/build_wheels.py checks the result with auditwheel; a new symbol that needs pinning
 * shows up there. On glibc < 2.34 these live in libpthread.so.0, which every CPython process
 * on such a system has loaded (the interpreter links it), so the lookup finds them.
 * Only wheel builds define QV_MANYLINUX: a build on the board itself, and the sanitizer builds
 * (whose interceptors take the default versions), use the host's own. */
#ifndef QV_GLIBC_SYMVER_H
#define QV_GLIBC_SYMVER_H

#if defined(__GLIBC__) && defined(QV_MANYLINUX)
#if defined(__x86_64__)
#define QV_GLIBC_BASE "GLIBC_2.2.5"
#elif defined(__aarch64__)
#define QV_GLIBC_BASE "GLIBC_2.17"
#endif
#ifdef QV_GLIBC_BASE
__asm__(".symver pthread_create,pthread_create@" QV_GLIBC_BASE);
__asm__(".symver pthread_join,pthread_join@" QV_GLIBC_BASE);
#endif
#endif

#endif
