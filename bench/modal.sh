#!/usr/bin/env bash
# 100 Modal sandboxes at once against the stand-in Modal server (tests/helpers/modal_standin), each:
# create, one exec streaming 1 MiB of stdout (read and counted), the exec's exit, terminate. Driven
# by runbox (bench/modal_runbox.lua: runbox.modal, one task per sandbox) and by the official Modal
# JS SDK (bench/modal_sdk.mjs: modal@0.7.2, Promise.all over the sandboxes). Each client reports
# its OWN process's CPU time and peak memory (VmHWM); the stand-in and the sandboxes are other
# processes and do the same work for both. Target: runbox at most a quarter of the SDK's CPU
# time and a quarter of its peak memory.
#
# Environment: MODAL_SANDBOXES (100), MODAL_BYTES (1048576), MODAL_RUNS (5 per side),
# MODAL_ONLY (runbox or sdk: one side), MODAL_PHASES=1 (runbox also reports CPU per phase),
# RUNBOX (default build/runbox, built with `cmake --build build` when older than the sources),
# RUNBOX_TEST_MODAL_JS_DIR (/opt/runbox-test/modal-js: the SDK, installed there if missing),
# BENCH_SCRATCH (/tmp/runbox-bench).
# Needs: node and npm, /usr/bin/python3 with Debian's python3-grpcio and python3-grpc-tools,
# bubblewrap (tests/deps.sh installs them all).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
RUNBOX=${RUNBOX:-$ROOT/build/runbox}
SCRATCH=${BENCH_SCRATCH:-/tmp/runbox-bench}
W=$SCRATCH/modal
N=${MODAL_SANDBOXES:-100}
BYTES=${MODAL_BYTES:-1048576}
RUNS=${MODAL_RUNS:-5}
CLK_TCK=$(getconf CLK_TCK)
export CLK_TCK

# runbox: the existing build, brought up to date (its configuration is left as it is)
if [ "$RUNBOX" = "$ROOT/build/runbox" ]; then
  [ -f "$ROOT/build/CMakeCache.txt" ] ||
    { echo "no build/: cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build"; exit 1; }
  if [ ! -x "$RUNBOX" ] || [ -n "$(find "$ROOT/engine" "$ROOT/lua" -newer "$RUNBOX" -print -quit)" ]; then
    mkdir -p "$SCRATCH"
    cmake --build "$ROOT/build" -j"$(nproc)" --target runbox > "$SCRATCH/modal-build.log" 2>&1 ||
      { tail -20 "$SCRATCH/modal-build.log"; exit 1; }
  fi
fi
# the official SDK, pinned (modal@latest is an unrelated package), where tests/deps.sh puts it
MODAL_JS_DIR=${RUNBOX_TEST_MODAL_JS_DIR:-/opt/runbox-test/modal-js}
export RUNBOX_TEST_MODAL_JS_DIR=$MODAL_JS_DIR
if ! grep -qs '"version": "0.7.2"' "$MODAL_JS_DIR/node_modules/modal/package.json"; then
  mkdir -p "$MODAL_JS_DIR"
  (cd "$MODAL_JS_DIR" && npm install --no-audit --no-fund --silent modal@0.7.2)
fi

rm -rf "$W"
mkdir -p "$W/home"
STANDIN=$ROOT/tests/helpers/modal_standin/server.py
SPID=
trap '[ -n "$SPID" ] && kill -TERM "$SPID" 2>/dev/null; wait' EXIT

# A fresh stand-in for every run (same empty state for both sides); a registry tag only, so no
# image build runs. Sets SPID and URL.
start_standin() {   # name
  mkdir -p "$W/$1"
  /usr/bin/python3 "$STANDIN" --state "$W/$1/state" --build-run skip \
    > "$W/$1/standin.out" 2> "$W/$1/standin.log" &
  SPID=$!
  for _ in $(seq 300); do
    grep -qs grpc_url "$W/$1/standin.out" && break
    kill -0 "$SPID" 2>/dev/null || { cat "$W/$1/standin.log"; exit 1; }
    sleep 0.1
  done
  URL=$(sed -E 's/.*"grpc_url": *"([^"]*)".*/\1/' "$W/$1/standin.out")
}
# The stand-in's own and its waited-for children's CPU (ms), read just before it is stopped.
standin_cpu() {
  awk -v t="$CLK_TCK" '{sub(/^.*\) /, ""); printf "%.0f %.0f\n", ($12 + $13) * 1000 / t, ($14 + $15) * 1000 / t}' "/proc/$SPID/stat"
}

run_side() {   # side round
  local name=$1-$2 line own kids
  start_standin "$name"
  local cmd=("$RUNBOX" "$BENCH_DIR/modal_runbox.lua" "$N" "$BYTES")
  [ "$1" = sdk ] && cmd=(node "$BENCH_DIR/modal_sdk.mjs" "$N" "$BYTES")
  line=$(env HOME="$W/home" MODAL_SERVER_URL="$URL" MODAL_TOKEN_ID=ak-test MODAL_TOKEN_SECRET=as-test \
             BENCH_PHASES="${MODAL_PHASES:-0}" "${cmd[@]}" 2> "$W/$name/client.log") ||
    { echo "$1 failed: $line"; tail -5 "$W/$name/client.log"; exit 1; }
  read -r own kids < <(standin_cpu)
  kill -TERM "$SPID"
  wait "$SPID" || true
  SPID=
  echo "${line%\}},\"round\":$2,\"standin_cpu_ms\":$own,\"standin_children_cpu_ms\":$kids}" >> "$W/results.jsonl"
  local cpu rss wall
  f() { sed -nE "s/.*\"$1\":([0-9.]+).*/\1/p" <<< "$line"; }
  cpu=$(f cpu_ms) rss=$(f peak_rss_mb) wall=$(f wall_s)
  printf 'round %d %-6s own CPU %5.0f ms, peak RSS %5.1f MB, wall %4.2f s\n' "$2" "$1" "$cpu" "$rss" "$wall"
}

