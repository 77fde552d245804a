"""The tensorrt backend on a CUDA device.

- With the STAND-IN torch_tensorrt (no engine is built): the real CUDA probe, the ``device`` keyword,
  export/save/load of CUDA programs, and the module staying on its device with offload_module_to_cpu.
- With a real torch_tensorrt (marker ``tensorrt``; skipped where it cannot be imported, which is every
  machine of this project): a real fp16 engine build, reload and comparison with eager.
"""

from __future__ import annotations

import pytest
import torch

from trt_runtime import Dim, TensorRTModule, TensorRTRuntime

pytestmark = pytest.mark.gpu


def convnet(dtype=torch.float16) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 32, 3, padding=1), torch.nn.GroupNorm(8, 32), torch.nn.SiLU(),
        torch.nn.Conv2d(32, 4, 3, padding=1),
    ).eval().to("cuda", dtype)


def _real_torch_tensorrt() -> str | None:
    from importlib import metadata

    for name in ("torch-tensorrt", "torch-tensorrt-rtx"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return None


@torch.no_grad()
@pytest.mark.parametrize("version", ["2.11.0", "2.14.0"])
def test_standin_on_cuda(version, standin, cache_dir):
    if _real_torch_tensorrt():
        pytest.skip(f"{_real_torch_tensorrt()} is installed: its package metadata names the flavour, and the "
                    "stand-in is for machines without one (the tests marked tensorrt cover this machine)")
    trt = standin(version, real_cuda_probe=True)
    net = convnet()
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    rt = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True, offload_module_to_cpu=True)
    out = TensorRTModule(net, runtime=rt)(x)
    torch.testing.assert_close(out, net(x))
    assert next(net.parameters()).device.type == "cuda", "the module must stay on its device"
    (compiled,) = [kw for name, kw in trt.CALLS if name == "compile"]
    assert compiled["device"] == torch.device("cuda", 0) and compiled["offload_module_to_cpu"] is True
    assert not {"enabled_precisions", "enable_autocast"} & compiled.keys(), "fp16 weights: no precision keyword"

    rt2 = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    out2 = TensorRTModule(convnet(), runtime=rt2)(x)
    assert rt2.stats.totals()["loads"] == 1 and rt2.stats.totals()["compiles"] == 0
    torch.testing.assert_close(out2, out)
    assert out2.device.type == "cuda"


@torch.no_grad()
@pytest.mark.tensorrt
def test_real_tensorrt_fp16_engine_builds_reloads_and_matches(cache_dir):
    net = convnet()
    shapes = {"input": {0: Dim("batch", 1, 4)}}
    rt = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True, validate=True)
    wrapped = TensorRTModule(net, runtime=rt, shapes=shapes)
    for batch in (1, 3):
        x = torch.randn(batch, 4, 32, 32, device="cuda", dtype=torch.float16)
        torch.testing.assert_close(wrapped(x), net(x), atol=2e-2, rtol=2e-2)
    assert rt.stats.totals()["compiles"] == 1
    rt2 = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(TensorRTModule(convnet(), runtime=rt2, shapes=shapes)(x), net(x),
                               atol=2e-2, rtol=2e-2)
    assert rt2.stats.totals()["loads"] == 1
