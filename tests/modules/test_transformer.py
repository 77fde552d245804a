"""Transformer wrapper (SD3, Flux, HunyuanVideo), the generic wrapper, and offload-hook layering."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from trt_runtime import ConfigurationError
from trt_runtime.modules.base import installed
from trt_runtime.modules.transformer import apply_transformer, attach, detach, wrap_module

from ..support import tiny_models as tm
from ..support.backends import tiny_mlp


def _compiles(runtime) -> int:
    return runtime.stats.totals()["compiles"]


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _sd3(batch):
    return tm.sd3_transformer(), dict(hidden_states=_randn(batch, 4, 8, 8), encoder_hidden_states=_randn(batch, 6, 32),
                                      pooled_projections=_randn(batch, 64))


def _flux(batch):
    ids = torch.zeros(16, 3)
    ids[:, 1] = torch.arange(16) // 4
    ids[:, 2] = torch.arange(16) % 4
    return tm.flux_transformer(guidance_embeds=True), dict(
        hidden_states=_randn(batch, 16, 4), encoder_hidden_states=_randn(batch, 6, 32),
        pooled_projections=_randn(batch, 32), img_ids=ids, txt_ids=torch.zeros(6, 3))


def _hunyuan(batch):
    mask = torch.ones(batch, 6, dtype=torch.int64)
    mask[:, 4:] = 0
    return tm.hunyuan_video_transformer(), dict(
        hidden_states=_randn(batch, 4, 2, 4, 4), encoder_hidden_states=_randn(batch, 6, 16),
        encoder_attention_mask=mask, pooled_projections=_randn(batch, 8))


MODELS = {"sd3": _sd3, "flux": _flux, "hunyuan_video": _hunyuan}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_outputs_match_and_numbers_become_tensors(runtime, kind):
    batch = 2
    model, call = MODELS[kind](batch)
    extra = {} if kind == "sd3" else {"guidance": torch.full((batch,), 3.5)}
    steps = (torch.full((batch,), 0.9), torch.full((batch,), 0.4))
    if kind != "flux":
        steps = tuple(t * 1000 for t in steps)
    want = [model(**call, timestep=t, **extra).sample for t in steps]
    apply_transformer(model, runtime=runtime)

    for t, expected in zip(steps, want, strict=True):
        out = model(**call, timestep=t, **extra)
        assert isinstance(out, Transformer2DModelOutput)
        torch.testing.assert_close(out.sample, expected)
    (as_tuple,) = model(**call, timestep=steps[0], **extra, return_dict=False)
    torch.testing.assert_close(as_tuple, want[0])
    assert _compiles(runtime) == 1 and runtime.stats.totals()["fallbacks"] == 0

    # a timestep (and guidance) given as a Python number becomes a float32 tensor of the batch size,
    # like the ones pipelines pass: the same artifact, not one per value
    numbers = {} if kind == "sd3" else {"guidance": 3.5}
    for t, expected in zip(steps, want, strict=True):
        torch.testing.assert_close(model(**call, timestep=float(t[0]), **numbers).sample, expected)
    assert _compiles(runtime) == 1


def test_batch_one_and_two_are_separate_artifacts(runtime):
    model, call1 = _sd3(1)
    _, call2 = _sd3(2)
    want = model(**call1, timestep=torch.tensor([500.0])).sample
    apply_transformer(model, runtime=runtime)
    torch.testing.assert_close(model(**call1, timestep=torch.tensor([500.0])).sample, want)
    model(**call2, timestep=torch.tensor([500.0, 500.0]))
    assert _compiles(runtime) == 2


def test_joint_attention_scale_without_lora_is_not_keyed(runtime):
    model, call = _sd3(1)
    t = torch.tensor([500.0])
    want = model(**call, timestep=t).sample
    apply_transformer(model, runtime=runtime)
    for scale in (0.2, 0.9):
        torch.testing.assert_close(model(**call, timestep=t, joint_attention_kwargs={"scale": scale}).sample, want)
    assert _compiles(runtime) == 1


def test_generic_wrapper_passes_calls_through(runtime):
    mlp = tiny_mlp()
    x = _randn(3, 8)
    want = mlp(x)
    wrapped = wrap_module(mlp, runtime=runtime, name="mlp")
    assert isinstance(mlp, torch.nn.Sequential) and installed(mlp) is not None
    torch.testing.assert_close(mlp(x), want)
    mlp(x)
    assert _compiles(runtime) == 1 and set(wrapped.components) == {"mlp"}
    wrapped.remove()
    assert installed(mlp) is None and "forward" not in mlp.__dict__


def test_module_without_output_class_gets_the_generic_wrapper(runtime):
    mlp = tiny_mlp()
    wrapped = apply_transformer(mlp, runtime=runtime, name="odd")
    x = _randn(2, 8)
    torch.testing.assert_close(mlp(x), tiny_mlp()(x))
    assert set(wrapped.components) == {"odd"}


# ------------------------------------------------------------------------------- accelerate offload hooks
class _RecordingHook:
    """Stands in for accelerate's CpuOffload: pre_forward moves the module to the execution device."""

    def __init__(self, log):
        self.log = log

    def make(self):
        from accelerate.hooks import ModelHook

        log = self.log

        class Hook(ModelHook):
            def pre_forward(self, module, *args, **kwargs):
                log.append("pre")
                return args, kwargs

            def post_forward(self, module, output):
                log.append("post")
                return output

        return Hook()


@pytest.mark.parametrize("order", ["hook-first", "wrap-first"])
def test_compiled_call_runs_inside_accelerate_hook(runtime, order):
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    mlp = tiny_mlp()
    x = _randn(2, 8)
    want = mlp(x)
    log = []
    original_call = runtime.call

    def spy(component, args, kwargs):
        log.append("component")
        return original_call(component, args, kwargs)

    runtime.call = spy
    if order == "hook-first":
        add_hook_to_module(mlp, _RecordingHook(log).make())
        wrapped = wrap_module(mlp, runtime=runtime)
    else:
        wrapped = wrap_module(mlp, runtime=runtime)
        add_hook_to_module(mlp, _RecordingHook(log).make())
    torch.testing.assert_close(mlp(x), want)
    assert log == ["pre", "component", "post"]

    wrapped.remove()  # our forward leaves; accelerate's hook stays and works
    log.clear()
    torch.testing.assert_close(mlp(x), want)
    assert log == ["pre", "post"]
    remove_hook_from_module(mlp)
    torch.testing.assert_close(mlp(x), want)


def test_detach_without_attach_is_harmless():
    assert detach(tiny_mlp()) is False


def test_attach_refuses_weights_on_meta(runtime):
    with torch.device("meta"):
        mlp = tiny_mlp()
    with pytest.raises(ConfigurationError, match="enable_sequential_cpu_offload"):
        wrap_module(mlp, runtime=runtime)
    assert installed(mlp) is None
    assert attach  # the public helper stays importable for wrappers outside this package