sides=()
[ "${MODAL_ONLY:-}" != runbox ] && sides+=(sdk)
[ "${MODAL_ONLY:-}" != sdk ] && sides+=(runbox)
tree=
[ "$RUNBOX" = "$ROOT/build/runbox" ] &&
  tree=" (tree $(git -C "$ROOT" log -1 --format=%h 2>/dev/null)$(git -C "$ROOT" status --porcelain -- engine lua 2>/dev/null | grep -q . && echo ', with uncommitted changes' || true))"
echo "$N sandboxes at once, $BYTES bytes of stdout each; $RUNS rounds; $("$RUNBOX" --version 2>/dev/null | head -1)$tree, node $(node --version), modal@0.7.2"
for ((r = 1; r <= RUNS; r++)); do   # sides alternate: sdk first in odd rounds, runbox first in even ones
  if ((r % 2)); then order=("${sides[@]}"); else order=(); for ((i = ${#sides[@]} - 1; i >= 0; i--)); do order+=("${sides[i]}"); done; fi
  for side in "${order[@]}"; do run_side "$side" "$r"; done
done

# the tables: medians per side (and each round's figures) and the ratios runbox / SDK
cat > "$W/report.lua" <<'EOF'
local json, fs = require "runbox.json", require "runbox.fs"
local by = {}
for line in assert(fs.read(arg[1])):gmatch("[^\n]+") do
  local r = json.decode(line)
  by[r.side] = by[r.side] or {}
  table.insert(by[r.side], r)
end
local function median(list, key)
  local v = {}
  for i, r in ipairs(list) do v[i] = r[key] end
  table.sort(v)
  local n = #v
  return n % 2 == 1 and v[(n + 1) // 2] or (v[n // 2] + v[n // 2 + 1]) / 2
end
local function each(list, key, fmt)
  local out = {}
  for i, r in ipairs(list) do out[i] = fmt:format(r[key]) end
  return table.concat(out, ", ")
end
local names = {sdk = "official JS SDK (node)", runbox = "runbox"}
print("| client | own CPU (ms) | CPU of the sandboxes alone (ms) | peak RSS (MB) | wall (s) | stand-in CPU (ms) | own CPU per round (ms) | peak RSS per round (MB) |")
print("|---|---|---|---|---|---|---|---|")
local m = {}
for _, side in ipairs{"sdk", "runbox"} do
  local l = by[side]
  if l then
    m[side] = {cpu = median(l, "cpu_ms"), phase = median(l, "phase_cpu_ms"), rss = median(l, "peak_rss_mb"),
               wall = median(l, "wall_s")}
    print(("| %s | %.0f | %.0f | %.1f | %.2f | %.0f | %s | %s |"):format(names[side], m[side].cpu, m[side].phase,
          m[side].rss, m[side].wall, median(l, "standin_cpu_ms"), each(l, "cpu_ms", "%.0f"), each(l, "peak_rss_mb", "%.0f")))
  end
end
if m.sdk and m.runbox then
  print()
  print(("ratios runbox / SDK: own CPU **%.2f**, CPU of the sandboxes alone %.2f, peak memory **%.2f**, wall %.2f")
        :format(m.runbox.cpu / m.sdk.cpu, m.runbox.phase / m.sdk.phase, m.runbox.rss / m.sdk.rss, m.runbox.wall / m.sdk.wall))
end
-- the timeline of the median round (by wall time): when the median and the last sandbox ended each step
local steps = {"created", "exec_started", "first_byte", "read_all", "exited", "terminated"}
print()
print("| seconds after the start: median sandbox / last sandbox | " .. table.concat(steps, " | ") .. " |")
print("|---|" .. ("---|"):rep(#steps))
for _, side in ipairs{"sdk", "runbox"} do
  local l = by[side]
  if l then
    table.sort(l, function(a, b) return a.wall_s < b.wall_s end)
    local r = l[(#l + 1) // 2]
    local cells = {}
    for i, k in ipairs(steps) do cells[i] = ("%.2f / %.2f"):format(r.timeline_s[k].median, r.timeline_s[k].last) end
    print(("| %s (round %d) | %s |"):format(names[side], r.round, table.concat(cells, " | ")))
  end
end
if by.runbox and by.runbox[1].phases_ms then
  print()
  print("runbox CPU per phase (ms), median over the rounds:")
  local keys = {}
  for k in pairs(by.runbox[1].phases_ms) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = {}
    for i, r in ipairs(by.runbox) do v[i] = {x = r.phases_ms[k] or 0} end
    print(("  %-45s %6.0f"):format(k, median(v, "x")))
  end
end
EOF
echo
"$RUNBOX" "$W/report.lua" "$W/results.jsonl"
