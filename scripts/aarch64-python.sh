#!/usr/bin/env bash
# An aarch64 Python for qemu-user: what a Raspberry Pi (64-bit OS) runs, without the board.
#
#   scripts/aarch64-python.sh            # build or refresh; prints the interpreter's path
#   $(scripts/aarch64-python.sh) -m qvit_edge info build/aarch64/model.so
#
# It holds exactly what a device installs (issue #6): Debian bookworm's arm64 python3.11,
# PyPI's aarch64 wheels of numpy, cffi and Pillow, the runtime (edge_runtime/ as qvit_edge,
# linked, so edits show at once) and the qvit_edge._native cffi extension cross-compiled
# with aarch64-linux-gnu-gcc from native/build_ffi.py. No TVM of any kind.
#
# Everything is cached under build/aarch64-python/ (gitignored). The downloads happen once
# (a stamp keyed on this script and the pinned versions); later runs only relink the
# runtime and rebuild the native extension when its sources changed, so they take well
# under a second. Needs: qemu-user, gcc-aarch64-linux-gnu + libc6-dev-arm64-cross, apt-get + dpkg-deb (any
# Debian/Ubuntu host: apt runs on a private state directory, so no
# `dpkg --add-architecture` and no root), and network access on the first run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${QVIT_AARCH64_PYTHON_DIR:-$ROOT/build/aarch64-python}"
HOST_PY="${HOST_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$HOST_PY" ] || HOST_PY="$(command -v python3)"
CC="${AARCH64_CC:-aarch64-linux-gnu-gcc}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org}"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

SYSROOT="$BASE/sysroot"
SITE="$BASE/site"          # the PyPI wheels
PKGS="$BASE/pkgs"          # qvit_edge: links to edge_runtime/*.py + the aarch64 _native
WRAPPER="$BASE/bin/python"
PYVER=3.11
EXT_SUFFIX=".cpython-311-aarch64-linux-gnu.so"

log() { echo "aarch64-python: $*" >&2; }
die() { echo "aarch64-python: error: $*" >&2; exit 1; }

for tool in qemu-aarch64 "$CC" apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || die "$tool not found (make system-deps installs qemu-user, gcc-aarch64-linux-gnu and libc6-dev-arm64-cross)"
done

# The device gets the same versions of the runtime's dependencies as the host, so the two
# runs being compared differ only in the CPU architecture.
pin() {
  local v
  v="$("$HOST_PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null)" || v=""
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}
WHEELS="$(pin numpy) $(pin cffi) $(pin pillow)"
# Debian's python3.11 and the libraries it loads (libpython3.11-dev: the headers the native
# extension compiles against; its pyconfig.h is the aarch64 one; libstdc++6: numpy needs it, as
# every Raspberry Pi OS has it).
DEBS="python3.11-minimal libpython3.11-stdlib libpython3.11-dev libstdc++6"
# Bump LAYOUT when the sysroot's layout changes, to force a fresh download.
LAYOUT=1
KEY="layout $LAYOUT: $WHEELS $DEBS"
STAMP="$BASE/.stamp"

fetch_debs() {
  [ -f "$KEYRING" ] || die "$KEYRING missing (apt-get install debian-archive-keyring)"
  local apt="$BASE/apt"
  rm -rf "$apt" "$SYSROOT"
  mkdir -p "$apt/state/lists/partial" "$apt/cache/archives/partial" "$SYSROOT"
  : >"$apt/state/status"
  {
    echo "deb [arch=arm64 signed-by=$KEYRING] $DEBIAN_MIRROR/debian bookworm main"
    echo "deb [arch=arm64 signed-by=$KEYRING] $DEBIAN_MIRROR/debian bookworm-updates main"
    echo "deb [arch=arm64 signed-by=$KEYRING] $DEBIAN_MIRROR/debian-security bookworm-security main"
  } >"$apt/sources.list"
  # A private apt: its own lists, cache and (empty) dpkg status, arm64 only. It resolves
  # the whole dependency closure (libc6 included) and checks every download's signature
  # chain and hash, and touches nothing of the host's package state.
  local opts=(-o "Dir::State=$apt/state" -o "Dir::State::status=$apt/state/status"
    -o "Dir::Cache=$apt/cache" -o "Dir::Etc::SourceList=$apt/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" -o "Debug::NoLocking=1"
    -o "APT::Sandbox::User=root" -q)
  log "downloading Debian bookworm arm64: $DEBS (+ dependencies)"
  apt-get "${opts[@]}" update >/dev/null || die "apt-get update of the arm64 lists failed (network?)"
  apt-get "${opts[@]}" -y --no-install-recommends --download-only install $DEBS >/dev/null \
    || die "downloading the arm64 packages failed"
  local n=0 deb
  for deb in "$apt/cache/archives/"*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; n=$((n + 1)); done
  log "unpacked $n packages into ${SYSROOT#"$ROOT"/}"
  rm -rf "$apt/cache/archives" "$apt/state/lists"  # keep build/ small: the sysroot is what counts
  # Debian links the loader absolutely (/lib -> usr/lib merged); qemu -L resolves it in the sysroot.
  [ -e "$SYSROOT/lib" ] || ln -s usr/lib "$SYSROOT/lib"
  [ -x "$SYSROOT/usr/bin/python$PYVER" ] || die "python$PYVER missing from the unpacked packages"
}

