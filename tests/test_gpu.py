"""The runtime on a CUDA device: real inductor compiles in fp16, the key names the GPU, reload works."""

from __future__ import annotations

import pytest
import torch

from trt_runtime import TensorRTModule, TensorRTRuntime

pytestmark = pytest.mark.gpu


def convnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(4, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.SiLU(),
        torch.nn.Conv2d(64, 4, 3, padding=1),
    ).eval().to("cuda", torch.float16)


@torch.no_grad()
def test_fp16_inductor_on_cuda_matches_eager_and_reloads(cache_dir):
    net = convnet()
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, validate=True)
    w = TensorRTModule(net, runtime=rt, name="convnet")
    out = w(x)
    torch.testing.assert_close(out, net(x), atol=2e-2, rtol=2e-2)
    assert rt.stats.totals()["compiles"] == 1 and rt.stats.totals()["failed"] == 0
    meta = rt.cache.entries()[0].meta
    env = meta["environment"]
    assert env["gpu"] == torch.cuda.get_device_name() and "compute_capability" in env
    assert meta["precision"] == "fp16"

    rt2 = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    out2 = TensorRTModule(convnet(), runtime=rt2, name="convnet")(x)
    assert rt2.stats.totals()["loads"] == 1 and rt2.stats.totals()["compiles"] == 0
    torch.testing.assert_close(out2, out)


@torch.no_grad()
def test_auto_backend_picks_a_compiler_on_cuda(cache_dir):
    rt = TensorRTRuntime(backend="auto", cache_dir=cache_dir)
    backend = rt.backend_for(torch.device("cuda"))
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        assert backend.name == "inductor"
        return
    from trt_runtime.backends import _tensorrt_api as api_table
    from trt_runtime.backends.tensorrt import _flavour

    declined = api_table.auto_declines(_flavour(), torch.cuda.get_device_capability())
    assert backend.name == ("inductor" if declined else "tensorrt"), declined


@torch.no_grad()
def test_offload_between_devices_reuses_compiled_slots(cache_dir):
    net = convnet()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(net, runtime=rt, name="convnet")
    x = torch.randn(1, 4, 32, 32, device="cuda", dtype=torch.float16)
    w(x)
    w.to("cpu")
    w.to("cuda")  # what model offloading does between steps
    w(x)
    assert rt.stats.totals()["compiles"] == 1 and rt.stats.totals()["calls"] == 2


@torch.no_grad()
def test_cuda_graphs_by_default_keep_each_callers_output(cache_dir):
    """The default (cuda_graphs="auto") replays a graph from the second call; two outputs of the same
    shape that a caller keeps (the halves of classifier-free guidance) stay distinct and right."""
    net = convnet()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(net, runtime=rt, name="convnet")
    xs = [torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16) for _ in range(4)]
    kept = [w(x) for x in xs]
    assert rt.stats.totals()["graphs"] == 1
    assert len({out.data_ptr() for out in kept}) == len(kept)
    for x, out in zip(xs, kept, strict=True):
        torch.testing.assert_close(out, net(x), atol=2e-2, rtol=2e-2)
    # in-place weight edits reach the replayed graph (it reads the same memory)
    net[0].bias.add_(1.0)
    torch.testing.assert_close(w(xs[0]), net(xs[0]), atol=2e-2, rtol=2e-2)


@torch.no_grad()
def test_cuda_graphs_are_off_with_offload_hooks_and_in_training_mode(cache_dir):
    net = convnet()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(net, runtime=rt, name="convnet")
    x = torch.randn(1, 4, 32, 32, device="cuda", dtype=torch.float16)
    net.train()
    for _ in range(3):
        w(x)
    assert rt.stats.totals()["graphs"] == 0
