#!/usr/bin/env bash
# Benchmark a model.so on a Raspberry Pi (64-bit OS) over ssh: `make pi-bench PI=user@host MODEL=...`
#
#   scripts/pi-bench.sh user@host build/aarch64/model.so [qvit-edge bench flags, e.g. --threads 4]
#
# 1. checks the model here (qvit-edge info: built for aarch64, format, weights checksum),
# 2. bundles the runtime's aarch64 wheel (scripts/build_wheels.py: abi3, any Python >= 3.9, the
#    native library prebuilt), the model and a small setup script,
# 3. copies the bundle with one `ssh host tar -x` into ~/qvit-edge-bench on the board, where
#    the setup script unpacks the wheel beside it (a wheel is a zip; no pip, no compiler) and
#    uses the system's numpy/cffi/Pillow when present, else makes a venv and pip-installs them,
# 4. runs `qvit-edge bench --json` there, prints the JSON and keeps a copy under build/pi-bench/.
#
# PI=local:DIR runs steps 3-4 in DIR on this machine instead of over ssh, with $PI_PYTHON as
# the board's python3 (the tests use the qemu aarch64 Python of scripts/aarch64-python.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST_PY="${HOST_PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$HOST_PY" ] || HOST_PY="$(command -v python3)"
die() { echo "pi-bench: error: $*" >&2; exit 2; }
log() { echo "pi-bench: $*" >&2; }

[ $# -ge 2 ] || die "usage: scripts/pi-bench.sh user@host model.so [bench flags]  (make pi-bench PI=user@host MODEL=...)"
PI="$1"; MODEL="$2"; shift 2
[ -n "$PI" ] || die "PI is empty: make pi-bench PI=user@host MODEL=build/aarch64/model.so"

# 1. the model: refuse here what the board would refuse (one line from qvit-edge info).
info="$("$HOST_PY" -m qvit_edge info "$MODEL" --json)" || exit 2
machine="$(printf '%s' "$info" | "$HOST_PY" -c 'import json, sys; print(json.load(sys.stdin)["machine"])')"
[ "$machine" = aarch64 ] || die "$MODEL is built for $machine; a Pi needs: make compile TARGET=aarch64 MODEL=..."

# 2. the bundle.
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
"$HOST_PY" "$ROOT/scripts/build_wheels.py" --arch aarch64 --out "$STAGE" >/dev/null || exit 2
cp "$MODEL" "$STAGE/model.so"
cat >"$STAGE/run.sh" <<'EOF'
#!/bin/sh
# On the board: set up the runtime's dependencies once, then run the benchmark.
set -eu
cd "$(dirname "$0")"
PY="${PI_PYTHON:-python3}"
say() { echo "pi-bench (board): $*" >&2; }
command -v "$PY" >/dev/null 2>&1 || { say "error: no $PY on the board (sudo apt install python3)"; exit 2; }
"$PY" - <<'PYEOF' || exit 2
import platform, sys
if sys.version_info < (3, 9):
    sys.exit("pi-bench (board): error: needs Python 3.9 or newer, this is %d.%d" % sys.version_info[:2])
if platform.machine() != "aarch64" or sys.maxsize <= 2**32:
    sys.exit("pi-bench (board): error: not a 64-bit ARM OS (%s, %d-bit Python): install Raspberry Pi OS (64-bit)"
             % (platform.machine(), 64 if sys.maxsize > 2**32 else 32))
PYEOF
if ! "$PY" -c 'import numpy, cffi, PIL' 2>/dev/null; then
  if [ ! -x venv/bin/python ]; then
    say "installing numpy, cffi, Pillow into $(pwd)/venv"
    "$PY" -m venv --system-site-packages venv >&2 || { say "error: python3 -m venv failed (sudo apt install python3-venv)"; exit 2; }
    venv/bin/python -m pip install -q numpy cffi pillow >&2
  fi
  PY=venv/bin/python
fi
rm -rf lib && "$PY" -m zipfile -e qvit_edge-*.whl lib || { say "error: unpacking the runtime's wheel failed"; exit 2; }
PYTHONPATH=lib exec "$PY" -m qvit_edge bench model.so --json "$@"
EOF

# 3-4. copy, run, keep the result.
OUT="$ROOT/build/pi-bench"
mkdir -p "$OUT"
tag="$(date -u +%Y%m%dT%H%M%SZ)"
case "$PI" in
  local:*)
    dir="${PI#local:}"
    mkdir -p "$dir"
    tar -C "$STAGE" -cf - . | tar -C "$dir" -xf -
    result="$(sh "$dir/run.sh" "$@")"
    name="local"
    ;;
  *)
    command -v ssh >/dev/null || die "ssh not found"
    log "copying the runtime and $(basename "$MODEL") to $PI:~/qvit-edge-bench"
    args=""
    for a in "$@"; do args="$args '$(printf '%s' "$a" | sed "s/'/'\\\\''/g")'"; done
    result="$(tar -C "$STAGE" -czf - . 2>/dev/null | ssh -o BatchMode=yes -o ConnectTimeout=15 "$PI" \
      "mkdir -p ~/qvit-edge-bench && tar -C ~/qvit-edge-bench -xzf - && sh ~/qvit-edge-bench/run.sh $args")" \
      || die "the benchmark on $PI failed (see above)"
    name="$(printf '%s' "$PI" | tr -c 'A-Za-z0-9._-' _)"
    ;;
esac
printf '%s\n' "$result" >"$OUT/$name-$tag.json"
printf '%s\n' "$result"
log "saved build/pi-bench/$name-$tag.json"