fetch_wheels() {
  rm -rf "$SITE"
  log "downloading aarch64 wheels: $WHEELS"
  # --target + --platform installs the manylinux aarch64 wheels as they are (no build,
  # nothing compiled); the device's pip would pick the same files.
  "$HOST_PY" -m pip install -q --disable-pip-version-check --no-warn-script-location \
    --target "$SITE" --only-binary=:all: --implementation cp --python-version "$PYVER" --abi cp311 \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_28_aarch64 $WHEELS >&2 || die "pip could not fetch the aarch64 wheels"
}

write_wrapper() {
  mkdir -p "$(dirname "$WRAPPER")"
  cat >"$WRAPPER" <<EOF
#!/usr/bin/env bash
# Generated by scripts/aarch64-python.sh: Debian's aarch64 python$PYVER under qemu-user.
# The caller's PYTHONPATH comes first (e.g. a bundle of the runtime to try instead).
export PYTHONPATH="\${PYTHONPATH:+\$PYTHONPATH:}$PKGS:$SITE"
export PYTHONNOUSERSITE=1
exec qemu-aarch64 -L "$SYSROOT" "$SYSROOT/usr/bin/python$PYVER" "\$@"
EOF
  chmod +x "$WRAPPER"
}

# One builder at a time (several test sessions may share the checkout); the others wait.
mkdir -p "$BASE"
exec 9>"$BASE/.lock"
command -v flock >/dev/null && flock 9

if [ "$(cat "$STAMP" 2>/dev/null)" != "$KEY" ]; then
  rm -f "$STAMP"
  fetch_debs
  fetch_wheels
  echo "$KEY" >"$STAMP"
fi

# The runtime package: a real directory of links to edge_runtime/*.py (so the host's x86_64
# extension beside them is not seen), relinked every run so new modules appear.
# Links are only added and removed, never all replaced, so a run in progress keeps its modules.
mkdir -p "$PKGS/qvit_edge"
for f in "$ROOT"/edge_runtime/*.py; do
  [ "$(basename "$f")" = setup.py ] && continue  # the distribution's build script, no module
  [ -L "$PKGS/qvit_edge/$(basename "$f")" ] || ln -s "$f" "$PKGS/qvit_edge/$(basename "$f")"
done
for l in "$PKGS"/qvit_edge/*.py; do [ -e "$l" ] && [ "$(basename "$l")" != setup.py ] || rm -f "$l"; done

# The native extension, cross-compiled: cffi's generated C (from native/build_ffi.py, run on
# the host) + the kernel sources, built against the aarch64 Python headers.
build_native() {
  local out="$PKGS/qvit_edge/_native$EXT_SUFFIX"
  if [ ! -f "$ROOT/native/build_ffi.py" ]; then
    rm -f "$out"
    log "native/build_ffi.py not there yet: qvit_edge._native left out"
    return
  fi
  local srcs newest
  srcs=$(find "$ROOT/native" -name '*.c' -o -name '*.h' -o -name 'build_ffi.py' | sort)
  newest=$(ls -t $srcs "${BASH_SOURCE[0]}" "$ROOT/scripts/build_wheels.py" | head -1)
  if [ -f "$out" ] && [ "$out" -nt "$newest" ]; then return; fi
  log "cross-compiling qvit_edge._native for aarch64"
  # The one cross build, shared with the aarch64 wheel (scripts/build_wheels.py): cffi's generated
  # C + native/'s sources and flags from native/build_ffi.py, against the aarch64 Python headers.
  "$HOST_PY" "$ROOT/scripts/build_wheels.py" cross-native "$out" --cc "$CC" \
    --python-include "$SYSROOT/usr/include/python$PYVER" --sysroot-include "$SYSROOT/usr/include" \
    || exit 1
}
build_native

write_wrapper
echo "$WRAPPER"
