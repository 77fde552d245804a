"""Small models for the tensorrt backend's end-to-end tests, and the child process those tests start.

Run as a script (``python standin_support.py CACHE_DIR CASE``) it builds the same seeded model as the
parent test, calls it once through a fresh ``TensorRTRuntime`` on the STAND-IN torch_tensorrt (which
must be on PYTHONPATH), and prints one JSON line: runtime totals, the output, and what the stand-in saw.
"""

from __future__ import annotations

import json
import sys

import torch

from trt_runtime import Dim


class Toy(torch.nn.Module):
    """Calls the way diffusers components are called: a positional tensor, keyword tensors, a nested
    dict of tensors, a Python float and ``return_dict``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.mix = torch.nn.Linear(8, 8)

    def forward(self, sample, cond=None, extra=None, scale=1.0, return_dict=True):
        hidden = self.proj(sample) * scale
        if cond is not None:
            hidden = hidden + self.mix(cond).mean(1)
        if extra:
            hidden = hidden + extra["bias"]
        return {"out": hidden} if return_dict else (hidden,)


class Unconvertible(torch.nn.Module):
    """Uses ``cumsum``, which the stand-in treats as an op without a TensorRT converter."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, sample):
        return self.proj(sample).cumsum(-1)


BATCH = Dim("batch", 1, 8, opt=4)
SHAPES = {"sample": {0: BATCH}, "cond": {0: BATCH}}


def make_toy() -> Toy:
    torch.manual_seed(0)
    return Toy().eval()


def toy_inputs(batch: int) -> tuple[tuple, dict]:
    generator = torch.Generator().manual_seed(batch)
    sample = torch.randn(batch, 8, generator=generator)
    cond = torch.randn(batch, 3, 8, generator=generator)
    bias = torch.randn(8, generator=generator)
    return (sample,), {"cond": cond, "extra": {"bias": bias}, "scale": 0.5, "return_dict": False}


def main(cache_dir: str, case: str) -> None:
    import torch_tensorrt  # the stand-in, through PYTHONPATH

    import trt_runtime
    from trt_runtime.backends import tensorrt as backend_module

    assert getattr(torch_tensorrt, "STANDIN", False), "the child must run on the stand-in"
    backend_module.cuda_unavailable_reason = lambda device: None  # the stand-in runs on CPU

    runtime = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir)
    shapes = SHAPES if case == "dynamic" else None
    module = trt_runtime.TensorRTModule(make_toy(), runtime=runtime, shapes=shapes)
    args, kwargs = toy_inputs(3 if case == "dynamic" else 2)
    with torch.no_grad():
        (out,) = module(*args, **kwargs)
    import tensorrt

    print(json.dumps({
        "totals": runtime.stats.totals(),
        "output": out.tolist(),
        "calls": [name for name, _ in torch_tensorrt.CALLS],
        "plugin_inits": len(tensorrt.PLUGIN_INITS),
        "runtime_caches": [kw for name, kw in torch_tensorrt.CALLS if name == "RuntimeCache"],
        "runtime_cache_loads": [kw["bytes"].hex() for name, kw in torch_tensorrt.CALLS if name == "runtime_cache_load"],
    }))


if __name__ == "__main__":
    # Import ourselves under our module name: the class's module is part of the cache key, and the
    # parent test loaded this file as ``standin_support``, not ``__main__``.
    import standin_support

    standin_support.main(sys.argv[1], sys.argv[2])
