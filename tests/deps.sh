#!/usr/bin/env bash
# Installs what runbox needs to build and to run its tests on Debian 12 (run as root).
# Packages: the list below plus tests/deps-packages.txt (one per line, added by tests that need them).
set -euo pipefail
cd "$(dirname "$0")/.."

base=(build-essential cmake pkg-config git clang libclang-rt-14-dev
      liblua5.4-dev lua5.4 libcurl4-openssl-dev libarchive-dev libyaml-dev libedit-dev
      bubblewrap python3-grpcio python3-grpc-tools hyperfine valgrind zstd curl procps)
extra=()
if [ -f tests/deps-packages.txt ]; then
  while read -r p; do [ -n "$p" ] && [ "${p#\#}" = "$p" ] && extra+=("$p"); done < tests/deps-packages.txt
fi

missing=()
for p in "${base[@]}" "${extra[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
