"""Diagnostic (GPU): where a wrapped pipeline's image spends its time, step by step, beside reduce-overhead.

The SD1.5 UNet step alone is 1.2x faster with trt_runtime's defaults than with
``torch.compile(mode="reduce-overhead")``, yet the image is at parity: about 1.5 ms per step goes somewhere outside
the UNet's graph. This builds the case's pipeline (full size, random weights), makes the variants the benchmark
makes (``benchmarks.pipelines.variant_pipelines``), warms each up, and then for each variant:

- ``image_ms``: the median of ``--images`` synchronised images;
- per denoising step, from ``callback_on_step_end``: the host's interval between steps (``host_step_ms``) and the
  GPU's (``gpu_step_ms``, CUDA events recorded at each callback). A host interval equal to the GPU's means the
  host waits for the GPU somewhere in the step (a synchronisation); a host interval below it means the host runs
  ahead and only the GPU's work counts;
- ``denoiser_call_ms``: host time inside the denoiser's call (forward pre/post hooks), i.e. what launching it costs;
- ``denoiser_gpu_ms``: GPU time of the denoiser's call alone (events around the call);
- ``gpu_before_steps_ms`` and ``gpu_after_steps_ms``: GPU time from the image's start to the end of its first step
  (prompt encoding, latents, the first step) and from the end of its last step to its end (VAE decoding and
  post-processing);
- with ``--profile``: ``torch.profiler`` counts of the CUDA runtime calls that block the host (stream and event
  synchronisations, device-to-host copies) over one image, and the costliest host operators.

``python -m benchmarks.diag.pipeline_steps sd15_pipeline [--variants torch_compile_ro,trt_runtime] [--images 5]
[--profile] [--size full]`` prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from typing import Any

import torch

from benchmarks.pipelines import PIPELINES, build_pipeline, generate, variant_pipelines

_BLOCKING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ",
             "cudaMemcpyAsync", "cudaStreamIsCapturing")


class _Steps:
    """Host and GPU marks at every step callback, and around every denoiser call."""

    def __init__(self) -> None:
        self.host: list[list[float]] = []  # per image
        self.gpu: list[list[torch.cuda.Event]] = []
        self.calls: list[float] = []
        self.call_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self.bounds: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # per image: its start and its end
        self._entered = 0.0

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_step_end(self, pipe: Any, step: int, timestep: Any, kwargs: dict) -> dict:
        if step == 0:
            self.host.append([])
            self.gpu.append([])
        self.host[-1].append(time.perf_counter())
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.gpu[-1].append(event)
        return kwargs

    def pre(self, module: Any, args: Any, kwargs: Any = None) -> None:
        start = torch.cuda.Event(enable_timing=True)
        start.record()
        self.call_events.append((start, torch.cuda.Event(enable_timing=True)))
        self._entered = time.perf_counter()

    def post(self, module: Any, args: Any, *rest: Any) -> None:
        self.calls.append((time.perf_counter() - self._entered) * 1e3)
        self.call_events[-1][1].record()

    def figures(self) -> dict[str, float]:
        torch.cuda.synchronize()
        host = [(b - a) * 1e3 for image in self.host for a, b in itertools.pairwise(image)]
        gpu = [a.elapsed_time(b) for image in self.gpu for a, b in itertools.pairwise(image)]
        calls_gpu = [a.elapsed_time(b) for a, b in self.call_events]
        before = [start.elapsed_time(steps[0]) for (start, _), steps in zip(self.bounds, self.gpu, strict=True)]
        after = [steps[-1].elapsed_time(end) for (_, end), steps in zip(self.bounds, self.gpu, strict=True)]
        return {"gpu_before_steps_ms": statistics.median(before), "gpu_after_steps_ms": statistics.median(after),
                "host_step_ms": statistics.median(host), "gpu_step_ms": statistics.median(gpu),
                "denoiser_call_ms": statistics.median(self.calls), "denoiser_gpu_ms": statistics.median(calls_gpu),
                "steps": len(self.host[-1])}


def _image(pipe: Any, case: Any, size: str, steps: _Steps | None) -> tuple[Any, float]:
    torch.cuda.synchronize()
    started = time.perf_counter()
    pixels = case.pixels[size]
    extra = {"callback_on_step_end": steps.on_step_end} if steps is not None else {}
    start = steps.mark() if steps is not None else None
    out = pipe("a lighthouse at dawn, oil painting", num_inference_steps=case.steps[size], height=pixels,
               width=pixels, guidance_scale=case.guidance, generator=torch.Generator("cpu").manual_seed(0),
               output_type="pt", **extra).images
    if steps is not None:
        steps.bounds.append((start, steps.mark()))
    torch.cuda.synchronize()
    return out, (time.perf_counter() - started) * 1e3


def _profile(pipe: Any, case: Any, size: str, top: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _image(pipe, case, size, None)
    events = prof.key_averages()
    blocking = {e.key: e.count for e in events if any(e.key.startswith(b.strip()) for b in _BLOCKING)}
    kernels = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    host = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"blocking_calls": blocking, "gpu_busy_ms": kernels / 1e3,
            "host_ops": [f"{e.self_cpu_time_total / 1e3:9.2f} ms {e.count:6d} {e.key}" for e in host]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(PIPELINES))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--variants", default="torch_compile_ro,trt_runtime")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--settings", default="{}", help="JSON settings for trt_runtime's runtime")
    args = parser.parse_args(argv)
    import trt_runtime

    torch.backends.cudnn.benchmark = True
    case = PIPELINES[args.case]
    pipe = build_pipeline(args.case, args.size, torch.device("cuda"), case.dtype)
    with tempfile.TemporaryDirectory(prefix="trt_runtime_steps_") as cache:
        runtime = trt_runtime.TensorRTRuntime(cache_dir=cache, **json.loads(args.settings))
        variants = variant_pipelines(pipe, runtime, tuple(["eager"] + args.variants.split(",")))
        reference = generate(pipe, case, args.size)
        for name in args.variants.split(","):
            variant = variants[name]
            denoiser = variant.unet if hasattr(variant, "unet") else variant.transformer
            started = time.perf_counter()
            first, _ = _image(variant, case, args.size, None)
            first_s = time.perf_counter() - started
            for _ in range(2):
                _image(variant, case, args.size, None)
            steps = _Steps()
            handles = [denoiser.register_forward_pre_hook(steps.pre), denoiser.register_forward_hook(steps.post)]
            hooked = [_image(variant, case, args.size, steps)[1] for _ in range(2)]
            figures = steps.figures()
            for handle in handles:
                handle.remove()
            times = [_image(variant, case, args.size, None)[1] for _ in range(args.images)]
            row: dict[str, Any] = {"variant": name, "first_image_s": round(first_s, 2),
                                   "image_ms": round(statistics.median(times), 2),
                                   "images_ms": [round(t, 1) for t in times],
                                   "hooked_image_ms": [round(t, 1) for t in hooked],
                                   **{k: round(v, 3) for k, v in figures.items()},
                                   "max_abs_vs_eager": float((first.float() - reference.float()).abs().max())}
            if args.profile:
                row.update(_profile(variant, case, args.size, args.top))
            if name == "trt_runtime":
                row["summary"] = str(runtime.summary())[:3000]
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
