"""CUDA graphs: when they are used, and what a caller gets back. The capture itself needs a GPU
(tests/test_gpu.py); here a CPU stand-in keeps a real graph's semantics: static inputs, outputs
rewritten in place on every replay."""

from __future__ import annotations

import pytest
import torch

import trt_runtime.runtime as runtime_module
from trt_runtime import TensorRTModule, TensorRTRuntime
from trt_runtime.graphs import CapturedGraph, GraphCache, unsafe_reason

from .support.backends import tiny_mlp


class CpuGraph(CapturedGraph):
    """Replays by recomputing into the same output tensors, as a CUDA graph writes its pool."""

    captures = 0

    def _capture(self, fn, pool):
        type(self).captures += 1
        self.fn = fn
        return fn(*self.static_args, **self.static_kwargs).clone()

    def _launch(self):
        with torch.inference_mode():  # a replay writes the graph's memory whatever kind its tensors are
            self.outputs.copy_(self.fn(*self.static_args, **self.static_kwargs))

    def _wait(self):
        pass

    def _record(self):
        pass


@pytest.fixture(autouse=True)
def _inference():
    CpuGraph.captures = 0
    with torch.no_grad():
        yield


def test_replayed_outputs_are_the_callers_own():
    cache = GraphCache("mlp", capacity=4, capture_after=1, graph_type=CpuGraph)
    module = tiny_mlp()
    x1, x2 = torch.randn(2, 8), torch.randn(2, 8)
    out1, captured = cache.run("sig", module, (x1,), {})
    assert captured and CpuGraph.captures == 1
    out2, captured = cache.run("sig", module, (x2,), {})
    assert not captured and CpuGraph.captures == 1
    # the second replay rewrote the graph's outputs; the first caller's tensor is untouched
    torch.testing.assert_close(out1, module(x1))
    torch.testing.assert_close(out2, module(x2))
    assert out1.data_ptr() != out2.data_ptr()


def test_capture_waits_for_the_second_call_and_lru_bounds_graphs():
    cache = GraphCache("mlp", capacity=2, capture_after=2, graph_type=CpuGraph)
    module = tiny_mlp()
    for batch in (1, 2, 3):
        x = torch.randn(batch, 8)
        cache.run("sig", module, (x,), {})
        assert CpuGraph.captures == batch - 1 and len(cache) == batch - 1  # first sight: no capture
        cache.run("sig", module, (x,), {})
    assert CpuGraph.captures == 3 and len(cache) == 2  # capped: the least recently used was dropped
    cache.clear()
    assert len(cache) == 0


def test_failed_capture_runs_without_a_graph_and_is_not_retried():
    class Broken(CpuGraph):
        def _capture(self, fn, pool):
            type(self).captures += 1
            raise RuntimeError("operation not permitted when stream is capturing")

    cache = GraphCache("mlp", capacity=2, capture_after=1, graph_type=Broken)
    module = tiny_mlp()
    x = torch.randn(2, 8)
    for _ in range(3):
        out, captured = cache.run("sig", module, (x,), {})
        torch.testing.assert_close(out, module(x))
        assert not captured
    assert Broken.captures == 1


def test_unsafe_reasons():
    module = tiny_mlp()
    assert "not on a CUDA device" in unsafe_reason(module, (torch.randn(2, 8),), {})
    assert "no tensor inputs" in unsafe_reason(module, (), {"n": 3})
    module.train()
    assert "training mode" in unsafe_reason(module, (torch.randn(2, 8),), {})


def test_runtime_replays_from_the_second_call_and_keeps_outputs_distinct(export_backend, cache_dir, monkeypatch):
    monkeypatch.setattr(runtime_module, "unsafe_reason", lambda module, args, kwargs: None)
    rt = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt)
    w.component.graphs._graph_type = CpuGraph
    xs = [torch.randn(2, 8) for _ in range(4)]
    outs = [w(x) for x in xs]  # build, capture on the 2nd call, replays after
    assert CpuGraph.captures == 1 and rt.stats.totals()["graphs"] == 1
    for x, out in zip(xs, outs, strict=True):
        torch.testing.assert_close(out, module(x))
    # weights reallocated (a new tensor, e.g. load_state_dict(assign=True)): graphs are dropped
    module[0].weight = torch.nn.Parameter(module[0].weight.detach().clone())
    w.component.check_module()
    assert len(w.component.graphs) == 0


