"""Declared ranges: ``Dim`` steps and derived dims, how each backend is told about them, and the ranges
``wrap_pipeline(resolutions=..., batch_sizes=...)`` declares for each model family (tiny models, no
compiles: the end-to-end builds are in tests/backends/test_declared_ranges.py)."""

from __future__ import annotations

import pytest
import torch

from trt_runtime import ConfigurationError, Dim, EngineBuildError, TensorRTRuntime
from trt_runtime.backends import CompileRequest
from trt_runtime.backends import _tensorrt_export as trt_export
from trt_runtime.keys import signature, signature_json
from trt_runtime.pipeline import wrap_pipeline, wrapped_components
from trt_runtime.ranges import declared_ranges, parse_batch_sizes, parse_resolutions
from trt_runtime.settings import RuntimeSettings
from trt_runtime.shapes import constraint_hint, first_lines, normalize_spec

from .support import tiny_models as tm


# ------------------------------------------------------------------------------------------ Dim
def test_multiple_of_admits_only_sizes_on_the_step():
    h = Dim("h", 32, 128, multiple_of=8)
    assert [s for s in range(24, 140) if h.contains(s)] == list(range(32, 129, 8))
    assert h.steps == (4, 16) and h.symbol == "h_div8" and h.opt_value == 128
    assert Dim("b", 1, 4).symbol == "b" and Dim("b", 1, 4).steps == (1, 4)


