"""Measuring: variants of one case prepared side by side, timed interleaved, compared to eager.

Four variants run in one process on the same inputs: ``eager`` (with ``cudnn.benchmark`` on),
``torch_compile`` (plain ``torch.compile`` of a copy, the way users do it), ``torch_compile_ro`` (the
one-liner users compare with: ``torch.compile(mode="reduce-overhead")``, CUDA graphs included) and
``trt_runtime`` (our wrapper on another copy, default settings unless ``--bench-settings``). Timing alternates the variants round by round, so a drift of
the GPU's clocks touches all of them alike; each figure is a median of per-call times taken with the
device synchronised. ``trt_runtime`` is compiled first, with an empty engine cache and an empty inductor
cache: its first call is the cold compile a user sees. ``torch_compile`` compiles second and may reuse
inductor's on-disk entries of the same graphs, so its first-call time is not a cold figure.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cases import Case, build_case, flatten_output, variant_copy

__all__ = ["Prepared", "prepare", "time_interleaved", "sync", "warm_start", "relative_error", "environment"]

logger = logging.getLogger(__name__)

VARIANTS = ("eager", "torch_compile", "torch_compile_ro", "trt_runtime")
PLAIN_MODES = {"torch_compile": None, "torch_compile_ro": "reduce-overhead"}
ROOT = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_error(out: Any, ref: Any) -> float:
    a, b = flatten_output(out), flatten_output(ref)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@dataclasses.dataclass
class Prepared:
    """The variants of one case, ready to call, with what was learnt while preparing them."""

    case: Case
    size: str
    device: torch.device
    dtype: torch.dtype
    runs: dict[str, Callable[[], Any]]
    figures: dict[str, Any]
    runtime: Any
    modules: list[torch.nn.Module]
    components: list[Any] = dataclasses.field(default_factory=list)
    """Our variant's runtime components (their CUDA graphs are measured)."""

    def release(self) -> None:
        self.runs.clear()
        self.modules.clear()
        torch._dynamo.reset()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _timed_first_call(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def _peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory a call allocates above what is resident before it (weights, inputs, caches)."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def prepare(case: Case, size: str, device: torch.device, dtype: torch.dtype, cache_dir: Path,
            settings: dict[str, Any] | None = None, variants: tuple[str, ...] = VARIANTS) -> Prepared:
    """Build the module and a copy per variant (sharing its weights), compile them; record first-call
    times, errors and memory."""
    import trt_runtime

    figures: dict[str, Any] = {"case": case.name, "title": case.title, "size": size, "device": str(device),
                               "dtype": str(dtype).removeprefix("torch."), "note": case.note}
    start = time.perf_counter()
    eager = build_case(case, size, device, dtype)
    figures["parameters"] = sum(p.numel() for p in eager.parameters())
    figures["build_s"] = time.perf_counter() - start
    inputs = case.inputs(size, device, dtype)
    runtime = trt_runtime.TensorRTRuntime(cache_dir=cache_dir, **(settings or {}))
    modules = {"eager": eager}
    wrapped = None
    if "trt_runtime" in variants:
        modules["trt_runtime"] = variant_copy(eager)
        wrapped = case.wrap(modules["trt_runtime"], runtime)
    for name, mode in PLAIN_MODES.items():
        if name in variants:
            modules[name] = case.compile_plain(variant_copy(eager), mode)
    runs = {name: (lambda m=module: case.call(m, inputs)) for name, module in modules.items()}
    with torch.inference_mode():
        reference, figures["eager_first_call_s"] = _timed_first_call(runs["eager"], device)
        for name in ("trt_runtime", *PLAIN_MODES):  # ours first: its compile is the cold one
            if name not in runs:
                continue
            logger.info("[%s] compiling with %s", case.name, name)
            out, figures[f"{name}_first_call_s"] = _timed_first_call(runs[name], device)
            figures[f"{name}_rel_error"] = relative_error(out, reference)
            if name == "trt_runtime":  # where our first call's time went (fingerprint, export, engine build, save...)
                figures["trt_runtime_first_call_phases"] = {
                    row.component: dict(row.phases) for row in runtime.stats.rows() if row.phases}
        for _ in range(3):  # later calls: CUDA graph captures (ours on the 2nd call) happen here, not timed
            for fn in runs.values():
                fn()
        if wrapped is not None:
            inner, figures["trt_runtime_wrapper_host_us"] = decompose(wrapped, runs["trt_runtime"])
            if inner is not None:
                runs["trt_runtime_inner"] = inner
            replay = graph_replay(wrapped)
            if replay is not None:
                runs["trt_runtime_graph_only"] = replay
        figures["trt_runtime_graphs"] = runtime.stats.totals()["graphs"]
        for name, fn in runs.items():
            figures[f"{name}_peak_extra_bytes"] = _peak_extra_bytes(fn, device)
    totals = runtime.stats.totals()
    figures["trt_runtime_backend"] = sorted({row.backend for row in runtime.stats.rows()})
    figures["trt_runtime_compiles"] = totals["compiles"]
    figures["trt_runtime_fallbacks"] = totals["fallbacks"]
    figures["weights_bytes"] = sum(p.numel() * p.element_size() for p in eager.parameters())
    components = list(wrapped.components.values()) if wrapped is not None else []
    return Prepared(case, size, device, dtype, runs, figures, runtime, list(modules.values()), components)