@pytest.mark.parametrize("setting", [False, "auto"])
def test_runtime_without_graphs_where_off_or_unsafe(export_backend, cache_dir, setting):
    rt = TensorRTRuntime(backend="export", cache_dir=cache_dir, cuda_graphs=setting)
    w = TensorRTModule(tiny_mlp(), runtime=rt)
    w.component.graphs._graph_type = CpuGraph
    for _ in range(3):
        w(torch.randn(2, 8))
    assert CpuGraph.captures == 0  # off, or (auto) unsafe on the CPU: silently without graphs


def test_forced_graphs_say_once_why_they_cannot_run(export_backend, cache_dir, caplog):
    rt = TensorRTRuntime(backend="export", cache_dir=cache_dir, cuda_graphs=True)
    w = TensorRTModule(tiny_mlp(), runtime=rt)
    for batch in (1, 2, 1, 2):
        w(torch.randn(batch, 8))
    messages = [r.getMessage() for r in caplog.records if "cuda_graphs=True" in r.getMessage()]
    assert len(messages) == 1 and "not on a CUDA device" in messages[0]


def test_graph_inputs_keep_the_calls_inference_mode_kind():
    """Inputs made outside ``torch.inference_mode`` and a call inside it (the benchmark's way, and many
    servers'): the graph's input buffers must be normal tensors like the call's, or a compiled function's
    guards (which check dispatch keys) refuse them: an ahead-of-time function then ran without a graph on
    the GPU, and plain torch.compile recompiled. Calls made with inference tensors get graphs of their own."""

    class GuardsLikeDynamo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = tiny_mlp()
            self.expected: bool | None = None

        def forward(self, x):
            if self.expected is None:
                self.expected = x.is_inference()
            if x.is_inference() != self.expected:
                raise RuntimeError("GuardManager check failed: dispatch key set mismatch")
            return self.mlp(x)

    module = GuardsLikeDynamo()
    cache = GraphCache("mlp", capacity=4, capture_after=1, graph_type=CpuGraph)
    x, y = torch.randn(2, 8), torch.randn(2, 8)  # normal tensors (the autouse fixture's no_grad is not inference mode)
    with torch.inference_mode():
        module(x)
        out, captured = cache.run("sig", module, (x,), {})
        again, replayed = cache.run("sig", module, (y,), {})
        assert captured and not replayed and CpuGraph.captures == 1 and len(cache) == 1
        torch.testing.assert_close(out, module.mlp(x))
        torch.testing.assert_close(again, module.mlp(y))
        made_inside = torch.randn(2, 8)  # an inference tensor: not the same guard, not the same graph
        other, captured = cache.run("sig", GuardsLikeDynamo(), (made_inside,), {})
    assert captured and len(cache) == 2
    x2 = torch.randn(2, 8)
    replayed, captured = cache.run("sig", module, (x2,), {})  # outside inference mode: the first graph again
    assert not captured and CpuGraph.captures == 2
    torch.testing.assert_close(replayed, module.mlp(x2))
    # an inference tensor kept from earlier, replayed outside inference mode: its graph's buffers are inference
    # tensors, which only an in-place copy inside inference mode may write
    replayed, captured = cache.run("sig", module, (made_inside,), {})
    assert not captured and CpuGraph.captures == 2
    torch.testing.assert_close(replayed, module.mlp(made_inside))


def test_calls_that_want_input_gradients_never_replay_a_graph():
    """A replay's outputs come from the graph's buffers, outside autograd: a call with grad on and an input
    that requires grad runs the callable itself, every time, and its output carries the gradient."""
    cache = GraphCache("mlp", capacity=4, capture_after=1, graph_type=CpuGraph)
    module = tiny_mlp().requires_grad_(False)
    x = torch.randn(2, 8, requires_grad=True)
    with torch.enable_grad():
        for _ in range(3):
            out, captured = cache.run("sig", module, (x,), {})
            assert not captured and out.requires_grad
        out.sum().backward()
    assert x.grad is not None and CpuGraph.captures == 0 and len(cache) == 0
    out, captured = cache.run("sig", module, (x,), {})  # under the fixture's no_grad: graphs as usual
    assert captured and CpuGraph.captures == 1
