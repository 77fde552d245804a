"""Diagnostic (GPU): why ``inductor_precompile`` fails with the full SD1.5 UNet (2026-11-26, H200: no CUDA graph
captured around the ahead-of-time function, and a new process compiled again).

Three steps, each in a fresh process so that nothing is shared but the folders given:

- ``raw-save DIR``: torch alone. ``torch.compile(run).aot_compile`` of the UNet call, timed, saved to DIR; then
  a CUDA graph is captured around the compiled function and compared with eager.
- ``raw-load DIR``: torch alone, a new process: ``torch.compiler.load_compiled_function``, timed, called,
  compared with eager, captured in a CUDA graph.
- ``runtime DIR``: trt_runtime with ``inductor_precompile=True`` (run it twice: cold, then warm), DEBUG logs of
  trt_runtime on stderr, the runtime's totals, states and errors as JSON on stdout.

Every exception is printed with its traceback; Python's faulthandler is on (a crash prints the stacks).
``python -m benchmarks.diag.aot_unet STEP DIR [--size tiny] [--device cpu]``
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import time
import traceback
from pathlib import Path

import torch

faulthandler.enable()


DEVICE = torch.device("cuda")
INFERENCE_MODE = False


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _unet_and_inputs(size: str):
    from benchmarks.cases import CASES, build_case

    case = CASES["sd15_unet"]
    device = DEVICE
    unet = build_case(case, size, device, torch.float16)
    torch.manual_seed(1)
    inputs = case.inputs(size, device, torch.float16)
    # as trt_runtime's wrapper calls it: a tuple out (UNet2DConditionOutput is an OrderedDict: returning it makes
    # the compiled function refer to the ``collections`` module, which a new process must be given to load it)
    return unet, dict(inputs, return_dict=False)


def _run(module, *args, **kwargs):
    return module(*args, **kwargs)


def _sample(out):
    return out[0] if isinstance(out, tuple) else out.sample


def _err(a, b) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6))


def _try_graph(fn, report: dict, reference) -> None:
    if DEVICE.type != "cuda":
        return
    try:
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            out = fn()
        graph.replay()
        torch.cuda.synchronize()
        report["graph"] = "captured"
        report["graph_err"] = _err(_sample(out), reference)
    except Exception as err:  # noqa: BLE001 - the diagnostic reports it
        report["graph"] = f"{type(err).__name__}: {str(err)[:2000]}"
        report["graph_traceback"] = traceback.format_exc()[-4000:]


def _time(fn, n: int = 20) -> float:
    if DEVICE.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1000 / n
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def _guard_filter(entries):
    from torch._dynamo.guards import CheckFunctionManager

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [not (e.is_global or e.guard_type in unsupported or unsupported & set(e.derived_guard_types or ()))
            for e in entries]


def _first_call(fn, unet, inputs: dict, reference, report: dict) -> None:
    t0 = time.perf_counter()
    out = fn(unet, **inputs)
    _sync()
    report["first_call_s"] = time.perf_counter() - t0
    report["err"] = _err(_sample(out), reference)


@torch.no_grad()
def raw_save(directory: Path, size: str) -> dict:
    unet, inputs = _unet_and_inputs(size)
    reference = _sample(unet(**inputs))
    report: dict = {"step": "raw-save"}
    t0 = time.perf_counter()
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = torch.compile(_run, fullgraph=True, dynamic=False, options={"guard_filter_fn": _guard_filter})
        fn = compiled.aot_compile(((unet,), dict(inputs)))
    report["aot_compile_s"] = time.perf_counter() - t0
    _first_call(fn, unet, inputs, reference, report)
    t0 = time.perf_counter()
    fn.save_compiled_function(str(directory / "unet.aot"))
    report["save_s"] = time.perf_counter() - t0
    report["bytes"] = (directory / "unet.aot").stat().st_size
    report["step_ms"] = _time(lambda: fn(unet, **inputs))
    report["eager_ms"] = _time(lambda: unet(**inputs))
    _try_graph(lambda: fn(unet, **inputs), report, reference)
    return report


@torch.no_grad()
def raw_load(directory: Path, size: str) -> dict:
    unet, inputs = _unet_and_inputs(size)
    reference = _sample(unet(**inputs))
    report: dict = {"step": "raw-load"}
    t0 = time.perf_counter()
    with open(directory / "unet.aot", "rb") as f:
        fn = torch.compiler.load_compiled_function(f)
    report["load_s"] = time.perf_counter() - t0
    _first_call(fn, unet, inputs, reference, report)
    report["step_ms"] = _time(lambda: fn(unet, **inputs))
    _try_graph(lambda: fn(unet, **inputs), report, reference)
    return report


def runtime(directory: Path, size: str) -> dict:
    with torch.inference_mode() if INFERENCE_MODE else torch.no_grad():
        return _runtime(directory, size)


def _runtime(directory: Path, size: str) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("trt_runtime").setLevel(logging.DEBUG)
    from trt_runtime import TensorRTRuntime
    from trt_runtime.modules.unet import apply_unet

    unet, inputs = _unet_and_inputs(size)
    inputs.pop("return_dict")
    reference = _sample(unet(**inputs)).clone()
    rt = TensorRTRuntime(backend="inductor", cache_dir=str(directory), inductor_precompile=True)
    apply_unet(unet, runtime=rt)
    report: dict = {"step": "runtime", "inference_mode": INFERENCE_MODE}
    t0 = time.perf_counter()
    out = unet(**inputs)
    _sync()
    report["first_call_s"] = time.perf_counter() - t0
    report["err"] = _err(_sample(out), reference)
    for _ in range(3):
        unet(**inputs)
    report["step_ms"] = _time(lambda: unet(**inputs))
    report["totals"] = rt.stats.totals()
    report["rows"] = [{"state": r.state, "error": r.error, "phases": r.phases, "graphs": getattr(r, "graphs", None)}
                      for r in rt.stats.rows()]
    report["files"] = [sorted(e.meta.get("files", {})) for e in rt.cache.entries()]
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=["raw-save", "raw-load", "runtime"])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--size", default="full", choices=["full", "tiny"])
    parser.add_argument("--device", default="cuda", help="cpu: a smoke test of the script itself")
    parser.add_argument("--inference-mode", action="store_true", help="runtime step under torch.inference_mode")
    args = parser.parse_args()
    global DEVICE, INFERENCE_MODE
    DEVICE, INFERENCE_MODE = torch.device(args.device), args.inference_mode
    args.directory.mkdir(parents=True, exist_ok=True)
    step = {"raw-save": raw_save, "raw-load": raw_load, "runtime": runtime}[args.step]
    try:
        report = step(args.directory, args.size)
    except Exception as err:  # noqa: BLE001 - the diagnostic reports it
        report = {"step": args.step, "error": f"{type(err).__name__}: {str(err)[:3000]}",
                  "traceback": traceback.format_exc()[-6000:]}
    print("AOT-DIAG " + json.dumps(report, default=str), flush=True)


if __name__ == "__main__":
    main()
