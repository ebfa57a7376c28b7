#!/usr/bin/env bash
# Two runbox builds on bench/batch.sh's 200-run batch AT THE SAME TIME, round after round, so
# that the machine's speed (which drifts by a fifth from one hour to the next on a shared VM)
# weighs on both alike. What it measures is the ratio of the two builds' own CPU per run; each
# figure is lower than a batch alone gives, since the machine is twice as busy and runbox wakes
# up less often per unit of work.
#
#   bench/batch_pair.sh RUNBOX_A RUNBOX_B [ROUNDS]    (bench/batch.sh must have made the tasks)
# RUNBOX_A/B: runbox binaries (an older commit's build, say); each runs its own bench/batch_run.lua
# from the tree it was built from when that tree is next to it (BUILD/../bench), else this one's.
source "$(dirname "$0")/common.sh"
A=${1:?usage: bench/batch_pair.sh RUNBOX_A RUNBOX_B [ROUNDS]}
B=${2:?usage: bench/batch_pair.sh RUNBOX_A RUNBOX_B [ROUNDS]}
ROUNDS=${3:-2}
W=$SCRATCH/batch
[ -f "$W/batch.yaml" ] || { echo "no tasks in $W: run bench/batch.sh once first"; exit 1; }
export CLK_TCK=$(getconf CLK_TCK)

side() {   # side NAME BINARY ROUND
  local bench=$BENCH_DIR
  [ -f "$(dirname "$2")/../bench/batch_run.lua" ] && bench=$(cd "$(dirname "$2")/../bench" && pwd)
  sed "s|@OUT@|$W/pair-$1-$3-$(date +%s%N)|" "$W/batch.yaml" > "$W/pair-$1.yaml"
  "$2" "$bench/batch_run.lua" "$W/pair-$1.yaml" "$W/pair-$1.jsonl" 16 cmd:true 2>/dev/null
}
rm -f "$W/pair-a.jsonl" "$W/pair-b.jsonl"
for ((r = 1; r <= ROUNDS; r++)); do
  side a "$A" "$r" & side b "$B" "$r" & wait
  a=$(tail -1 "$W/pair-a.jsonl" | jq -r '"\(.own_cpu_ms_per_run) \(.utime_ms / .runs) \(.stime_ms / .runs) \(.peak_rss_mb)"')
  b=$(tail -1 "$W/pair-b.jsonl" | jq -r '"\(.own_cpu_ms_per_run) \(.utime_ms / .runs) \(.stime_ms / .runs) \(.peak_rss_mb)"')
  echo "$r $a $b" | awk '{printf "round %d: A %.2f ms/run (user %.2f, sys %.2f, %.1f MB)  B %.2f ms/run (user %.2f, sys %.2f, %.1f MB)  B/A %.3f\n",
                                 $1, $2, $3, $4, $5, $6, $7, $8, $9, $6 / $2}'
done
