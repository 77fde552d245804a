"""End-to-end benchmarks: a whole generation with each variant, and the recompilation checks.

One figure per variant: seconds per image (text encoding, every denoising step, VAE decode), the
variants alternating image by image. Then, on the trt_runtime pipeline only: a new prompt, a new seed and
a new guidance scale must not compile anything.
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

    from .pipelines import PIPELINES, build_pipeline, variant_pipelines

    _CURRENT.clear()
    torch._dynamo.reset()
    case = PIPELINES[pipeline_name]
    dtype = options.dtype(torch.float16)
    steps, pixels = case.steps[options.size], case.pixels[options.size]
    figures = {"case": pipeline_name, "title": case.title, "size": options.size, "steps": steps, "pixels": pixels,
               "dtype": str(dtype).removeprefix("torch.")}
    pipe = build_pipeline(pipeline_name, options.size, options.device, dtype)
    runtime = trt_runtime.TensorRTRuntime(cache_dir=options.scratch / "engines" / pipeline_name, **options.settings)
    variants = variant_pipelines(pipe, runtime)

    def generate(p, prompt="a lighthouse at dawn, oil painting", seed=0, guidance=7.5):
        generator = torch.Generator("cpu").manual_seed(seed)
        return p(prompt, num_inference_steps=steps, height=pixels, width=pixels, guidance_scale=guidance,
                 generator=generator, output_type="pt").images

    runs = {name: (lambda p=p: generate(p)) for name, p in variants.items()}
    outputs = {}
    with torch.inference_mode():
        for name in ("eager", "trt_runtime", "torch_compile"):  # ours first: its compile is the cold one
            sync(options.device)
            start = time.perf_counter()
            outputs[name] = runs[name]()
            sync(options.device)
            figures[f"{name}_first_call_s"] = time.perf_counter() - start
        for name in ("torch_compile", "trt_runtime"):
            figures[f"{name}_rel_error"] = relative_error(outputs[name], outputs["eager"])
        compiled = runtime.stats.totals()["compiles"]
        generate(variants["trt_runtime"], prompt="a red bicycle in the snow", seed=7, guidance=4.0)
        figures["trt_runtime_compiles_after_new_prompt_seed_guidance"] = runtime.stats.totals()["compiles"] - compiled
    figures.update(summarize(time_interleaved(runs, options.device, max(2, options.rounds // 10))))
    totals = runtime.stats.totals()
    figures.update(trt_runtime_compiles=totals["compiles"], trt_runtime_fallbacks=totals["fallbacks"],
                   trt_runtime_components=sorted(row.component for row in runtime.stats.rows()),
                   trt_runtime_backend=sorted({row.backend for row in runtime.stats.rows()}))
    recorder.record(pipeline_name, figures)
    _CURRENT.update(runs=runs, figures=figures)
    yield _CURRENT
    _CURRENT.clear()


@pytest.mark.parametrize("variant", VARIANTS)
def test_pipeline_image(benchmark, pipelines, variant, options):
    figures = pipelines["figures"]
    benchmark.group = figures["case"]
    benchmark.extra_info.update({k: v for k, v in figures.items() if k.startswith(variant) or "_" not in k})
    time_with(benchmark, pipelines["runs"][variant], options.device, rounds=2)
    if variant == "trt_runtime":
        assert figures["trt_runtime_fallbacks"] == 0
        assert figures["trt_runtime_compiles_after_new_prompt_seed_guidance"] == 0
        assert figures["trt_runtime_rel_error"] < 0.1, figures["trt_runtime_rel_error"]
