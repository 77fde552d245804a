"""wrap_pipeline end to end: tiny diffusers pipelines, wrapped vs eager, with the real export tracer.

Each case runs the pipeline eagerly, wraps it, runs it again with the same generator seed (the first
wrapped call compiles), and a third time, which must compile nothing and fall back nowhere.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils import _pytree as pytree

from trt_runtime import ConfigurationError, TensorRTRuntime
from trt_runtime.backends import register_backend, unregister_backend
from trt_runtime.modules.base import installed
from trt_runtime.pipeline import unwrap_pipeline, wrap_pipeline, wrapped_components

from .support import tiny_models as tm
from .support.export_backend import ExportBackend

PROMPT = "a red lighthouse"


def _image(seed: int = 0, mode: str = "RGB") -> Image.Image:
    pixels = (np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8")
    return Image.fromarray(pixels).convert(mode)


def _hunyuan_inputs():
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(1, 6, dtype=torch.int64)
    mask[:, 4:] = 0
    return dict(prompt_embeds=torch.randn(1, 6, 16, generator=g), pooled_prompt_embeds=torch.randn(1, 8, generator=g),
                prompt_attention_mask=mask, height=16, width=16, num_frames=5)


def _multi_controlnet():
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    return MultiControlNetModel([tm.sd_controlnet(seed=1), tm.sd_controlnet(seed=2)])


_SIZE = dict(prompt=PROMPT, height=32, width=32)
# name: (build, inputs, inputs of the third call (None: the same), components expected to compile)
CASES = {
    "sd": (tm.sd_pipeline, lambda: _SIZE, None, {"text_encoder", "unet", "vae.decoder"}),
    "img2img": (lambda: tm.sd_pipeline("StableDiffusionImg2ImgPipeline"),
                lambda: dict(prompt=PROMPT, image=_image(), strength=0.9), None,
                {"text_encoder", "unet", "vae.encoder", "vae.decoder"}),
    "inpaint": (lambda: tm.sd_pipeline("StableDiffusionInpaintPipeline", in_channels=9),
                lambda: dict(image=_image(), mask_image=_image(1, "L"), **_SIZE), None,
                {"text_encoder", "unet", "vae.encoder", "vae.decoder"}),
    "sdxl": (tm.sdxl_pipeline, lambda: _SIZE, None, {"text_encoder", "text_encoder_2", "unet", "vae.decoder"}),
    "controlnet": (lambda: tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=tm.sd_controlnet()),
                   lambda: dict(image=_image(), controlnet_conditioning_scale=0.7, **_SIZE),
                   lambda: dict(image=_image(), controlnet_conditioning_scale=0.3, **_SIZE),
                   {"text_encoder", "unet", "controlnet", "vae.decoder"}),
    "multi_controlnet": (lambda: tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=_multi_controlnet()),
                         lambda: dict(image=[_image(), _image(2)], controlnet_conditioning_scale=[0.7, 0.4], **_SIZE),
                         lambda: dict(image=[_image(), _image(2)], controlnet_conditioning_scale=[0.2, 1.0],
                                      guess_mode=False, **_SIZE),
                         {"text_encoder", "unet", "controlnet.0", "controlnet.1", "vae.decoder"}),
    "sdxl_controlnet": (lambda: tm.sdxl_pipeline(controlnet=tm.sdxl_controlnet()),
                        lambda: dict(image=_image(), controlnet_conditioning_scale=0.5, **_SIZE), None,
                        {"text_encoder", "text_encoder_2", "unet", "controlnet", "vae.decoder"}),
    "sd3": (tm.sd3_pipeline, lambda: _SIZE, None,
            {"text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae.decoder"}),
    "flux": (tm.flux_pipeline, lambda: dict(max_sequence_length=16, **_SIZE), None,
             {"text_encoder", "text_encoder_2", "transformer", "vae.decoder"}),
    "hunyuan_video": (tm.hunyuan_video_pipeline, _hunyuan_inputs, None, {"transformer", "vae.decoder"}),
}


def _run(pipe, inputs: dict, steps: int = 2) -> np.ndarray:
    out = pipe(**inputs, generator=torch.Generator().manual_seed(0), num_inference_steps=steps, output_type="np")
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


def _compiled(runtime) -> set[str]:
    return {row.component for row in runtime.stats.rows() if row.compiles}


@pytest.fixture
def runtime(export_backend, cache_dir):
    return TensorRTRuntime(backend="export", cache_dir=cache_dir, persist=False)


@pytest.mark.parametrize("case", list(CASES))
def test_wrapped_pipeline_matches_eager(runtime, case):
    build, inputs, third_inputs, expected = CASES[case]
    pipe = build()
    want = _run(pipe, inputs())
    want_third = _run(pipe, third_inputs()) if third_inputs else want

    # validate: each new artifact's output is compared with eager once, structure included
    wrap_pipeline(pipe, runtime=runtime, text_encoders=True, validate=True)
    np.testing.assert_allclose(_run(pipe, inputs()), want, atol=1e-4)
    assert _compiled(runtime) == expected
    compiles = runtime.stats.totals()["compiles"]

    np.testing.assert_allclose(_run(pipe, (third_inputs or inputs)()), want_third, atol=1e-4)
    totals = runtime.stats.totals()
    assert totals["compiles"] == compiles and totals["fallbacks"] == 0 and totals["failed"] == 0


def test_unwrap_restores_the_originals(runtime):
    pipe = tm.sd_pipeline()
    want = _run(pipe, _SIZE)
    assert wrap_pipeline(pipe, runtime=runtime, text_encoders=True) is pipe
    modules = [pipe.unet, pipe.vae.encoder, pipe.vae.decoder, pipe.text_encoder]
    assert all(installed(m) for m in modules)
    unwrap_pipeline(pipe)
    assert not any(installed(m) for m in modules) and wrapped_components(pipe) == {}
    np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-6)
    assert runtime.stats.totals()["calls"] == 0
    wrap_pipeline(pipe, runtime=runtime)  # and it can be wrapped again
    assert set(wrapped_components(pipe)) == {"unet", "vae.encoder", "vae.decoder"}


def test_components_turned_off_stay_eager(runtime):
    pipe = tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=tm.sd_controlnet())
    wrap_pipeline(pipe, runtime=runtime, unet=False, controlnet=False)
    assert set(wrapped_components(pipe)) == {"vae.encoder", "vae.decoder"}  # text encoders: off by default
    assert not installed(pipe.unet) and not installed(pipe.controlnet) and not installed(pipe.text_encoder)


def test_settings_apply_to_the_wrapped_components(runtime):
    pipe = tm.sd_pipeline()
    wrap_pipeline(pipe, runtime=runtime, unet=True, vae=False, strict=True, max_shapes_per_component=3)
    (component,) = wrapped_components(pipe).values()
    assert component.settings.strict and component.settings.max_shapes_per_component == 3
    assert not runtime.settings.strict


def test_bad_requests_change_nothing(runtime):
    pipe = tm.sd_pipeline()
    with pytest.raises(ConfigurationError, match="unknown setting"):
        wrap_pipeline(pipe, runtime=runtime, no_such_option=1)
    assert not installed(pipe.unet)
    wrap_pipeline(pipe, runtime=runtime)
    with pytest.raises(ConfigurationError, match="already wrapped"):
        wrap_pipeline(pipe, runtime=runtime)
    with pytest.raises(ConfigurationError, match="not a diffusers pipeline"):
        wrap_pipeline(object(), runtime=runtime)


@pytest.mark.parametrize("order", ["offload-then-wrap", "wrap-then-offload"])
def test_model_cpu_offload(runtime, order):
    """accelerate moves each model to the execution device in its hook, then calls the forward it
    wrapped: the compiled call must run inside that hook, in either order of setup."""
    pipe = tm.sd_pipeline()
    want = _run(pipe, _SIZE)
    if order == "offload-then-wrap":
        pipe.enable_model_cpu_offload(device="cpu")
        wrap_pipeline(pipe, runtime=runtime)
    else:
        wrap_pipeline(pipe, runtime=runtime)
        pipe.enable_model_cpu_offload(device="cpu")
    assert pipe.unet.__dict__["_old_forward"] is installed(pipe.unet)  # ours sits inside accelerate's
    np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-4)
    assert _compiled(runtime) == {"unet", "vae.decoder"}
    unwrap_pipeline(pipe)
    assert installed(pipe.unet) is None and "_hf_hook" in pipe.unet.__dict__  # offload still on
    np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-6)


def test_sequential_offload_is_refused(runtime):
    pipe = tm.sd_pipeline()
    pipe.enable_sequential_cpu_offload(device="cpu")
    with pytest.raises(ConfigurationError, match="enable_sequential_cpu_offload"):
        wrap_pipeline(pipe, runtime=runtime)
    assert not any(installed(m) for m in (pipe.unet, pipe.vae.encoder, pipe.vae.decoder))


def test_lora_scale_through_the_pipeline(runtime):
    peft = pytest.importorskip("peft")
    pipe = tm.sd_pipeline()
    pipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                          init_lora_weights=False))
    want = {s: _run(pipe, dict(cross_attention_kwargs={"scale": s}, **_SIZE)) for s in (0.5, 1.0)}
    assert not np.allclose(want[0.5], want[1.0])
    wrap_pipeline(pipe, runtime=runtime, vae=False)
    for scale in (0.5, 1.0, 0.5):
        np.testing.assert_allclose(_run(pipe, dict(cross_attention_kwargs={"scale": scale}, **_SIZE)), want[scale],
                                   atol=1e-4)
    assert runtime.stats.totals()["compiles"] == 2  # one per LoRA scale, reused after


def test_pipe_to_after_wrapping(runtime):
    pipe = tm.sd_pipeline()
    want = _run(pipe, _SIZE)
    wrap_pipeline(pipe, runtime=runtime)
    pipe.to("cpu")
    np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-4)


class _RejectsLargeLatents(ExportBackend):
    """A compiler that cannot build the UNet for latents wider than 16 (as TensorRT can reject a shape)."""

    name = "picky"

    def compile(self, request):
        sample = request.kwargs.get("sample")
        if request.component == "unet" and sample is not None and sample.shape[-1] > 16:
            raise RuntimeError(f"no kernel for shape {tuple(sample.shape)}")
        return super().compile(request)


def test_size_that_cannot_compile_runs_eagerly(cache_dir, caplog):
    register_backend("picky", _RejectsLargeLatents)
    try:
        runtime = TensorRTRuntime(backend="picky", cache_dir=cache_dir, persist=False)
        pipe = tm.sd_pipeline()
        large = dict(prompt=PROMPT, height=48, width=48)
        want = {"small": _run(pipe, _SIZE), "large": _run(pipe, large)}
        wrap_pipeline(pipe, runtime=runtime)
        with caplog.at_level(logging.WARNING, logger="trt_runtime"):
            np.testing.assert_allclose(_run(pipe, large), want["large"], atol=1e-4)
        assert any("unet" in r.getMessage() and "running eagerly" in r.getMessage() for r in caplog.records)
        np.testing.assert_allclose(_run(pipe, _SIZE), want["small"], atol=1e-4)  # other sizes still compile
        totals = runtime.stats.totals()
        assert totals["failed"] == 1 and "unet" in _compiled(runtime)
        np.testing.assert_allclose(_run(pipe, large), want["large"], atol=1e-4)
        assert runtime.stats.totals()["compiles"] == totals["compiles"]  # the failure is remembered
    finally:
        unregister_backend("picky")


def test_next_process_loads_instead_of_compiling(export_backend, cache_dir):
    pipe = tm.sd_pipeline()
    first = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    wrap_pipeline(pipe, runtime=first)
    want = _run(pipe, _SIZE)
    unwrap_pipeline(pipe)
    second = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    wrap_pipeline(pipe, runtime=second)
    np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-6)
    assert second.stats.totals()["compiles"] == 0 and second.stats.totals()["loads"] == 2


@pytest.mark.slow
def test_inductor_sd_pipeline(cache_dir):
    """The real torch.compile backend on the SD1.5-structured pipeline, UNet and VAE (about a minute)."""
    runtime = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    pipe = tm.sd_pipeline()
    want = _run(pipe, _SIZE)
    wrap_pipeline(pipe, runtime=runtime, unet=True, vae=True)
    with torch.inference_mode():
        np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-4)
        compiles = runtime.stats.totals()["compiles"]
        assert _compiled(runtime) == {"unet", "vae.decoder"}
        np.testing.assert_allclose(_run(pipe, _SIZE), want, atol=1e-4)
    totals = runtime.stats.totals()
    assert totals["compiles"] == compiles and totals["fallbacks"] == 0


# ------------------------------------------------------------------------------------------ shape ranges
class _DynamicExportBackend(ExportBackend):
    """``ExportBackend`` that also builds declared ranges (the shared one refuses them): one
    ``torch.export`` program with dynamic dims serves every size inside the range, which is what a
    TensorRT engine with an optimization profile does. Records what each build was asked for."""

    name = "dynexport"

    def __init__(self) -> None:
        self.builds: list[tuple[str, dict[str, tuple[int, ...]]]] = []

    def compile(self, request):
        self.builds.append((request.component, {path: tuple(sorted(dims)) for path, dims in request.dynamic.items()}))
        if not request.dynamic:
            return super().compile(request)
        assert not request.args, "the component wrappers call their core with keywords only"
        leaves = [(".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path), leaf)
                  for path, leaf in pytree.tree_flatten_with_path(dict(request.kwargs))[0]]
        tensors = [(path, leaf) for path, leaf in leaves if isinstance(leaf, torch.Tensor)]
        dynamic = tuple(
            {i: torch.export.Dim.DYNAMIC(min=d.min, max=d.max) for i, d in request.dynamic.get(path, {}).items()}
            or None for path, _ in tensors
        )
        flat = _FlatKeywords(request.module, dict(request.kwargs))
        program = torch.export.export(flat, tuple(t for _, t in tensors), dynamic_shapes=(dynamic,), strict=False)
        module = program.module()

        def run(**kwargs):
            return module(*[leaf for leaf in pytree.tree_leaves(kwargs) if isinstance(leaf, torch.Tensor)])

        return run


class _FlatKeywords(torch.nn.Module):
    """A keyword call as ``forward(*tensors)`` (non-tensor values fixed as traced), for ``dynamic_shapes``."""

    def __init__(self, module: torch.nn.Module, kwargs: dict) -> None:
        super().__init__()
        self.inner = module
        self._leaves, self._tree = pytree.tree_flatten(kwargs)
        self._slots = [i for i, leaf in enumerate(self._leaves) if isinstance(leaf, torch.Tensor)]

    def forward(self, *tensors):
        leaves = list(self._leaves)
        for index, tensor in zip(self._slots, tensors, strict=True):
            leaves[index] = tensor
        return self.inner(**pytree.tree_unflatten(leaves, self._tree))


@pytest.fixture
def ranged(cache_dir):
    """(runtime, backend) on ``_DynamicExportBackend``."""
    backend = _DynamicExportBackend()
    register_backend("dynexport", lambda: backend)
    try:
        yield TensorRTRuntime(backend="dynexport", cache_dir=cache_dir, persist=False), backend
    finally:
        unregister_backend("dynexport")


def _compiles(runtime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in runtime.stats.rows():
        counts[row.component] = counts.get(row.component, 0) + row.compiles
    return counts


# The tiny VAE downsamples 2x: 32..64 px is latent 16..32 (SD1.5's 512..1024 px is latent 64..128).
_LATENT = (16, 24, 32)
_SD_SHAPES = {"unet": {"sample": {2: _LATENT, 3: _LATENT}}, "vae.decoder": {"sample": {2: _LATENT, 3: _LATENT}}}


def _sized(px: int, **extra) -> dict:
    return dict(prompt=PROMPT, height=px, width=px, **extra)


def test_declared_range_serves_resolutions_inside_it(ranged):
    runtime, backend = ranged
    pipe = tm.sd_pipeline()
    want = {px: _run(pipe, _sized(px)) for px in (32, 48)}
    wrap_pipeline(pipe, runtime=runtime, vae=True, shapes=_SD_SHAPES)
    for px in (32, 48, 32):
        np.testing.assert_allclose(_run(pipe, _sized(px)), want[px], atol=1e-4)
    assert _compiles(runtime) == {"unet": 1, "vae.decoder": 1}
    assert sorted(backend.builds) == [("unet", {"sample": (2, 3)}), ("vae.decoder", {"sample": (2, 3)})]
    totals = runtime.stats.totals()
    assert totals["fallbacks"] == 0 and totals["failed"] == 0


def test_resolution_outside_the_range_gets_an_exact_shape_artifact(ranged):
    runtime, backend = ranged
    pipe = tm.sd_pipeline()
    want = {px: _run(pipe, _sized(px)) for px in (32, 80)}  # 80 px: latent 40 > 32
    wrap_pipeline(pipe, runtime=runtime, shapes=_SD_SHAPES)
    np.testing.assert_allclose(_run(pipe, _sized(32)), want[32], atol=1e-4)
    np.testing.assert_allclose(_run(pipe, _sized(80)), want[80], atol=1e-4)
    assert _compiles(runtime) == {"unet": 2, "vae.decoder": 2}
    assert backend.builds[2:] == [("unet", {}), ("vae.decoder", {})]  # outside: static, its own key
    np.testing.assert_allclose(_run(pipe, _sized(32)), want[32], atol=1e-4)  # the ranged one still serves 32
    assert _compiles(runtime) == {"unet": 2, "vae.decoder": 2}
    assert runtime.stats.totals()["fallbacks"] == 0


@pytest.mark.parametrize("shapes, match", [
    ({"unet": _SD_SHAPES["unet"], "vae.decodr": {"sample": {2: (16, 32)}}},
     r"'vae.decodr'.*valid names: vae.encoder, vae.decoder, unet, controlnet;"),
    ({"controlnet.0": {"sample": {2: (16, 32)}}}, "'controlnet.0'"),  # a single ControlNet has no nets
    ({"text_encoder": {"input_ids": {0: (1, 4)}}}, "'text_encoder'"),  # text encoders are off by default
    ({"unet": _SD_SHAPES["unet"], "vae.decoder": {"z": {2: (16, 32)}}}, r"'z'.*paths start with one of: sample"),
])
def test_bad_shapes_raise_and_install_nothing(ranged, shapes, match):
    runtime, _ = ranged
    pipe = tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=tm.sd_controlnet())
    with pytest.raises(ConfigurationError, match=match):
        wrap_pipeline(pipe, runtime=runtime, shapes=shapes)
    modules = [pipe.unet, pipe.vae.encoder, pipe.vae.decoder, pipe.controlnet, pipe.text_encoder]
    assert not any(installed(m) for m in modules) and wrapped_components(pipe) == {}
    wrap_pipeline(pipe, runtime=runtime, shapes={"unet": _SD_SHAPES["unet"]})  # nothing was left behind


def test_controlnet_range_applies_to_each_net(ranged):
    runtime, backend = ranged
    pipe = tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=_multi_controlnet())
    inputs = {px: dict(image=[_image(), _image(2)], controlnet_conditioning_scale=[0.7, 0.4], **_sized(px))
              for px in (32, 48)}
    want = {px: _run(pipe, inputs[px]) for px in inputs}
    net = {"sample": {2: _LATENT, 3: _LATENT}, "controlnet_cond": {2: (32, 64), 3: (32, 64)}}
    narrow = {"sample": {2: (16, 20), 3: (16, 20)}, "controlnet_cond": {2: (32, 40), 3: (32, 40)}}
    wrap_pipeline(pipe, runtime=runtime, unet=False, vae=False, shapes={"controlnet": net, "controlnet.1": narrow})
    assert {name: comp.spec is not None for name, comp in wrapped_components(pipe).items()} == {
        "controlnet.0": True, "controlnet.1": True}
    for px in (32, 48, 32):
        np.testing.assert_allclose(_run(pipe, inputs[px]), want[px], atol=1e-4)
    # net 0 takes the shared range (one artifact for both sizes); net 1 its own, which 48 px is outside
    assert _compiles(runtime) == {"controlnet.0": 1, "controlnet.1": 2}
    assert [b for b in backend.builds if b[0] == "controlnet.0"] == [
        ("controlnet.0", {"sample": (2, 3), "controlnet_cond": (2, 3)})]
    assert runtime.stats.totals()["fallbacks"] == 0
