"""Diagnostic (GPU, tensorrt backend): what a second wrapper of the same module costs in the same process, and
what CUDA graphs give an engine.

A process wraps the case's full-size module with runtime A (``cuda_graphs=False``): its first call builds
the engine, or loads it when the cache has it. Then runtime B (default ``cuda_graphs="auto"``) wraps a copy
sharing the weights. Before ``trt_runtime.loaded``, B loaded the entry again and TensorRT-RTX compiled the
engine's kernels again (26.6 s for an SD1.5 UNet on an H100); now B reuses A's engine where A loaded it
(after a build, B loads the entry from disk: a program just built is not shared). Then both are timed in
blocks of calls (A without graphs, B with them), beside eager.

``python -m benchmarks.diag.second_runtime [--case sd15_unet] [--cache DIR] [--calls 50] [--size tiny]`` prints one JSON
line: first calls of A and B in seconds, B's counters, step medians in ms, and B's relative error to A.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from benchmarks.cases import CASES, build_case, variant_copy
from benchmarks.harness import relative_error, sync, time_blocks


def _first_call(fn, device) -> tuple[object, float]:
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        out = fn()
    sync(device)
    return out, time.perf_counter() - started


def measure(case_name: str, cache_dir: str, calls: int, size: str = "full") -> dict:
    import trt_runtime

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    case = CASES[case_name]
    dtype = case.dtype if device.type == "cuda" else torch.float32
    eager = build_case(case, size, device, dtype)
    inputs = case.inputs(size, device, dtype)
    first = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, cuda_graphs=False)
    second = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir)
    a = variant_copy(eager)
    case.wrap(a, first)  # in place, as the benchmark does
    runs = {"eager": lambda: case.call(eager, inputs), "A": lambda: case.call(a, inputs)}
    reference, eager_s = _first_call(runs["eager"], device)
    out_a, a_s = _first_call(runs["A"], device)
    b = variant_copy(eager)
    case.wrap(b, second)
    runs["B"] = lambda: case.call(b, inputs)
    out_b, b_s = _first_call(runs["B"], device)
    times = time_blocks(runs, device, calls)
    med = {name: statistics.median(values) * 1e3 for name, values in times.items()}
    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return {"case": case_name, "size": size, "gpu": gpu, "torch": torch.__version__,
            "A_first_call_s": round(a_s, 3), "A_totals": first.stats.totals(),
            "A_phases": {row.component: row.phases for row in first.stats.rows()},
            "B_first_call_s": round(b_s, 3), "B_totals": second.stats.totals(),
            "eager_first_call_s": round(eager_s, 3),
            "step_ms": {"eager": med["eager"], "A_engine_no_graphs": med["A"], "B_engine_graphs": med["B"]},
            "rel_error_A": relative_error(out_a, reference), "rel_error_B_vs_A": relative_error(out_b, out_a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="sd15_unet", choices=sorted(CASES))
    parser.add_argument("--cache", default=None, help="engine cache folder (default: a fresh temporary one)")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--size", default="full", choices=("full", "tiny"), help="tiny: a smoke test of the script")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as fresh:
        print(json.dumps(measure(args.case, args.cache or fresh, args.calls, args.size), default=str), flush=True)


if __name__ == "__main__":
    main()
