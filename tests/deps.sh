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

sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
missing=()
for p in "${base[@]}" "${extra[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The real Codex CLI for the agent tests (offline against a stand-in endpoint), pinned.
CODEX_DIR=${RUNBOX_TEST_CODEX_DIR:-/opt/runbox-test/codex}
if [ ! -x "$CODEX_DIR/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex" ]; then
  command -v npm >/dev/null || { $sudo apt-get install -y -qq npm >/dev/null; }
  mkdir -p "$CODEX_DIR"
  (cd "$CODEX_DIR" && npm install --no-audit --no-fund --silent @openai/codex@0.169.0)
fi

# The official Modal JS SDK, to cross-check the stand-in Modal server (tests/modal_sdk/), pinned:
# modal@0.7.2 is the last release built from modal-labs/libmodal (`modal@latest` is another package).
MODAL_JS_DIR=${RUNBOX_TEST_MODAL_JS_DIR:-/opt/runbox-test/modal-js}
if [ ! -f "$MODAL_JS_DIR/node_modules/modal/package.json" ] \
   || ! grep -q '"version": "0.7.2"' "$MODAL_JS_DIR/node_modules/modal/package.json"; then
  command -v npm >/dev/null || { $sudo apt-get install -y -qq npm >/dev/null; }
  mkdir -p "$MODAL_JS_DIR"
  (cd "$MODAL_JS_DIR" && npm install --no-audit --no-fund --silent modal@0.7.2)
fi
