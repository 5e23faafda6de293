#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, then checks what they are for.
#
#   gcc-aarch64-linux-gnu + libc6-dev-arm64-cross: cross-compile model.so and the native
#     kernels for aarch64 (the compiler alone has no C library headers: <stdint.h> fails).
#   qemu-user: run the aarch64 builds without a board.
#   gcc + libc6-dev: the host build (cffi's native kernels, model.so for this machine).
#   debian-archive-keyring: scripts/aarch64-python.sh checks the arm64 packages it fetches.
#   dataset-fashion-mnist: the data the experiments, the demo and the tests use.
#   llvm-19: llvm-mca (and llvm-mc to disassemble) for make pi-estimate; its scheduling models
#     include neoverse-n1 (the Pi 5's A76) and can skip instructions they do not model.
#
# Package names prove nothing about capabilities, so after installing it compiles and links a
# small C program using libc and libm for the host and for aarch64, runs the aarch64 one under
# qemu-aarch64, and checks the data files. A failed check prints one line naming what is missing
# and how to get it, and exits 1. Idempotent: quick when everything is already there.
#
#   bash scripts/install-system-deps.sh           # install what is missing, then check
#   bash scripts/install-system-deps.sh --check   # only check (no root needed)
set -euo pipefail
CHECK_ONLY=0
case "${1:-}" in
  --check) CHECK_ONLY=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

PKGS=(gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
      debian-archive-keyring dataset-fashion-mnist llvm-19)
FMNIST_DIR=/usr/share/datasets/fashion-mnist

fail() { echo "system-deps: error: $*" >&2; exit 1; }

need=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ] && [ $CHECK_ONLY = 0 ]; then
  command -v apt-get >/dev/null || fail "missing ${need[*]} and no apt-get here: install them with your package manager"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
      fail "need root (or passwordless sudo) to run: apt-get install ${need[*]}"
    fi
  fi
  echo "system-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || fail "apt-get update failed (network or sources.list?)"
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || fail "apt-get install ${need[*]} failed"
fi

# Capability checks, in a scratch directory removed on exit.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/check.c" <<'EOF'
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
  volatile double x = argc + 1.0;     /* volatile: keep exp() a libm call */
  int64_t *p = malloc(sizeof *p);
  if (!p) return 3;
  *p = (int64_t)(exp(x) * 1000.0);    /* exp(2) = 7.389... */
  int64_t v = *p;
  free(p);
  printf("%lld\n", (long long)v);
  (void)argv;
  return v == 7389 ? 0 : 4;
}
EOF
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
first_error() {  # the compiler's first real error line (edge_runtime/clikit.py), not its last
  python3 "$ROOT/edge_runtime/clikit.py" compiler-error <"$1" 2>/dev/null || tail -n1 "$1"
}

command -v gcc >/dev/null || fail "no host C compiler: apt-get install gcc libc6-dev"
gcc -O1 "$tmp/check.c" -o "$tmp/check-host" -lm 2>"$tmp/host.log" \
  || fail "host gcc cannot build a libc+libm program ($(first_error "$tmp/host.log")): apt-get install gcc libc6-dev"
"$tmp/check-host" >/dev/null || fail "a host-built program does not run correctly"

command -v aarch64-linux-gnu-gcc >/dev/null \
  || fail "no aarch64 cross compiler: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
aarch64-linux-gnu-gcc -O1 "$tmp/check.c" -o "$tmp/check-a64" -lm 2>"$tmp/a64.log" \
  || fail "aarch64-linux-gnu-gcc cannot build a libc+libm program ($(first_error "$tmp/a64.log")): apt-get install libc6-dev-arm64-cross"

command -v qemu-aarch64 >/dev/null || fail "no qemu-aarch64: apt-get install qemu-user"
out="$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$tmp/check-a64" 2>&1)" \
  || fail "qemu-aarch64 cannot run an aarch64 program (${out:-no output}): apt-get install qemu-user libc6-arm64-cross"
[ "$out" = 7389 ] || fail "an aarch64 program under qemu-aarch64 printed '$out', not 7389"

# make pi-estimate: llvm-mca must time an aarch64 block with both Pi cores' models, and qemu-user
# must load a TCG plugin (the block counter, native/tools/tb_count.c, built by make install).
for t in llvm-mc-19 llvm-mca-19; do
  command -v "$t" >/dev/null || fail "no $t (make pi-estimate needs it): apt-get install llvm-19"
done
for mcpu in cortex-a57 neoverse-n1; do
  out="$(printf 'add x0, x0, x1\ncnt v0.16b, v1.16b\n' \
    | llvm-mca-19 -mtriple=aarch64 -mcpu=$mcpu -iterations=10 2>&1)" && grep -q '^Total Cycles:' <<<"$out" \
    || fail "llvm-mca-19 cannot time an aarch64 block for -mcpu=$mcpu ($(head -n1 <<<"$out")): apt-get install llvm-19"
done
cat >"$tmp/plugin.c" <<'EOF'
#include <stdint.h>
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
__attribute__((visibility("default"))) int qemu_plugin_install(uint64_t id, const void *info, int argc,
                                                               char **argv) {
  (void)id, (void)info, (void)argc, (void)argv;
  return 0;
}
EOF
gcc -shared -fPIC -O1 "$tmp/plugin.c" -o "$tmp/plugin.so" 2>"$tmp/plugin.log" \
  || fail "host gcc cannot build a shared library ($(first_error "$tmp/plugin.log")): apt-get install gcc libc6-dev"
out="$(QEMU_PLUGIN="$tmp/plugin.so" qemu-aarch64 -L /usr/aarch64-linux-gnu "$tmp/check-a64" 2>&1)" && [ "$out" = 7389 ] \
  || fail "qemu-aarch64 cannot load a TCG plugin (${out:-no output}; make pi-estimate needs it): apt-get install qemu-user (7.2 or newer)"

[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] \
  || fail "no Debian archive keyring: apt-get install debian-archive-keyring"
for f in train-images-idx3-ubyte t10k-images-idx3-ubyte; do
  ls "$FMNIST_DIR/$f"* >/dev/null 2>&1 || fail "Fashion-MNIST missing ($FMNIST_DIR/$f): apt-get install dataset-fashion-mnist"
done
exit 0