@pytest.mark.parametrize("make, match", [
    (lambda: Dim("h", 30, 128, multiple_of=8), r"min 30 is not a multiple of 8.*use 24 or 32"),
    (lambda: Dim("h", 32, 100, multiple_of=8), "max 100 is not a multiple of 8"),
    (lambda: Dim("h", 32, 128, opt=60, multiple_of=8), "opt 60"),
    (lambda: Dim("h", 32, 128, multiple_of=0), "multiple_of must be at least 1"),
    (lambda: Dim("h", 32.0, 128), "min must be an int"),
    (lambda: Dim("h", 64, 32), "min <= max"),
    (lambda: Dim("not a name", 1, 2), "identifier"),
    (lambda: Dim("h", 32, 128, multiple_of=4) // 8, r"do not all divide by 8.*multiple_of=8"),
    (lambda: Dim("h", 32, 128) * 0, "positive int"),
])
def test_bad_dims_raise_configuration_errors(make, match):
    with pytest.raises(ConfigurationError, match=match):
        make()


def test_derived_dims_scale_range_step_and_share_the_symbol():
    h = Dim("h", 64, 128, opt=96, multiple_of=8)
    image, residual = h * 8, h // 4
    assert (image.min, image.opt, image.max, image.multiple_of) == (512, 768, 1024, 64)
    assert (residual.min, residual.opt, residual.max, residual.multiple_of) == (16, 24, 32, 2)
    assert image.symbol == residual.symbol == h.symbol == "h_div8"
    assert image.steps == residual.steps == h.steps == (8, 16)
    assert (8 * h) == image and image.root == "h" and image.name == "h*8"
    assert (h * 8 // 2).steps == (8, 16)  # derived from a derived dim: still the same symbol
    plain = Dim("w", 16, 32)
    assert (plain * 2).symbol == "w" and (plain * 2).multiple_of == 2  # k is w itself
    assert image.as_json() == {"name": "h*8", "min": 512, "opt": 768, "max": 1024, "multiple_of": 64,
                               "of": "h", "scale": "8"}
    assert Dim("b", 1, 4).as_json() == {"name": "b", "min": 1, "opt": 4, "max": 4}  # keys of 0.1.0 unchanged


def test_spec_checks_dims_derived_from_one_declaration():
    h = Dim("h", 64, 128, multiple_of=8)
    spec = normalize_spec({"sample": {2: h}, "cond": {2: h * 8}, "res": {2: h // 2}})
    assert spec["cond"][2] == h * 8
    other = Dim("h", 32, 128, multiple_of=8)  # same name, another range
    with pytest.raises(ConfigurationError, match="declared twice"):
        normalize_spec({"sample": {2: h}, "cond": {2: other}})
    with pytest.raises(ConfigurationError, match="derived from 'h' but cover different ranges"):
        normalize_spec({"sample": {2: h * 2}, "cond": {2: other * 8}})
    with pytest.raises(ConfigurationError, match="index must be an int >= 0"):
        normalize_spec({"sample": {-1: h}})


def test_signature_shares_a_key_on_the_step_and_splits_off_it():
    spec = normalize_spec({"sample": {2: Dim("h", 16, 32, multiple_of=4)}})
    key = [signature((torch.zeros(1, 4, size, 8),), {}, ("sample",), spec) for size in (16, 20, 32, 18, 36)]
    assert key[0] == key[1] == key[2]
    assert key[3] != key[0] and key[4] != key[0]  # off the step, outside the range: exact shapes
    assert "multiple_of" in str(signature_json(key[0]))


# ------------------------------------------------------------------------------------------ backends
def _request(kwargs, dynamic):
    return CompileRequest(component="m", module=torch.nn.Identity(), args=(), kwargs=kwargs, names=(),
                          dynamic=dynamic, settings=RuntimeSettings(), device=None, precision="fp32")


def test_tensorrt_plan_exports_steps_as_derived_dims():
    h, batch = Dim("h", 8, 32, multiple_of=8), Dim("batch", 1, 4)
    request = _request({"sample": torch.zeros(1, 4, 8, 16), "cond": torch.zeros(1, 3, 64, 16),
                        "res": torch.zeros(1, 2, 4, 16)},
                       {"sample": {0: batch, 2: h}, "cond": {0: batch, 2: h * 8}, "res": {0: batch, 2: h // 2}})
    plan = trt_export.InputPlan(request)
    # batch 1 and k = h / 8 = 1 would be specialized by torch.export: every dim of both symbols doubles
    assert [tuple(e.shape) for e in plan.examples] == [(2, 3, 128, 16), (2, 2, 8, 16), (2, 4, 16, 16)]
    (dims,) = plan.dynamic_shapes()
    cond, res, sample = dims  # iter_tensors order: keyword arguments sorted by name
    assert str(sample[2]) == str(8 * torch.export.Dim("h_div8", min=1, max=4)) and sample[0].__name__ == "batch"
    assert str(cond[2]).startswith("64*") and str(res[2]).startswith("4*")
    specs = plan.input_specs()
    assert specs[0]["min_shape"] == (1, 3, 64, 16) and specs[0]["max_shape"] == (4, 3, 256, 16)
    assert specs[2]["opt_shape"] == (4, 4, 32, 16)


def test_tensorrt_plan_keeps_static_what_the_call_does_not_fit():
    batch = Dim("batch", 2, 4)
    request = _request({"sample": torch.zeros(3, 4), "timestep": torch.zeros(())},
                       {"sample": {0: batch}, "timestep": {0: batch}})  # a 0-d timestep has no batch
    plan = trt_export.InputPlan(request)
    ((sample, timestep),) = plan.dynamic_shapes()
    assert list(sample) == [0] and sample[0].__name__ == "batch" and timestep is None
    broken = _request({"sample": torch.zeros(2, 4, 16), "cond": torch.zeros(2, 3, 192)},
                      {"sample": {2: Dim("h", 8, 32, multiple_of=8)}, "cond": {2: Dim("h", 8, 32, multiple_of=8) * 8}})
    with pytest.raises(EngineBuildError, match="break the declared relation of 'h'"):
        trt_export.InputPlan(broken)


def test_inductor_marks_ranges_where_dynamo_can_hold_them(monkeypatch):
    from trt_runtime.backends import inductor

    marked = []
    monkeypatch.setattr(torch._dynamo, "mark_dynamic",
                        lambda t, i, **kw: marked.append((tuple(t.shape), i, kw)))
    h = Dim("h", 8, 32, multiple_of=8)
    request = _request({"sample": torch.zeros(2, 4, 16), "cond": torch.zeros(1, 3, 7), "ids": torch.zeros(6, 3)},
                       {"sample": {0: Dim("batch", 1, 4), 2: h}, "cond": {0: Dim("batch", 1, 4)},
                        "ids": {0: Dim("tokens", 4, 8)}})
    inductor._mark_dynamic(request)
    assert marked == [
        ((6, 3), 0, {"min": 4, "max": 8}),  # a step of 1: dynamo checks the whole range
        ((2, 4, 16), 0, {"min": 1, "max": 4}),
        ((2, 4, 16), 2, {}),  # a step: no range (dynamo cannot say "multiples of 8"); the key holds it
    ]  # cond's batch is 1: dynamo specializes sizes of 1, so it is not marked


def test_constraint_errors_become_dim_advice():
    message = ("Constraints violated (batch, h)!\n  - You marked batch as dynamic but your code specialized it to "
               "be a constant (2). If you're using mark_dynamic...\n  - Not all values of h = L['sample'].size()[2] "
               "in the specified range 16 <= h <= 64 satisfy the generated guard (L['sample'].size()[2] % 2) == 0.")
    hint = constraint_hint(RuntimeError(message))
    assert "multiple_of=2" in hint and "declare the same Dim on every input that shares it" in hint
    assert constraint_hint(RuntimeError("no converter for aten.cumsum")) is None
    assert first_lines(RuntimeError("\n".join(map(str, range(40)))), 3) == "0\n1\n2\n... (37 more lines)"


# ------------------------------------------------------------------------------------------ pipeline ranges
def test_parse_resolutions_and_batch_sizes():
    assert parse_resolutions((512, 1024)) == ((512, 1024), (512, 1024))
    assert parse_resolutions([(512, 768), (1024, 640)]) == ((512, 1024), (640, 768))
    assert parse_resolutions(768) == ((768, 768), (768, 768))
    assert parse_batch_sizes((1, 2, 4)) == (1, 4) and parse_batch_sizes(2) == (2, 2)
    for bad in ("512", [], [(1, 2, 3)], [0]):
        with pytest.raises(ConfigurationError, match="resolutions"):
            parse_resolutions(bad)
    for bad in ("4", [0, 2], [1.5]):
        with pytest.raises(ConfigurationError, match="batch_sizes"):
            parse_batch_sizes(bad)


def _plan(pipe, families):
    return [(name, family, pipe.components[name.split(".")[0]]) for name, family in families]


def test_ranges_for_an_sd_unet_controlnet_and_vae():
    pipe = tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=tm.sd_controlnet())
    plan = _plan(pipe, [("unet", "unet"), ("controlnet", "controlnet"), ("vae", "vae")])
    specs = declared_ranges(pipe, plan, (32, 48), (1, 4))  # tiny VAE scales 2x, tiny UNet steps by 2
    unet, net = specs["unet"], specs["controlnet"]
    h = Dim("height", 16, 24, multiple_of=2)
    batch = Dim("batch", 1, 8)  # classifier-free guidance doubles the largest batch
    assert unet["sample"] == {0: batch, 2: h, 3: Dim("width", 16, 24, multiple_of=2)}
    for path in ("encoder_hidden_states", "added_cond_kwargs.text_embeds", "added_cond_kwargs.time_ids",
                 "timestep_cond"):
        assert unet[path] == {0: batch} and net[path] == {0: batch}
    assert "timestep" not in unet  # pipelines pass a 0-d timestep to the UNet
    levels = [0, 0, 1, 1]  # conv_in, block 0's resnet and down-sampler, block 1's resnet
    for index, level in enumerate(levels):
        assert unet[f"down_block_additional_residuals.{index}"][2] == (h // 2 ** level if level else h)
    assert "down_block_additional_residuals.4" not in unet
    assert unet["mid_block_additional_residual"][2] == h // 2
    assert net["controlnet_cond"][2] == h * 2  # its conditioning embedding down-samples once
    assert specs["vae.decoder"] == {"sample": {0: Dim("batch", 1, 4), 2: Dim("height", 16, 24),
                                               3: Dim("width", 16, 24)}}
    assert specs["vae.encoder"]["sample"][2] == Dim("height", 16, 24) * 2


def test_ranges_for_transformers_and_only_what_was_asked():
    sd3 = tm.sd3_pipeline()
    specs = declared_ranges(sd3, _plan(sd3, [("transformer", "transformer")]), None, (1, 2))
    assert specs == {"transformer": {path: {0: Dim("batch", 1, 4)} for path in (
        "hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")}}
    flux = tm.flux_pipeline()
    specs = declared_ranges(flux, _plan(flux, [("transformer", "transformer")]), [(32, 48), (64, 64)], None)
    tokens = Dim("image_tokens", 8 * 12, 16 * 16)  # tiny Flux VAE scales 2x, latents packed 2x2
    assert specs == {"transformer": {"hidden_states": {1: tokens}, "img_ids": {0: tokens}}}
    assert declared_ranges(flux, _plan(flux, [("transformer", "transformer")]), 64, 1) == {}  # nothing varies


def test_resolutions_off_the_models_step_raise_before_wrapping():
    pipe = tm.sd_pipeline()
    runtime = TensorRTRuntime(backend="eager", persist=False)
    with pytest.raises(ConfigurationError, match=r"height 34 px does not divide by 4.*steps of 2.*scales by 2"):
        wrap_pipeline(pipe, runtime=runtime, resolutions=(34, 48))
    assert wrapped_components(pipe) == {}


def test_wrap_pipeline_declares_ranges_and_shapes_override_them():
    pipe = tm.sdxl_pipeline()
    runtime = TensorRTRuntime(backend="eager", persist=False)
    own = {"sample": {2: (16, 32)}}
    wrap_pipeline(pipe, runtime=runtime, resolutions=(32, 64), batch_sizes=(1, 2), shapes={"vae.decoder": own})
    comps = wrapped_components(pipe)
    assert comps["unet"].spec["added_cond_kwargs.text_embeds"] == {0: Dim("batch", 1, 4)}
    assert comps["vae.decoder"].spec == normalize_spec(own)
    assert comps["vae.encoder"].spec["sample"][0] == Dim("batch", 1, 2)
