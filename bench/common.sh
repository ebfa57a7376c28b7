# Shared set-up for the benchmarks: a release build of runbox and a scratch folder.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
RUNBOX=${RUNBOX:-$ROOT/build-bench/runbox}
SCRATCH=${BENCH_SCRATCH:-/tmp/runbox-bench}
mkdir -p "$SCRATCH"
if [ ! -x "$RUNBOX" ] || [ -n "$(find "$ROOT/engine" "$ROOT/lua" -newer "$RUNBOX" -print -quit)" ]; then
  cmake -S "$ROOT" -B "$ROOT/build-bench" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$ROOT/build-bench" -j"$(nproc)" --target runbox >/dev/null
fi
command -v hyperfine >/dev/null || { echo "hyperfine is needed: apt-get install hyperfine"; exit 1; }

# ratios JSON: prints each command's mean and its ratio to the first command's mean
ratios() {
  "$RUNBOX" "$BENCH_DIR/ratios.lua" "$1"
}
