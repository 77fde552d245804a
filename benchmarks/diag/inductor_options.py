"""Study (GPU): which inductor options pay, for the defaults (issue 10, item 4).

Each variant runs in a fresh process with an empty inductor cache of its own, so its first call is a cold
compile: ``max-autotune`` with and without CUDA graphs, fused QKV projections (diffusers
``fuse_qkv_projections``), channels-last (the VAE), regional compilation of the repeated blocks (diffusers
``compile_repeated_blocks``), each beside eager, plain ``torch.compile``, ``reduce-overhead`` and
trt_runtime's defaults. A step is the median of 5 blocks of 20 calls (wall clock around a synchronised
block), after 5 warm-up calls.

``python -m benchmarks.diag.inductor_options CASE VARIANT[,VARIANT...] [--json FILE] [--timeout S]``
prints one JSON line per variant (and appends it to FILE).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

Module = torch.nn.Module
SIZE = os.environ.get("BENCH_SIZE", "full")  # "tiny": a smoke test of the script


def _fuse_qkv(module: Module) -> Module:
    module.fuse_qkv_projections()
    return module


def _channels_last(module: Module) -> Module:
    return module.to(memory_format=torch.channels_last)


def _compiled(mode: str | None = None, prepare: Callable[[Module], Module] | None = None):
    def apply(case, module: Module, cache_dir: str) -> Any:
        return case.compile_plain(prepare(module) if prepare else module, mode)

    return apply


def _regional(mode: str | None = None):
    def apply(case, module: Module, cache_dir: str) -> Module:
        module.compile_repeated_blocks(fullgraph=True, mode=mode)
        return module

    return apply


def _ours(prepare: Callable[[Module], Module] | None = None, **settings: Any):
    def apply(case, module: Module, cache_dir: str) -> Any:
        from trt_runtime import TensorRTRuntime

        module = prepare(module) if prepare else module
        case.wrap(module, TensorRTRuntime(backend="inductor", cache_dir=cache_dir, **settings))
        return module

    return apply


VARIANTS: dict[str, Callable[..., Any] | None] = {
    "eager": None,
    "compile": _compiled(),
    "reduce_overhead": _compiled("reduce-overhead"),
    "max_autotune_no_cudagraphs": _compiled("max-autotune-no-cudagraphs"),
    "max_autotune": _compiled("max-autotune"),
    "reduce_overhead_fused_qkv": _compiled("reduce-overhead", _fuse_qkv),
    "reduce_overhead_channels_last": _compiled("reduce-overhead", _channels_last),
    "regional": _regional(),
    "regional_reduce_overhead": _regional("reduce-overhead"),
    "trt_runtime": _ours(),
    "trt_runtime_fused_qkv": _ours(prepare=_fuse_qkv),
    "trt_runtime_channels_last": _ours(prepare=_channels_last),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def measure(case_name: str, variant: str) -> dict[str, Any]:
    from benchmarks.cases import CASES, build_case
    from benchmarks.harness import relative_error

    case = CASES[case_name]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = build_case(case, SIZE, device, case.dtype)
    torch.manual_seed(1)
    inputs = case.inputs(SIZE, device, case.dtype)
    reference = case.call(module, inputs)
    reference = reference.clone() if torch.is_tensor(reference) else reference
    row: dict[str, Any] = {"case": case_name, "variant": variant,
                           "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                           "torch": torch.__version__}
    try:
        import diffusers

        row["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    target = module
    apply = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as cache_dir:
        if apply is not None:
            target = apply(case, module, cache_dir)
        t0 = time.perf_counter()
        out = case.call(target, inputs)
        _sync(device)
        row["first_call_s"] = round(time.perf_counter() - t0, 2)
        row["relative_error"] = relative_error(out, reference)
        for _ in range(5):
            case.call(target, inputs)
        blocks = []
        for _ in range(5):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(20):
                case.call(target, inputs)
            _sync(device)
            blocks.append((time.perf_counter() - t0) * 1000 / 20)
        row["step_ms"] = round(sorted(blocks)[2], 3)
        row["blocks_ms"] = [round(b, 3) for b in blocks]
        if device.type == "cuda":
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("case")
    parser.add_argument("variants")
    parser.add_argument("--json")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("ROW " + json.dumps(measure(args.case, args.variants), default=str), flush=True)
        return
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="inductor-"))
        t0 = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "benchmarks.diag.inductor_options", args.case, variant,
                                   "--child"], capture_output=True, text=True, timeout=args.timeout, env=env)
            rows = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
            row = json.loads(rows[-1]) if rows else {"case": args.case, "variant": variant,
                                                     "error": done.stderr[-1500:], "rc": done.returncode}
        except subprocess.TimeoutExpired:
            row = {"case": args.case, "variant": variant, "error": f"timed out after {args.timeout:.0f} s"}
        row["process_s"] = round(time.perf_counter() - t0, 1)
        line = json.dumps(row, default=str)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
