"""End-to-end benchmarks: a whole generation with each variant, and the recompilation checks.

One figure per variant: seconds per image (text encoding, every denoising step, VAE decode), the
variants alternating image by image. Then, on the trt_runtime pipeline only: a new prompt, a new seed and
a new guidance scale must not compile anything. Figures are recorded as soon as they exist, so a run
cut off by a time limit keeps what it measured.
"""

from __future__ import annotations

import time

import pytest
import torch

from .conftest import time_with
from .harness import VARIANTS, relative_error, summarize, sync, time_interleaved

_CURRENT: dict[str, object] = {}


@pytest.fixture(scope="session")
def pipelines(pipeline_name, options, recorder):
    import trt_runtime

    from .pipelines import PIPELINES, build_pipeline, generate, variant_pipelines

    _CURRENT.clear()
    torch._dynamo.reset()
    if options.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(options.device)  # the peak below is this case's, not the session's
    case = PIPELINES[pipeline_name]
    dtype = options.dtype(case.dtype)
    figures = {"case": pipeline_name, "title": case.title, "size": options.size, "steps": case.steps[options.size],
               "pixels": case.pixels[options.size], "dtype": str(dtype).removeprefix("torch.")}
    start = time.perf_counter()
    pipe = build_pipeline(pipeline_name, options.size, options.device, dtype)
    figures["build_s"] = time.perf_counter() - start
    figures["parameters"] = {name: sum(p.numel() for p in module.parameters())
                             for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
    runtime = trt_runtime.TensorRTRuntime(cache_dir=options.scratch / "engines" / pipeline_name, **options.settings)
    variants = variant_pipelines(pipe, runtime, options.variants)
    runs = {name: (lambda p=p: generate(p, case, options.size)) for name, p in variants.items()}
    outputs = {}
    with torch.inference_mode():
        for name in ("eager", "trt_runtime", "torch_compile", "torch_compile_ro"):  # ours first: the cold compile
            if name not in runs:
                continue
            sync(options.device)
            start = time.perf_counter()
            outputs[name] = runs[name]()
            sync(options.device)
            figures[f"{name}_first_call_s"] = time.perf_counter() - start
            if name != "eager":
                figures[f"{name}_rel_error"] = relative_error(outputs[name], outputs["eager"])
            recorder.record(pipeline_name, figures)
        if "trt_runtime" in variants:
            compiled = runtime.stats.totals()["compiles"]
            generate(variants["trt_runtime"], case, options.size, prompt="a red bicycle in the snow", seed=7,
                     guidance=case.guidance / 2)
            figures["trt_runtime_compiles_after_new_prompt_seed_guidance"] = (
                runtime.stats.totals()["compiles"] - compiled)
    totals = runtime.stats.totals()
    figures.update(trt_runtime_compiles=totals["compiles"], trt_runtime_fallbacks=totals["fallbacks"],
                   trt_runtime_components=sorted(row.component for row in runtime.stats.rows()),
                   trt_runtime_backend=sorted({row.backend for row in runtime.stats.rows()}))
    recorder.record(pipeline_name, figures)
    if options.device.type == "cuda":
        figures["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(options.device)
    figures.update(summarize(time_interleaved(runs, options.device, max(2, options.rounds // 20))))
    recorder.record(pipeline_name, figures)
    _CURRENT.update(runs=runs, figures=figures)
    yield _CURRENT
    _CURRENT.clear()
    variants.clear()
    runs.clear()


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipeline_image(benchmark, pipelines, variant, options):
    if variant not in pipelines["runs"]:
        pytest.skip(f"variant {variant} not selected (--bench-variants)")
    figures = pipelines["figures"]
    benchmark.group = figures["case"]
    benchmark.extra_info.update({k: v for k, v in figures.items() if k.startswith(variant) or "_" not in k})
    # the interleaved rounds above are the figures; this is pytest-benchmark's table, already warm
    time_with(benchmark, pipelines["runs"][variant], options.device, rounds=2, warmup_rounds=0)
    if variant == "trt_runtime":
        assert figures["trt_runtime_fallbacks"] == 0
        assert figures["trt_runtime_compiles_after_new_prompt_seed_guidance"] == 0
        assert figures["trt_runtime_rel_error"] < 0.1, figures["trt_runtime_rel_error"]
