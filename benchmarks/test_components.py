"""Per-component benchmarks: eager, plain torch.compile and trt_runtime, side by side in one process.

The session fixture prepares one case at a time (cold compile of ours, then plain torch.compile), times
the three variants interleaved, measures the warm start in a fresh process where asked, and records the
figures. Each test then lets pytest-benchmark time one variant (its table groups them by case) and
checks what must hold for the figures to mean anything: our output matches eager within the precision's
tolerance, nothing fell back to eager, and a warm start loaded instead of compiling.
"""

from __future__ import annotations

import pytest
import torch

from .conftest import time_with
from .harness import VARIANTS, graph_memory, prepare, summarize, time_blocks, time_interleaved, warm_start

# relative error ||ours - eager|| / ||eager||: fp32 compiles reorder sums (1e-5); fp16/bf16 round
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}

_CURRENT: dict[str, object] = {}


@pytest.fixture(scope="session")
def prepared(case_name, options, recorder):
    from .cases import CASES

    previous = _CURRENT.pop("prepared", None)
    if previous is not None:
        previous.release()
    case = CASES[case_name]
    dtype = options.dtype(case.dtype)
    cache = options.scratch / "engines" / case_name
    ready = prepare(case, options.size, options.device, dtype, cache, options.settings, options.variants)
    interleaved = time_interleaved(ready.runs, options.device, options.rounds)
    ready.figures.update(summarize(interleaved))
    blocks = time_blocks(ready.runs, options.device, max(2, options.rounds // 2))
    ready.figures.update({f"blocks_{k}": v for k, v in summarize(blocks).items()})
    ready.figures["raw_seconds"] = {"interleaved": interleaved, "blocks": blocks}
    ready.figures["trt_runtime_graph_bytes"] = graph_memory(ready)
    if options.measures_warm_start(case_name) and "trt_runtime" in ready.runs:
        ready.figures.update(warm_start(case, options.size, options.device, dtype, cache, options.scratch,
                                        options.settings, profile=options.warm_profile))
        cold = ready.figures["trt_runtime_first_call_s"]
        if "warm_start_s" in ready.figures:
            ready.figures["warm_start_fraction_of_cold"] = ready.figures["warm_start_s"] / cold
    recorder.record(case_name, ready.figures)
    _CURRENT["prepared"] = ready
    return ready


@pytest.mark.parametrize("variant", VARIANTS)
def test_component_step(benchmark, prepared, variant, options):
    if variant not in prepared.runs:
        pytest.skip(f"variant {variant} not selected (--bench-variants)")
    figures = prepared.figures
    benchmark.group = prepared.case.name
    benchmark.extra_info.update({k: v for k, v in figures.items() if (k.startswith(variant) or "_" not in k) and k != "raw_seconds"})
    time_with(benchmark, prepared.runs[variant], options.device, rounds=max(3, options.rounds // 3))

    if variant == "trt_runtime":
        assert figures["trt_runtime_fallbacks"] == 0, "trt_runtime fell back to eager: the figure is eager's"
        assert figures["trt_runtime_compiles"] >= 1
        assert figures["trt_runtime_rel_error"] < TOLERANCE[prepared.dtype], figures["trt_runtime_rel_error"]
        assert "warm_start_error" not in figures, figures.get("warm_start_error")
        if "warm_start_s" in figures:
            assert figures["warm_start_loads"] >= 1 and figures["warm_start_compiles"] == 0, (
                    figures.get("warm_start_log"))
