"""Diagnostic (CPU or GPU): what trt_runtime's wrapper costs the host per call, apart from the compiled code.

Each case's full-size module is wrapped with a stub compiler whose "artifact" returns the output of one eager
call at once, so a call's time is the wrapper's own work: binding the call's arguments, checking the module's
device, dtype and weights, keying the signature, choosing the artifact, rebuilding the output type. The
inputs are the case's with a small spatial size (the wrapper reads shapes, never values, so its cost does not
depend on them; the one eager call stays short on a CPU). CUDA graphs are off: their copies are measured by
the benchmark's ``graph copies + wrapper`` column on the GPU.

``python -m benchmarks.diag.wrapper_overhead [--cases sd15_unet,sdxl_unet,clip_l] [--calls 2000]`` prints one
JSON line per case: the median and 90th percentile of a wrapped call, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from benchmarks.cases import CASES, build_case

_SMALL = {"sample": (8, 8), "controlnet_cond": (64, 64)}
"""Spatial sizes of the inputs that have one; the other inputs keep their full-size shapes."""


def _shrink(inputs: dict) -> dict:
    out = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor) and name in _SMALL and value.dim() == 4:
            value = torch.randn(*value.shape[:2], *_SMALL[name], dtype=value.dtype, device=value.device)
        out[name] = value
    return out


def _stub_backend():
    from trt_runtime.backends import Backend

    class Stub(Backend):
        """Compiles nothing: the artifact returns what the module returned for the example call."""

        name = "stub"
        persistent = False
        builds_beside_calls = True

        def embeds_weights(self, settings) -> bool:
            return False

        def compile(self, request):
            with torch.no_grad():
                out = request.module(*request.args, **request.kwargs)
            return lambda *args, **kwargs: out

    return Stub


def measure(name: str, calls: int) -> dict:
    from trt_runtime import TensorRTRuntime

    case = CASES[name]
    module = build_case(case, "full", torch.device("cpu"), torch.float32)
    inputs = _shrink(case.inputs("full", torch.device("cpu"), torch.float32))
    runtime = TensorRTRuntime(backend="stub", persist=False, cuda_graphs=False)
    case.wrap(module, runtime)
    times = []
    with torch.no_grad():
        case.call(module, inputs)  # the stub's one eager call
        for _ in range(calls):
            start = time.perf_counter_ns()
            case.call(module, inputs)
            times.append(time.perf_counter_ns() - start)
    totals = runtime.stats.totals()
    assert totals["compiles"] == 1 and totals["fallbacks"] == 0, totals
    times.sort()
    return {"case": name, "calls": calls, "median_us": statistics.median(times) / 1e3,
            "p90_us": times[int(0.9 * len(times))] / 1e3, "parameters": sum(1 for _ in module.parameters()),
            "python": platform.python_version(), "torch": torch.__version__, "machine": platform.processor()
            or platform.machine()}


def main(argv: list[str] | None = None) -> None:
    from trt_runtime.backends import register_backend

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="sd15_unet,sdxl_unet,clip_l")
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    register_backend("stub", _stub_backend())
    for name in args.cases.split(","):
        print(json.dumps(measure(name, args.calls)), flush=True)


if __name__ == "__main__":
    main()
