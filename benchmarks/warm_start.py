"""Warm start, run as its own process: ``python -m benchmarks.warm_start CASE --size full``.

Builds the case's module, wraps it with trt_runtime (cache dir from ``TRT_CACHE_DIR``) and times the first
call, which should load the artifact a previous process stored instead of compiling. Prints one JSON line:
``warm_start_s`` (first call: lookup, load and run), ``warm_start_build_s`` (building the module, the same
with or without trt_runtime), and the runtime's counters (``loads`` 1 and ``compiles`` 0 when it worked).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from .cases import CASES, build_case


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--settings", default="{}", help="runtime settings as JSON (the cold process's)")
    args = parser.parse_args(argv)

    import trt_runtime

    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    case = CASES[args.case]
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    start = time.perf_counter()
    module = build_case(case, args.size, device, dtype)
    inputs = case.inputs(args.size, device, dtype)
    build_s = time.perf_counter() - start
    settings = {k: v for k, v in json.loads(args.settings).items() if k != "cache_dir"}
    runtime = trt_runtime.TensorRTRuntime(**settings)
    case.wrap(module, runtime)
    loading = _time_artifact_loading()
    start = time.perf_counter()
    with torch.inference_mode():
        case.call(module, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    first = time.perf_counter() - start
    totals = runtime.stats.totals()
    print(json.dumps({"warm_start_s": first, "warm_start_build_s": build_s, "warm_start_loads": totals["loads"],
                      "warm_start_compiles": totals["compiles"], "warm_start_fallbacks": totals["fallbacks"],
                      "warm_start_load_artifacts_s": sum(loading), "warm_start_phases": _phases()}))
    return 0


def _time_artifact_loading() -> list[float]:
    """Seconds spent in ``torch.compiler.load_cache_artifacts`` (what the inductor backend's load does
    before dynamo runs), to tell unpacking the artifact apart from tracing and kernel loading."""
    seconds: list[float] = []
    original = torch.compiler.load_cache_artifacts

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    torch.compiler.load_cache_artifacts = timed
    return seconds


def _phases() -> dict[str, float]:
    """Dynamo's own per-phase compile seconds (tracing, AOT autograd, inductor), summed over frames."""
    try:
        from torch._dynamo.utils import compile_times

        names, values = compile_times(repr="csv", aggregate=True)
        return {name: float(value) for name, value in zip(names, values, strict=False)}
    except Exception as err:  # noqa: BLE001 - diagnostics only
        return {"unavailable": str(err)}


if __name__ == "__main__":
    raise SystemExit(main())