def decompose(wrapped: Any, run: Callable[[], Any], calls: int = 2000) -> tuple[Callable[[], Any] | None, float]:
    """Split our variant's step into the compiled callable and the wrapper around it.

    Returns ``(inner, host_us)``: ``inner`` calls the compiled callable of the (single) signature the
    wrapper dispatched to, with exactly the arguments the wrapper passed it, without CUDA graphs (timed as
    the variant ``trt_runtime_inner``); ``host_us`` is the median host time of one wrapped call with that
    callable replaced by a stub returning its last output, i.e. binding, keying, lookup and output
    reconstruction, without any device work.
    """
    slots = [slot for comp in wrapped.components.values() for slot in comp.slots.values() if slot.fn is not None]
    if len(slots) != 1:
        return None, float("nan")
    slot = slots[0]
    real, graphs = slot.fn, slot.graphs
    seen: dict[str, Any] = {}

    def record(*args: Any, **kwargs: Any) -> Any:
        seen.update(args=args, kwargs=kwargs, out=real(*args, **kwargs))
        return seen["out"]

    host = []
    with torch.inference_mode():
        slot.fn, slot.graphs = record, False
        try:
            run()
            slot.fn = lambda *args, **kwargs: seen["out"]
            for _ in range(calls):
                t0 = time.perf_counter()
                run()
                host.append(time.perf_counter() - t0)
        finally:
            slot.fn, slot.graphs = real, graphs
    return (lambda: real(*seen["args"], **seen["kwargs"])), statistics.median(host) * 1e6


def graph_replay(wrapped: Any) -> Callable[[], Any] | None:
    """The bare replay of the CUDA graph our variant captured (no input copy, no output copy): timed as
    ``trt_runtime_graph_only``, its difference to ``trt_runtime`` is the cost of the copies and the
    wrapper."""
    graphs = [g for comp in wrapped.components.values() for g in comp.graphs._graphs.values()]
    if len(graphs) != 1:
        return None
    return graphs[0]._launch


def graph_memory(ready: Prepared) -> int | None:
    """GPU memory our CUDA graphs hold (their pools: the activations of one call per captured shape),
    measured by dropping them; they are captured again by the next call."""
    if ready.device.type != "cuda" or ready.runtime is None:
        return None
    components = [c for c in ready.components if len(c.graphs)]
    if not components:
        return 0
    sync(ready.device)
    gc.collect()
    before = torch.cuda.memory_reserved(ready.device)
    for component in components:
        component.graphs.clear()
    gc.collect()
    torch.cuda.empty_cache()
    return before - torch.cuda.memory_reserved(ready.device)


