#!/usr/bin/env bash
# Streaming 1 GB of ~100-byte lines from a child process, line by line, into a log file:
# runbox (proc.spawn + log.pipe into a file sink) against the shell's `cat > file`, both reading the
# same file through a child `cat`. Target: runbox at least half of cat's throughput (ratio <= 2).
source "$(dirname "$0")/common.sh"
SIZE=${LOG_BENCH_BYTES:-1073741824}
BIG=$SCRATCH/lines-$SIZE.txt
LINE="$(printf 'runbox log line %.0s' 1 2 3 4) with some padding to make one hundred bytes..."
if [ ! -f "$BIG" ]; then   # whole lines of 100 bytes, about SIZE bytes in all
  yes "$LINE" | head -n $((SIZE / (${#LINE} + 1))) > "$BIG"
fi
echo "input: $(du -h --apparent-size "$BIG" | cut -f1), $(wc -l < "$BIG") lines"
OUT=$SCRATCH/log-out
hyperfine --warmup 1 --runs 5 --export-json "$SCRATCH/log.json" \
  --prepare "rm -f $OUT-*" \
  "cat $BIG > $OUT-cat" \
  "cat $BIG | cat > $OUT-pipe" \
  "$RUNBOX -e 'local proc, log = require \"runbox.proc\", require \"runbox.log\"
    local p = assert(proc.spawn{\"cat\", \"$BIG\"})
    local sink = assert(log.sink{file = \"$OUT-rb\"})
    log.pipe(p, \"stdout\", sink):wait()
    assert(p:wait() == 0)
    sink:close()'" >/dev/null
ratios "$SCRATCH/log.json"
cmp "$BIG" "$OUT-rb" && echo "runbox's log file is byte-identical to the input"
