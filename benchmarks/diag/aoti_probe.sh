#!/usr/bin/env bash
# Every step of benchmarks/diag/aoti_probe.py in its own process (a crash is a status), each with an empty
# inductor cache as a new machine has. bash benchmarks/diag/aoti_probe.sh NAME [CASES...]; rows in $OUT/NAME.jsonl
set -uo pipefail
out=${OUT:-/tmp} name=$1
shift
cases=${*:-clip_l vae_decoder_512 controlnet}
work=$(mktemp -d)
step() {  # step LABEL TIMEOUT ARGS...
  local label=$1 limit=$2
  shift 2
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout "$limit" python3 -X faulthandler -m benchmarks.diag.aoti_probe "$@" \
    > "$out/$name-$label.log" 2>&1
  local status=$?
  echo "exit $status ($label)" >> "$out/$name-$label.log"
  grep -h '^AOTI-PROBE ' "$out/$name-$label.log" | sed "s/^AOTI-PROBE //" >> "$out/$name.jsonl"
  echo "{\"label\": \"$label\", \"exit\": $status}" >> "$out/$name.jsonl"
  echo "== $label: exit $status"; grep -v '^AOTI-PROBE ' "$out/$name-$label.log" | grep -i -A12 "fatal\|segment\|error" | head -40
  return $status
}
step env 60 env
for device in cpu cuda; do
  step "tiny-$device" 300 tiny $device "$work" && step "load-tiny-$device" 120 load-tiny $device "$work"
done
for case in $cases; do
  step "save-$case" 400 save "$case" "$work" && step "load-$case" 200 load "$case" "$work"
done
cat "$out/$name.jsonl"
