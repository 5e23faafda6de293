#!/usr/bin/env bash
# Installs the Debian packages the tests need, only when one is missing.
# gcc-aarch64-linux-gnu + qemu-user: build and run the aarch64 side without a board.
# dataset-fashion-mnist: the real data the experiments and tests use.
set -euo pipefail
need=()
for p in gcc-aarch64-linux-gnu qemu-user dataset-fashion-mnist; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "error: need root (or passwordless sudo) to apt-get install ${need[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
