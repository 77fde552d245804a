"""UNet2DConditionModel wrapper: same outputs as eager, one artifact per shape, drop-in behaviour."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from trt_runtime.modules.base import installed
from trt_runtime.modules.unet import apply_unet

from ..support import tiny_models as tm


def _compiles(runtime) -> int:
    return runtime.stats.totals()["compiles"]


def _inputs(batch: int, channels: int = 4, size: int = 16, text: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g), torch.randn(batch, 8, text, generator=g)


@pytest.mark.parametrize("batch", [1, 2])
def test_outputs_match_eager_and_second_call_reuses(runtime, batch):
    unet = tm.sd_unet()
    sample, text = _inputs(batch)
    t = torch.tensor(981)
    expected = unet(sample, t, text).sample
    apply_unet(unet, runtime=runtime)

    out = unet(sample, t, encoder_hidden_states=text)
    assert isinstance(out, UNet2DConditionOutput)
    torch.testing.assert_close(out.sample, expected)
    compiles = _compiles(runtime)
    assert compiles == 1
    (again,) = unet(sample, torch.tensor(1), text, return_dict=False)  # another step, same shapes
    assert _compiles(runtime) == compiles and runtime.stats.totals()["fallbacks"] == 0
    assert again.shape == expected.shape


def test_python_number_timesteps_become_tensors(runtime):
    """Keys hold plain numbers by value: a float timestep per step would otherwise compile per step."""
    unet = tm.sd_unet()
    sample, text = _inputs(2)
    expected = {t: unet(sample, t, text).sample for t in (999, 500, 1.5, 20.25)}
    apply_unet(unet, runtime=runtime)
    for t, want in expected.items():
        torch.testing.assert_close(unet(sample, t, text).sample, want)
    assert _compiles(runtime) == 2  # one for int timesteps, one for float


def test_inpainting_unet_and_timestep_cond(runtime):
    unet = tm.sd_unet(in_channels=9, time_cond_proj_dim=8)
    sample, text = _inputs(2, channels=9)
    cond = torch.randn(2, 8)
    expected = unet(sample, torch.tensor(10), text, timestep_cond=cond).sample
    apply_unet(unet, runtime=runtime)
    torch.testing.assert_close(unet(sample, torch.tensor(10), text, timestep_cond=cond).sample, expected)
    assert unet.config.in_channels == 9


def test_sdxl_added_cond_kwargs(runtime):
    unet = tm.sdxl_unet()
    sample, text = _inputs(2, text=64)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    expected = unet(sample, torch.tensor(500), text, added_cond_kwargs=added).sample
    apply_unet(unet, runtime=runtime)
    torch.testing.assert_close(unet(sample, torch.tensor(500), text, added_cond_kwargs=added).sample, expected)
    added["time_ids"] = added["time_ids"] * 2  # other crop/size conditioning: same shapes, same artifact
    unet(sample, torch.tensor(400), text, added_cond_kwargs=added)
    assert _compiles(runtime) == 1


def test_controlnet_residuals_are_inputs(runtime):
    """Residuals from any ControlNet of the UNet's layout run through one controlled-UNet artifact."""
    unet = tm.sd_unet()
    sample, text = _inputs(2)
    net = tm.sd_controlnet()
    down, mid = net(sample, torch.tensor(10), text, torch.randn(2, 3, 32, 32), return_dict=False)
    residual_sets = [(down, mid), ([d * 0.3 for d in down], mid * -1.0)]
    expected = [unet(sample, torch.tensor(10), text, down_block_additional_residuals=d,
                     mid_block_additional_residual=m).sample for d, m in residual_sets]
    apply_unet(unet, runtime=runtime)
    for (d, m), want in zip(residual_sets, expected, strict=True):
        out = unet(sample, torch.tensor(10), text, down_block_additional_residuals=d, mid_block_additional_residual=m)
        torch.testing.assert_close(out.sample, want)
    assert _compiles(runtime) == 1
    assert not torch.allclose(expected[0], unet(sample, torch.tensor(10), text).sample)  # they mattered


def test_lora_scale_without_adapters_is_not_in_the_key(runtime):
    unet = tm.sd_unet()
    sample, text = _inputs(2)
    expected = unet(sample, torch.tensor(10), text).sample
    apply_unet(unet, runtime=runtime)
    for scale in (0.3, 0.7):
        out = unet(sample, torch.tensor(10), text, cross_attention_kwargs={"scale": scale}).sample
        torch.testing.assert_close(out, expected)
    unet(sample, torch.tensor(10), text)
    assert _compiles(runtime) == 1


def test_lora_scale_with_adapters_is_keyed_by_value(runtime):
    peft = pytest.importorskip("peft")
    unet = tm.sd_unet()
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False))
    sample, text = _inputs(2)
    expected = {s: unet(sample, torch.tensor(10), text, cross_attention_kwargs={"scale": s}).sample
                for s in (0.5, 1.0)}
    assert not torch.allclose(expected[0.5], expected[1.0])
    apply_unet(unet, runtime=runtime)
    for scale in (0.5, 1.0, 0.5):
        out = unet(sample, torch.tensor(10), text, cross_attention_kwargs={"scale": scale}).sample
        torch.testing.assert_close(out, expected[scale])
    assert _compiles(runtime) == 2


def test_adapter_loaded_after_wrapping_is_not_served_stale(runtime):
    peft = pytest.importorskip("peft")
    unet = tm.sd_unet()
    sample, text = _inputs(1)
    apply_unet(unet, runtime=runtime)
    plain = unet(sample, torch.tensor(10), text).sample
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"], init_lora_weights=False))
    out = unet(sample, torch.tensor(10), text).sample
    assert not torch.allclose(out, plain)
    unet.disable_adapters()  # peft state changes are part of the key as well
    torch.testing.assert_close(unet(sample, torch.tensor(10), text).sample, plain)


def test_drop_in_and_remove(runtime):
    unet = tm.sd_unet()
    sample, text = _inputs(1)
    wrapped = apply_unet(unet, runtime=runtime)
    assert isinstance(unet, UNet2DConditionModel) and installed(unet) is not None
    assert unet.config.cross_attention_dim == 32 and unet.dtype == torch.float32
    assert set(wrapped.components) == {"unet"}
    # moving or casting the module gives the new state its own artifact; going back reuses the first
    first = unet(sample, torch.tensor(5), text).sample
    unet.to(torch.float64)
    out64 = unet(sample.double(), torch.tensor(5), text.double()).sample
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), first, rtol=1e-4, atol=1e-5)
    unet.to(torch.float32)
    unet(sample, torch.tensor(5), text)
    assert _compiles(runtime) == 2
    wrapped.remove()
    assert installed(unet) is None and "forward" not in unet.__dict__
