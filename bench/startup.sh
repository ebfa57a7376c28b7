#!/usr/bin/env bash
# Start-up time: runbox -e '' against lua5.4 -e '' and python3 -c pass. Target: at most 2x lua5.4.
source "$(dirname "$0")/common.sh"
hyperfine -N --warmup 20 --runs 300 --export-json "$SCRATCH/startup.json" \
  "lua5.4 -e ''" "$RUNBOX -e ''" "/usr/bin/python3 -c pass" >/dev/null
ratios "$SCRATCH/startup.json"
