#!/usr/bin/env bash
# Runs one test program and keeps its TAP honest: a program that fails without printing a
# "not ok" line (a crash, a sanitizer report, a non-TAP failure) gets one added in its name.
name=$1; shift
out=$(mktemp)
"$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] && ! grep -q '^not ok' "$out"; then
  echo "not ok - $name exited with status $status"
fi
if [ "$status" -eq 0 ] && ! grep -q '^ok' "$out"; then
  echo "not ok - $name ran no test"
  status=1
fi
rm -f "$out"
exit "$status"
