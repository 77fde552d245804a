"""``backend="fastest"``: every candidate is built and timed on the real call, the fastest is kept, and
the choice is stored in the entry so that the next process loads it without measuring."""

from __future__ import annotations

import time

import pytest
import torch

from tests.support.backends import ExportBackend, tiny_mlp
from trt_runtime import TensorRTModule, TensorRTRuntime
from trt_runtime.backends import register_backend, unregister_backend
from trt_runtime.backends.fastest import FastestBackend


class SlowArtifact(ExportBackend):
    """Compiles fine, but every call of its artifact takes 20 ms."""

    name = "slow_artifact"
    builds = 0

    def compile(self, request):
        type(self).builds += 1
        fast = super().compile(request)

        def run(*args, **kwargs):
            time.sleep(0.02)
            return fast(*args, **kwargs)

        return run


class Broken(ExportBackend):
    name = "broken"

    def compile(self, request):
        raise RuntimeError("no converter for aten::frobnicate")


class Candidates(FastestBackend):
    name = "fastest_test"
    candidates = ("slow_artifact", "broken", "export")


@pytest.fixture(autouse=True)
def _registered(export_backend):
    for cls in (SlowArtifact, Broken):
        register_backend(cls.name, cls)
    register_backend("fastest_test", Candidates)
    SlowArtifact.builds = 0
    with torch.no_grad():
        yield
    for name in ("slow_artifact", "broken", "fastest_test"):
        unregister_backend(name)


def test_the_fastest_candidate_is_kept_and_the_choice_is_recorded(cache_dir):
    rt = TensorRTRuntime(backend="fastest_test", cache_dir=cache_dir)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), module(x))
    (row,) = rt.stats.rows()
    assert row.backend == "fastest_test:export"
    meta = rt.cache.entries()[0].meta
    timings = meta["fastest"]["timings_ms"]
    assert meta["fastest"]["chosen"] == "export"
    assert timings["slow_artifact"] > 15 and timings["export"] < timings["slow_artifact"]
    assert timings["broken"].startswith("failed: RuntimeError")
    started = time.perf_counter()
    for _ in range(5):
        w(x)
    assert time.perf_counter() - started < 0.1, "the slow candidate is being served"

    # the next process loads the choice: nothing is built or timed again
    rt2 = TensorRTRuntime(backend="fastest_test", cache_dir=cache_dir)
    torch.testing.assert_close(TensorRTModule(tiny_mlp(), runtime=rt2, name="mlp")(x), module(x))
    assert rt2.stats.totals()["loads"] == 1 and SlowArtifact.builds == 1
    assert rt2.stats.rows()[0].backend == "fastest_test:export"
