"""CUDA graphs over any backend's compiled callable: one graph per exact input layout, outputs copied out.

Why our own capture instead of inductor's ``reduce-overhead``: it serves every backend alike (inductor
code, TensorRT engines), its outputs belong to the caller (a graph's outputs live in its pool and would
be overwritten by the next replay; pipelines keep outputs across calls: the two halves of classifier-free
guidance, VAE tiles, ControlNet residuals), and its memory is bounded (``max_graphs_per_component``,
least recently used dropped).

How a replay works: the call's tensors are copied into the graph's static inputs, the graph replays,
and each output is cloned out of the graph's pool. The copies are small next to a denoising step (a UNet
step reads 64 KiB of latents and writes as much; the benchmark measures the cost). All graphs of one
component share one memory pool: that is safe because replays of a component are serialized (a lock
and an event) and every output leaves the pool before the next replay.

When graphs are not safe, ``unsafe_reason`` says why and the call runs the compiled callable directly:
CPU tensors, CPU-offload hooks (weights move between calls), training mode, a capture already in progress,
or a capture that failed (data-dependent shapes or host synchronisation inside the module).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

import torch

from .calls import iter_tensors

__all__ = ["GraphCache", "unsafe_reason", "layout_of", "CapturedGraph"]


logger = logging.getLogger(__name__)

_WARMUP_CALLS = 2


def unsafe_reason(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> str | None:
    """Why a call of ``module`` must not replay through a CUDA graph; None when it may."""
    if module.training:
        return "the module is in training mode"
    tensors = [t for _, t in iter_tensors(args, kwargs)]
    if not tensors:
        return "the call has no tensor inputs"
    if any(t.device.type != "cuda" for t in tensors):
        return "inputs are not on a CUDA device"
    if "_hf_hook" in module.__dict__:
        return "an accelerate offload hook moves the weights between calls"
    if torch.cuda.is_current_stream_capturing():
        return "a CUDA graph capture is already in progress"
    return None


def layout_of(args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Exact shapes, strides and dtypes of a call's tensors, and whether each is an inference tensor (a
    compiled function's guards check that too): one graph per layout."""
    return tuple((tuple(t.shape), t.stride(), t.dtype, t.is_inference()) for _, t in iter_tensors(args, kwargs))


class _Graph:
    """One captured graph with its static inputs and outputs.

    ``replay`` has the semantics every stand-in for it must keep (the tests use one on the CPU that
    overrides only ``_capture``, ``_launch``, ``_wait`` and ``_record``): the call's tensors are copied
    into the static inputs, the captured work rewrites the static outputs in place, and the caller
    receives clones of them."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any], pool: Any) -> None:
        self.static_args, self.static_kwargs = torch.utils._pytree.tree_map_only(
            torch.Tensor, _static_copy, (args, kwargs))
        self.inputs = [t for _, t in iter_tensors(self.static_args, self.static_kwargs)]
        self.lock = threading.Lock()
        self.outputs = self._capture(fn, pool)

    def _capture(self, fn: Callable[..., Any], pool: Any) -> Any:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up off the capture: lazy init, autotuning, allocator
            for _ in range(_WARMUP_CALLS):
                fn(*self.static_args, **self.static_kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            outputs = fn(*self.static_args, **self.static_kwargs)
        self.done = torch.cuda.Event()
        return outputs

    def _launch(self) -> None:
        self.graph.replay()

    def _wait(self) -> None:
        torch.cuda.current_stream().wait_event(self.done)  # a replay on another stream has cloned its outputs

    def _record(self) -> None:
        self.done.record(torch.cuda.current_stream())

    def replay(self, args: tuple, kwargs: dict[str, Any]) -> Any:
        with self.lock:
            self._wait()
            with torch.inference_mode():  # in-place copies into normal and inference tensors alike
                for static, (_, value) in zip(self.inputs, iter_tensors(args, kwargs), strict=True):
                    static.copy_(value)
            self._launch()
            out = _clone_tensors(self.outputs)
            self._record()
        return out


CapturedGraph = _Graph
"""The graph type ``GraphCache`` captures by default (public so a CPU stand-in can subclass it)."""


def _static_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A graph's input buffer: a clone that is an inference tensor exactly when the call's tensor is one.
    Inside ``torch.inference_mode`` a plain clone would always be one, and a compiled function's guards
    check the dispatch keys: an ahead-of-time function then refuses the buffer (no graph), and dynamo
    recompiles the module for it."""
    with torch.inference_mode(tensor.is_inference()), torch.no_grad():  # a buffer, never part of a graph of grads
        return tensor.clone()


def _clone_tensors(tree: Any) -> Any:
    return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, tree)


class GraphCache:
    """The CUDA graphs of one component, by (signature, layout), least recently used dropped past
    ``capacity``. A layout is captured on its ``capture_after``-th call, so one-off shapes never pay for
    a capture."""

    def __init__(self, name: str, capacity: int, capture_after: int = 2, graph_type: Callable[..., Any] | None = None
                 ) -> None:
        self.name = name
        self._graph_type = graph_type or _Graph
        self.capacity = capacity
        self.capture_after = capture_after
        self._graphs: collections.OrderedDict[tuple, _Graph] = collections.OrderedDict()
        self._seen: dict[tuple, int] = {}
        self._failed: set[tuple] = set()
        self._pool: Any = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every graph (weights moved, or the artifacts were invalidated)."""
        with self._lock:
            self._graphs.clear()
            self._seen.clear()
            self._failed.clear()
            self._pool = None

    def run(self, sig: tuple, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> tuple[Any, bool]:
        """Run ``fn`` on the call, through a graph when one is (or can now be) captured.

        Returns ``(output, captured_now)``. A capture failure is remembered for that layout, which then
        runs ``fn`` directly; the error is re-raised only if ``fn`` itself fails without a graph.
        """
        if torch.is_grad_enabled() and any(t.requires_grad for _, t in iter_tensors(args, kwargs)):
            return fn(*args, **kwargs), False  # gradients wanted through the inputs: a replay would drop them
        tag = (sig, layout_of(args, kwargs))
        graph = self._graphs.get(tag)
        if graph is not None:
            self._graphs.move_to_end(tag)
            return graph.replay(args, kwargs), False
        if tag in self._failed:
            return fn(*args, **kwargs), False
        with self._lock:
            seen = self._seen[tag] = self._seen.get(tag, 0) + 1
            if seen < self.capture_after:
                return fn(*args, **kwargs), False
            try:
                if self._pool is None and self._graph_type is _Graph:
                    self._pool = torch.cuda.graph_pool_handle()
                graph = self._graph_type(fn, args, kwargs, self._pool)
            except Exception as err:  # noqa: BLE001 - any capture failure: run without a graph
                self._failed.add(tag)
                logger.info("[%s] CUDA graph capture failed (%s: %s); this shape runs without a graph",
                            self.name, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
                return fn(*args, **kwargs), False
            self._graphs[tag] = graph
            self._seen.pop(tag, None)
            while len(self._graphs) > self.capacity:
                dropped, _ = self._graphs.popitem(last=False)
                logger.debug("[%s] dropped the least recently used CUDA graph (cap %d)", self.name, self.capacity)
        logger.debug("[%s] captured a CUDA graph for %s", self.name, tag[1])
        return graph.replay(args, kwargs), True
