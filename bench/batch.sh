#!/usr/bin/env bash
# A batch of 200 example runs with a trivial agent (`true`) at 16 at once on the local backend:
# `runbox parallel` (through bench/batch_run.lua, which makes the same batch.run call and then
# reports runbox's own CPU time and peak memory) against the same 200 sandboxes started by a shell
# loop with `xargs -P 16` (bench/batch_baseline.sh). Targets: under 5 ms of runbox CPU per run,
# under 60 MB peak, wall time within 1.1x of the xargs loop.
#
# Environment: BATCH_TASKS (200, a multiple of 5), BATCH_PARALLEL (16), BATCH_RUNS (3),
# BATCH_ONLY (runbox or xargs: measure one side only).
# Needs: bwrap, git, jq, Debian's python3-pytest and python3-yaml.
source "$(dirname "$0")/common.sh"
command -v jq >/dev/null || { echo "jq is needed: apt-get install jq"; exit 1; }
N=${BATCH_TASKS:-200}
P=${BATCH_PARALLEL:-16}
RUNS=${BATCH_RUNS:-3}
W=$SCRATCH/batch
export CLK_TCK=$(getconf CLK_TCK)

# The tasks: N/5 copies of each example task, renamed. Each copy stays a created task (so every run
# prepares it), with the prepared task's repo (bundle path made absolute) and evaluation in its
# tb_meta.json, so both sides run the same test scripts (add-slugify's default ones included).
# The previous run's files (about 100,000) are moved aside, not deleted, and deleted only after
# the measurements: on ext4, creating files stays dearer for minutes after that many were deleted
# (runbox's system time per run went from 2 ms to 6-7 ms in the two batches that followed such a
# deletion, and to 5.9 ms 35 s after deleting 32,000 files). Leave a few minutes between two runs
# of this script for the same reason.
old=""
if [ -d "$W" ]; then
  old=$SCRATCH/batch.old-$(date +%s)
  mv "$W" "$old"
fi
mkdir -p "$W/tasks" "$W/prepared"
for src in "$ROOT"/examples/tasks/*/; do
  name=$(basename "$src")
  "$RUNBOX" prepare "$src" --out "$W/prepared" >/dev/null
  prep=$W/prepared/$name/tb_meta.json
  for ((i = 1; i <= N / 5; i++)); do
    copy=$(printf '%s/tasks/%s-%03d' "$W" "$name" "$i")
    cp -r "$src" "$copy"
    jq --arg id "$(basename "$copy")_20250101_000000" --slurpfile p "$prep" \
       '.task_id = $id | .repo = $p[0].repo | .evaluation = $p[0].evaluation' \
       "$src/tb_meta.json" > "$copy/tb_meta.json"
  done
done
cat > "$W/batch.yaml" <<EOF
agents:
  agent: "cmd:true"
  timeout_sec: 600
  max_parallel: $P
datasets:
  bench:
    path: $W/tasks
output:
  results_dir: @OUT@
EOF

# Rounds alternate the two sides (xargs first in odd rounds, runbox first in even ones), so that
# load from anything else on the machine falls on both alike. Every run writes to a new folder and
# nothing is deleted while the batches run (see the note on deleting above).
busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }   # jiffies, whole machine
run_side() {   # side round
  local t0 t1 b0 b1 load out=$W/out-$1-$2
  load=$(cut -d' ' -f1 /proc/loadavg)
  b0=$(busy)
  t0=$(date +%s.%N)
  if [ "$1" = xargs ]; then
    "$BENCH_DIR/batch_baseline.sh" "$W/tasks" "$out" "$P"
  else
    sed "s|@OUT@|$out|" "$W/batch.yaml" > "$W/batch-$2.yaml"
    "$RUNBOX" "$BENCH_DIR/batch_run.lua" "$W/batch-$2.yaml" "$W/stats.jsonl" "$P" cmd:true 2>/dev/null
  fi
  t1=$(date +%s.%N)
  b1=$(busy)
  printf '{"side":"%s","round":%d,"wall_s":%s,"busy_s":%s,"load_before":%s,"out":"%s"}\n' "$1" "$2" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "($b1 - $b0) / $CLK_TCK" | bc -l)" "$load" "$out" >> "$W/walls.jsonl"
  echo "round $2: $1 $(echo "$t1 - $t0" | bc) s (load average before: $load)"
}
sides=()
[ "${BATCH_ONLY:-}" != runbox ] && sides+=(xargs)
[ "${BATCH_ONLY:-}" != xargs ] && sides+=(runbox)
rm -f "$W/walls.jsonl" "$W/stats.jsonl"
for ((r = 1; r <= RUNS; r++)); do
  if ((r % 2)); then order=("${sides[@]}"); else order=(); for ((i = ${#sides[@]} - 1; i >= 0; i--)); do order+=("${sides[i]}"); done; fi
  for side in "${order[@]}"; do run_side "$side" "$r"; done
done

# the table: wall times and ratio, runbox's own CPU and memory per batch, and a check that both sides
# did the same work (the same test scripts passing and failing for every task)
"$RUNBOX" "$BENCH_DIR/batch_report.lua" "$W"
if [ -n "$old" ]; then rm -rf "$old"; fi
