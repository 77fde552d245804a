"""Diagnostic (GPU): do AOTInductor packages load on this machine, and how fast is their warm start?

``aoti_load_package`` segfaulted on the GPU machine in an earlier session (CPU and CUDA packages alike).
Each step runs in its own process so that a crash is a status, not the end of the run:

- ``env``: compiler, C++ runtime and torch build facts that a native package depends on;
- ``tiny DEVICE DIR``: compile a two-layer convnet to a package (``DIR/tiny-DEVICE.pt2``);
- ``load-tiny DEVICE DIR``: load it in a new process under ``faulthandler`` and compare with eager;
- ``save CASE DIR [--user-weights]``: a full-size benchmark case (``benchmarks/cases.py``) exported and
  compiled to a package, with the seconds it took and eager's output; ``--user-weights`` leaves the weights out
  of the package (``aot_inductor.package_constants_in_so=False``: the module's own tensors serve it);
- ``load CASE DIR [--user-weights]``: a new process loads it: seconds to the first output, its error against
  eager, its step against eager's (CUDA-event medians).

One JSON line per step, prefixed ``AOTI-PROBE``. ``bash benchmarks/diag/aoti_probe.sh`` runs them all.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

TAG = "AOTI-PROBE"


def _emit(row: dict) -> None:
    print(f"{TAG} {json.dumps(row)}", flush=True)


def _env() -> None:
    def run(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=30)
            return (done.stdout + done.stderr).strip().splitlines()[0][:200] if (done.stdout + done.stderr) else ""
        except Exception as err:  # noqa: BLE001 - a diagnostic reports what it could not read
            return f"{type(err).__name__}: {err}"

    from torch._inductor import cpp_builder

    try:
        compiler = cpp_builder.get_cpp_compiler()
    except Exception as err:  # noqa: BLE001
        compiler = f"{type(err).__name__}: {err}"
    loaded = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                     if "libstdc++" in line or "libgomp" in line or "libiomp" in line})
    _emit({"step": "env", "python": platform.python_version(), "torch": torch.__version__,
           "cxx11_abi": torch._C._GLIBCXX_USE_CXX11_ABI, "compiler": compiler,
           "compiler_version": run([compiler, "--version"]) if isinstance(compiler, str) else None,
           "glibc": platform.libc_ver(), "libstdcxx_loaded": loaded, "gdb": run(["which", "gdb"]),
           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None})


class _Call(torch.nn.Module):
    """The case's call as a module of positional tensors, for ``torch.export``."""

    def __init__(self, case, module: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.case, self.module, self.names = case, module, names

    def forward(self, *tensors: torch.Tensor):
        out = self.case.call(self.module, dict(zip(self.names, tensors, strict=True)))
        return tuple(t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor))


def _case(name: str):
    from benchmarks.cases import CASES, build_case

    case = CASES[name]
    device = torch.device("cuda")
    module = build_case(case, "full", device, case.dtype)
    inputs = case.inputs("full", device, case.dtype)
    names = sorted(inputs)
    return _Call(case, module, names).eval(), tuple(inputs[n] for n in names)


def _tiny(device: str):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(16, 4, 3, padding=1)).eval().to(device)
    return net, (torch.randn(2, 4, 16, 16, device=device),)


def _package(module, args, path: Path, user_weights: bool) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(module, args, strict=False)
        options = {"aot_inductor.package_constants_in_so": False} if user_weights else {}
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    return time.perf_counter() - start


def _median_ms(fn, rounds: int = 30) -> float:
    times = []
    for _ in range(3):
        fn()
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _load(module, args, path: Path, user_weights: bool) -> dict:
    _sync()
    start = time.perf_counter()
    loaded = torch._inductor.aoti_load_package(str(path))
    if user_weights:
        wanted = set(loaded.get_constant_fqns())  # inductor may have folded some (a last bias) into others
        loaded.load_constants({k: v for k, v in module.state_dict().items() if k in wanted},
                              check_full_update=True, user_managed=True)
    with torch.no_grad():
        out = loaded(*args)
    _sync()
    first_s = time.perf_counter() - start
    with torch.no_grad():
        ref = module(*args)
        got = torch.cat([t.double().flatten() for t in torch.utils._pytree.tree_leaves(out)])
        want = torch.cat([t.double().flatten() for t in torch.utils._pytree.tree_leaves(ref)])
        rel = float((got - want).norm() / want.norm().clamp_min(1e-12))
        row = {"first_call_s": first_s, "rel_err": rel, "load_s_note": "load + first call, after module built"}
        if torch.cuda.is_available() and args[0].is_cuda:
            row["aoti_ms"] = _median_ms(lambda: loaded(*args))
            row["eager_ms"] = _median_ms(lambda: module(*args))
    return row


def main(argv: list[str]) -> int:
    step = argv[0]
    if step == "env":
        _env()
        return 0
    user = "--user-weights" in argv
    if step in ("tiny", "load-tiny"):
        device, folder = argv[1], Path(argv[2])
        module, args = _tiny(device)
        path = folder / f"tiny-{device}{'-user' if user else ''}.pt2"
        if step == "tiny":
            _emit({"step": step, "device": device, "user_weights": user, "package_s": _package(module, args, path, user)})
        else:
            _emit({"step": step, "device": device, "user_weights": user, **_load(module, args, path, user)})
        return 0
    name, folder = argv[1], Path(argv[2])
    path = folder / f"{name}{'-user' if user else ''}.pt2"
    started = time.perf_counter()
    module, args = _case(name)
    built_s = time.perf_counter() - started
    if step == "save":
        _emit({"step": step, "case": name, "user_weights": user, "package_s": _package(module, args, path, user),
               "bytes": path.stat().st_size, "build_module_s": built_s})
    else:
        _emit({"step": step, "case": name, "user_weights": user, "build_module_s": built_s,
               **_load(module, args, path, user)})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONFAULTHANDLER", "1")
    import faulthandler

    faulthandler.enable()
    raise SystemExit(main(sys.argv[1:]))