def time_interleaved(runs: dict[str, Callable[[], Any]], device: torch.device, rounds: int,
                     min_seconds: float = 0.0) -> dict[str, list[float]]:
    """Per-call seconds of each variant, the variants alternating round by round."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    start = time.perf_counter()
    with torch.inference_mode():
        done = 0
        while done < rounds or time.perf_counter() - start < min_seconds:
            order = list(runs.items()) if done % 2 == 0 else list(reversed(runs.items()))
            for name, fn in order:
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
            done += 1
            if done >= 10 * rounds:
                break
    return times


def time_blocks(runs: dict[str, Callable[[], Any]], device: torch.device, calls: int) -> dict[str, list[float]]:
    """Per-call seconds with each variant called ``calls`` times in a row, the blocks in order A B C C B A
    (what pytest-benchmark does, and what a generation does: the same module step after step)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for name in [*runs, *reversed(runs)]:
            fn = runs[name]
            for _ in range(calls):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    """Medians, speedups over eager, and our step against each plain torch.compile variant."""
    med = {name: statistics.median(values) for name, values in times.items()}
    out: dict[str, Any] = {f"{name}_median_s": value for name, value in med.items()}
    out["rounds"] = len(next(iter(times.values())))
    for name in (*PLAIN_MODES, "trt_runtime"):
        if name in med:
            out[f"{name}_speedup"] = med["eager"] / med[name]
    if "trt_runtime_inner" in med:
        out["trt_runtime_inner_overhead"] = med["trt_runtime"] / med["trt_runtime_inner"] - 1.0
    if "trt_runtime_graph_only" in med:
        out["trt_runtime_graph_copy_overhead"] = med["trt_runtime"] / med["trt_runtime_graph_only"] - 1.0
    for plain, suffix in (("torch_compile", ""), ("torch_compile_ro", "_vs_reduce_overhead")):
        if plain in med and "trt_runtime" in med:
            out[f"trt_runtime_overhead{suffix}"] = med["trt_runtime"] / med[plain] - 1.0
            # per-round ratio, median: robust to a slow round touching one variant only
            pairs = [a / b - 1.0 for a, b in zip(times["trt_runtime"], times[plain], strict=True)]
            out[f"trt_runtime_overhead{suffix}_paired"] = statistics.median(pairs)
    return out


def warm_start(case: Case, size: str, device: torch.device, dtype: torch.dtype, cache_dir: Path,
               scratch: Path, settings: dict[str, Any] | None = None, profile: int = 0) -> dict[str, Any]:
    """First call in a fresh Python process that finds the engine cache but an empty inductor cache, with the
    same runtime settings as the cold process (they are part of the cache key)."""
    inductor = scratch / f"inductor-warm-{case.name}"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(inductor), TRT_CACHE_DIR=str(cache_dir))
    env.setdefault("TRT_RUNTIME_VERBOSITY", "info")  # its log says whether it loaded, and why not
    command = [sys.executable, "-m", "benchmarks.warm_start", case.name, "--size", size, "--device", str(device),
               "--dtype", str(dtype).removeprefix("torch."), "--settings", json.dumps(settings or {}),
               "--profile", str(profile)]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        logger.warning("warm start of %s failed:\n%s", case.name, proc.stderr[-3000:])
        return {"warm_start_error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["warm_start_process_s"] = wall
    result["warm_start_log"] = _runtime_messages(proc.stderr)
    return result


def _runtime_messages(stderr: str) -> list[str]:
    """trt_runtime's log records in a process's stderr, each with its continuation lines (a guard failure spans
    several)."""
    records: list[str] = []
    for line in stderr.splitlines():
        if line.startswith("trt_runtime "):
            records.append(line)
        elif records and line.strip() and not line.startswith(("[W", "W1", "I1", "There are modules")):
            records[-1] += "\n" + line
    return [record[:3000] for record in records]


def environment(device: torch.device) -> dict[str, Any]:
    import platform

    import diffusers
    import transformers

    import trt_runtime

    env: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "trt_runtime": trt_runtime.__version__,
        "device": str(device), "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env
