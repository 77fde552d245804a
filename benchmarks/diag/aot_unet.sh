#!/usr/bin/env bash
# The four steps of benchmarks/diag/aot_unet.py, each in a fresh process with its own empty inductor cache
# (as a new machine would have), logs into $OUT/NAME-*.log and the JSON rows into $OUT/NAME.jsonl.
# bash benchmarks/diag/aot_unet.sh NAME [--size tiny] [--device cpu]
set -uo pipefail
out=${OUT:-/tmp} name=$1
shift
work=$(mktemp -d)
for step in raw-save raw-load runtime-cold runtime-warm; do
  mode=${step%-cold}; mode=${mode%-warm}
  dir=$work/raw; [[ $mode == runtime ]] && dir=$work/entries
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout 400 python3 -m benchmarks.diag.aot_unet "$mode" "$dir" "$@" \
    > "$out/$name-$step.log" 2>&1
  echo "exit $? ($step)" >> "$out/$name-$step.log"
  grep -h '^AOT-DIAG ' "$out/$name-$step.log" | sed "s/^AOT-DIAG /{\"run\": \"$step\", \"row\": /; s/\$/}/" \
    >> "$out/$name.jsonl"
  tail -n 1 "$out/$name-$step.log"
  grep -h '^AOT-DIAG ' "$out/$name-$step.log" | cut -c1-1500
done
