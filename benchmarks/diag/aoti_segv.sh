#!/usr/bin/env bash
# Where does aoti_load_package crash on this machine? A tiny CPU package (benchmarks/diag/aoti_probe.py), then its
# shared library loaded step by step, each in its own process: dlopen alone, torch's CPU runner, the package
# loader under LD_DEBUG; then the same with a package built by the system compiler instead of $CXX / g++ on PATH.
# bash benchmarks/diag/aoti_segv.sh NAME; logs in $OUT
set -uo pipefail
out=${OUT:-/tmp} name=$1
work=$(mktemp -d)
{
  echo "== compilers"; command -v g++; ls -la "$(dirname "$(command -v g++)")" | head; file "$(command -v g++)"
  head -c 1500 "$(command -v g++)" | strings | head -20; ls -la /usr/bin/g++* /usr/bin/c++ 2>&1 | head; echo "CXX=${CXX:-}"
} > "$out/$name-compilers.log" 2>&1
cat "$out/$name-compilers.log"
try() {  # try LABEL command...
  local label=$1; shift
  timeout 120 "$@" > "$out/$name-$label.log" 2>&1
  echo "== $label: exit $?"; tail -n 6 "$out/$name-$label.log" | cut -c1-300
}
for compiler in default system; do
  dir=$work/$compiler; mkdir -p "$dir"
  if [ "$compiler" = system ]; then export CXX=/usr/bin/g++; fi
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout 200 python3 -m benchmarks.diag.aoti_probe tiny cpu "$dir" \
    > "$out/$name-$compiler-compile.log" 2>&1
  echo "== $compiler compile: exit $? $(grep AOTI-PROBE "$out/$name-$compiler-compile.log")"
  grep -h -o -- "-static-libstdc++\|-fuse-ld=[a-z]*\|-march=[a-z0-9-]*\|-fsanitize=[a-z]*" -r "$TORCHINDUCTOR_CACHE_DIR" 2>/dev/null | sort | uniq -c | head
  python3 - "$dir/tiny-cpu.pt2" "$dir/x" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1]); z.extractall(sys.argv[2])
print("\n".join(n for n in z.namelist() if not n.endswith("/"))[:2000])
PY
  so=$(find "$dir/x" -name '*.so' | head -1)
  echo "so: $so"; (ldd "$so"; readelf -d "$so" | grep -i "needed\|rpath\|runpath"; strings "$so" | grep -m3 "GCC: ") 2>&1 | head -30
  try "$compiler-dlopen" python3 -X faulthandler -c "import torch, ctypes, sys; ctypes.CDLL(sys.argv[1]); print('dlopen ok')" "$so"
  try "$compiler-runner" python3 -X faulthandler -c "import torch, sys; r = torch._C._aoti.AOTIModelContainerRunnerCpu(sys.argv[1], 1); print('runner ok', r.get_call_spec()[:1])" "$so"
  try "$compiler-package" python3 -X faulthandler -m benchmarks.diag.aoti_probe load-tiny cpu "$dir"
  LD_DEBUG=files timeout 120 python3 -c "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1]); print('loaded')" "$dir/tiny-cpu.pt2" > "$out/$name-$compiler-lddebug.log" 2>&1
  echo "== $compiler LD_DEBUG: exit $?"; tail -n 12 "$out/$name-$compiler-lddebug.log" | cut -c1-250
  unset CXX
done
