"""First-image latency with background builds, run as its own process (fresh engine and inductor caches):
``python -m benchmarks.background sd15_pipeline --size full``.

What a server sees when it starts: the pipeline is built, wrapped with ``background=True``, and asked for
images at once. The figures, as one JSON line:

- ``eager_image_s``: an unwrapped image, warm (median of ``eager_images``, four after a first one that warms
  cuDNN and allocators): the latency the first wrapped image is compared with;
- ``background_first_image_s``: the first image with ``wrap_pipeline(pipe, background=True)``, while
  the builds run beside it; ``background_first_vs_eager`` is its ratio to ``eager_image_s``;
- ``background_images``: the per-image seconds of every image generated until the builds are done
  (what requests see meanwhile; the image whose call loads an artifact a build process wrote carries that
  load) and ``background_ready_s``, seconds from wrapping until every artifact is in use;
- ``compiled_image_s``: an image once the artifacts are swapped in.

``--profile N`` adds the N costliest functions of the first wrapped image (``background_first_profile``, cProfile;
on Python 3.12+ it sees every thread, the build worker's included): what the wrapper itself adds to that image.

``--fresh N`` measures what a server that just started sees instead: N pairs of new processes, one generating its
first image unwrapped, one with ``wrap_pipeline(pipe, background=True)`` (which goes first alternates from pair to
pair; each process is given ``--max-wait`` seconds), each with empty caches and
nothing run before (so both pay CUDA's and cuDNN's first-use costs, as a server does). The figures:
``fresh_eager_first_s`` and ``fresh_background_first_s`` (one per process), their medians and
``fresh_background_vs_eager``, the ratio of the medians.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from .pipelines import PIPELINES, build_pipeline, generate
from .warm_start import costliest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=sorted(PIPELINES))
    parser.add_argument("--size", default="full", choices=("full", "tiny"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-wait", type=float, default=900.0, help="give up waiting for the builds after this")
    parser.add_argument("--backend", default="auto", help="the runtime's backend setting (default: auto)")
    parser.add_argument("--json", help="also write the figures to this file after every image (a run cut off "
                                       "by a time limit keeps what it measured)")
    parser.add_argument("--profile", type=int, default=0, help="report the N costliest functions of the first "
                                                                "wrapped image")
    parser.add_argument("--eager-images", type=int, default=8, help="warm eager images for the median (default 8)")
    parser.add_argument("--fresh", type=int, default=0, help="instead: N pairs of new processes, first image "
                                                             "unwrapped against first image with background builds")
    parser.add_argument("--first-only", choices=("eager", "background"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fresh:
        return _fresh_pairs(args)
    # fresh caches, seen by the build processes too (they inherit the environment): an engine or kernel that an
    # earlier run left in the default folders would make the builds loads
    scratch = tempfile.mkdtemp(prefix="trt_runtime_background_")
    os.environ["TRT_CACHE_DIR"] = os.path.join(scratch, "engines")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(scratch, "inductor")
    try:
        return _measure(args)
    finally:
        import trt_runtime.builds

        trt_runtime.builds.shutdown_all()  # no build process left writing into the folder
        shutil.rmtree(scratch, ignore_errors=True)  # gigabytes of engines and kernels on a machine's small disk


def _measure(args: argparse.Namespace) -> int:

    import trt_runtime

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    case = PIPELINES[args.case]
    dtype = case.dtype if device.type == "cuda" else torch.float32
    pipe = build_pipeline(args.case, args.size, device, dtype)

    def image() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            generate(pipe, case, args.size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    figures: dict[str, object] = {"case": args.case, "size": args.size, "device": str(device),
                                  "torch": torch.__version__, "trt_runtime": trt_runtime.__version__}
    if device.type == "cuda":
        figures["gpu"] = torch.cuda.get_device_name(device)

    def record() -> None:
        if args.json:
            with open(args.json, "w") as out:
                json.dump(figures, out)

    if args.first_only:  # one process of --fresh: its first image, nothing run before it
        if args.first_only == "background":
            trt_runtime.wrap_pipeline(pipe, runtime=trt_runtime.TensorRTRuntime(background=True, backend=args.backend))
        figures["first_only"] = args.first_only
        figures["first_image_s"] = image()
        print(json.dumps(figures))
        return 0
    figures["eager_first_image_s"] = image()
    figures["eager_images"] = [image() for _ in range(args.eager_images)]
    figures["eager_image_s"] = statistics.median(figures["eager_images"])
    runtime = trt_runtime.TensorRTRuntime(background=True, backend=args.backend)
    figures["backend"] = args.backend
    wrapped_at = time.perf_counter()
    trt_runtime.wrap_pipeline(pipe, runtime=runtime)
    figures["wrap_s"] = time.perf_counter() - wrapped_at
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    figures["background_first_image_s"] = image()
    if profiler is not None:
        profiler.disable()
        figures["background_first_profile"] = costliest(profiler, args.profile)
    figures["background_first_vs_eager"] = figures["background_first_image_s"] / figures["eager_image_s"]
    images = figures["background_images"] = [figures["background_first_image_s"]]
    record()

    def pending() -> bool:  # a build running or queued, or an artifact waiting for the next call to load it
        return any(slot.state.value in ("compiling", "stale") or slot.handover
                   for comp in trt_runtime.pipeline.wrapped_components(pipe).values() for slot in comp.slots.values())

    while pending() and time.perf_counter() - wrapped_at < args.max_wait:
        images.append(image())
        record()
    figures["background_ready_s"] = time.perf_counter() - wrapped_at
    figures["background_max_image_s"] = max(images)
    figures["compiled_image_s"] = statistics.median([image(), image()])
    figures["totals"] = runtime.stats.totals()
    figures["backends_used"] = sorted({row.backend for row in runtime.stats.rows()})  # what `auto` resolved to
    figures["summary"] = runtime.summary()
    record()
    print(json.dumps(figures))
    return 0


def _fresh_pairs(args: argparse.Namespace) -> int:
    """``--fresh N``: each first image in a new process (see the module docstring)."""
    figures: dict[str, object] = {"case": args.case, "size": args.size, "device": args.device, "backend": args.backend,
                                  "torch": torch.__version__, "fresh_eager_first_s": [],
                                  "fresh_background_first_s": [], "fresh_failures": []}
    for pair in range(args.fresh):
        # the order alternates: whatever a machine's first processes pay (a cold page cache, clocks) falls on both
        for mode in ("eager", "background") if pair % 2 == 0 else ("background", "eager"):
            command = [sys.executable, "-m", "benchmarks.background", args.case, "--size", args.size, "--device",
                       args.device, "--backend", args.backend, "--first-only", mode]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.max_wait)
            except subprocess.TimeoutExpired:
                figures["fresh_failures"].append(f"{mode}: no image within {args.max_wait:.0f} s")
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            figures.setdefault("fresh_exits", []).append(f"{mode}: {done.returncode}")  # a crash at exit counts too
            figures.setdefault("fresh_exit_messages", []).extend(  # torch's IPC warning, a C++ abort at exit
                f"{mode}: {line.strip()[:200]}" for line in done.stderr.splitlines() if any(
                    word in line for word in ("Producer process", "terminate called", "Aborted")))
            if not lines:
                figures["fresh_failures"].append(f"{mode}: exit {done.returncode}: {done.stderr[-500:]}")
                continue
            if done.returncode != 0:
                figures["fresh_failures"].append(f"{mode}: image made, then exit {done.returncode}: "
                                                 f"{done.stderr[-300:]}")
            row = json.loads(lines[-1])
            figures.setdefault("gpu", row.get("gpu"))
            figures[f"fresh_{mode}_first_s"].append(row["first_image_s"])
    eager, background = figures["fresh_eager_first_s"], figures["fresh_background_first_s"]
    if eager and background:
        figures["fresh_eager_first_median_s"] = statistics.median(eager)
        figures["fresh_background_first_median_s"] = statistics.median(background)
        figures["fresh_background_vs_eager"] = statistics.median(background) / statistics.median(eager)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out)
    print(json.dumps(figures))
    return 0 if eager and background and not figures["fresh_failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
