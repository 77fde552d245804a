"""One artifact serves a declared range, on both compiling backends, for real (tiny) diffusers models.

TensorRT runs through the torch_tensorrt STAND-IN (tests/backends/standin: ``torch.export`` with the
derived dims, the ``Input`` profile, save and load; no engine is built). Inductor is the real
``torch.compile`` (marked ``slow``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import tiny_models as tm
from trt_runtime import Dim, EngineBuildError, TensorRTModule, TensorRTRuntime
from trt_runtime.pipeline import unwrap_pipeline, wrap_pipeline

PROMPT = "a red lighthouse"


def _hint(px: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(px).rand(px, px, 3) * 255).astype("uint8"))


def _generate(pipe, px: int, batch: int) -> np.ndarray:
    with torch.inference_mode():
        return pipe(prompt=[PROMPT] * batch, image=_hint(px), height=px, width=px, num_inference_steps=2,
                    output_type="np", generator=torch.Generator().manual_seed(0)).images


def _compiles(runtime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in runtime.stats.rows():
        counts[row.component] = counts.get(row.component, 0) + row.compiles
    return counts


def test_wrap_pipeline_ranges_build_once_per_component_on_tensorrt(standin, tmp_path):
    """SD ControlNet pipeline: the UNet (with the ControlNet residuals at three latent sizes), the
    ControlNet (image = 2x latent in the tiny models) and the VAE decoder each build one program that
    serves every size and batch inside ``resolutions`` / ``batch_sizes``; a new runtime loads them."""
    trt = standin("2.14.0")
    pipe = tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=tm.sd_controlnet())
    cases = [(32, 1), (48, 2), (40, 1)]  # tiny VAE 2x, tiny UNet steps of 2: images in steps of 4 px
    want = {case: _generate(pipe, *case) for case in [*cases, (44, 2)]}
    runtime = TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    wrap_pipeline(pipe, runtime=runtime, resolutions=(32, 48), batch_sizes=(1, 2))
    for case in cases:
        np.testing.assert_allclose(_generate(pipe, *case), want[case], atol=1e-5)
    assert _compiles(runtime) == {"unet": 1, "controlnet": 1, "vae.decoder": 1}
    assert runtime.stats.totals()["fallbacks"] == 0

    profiles = {(i.min_shape, i.max_shape) for name, kw in trt.CALLS if name == "compile" for i in kw["arg_inputs"]
                if getattr(i, "min_shape", None)}
    assert ((1, 4, 16, 16), (4, 4, 24, 24)) in profiles  # UNet/ControlNet latents: CFG doubles batch 2
    assert ((1, 3, 32, 32), (4, 3, 48, 48)) in profiles  # ControlNet image: 2x the latent
    assert ((1, 32, 8, 8), (4, 32, 12, 12)) in profiles  # deepest UNet residual: half the latent

    unwrap_pipeline(pipe)
    again = TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    wrap_pipeline(pipe, runtime=again, resolutions=(32, 48), batch_sizes=(1, 2))
    np.testing.assert_allclose(_generate(pipe, 44, 2), want[(44, 2)], atol=1e-5)
    totals = again.stats.totals()
    assert (totals["compiles"], totals["loads"], totals["fallbacks"]) == (0, 3, 0)


def test_a_range_the_unet_cannot_take_fails_with_dim_advice(standin, tmp_path):
    """The README of 0.1.0 declared a UNet range without a step: torch.export refuses it. The error says
    what to change instead of burying it in torch's output."""
    standin("2.14.0")
    unet = tm.sd_unet()
    batch = Dim("batch", 1, 4)
    shapes = {"sample": {0: batch, 2: Dim("h", 16, 32), 3: Dim("w", 16, 32)}, "encoder_hidden_states": {0: batch}}
    wrapped = TensorRTModule(unet, runtime=TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True),
                             shapes=shapes)
    with pytest.raises(EngineBuildError) as info, torch.no_grad():
        wrapped(torch.randn(2, 4, 16, 16), 10, torch.randn(2, 16, 32))
    assert "multiple_of=2" in str(info.value) and len(str(info.value).splitlines()) < 25


@pytest.mark.slow
def test_one_inductor_graph_serves_a_stepped_unet_range(cache_dir):
    """The real torch.compile: sizes on the step and batches inside the range share one key and one
    dynamo graph (no recompilation), with outputs equal to eager."""
    from torch._dynamo.utils import counters

    unet = tm.sd_unet()
    batch, h, w = Dim("batch", 2, 8), Dim("h", 16, 32, multiple_of=2), Dim("w", 16, 32, multiple_of=2)
    runtime = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    wrapped = TensorRTModule(unet, runtime=runtime, shapes={
        "sample": {0: batch, 2: h, 3: w}, "encoder_hidden_states": {0: batch}})
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for size in [(2, 16, 16), (4, 24, 18), (8, 32, 20)]:
            x, text = torch.randn(size[0], 4, *size[1:]), torch.randn(size[0], 16, 32)
            torch.testing.assert_close(wrapped(x, 10, text).sample, unet(x, 10, text).sample, atol=1e-4, rtol=1e-4)
    totals = runtime.stats.totals()
    assert (totals["keys"], totals["compiles"], totals["fallbacks"]) == (1, 1, 0)
    assert counters["stats"]["unique_graphs"] - graphs == 1


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_transformer_ranges_build_once_on_tensorrt(family, standin, tmp_path):
    """SD3 (latents in patch steps, timestep expanded to the batch) and Flux (packed latents: a range of
    image tokens shared by ``hidden_states`` and ``img_ids``): one program for every size and batch."""
    standin("2.14.0")
    pipe = tm.sd3_pipeline() if family == "sd3" else tm.flux_pipeline()
    extra = {"max_sequence_length": 16} if family == "flux" else {}

    def generate(px, batch):
        with torch.inference_mode():
            return pipe(prompt=[PROMPT] * batch, height=px, width=px, num_inference_steps=2, output_type="np",
                        generator=torch.Generator().manual_seed(0), **extra).images

    cases = [(32, 1), (48, 2), (40, 1)]
    want = {case: generate(*case) for case in cases}
    runtime = TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, persist=False)
    wrap_pipeline(pipe, runtime=runtime, vae=False, resolutions=(32, 48), batch_sizes=(1, 2))
    for case in cases:
        np.testing.assert_allclose(generate(*case), want[case], atol=1e-5)
    assert _compiles(runtime) == {"transformer": 1} and runtime.stats.totals()["fallbacks"] == 0
