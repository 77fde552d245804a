"""ControlNet wrapper: conditioning_scale outside the graph, guess_mode, SDXL, MultiControlNet."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.controlnets.controlnet import ControlNetOutput
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from trt_runtime import ConfigurationError
from trt_runtime.modules.base import installed
from trt_runtime.modules.controlnet import apply_controlnet

from ..support import tiny_models as tm


def _compiles(runtime) -> int:
    return runtime.stats.totals()["compiles"]


def _inputs(batch: int = 2, text: int = 32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, 16, 16, generator=g), torch.randn(batch, 8, text, generator=g),
            torch.rand(batch, 3, 32, 32, generator=g))


def _assert_same(out, want):
    down, mid = out
    want_down, want_mid = want
    assert len(down) == len(want_down)
    for a, b in zip(down, want_down, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(mid, want_mid)


@pytest.mark.parametrize("guess_mode", [False, True])
def test_one_artifact_serves_every_scale(runtime, guess_mode):
    net = tm.sd_controlnet()
    sample, text, cond = _inputs()
    scales = (1.0, 0.35, 0.0, 1.7)
    want = {s: net(sample, torch.tensor(10), text, cond, conditioning_scale=s, guess_mode=guess_mode,
                   return_dict=False) for s in scales}
    apply_controlnet(net, runtime=runtime)
    for scale in scales:
        out = net(sample, torch.tensor(10), text, cond, conditioning_scale=scale, guess_mode=guess_mode)
        assert isinstance(out, ControlNetOutput)
        _assert_same((out.down_block_res_samples, out.mid_block_res_sample), want[scale])
    _assert_same(net(sample, 10, text, cond, conditioning_scale=0.35, guess_mode=guess_mode, return_dict=False),
                 want[0.35])
    assert _compiles(runtime) == 2  # tensor timestep and Python int timestep; no artifact per scale


def test_guess_mode_is_its_own_artifact(runtime):
    net = tm.sd_controlnet()
    sample, text, cond = _inputs(batch=1)
    want = net(sample, torch.tensor(3), text, cond, conditioning_scale=0.5, guess_mode=True, return_dict=False)
    apply_controlnet(net, runtime=runtime)
    net(sample, torch.tensor(3), text, cond, conditioning_scale=0.5)
    _assert_same(net(sample, torch.tensor(3), text, cond, conditioning_scale=0.5, guess_mode=True,
                     return_dict=False), want)
    assert _compiles(runtime) == 2


def test_sdxl_controlnet(runtime):
    net = tm.sdxl_controlnet()
    sample, text, cond = _inputs(text=64)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    want = net(sample, torch.tensor(7), text, cond, conditioning_scale=0.8, added_cond_kwargs=added,
               return_dict=False)
    apply_controlnet(net, runtime=runtime)
    _assert_same(net(sample, torch.tensor(7), text, cond, conditioning_scale=0.8, added_cond_kwargs=added,
                     return_dict=False), want)


def test_multi_controlnet_wraps_each_net(runtime):
    nets = [tm.sd_controlnet(seed=1), tm.sd_controlnet(seed=2)]
    multi = MultiControlNetModel(nets)
    sample, text, cond = _inputs()
    call = dict(sample=sample, timestep=torch.tensor(9), encoder_hidden_states=text, controlnet_cond=[cond, cond],
                conditioning_scale=[0.6, 0.3], return_dict=False)
    want = multi(**call)
    wrapped = apply_controlnet(multi, runtime=runtime)
    assert set(wrapped.components) == {"controlnet.0", "controlnet.1"}
    assert installed(multi) is None and all(installed(n) is not None for n in nets)
    _assert_same(multi(**call), want)
    _assert_same(multi(**{**call, "conditioning_scale": [0.1, 0.9]}),
                 MultiControlNetModel([tm.sd_controlnet(seed=1), tm.sd_controlnet(seed=2)])(
                     **{**call, "conditioning_scale": [0.1, 0.9]}))
    assert _compiles(runtime) == 2
    wrapped.remove()
    assert not any(installed(n) for n in nets)


def test_multi_controlnet_shapes_apply_to_each_net(runtime):
    multi = MultiControlNetModel([tm.sd_controlnet(seed=1), tm.sd_controlnet(seed=2), tm.sd_controlnet(seed=3)])
    shared = {"sample": {2: (8, 32)}}
    own = {"sample": {2: (8, 16)}}
    wrapped = apply_controlnet(multi, runtime=runtime, shapes=shared, net_shapes={1: own})
    specs = {name: comp.spec["sample"][2].max for name, comp in wrapped.components.items()}
    assert specs == {"controlnet.0": 32, "controlnet.1": 16, "controlnet.2": 32}


@pytest.mark.parametrize("multi", [False, True])
def test_net_shapes_for_missing_nets_are_refused(runtime, multi):
    net = MultiControlNetModel([tm.sd_controlnet(seed=1)]) if multi else tm.sd_controlnet()
    with pytest.raises(ConfigurationError, match=r"net_shapes names nets \[1\]"):
        apply_controlnet(net, runtime=runtime, net_shapes={1: {"sample": {2: (8, 32)}}})
    assert not any(installed(m) for m in net.modules())
