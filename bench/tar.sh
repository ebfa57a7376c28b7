#!/usr/bin/env bash
# Packing a ~100 MB tree of small source files to tar.gz: GNU tar (tar czf, gzip -6), runbox
# (tar.pack_file, gzip level 6) and Python's tarfile module (its default level, 9, and level 6).
# Target: runbox at most 1.1x GNU tar's time.
source "$(dirname "$0")/common.sh"
TREE=$SCRATCH/tree
if [ ! -f "$TREE/.done" ]; then
  rm -rf "$TREE"
  /usr/bin/python3 "$BENCH_DIR/make_tree.py" "$TREE" 100
  touch "$TREE/.done"
fi
du -sh --apparent-size "$TREE" | sed 's/^/tree: /'
echo "files: $(find "$TREE" -type f | wc -l)"
OUT=$SCRATCH/out
hyperfine --warmup 1 --runs 5 --export-json "$SCRATCH/tar.json" \
  "tar czf $OUT-gnu.tar.gz -C $TREE ." \
  "$RUNBOX -e 'assert(require(\"runbox.tar\").pack_file(\"$TREE\", \"$OUT-rb.tar.gz\"))'" \
  "/usr/bin/python3 -c 'import tarfile; t=tarfile.open(\"$OUT-py6.tar.gz\",\"w:gz\",compresslevel=6); t.add(\"$TREE\", arcname=\".\"); t.close()'" \
  "/usr/bin/python3 -c 'import tarfile; t=tarfile.open(\"$OUT-py.tar.gz\",\"w:gz\"); t.add(\"$TREE\", arcname=\".\"); t.close()'" >/dev/null
ratios "$SCRATCH/tar.json"
ls -l "$OUT"-*.tar.gz | awk '{print $5, $9}'
