"""Warm start, run as its own process: ``python -m benchmarks.warm_start CASE --size full``.

Builds the case's module, calls it once eagerly (as the cold process did before its first wrapped call: the
benchmark times eager first, so cuDNN has chosen its algorithms for these shapes in both), wraps it with
trt_runtime (cache dir from ``TRT_CACHE_DIR``) and times the first call, which should load the artifact a previous
process stored instead of compiling. ``warm_start_eager_first_s`` is that eager call. Prints one JSON line:
``warm_start_s`` (first call: lookup, load and run), ``warm_start_build_s`` (building the module, the same
with or without trt_runtime), the runtime's counters (``loads`` 1 and ``compiles`` 0 when it worked) and its
phases (``warm_start_runtime_phases``: fingerprint, checksum, load, validate...). ``--profile N`` adds the N
functions with the most cumulative time in the first call (``warm_start_profile``, cProfile of this thread).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
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
    parser.add_argument("--profile", type=int, default=0, help="report the N costliest functions of the first call")
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
    start = time.perf_counter()
    with torch.inference_mode():
        case.call(module, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    eager_first = time.perf_counter() - start
    settings = {k: v for k, v in json.loads(args.settings).items() if k != "cache_dir"}
    runtime = trt_runtime.TensorRTRuntime(**settings)
    case.wrap(module, runtime)
    loading = _time_artifact_loading()
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    with torch.inference_mode():
        case.call(module, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if profiler is not None:
        profiler.disable()
    first = time.perf_counter() - start
    totals = runtime.stats.totals()
    phases: dict[str, float] = {}
    for row in runtime.stats.rows():
        for phase, seconds in row.phases.items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    figures = {"warm_start_s": first, "warm_start_build_s": build_s, "warm_start_eager_first_s": eager_first, "warm_start_loads": totals["loads"],
               "warm_start_compiles": totals["compiles"], "warm_start_fallbacks": totals["fallbacks"],
               "warm_start_load_artifacts_s": sum(loading), "warm_start_phases": _phases(),
               "warm_start_runtime_phases": phases}
    if profiler is not None:
        figures["warm_start_profile"] = costliest(profiler, args.profile)
    print(json.dumps(figures))
    return 0


def costliest(profiler: cProfile.Profile, count: int) -> list[str]:
    """The ``count`` functions with the most cumulative time, one line each: seconds, calls, where."""
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][3], reverse=True)[:count]  # type: ignore[attr-defined]
    return [f"{cumulative:8.3f} s {calls:7d} {file}:{line}({name})"
            for (file, line, name), (_, calls, _, cumulative, _) in rows]


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
