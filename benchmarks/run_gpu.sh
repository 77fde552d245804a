#!/usr/bin/env bash
# The full-size benchmark on a GPU machine: bash benchmarks/run_gpu.sh RUN_NAME CASES [pytest args...]
# CASES: comma-separated names from benchmarks/cases.py and benchmarks/pipelines.py, or "all".
# Writes RUN_NAME.json (our figures), RUN_NAME-pytest-benchmark.json, RUN_NAME.log and the GPU's state
# into $OUT (default benchmarks/results). Render the table with: python -m benchmarks.report FILES...
set -uo pipefail
out=${OUT:-benchmarks/results}
name=$1 cases=$2
shift 2
mkdir -p "$out"
# A machine whose Python writes no bytecode (PYTHONDONTWRITEBYTECODE, no __pycache__ in site-packages) compiles
# torch's sources again in every process: seconds of every warm start that a pip-installed machine does not pay.
# Write it once here, as pip does at install time, and say so in the log.
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  unset PYTHONDONTWRITEBYTECODE
  echo "PYTHONDONTWRITEBYTECODE was set: compiling site-packages to bytecode first, as pip install does" > "$out/$name-bytecode.txt"
  python3 -m compileall -q -j 0 $(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [p for p in sys.path if p.startswith("/tmp/site")]))') >> "$out/$name-bytecode.txt" 2>&1 || true
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,memory.used \
  --format=csv > "$out/$name-gpu.csv" 2>&1 || true
python3 -m pytest benchmarks/ --benchmark-only -p no:cacheprovider -q --bench-size full --bench-cases "$cases" \
  --bench-warm-start all --bench-json "$out/$name.json" --benchmark-json "$out/$name-pytest-benchmark.json" \
  --benchmark-columns=median,iqr,min,rounds "$@" > "$out/$name.log" 2>&1
status=$?
tail -n 40 "$out/$name.log"
python3 -m benchmarks.report "$out/$name.json" || true
exit $status
