#!/usr/bin/env bash
# Builds runbox twice (release and AddressSanitizer+UBSan), runs every test in both builds with
# ctest, runs the protobuf fuzzer briefly, and ends with one line: "N passed, N failed".
#   tests/run.sh [--quick]   --quick: release build only, no sanitizers, no fuzzing
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs=$(nproc)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

build() {  # build DIR cmake-args...
  local dir=$1; shift
  cmake -S . -B "$dir" "$@" >"$logs/cmake.log" 2>&1 && cmake --build "$dir" -j"$jobs" >>"$logs/cmake.log" 2>&1 \
    || { cat "$logs/cmake.log"; echo "build of $dir failed"; echo "0 passed, 1 failed"; exit 1; }
}

run_suite() {  # run_suite DIR LABEL
  local dir=$1 label=$2
  echo "== tests: $label"
  (cd "$dir" && ctest -j"$jobs" --timeout 900 >"$logs/ctest-$label.txt" 2>&1)
  cat "$dir/Testing/Temporary/LastTest.log" >"$logs/tap-$label.txt"
  # each failure with the diagnostic lines that follow it, so a CI log says why
  awk '/^not ok/ {n = 40; print; next} n > 0 && /^#/ {n--; print; next} {n = 0}' \
    "$logs/tap-$label.txt" | sed "s/^/[$label] /"
  tail -n 3 "$logs/ctest-$label.txt" | sed "s/^/[$label] /"
}

build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_suite build release

if [ $quick = 0 ]; then
  build build-asan -DCMAKE_BUILD_TYPE=Debug -DRUNBOX_SANITIZE=ON
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 run_suite build-asan asan

  echo "== fuzzing"
  if CC=clang build build-fuzz -DCMAKE_BUILD_TYPE=Debug -DRUNBOX_FUZZ=ON -DRUNBOX_SANITIZE=ON; then
    for f in build-fuzz/tests/fuzz_*; do
      [ -x "$f" ] || continue
      name=$(basename "$f")
      mkdir -p "$logs/corpus-$name"
      if "$f" -max_total_time="${RUNBOX_FUZZ_SECONDS:-20}" "$logs/corpus-$name" >"$logs/$name.log" 2>&1; then
        echo "ok - $name: $(grep -o 'stat::number_of_executed_units: [0-9]*' "$logs/$name.log" | tail -1 || tail -1 "$logs/$name.log")" >>"$logs/tap-fuzz.txt"
      else
        tail -n 40 "$logs/$name.log"
        echo "not ok - $name found a crash" >>"$logs/tap-fuzz.txt"
      fi
    done
    [ -f "$logs/tap-fuzz.txt" ] && cat "$logs/tap-fuzz.txt"
  fi
fi

passed=$(cat "$logs"/tap-*.txt | grep -c '^ok' || true)
failed=$(cat "$logs"/tap-*.txt | grep -c '^not ok' || true)
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
