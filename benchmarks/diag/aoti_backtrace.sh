#!/usr/bin/env bash
# A C-level backtrace of the AOTInductor load crash on the GPU machine (no gdb there): a tiny CPU package
# (benchmarks/diag/aoti_probe.py), then torch's CPU runner over its library with a SIGSEGV handler preloaded that
# prints the native frames (glibc's backtrace()), each resolved with addr2line where the library has symbols.
# bash benchmarks/diag/aoti_backtrace.sh NAME; logs in $OUT
set -uo pipefail
out=${OUT:-/tmp} name=$1
work=$(mktemp -d)
cat > "$work/segv.c" <<'C'
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
static void on_fault(int sig, siginfo_t *info, void *ctx) {
  void *frames[64];
  char line[96];
  int n = backtrace(frames, 64);
  int len = snprintf(line, sizeof line, "SEGV-BACKTRACE signal %d at address %p\n", sig, info->si_addr);
  write(2, line, len);
  backtrace_symbols_fd(frames, n, 2);
  _exit(128 + sig);
}
__attribute__((constructor)) static void install(void) {
  struct sigaction action;
  memset(&action, 0, sizeof action);
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &action, 0);
  sigaction(SIGBUS, &action, 0);
  sigaction(SIGILL, &action, 0);
  sigaction(SIGABRT, &action, 0);
}
C
"${CXX:-g++}" -x c -shared -fPIC -O0 -g -o "$work/segv.so" "$work/segv.c" || { echo "cannot build the handler"; exit 1; }
TORCHINDUCTOR_CACHE_DIR=$work/inductor timeout 300 python3 -m benchmarks.diag.aoti_probe tiny cpu "$work" \
  > "$out/$name-compile.log" 2>&1
echo "== compile: exit $? $(grep AOTI-PROBE "$out/$name-compile.log" | cut -c1-300)"
python3 - "$work/tiny-cpu.pt2" "$work/x" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
so=$(find "$work/x" -name '*.so' | head -1)
echo "so: $so"
LD_PRELOAD=$work/segv.so timeout 120 python3 -c "import torch, sys; r = torch._C._aoti.AOTIModelContainerRunnerCpu(sys.argv[1], 1); print('runner ok')" "$so" \
  > "$out/$name-runner.log" 2>&1
echo "== runner: exit $?"
cat "$out/$name-runner.log" | cut -c1-400 | tail -n 70
# resolve frames "lib(+0xoffset)" or "lib(sym+0xoff)" with addr2line (function names, demangled)
grep -o '^[^ ]*(+0x[0-9a-f]*)' "$out/$name-runner.log" | head -40 | while read -r frame; do
  lib=${frame%%(*}; off=${frame##*(+}; off=${off%)}
  printf '%s %s -> %s\n' "$(basename "$lib")" "$off" "$(addr2line -f -C -e "$lib" "$off" 2>/dev/null | head -1)"
done | tee "$out/$name-resolved.log"
nm -D --defined-only "$so" 2>/dev/null | grep -i "AOTInductorModelContainer" | head -20 > "$out/$name-symbols.log"
nm -D --undefined-only "$so" 2>/dev/null | c++filt | head -80 >> "$out/$name-symbols.log"
echo "== symbols"; head -n 40 "$out/$name-symbols.log"
