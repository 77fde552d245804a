"""Diagnostic: a background build in a separate process, then the load in the caller, on a tiny UNet.

``python -m benchmarks.diag.background_child [--device cuda] [--cache DIR]``: calls the wrapped UNet the way a
pipeline does (inputs made inside ``torch.inference_mode``, a 0-d timestep tensor) until the artifact the build
process wrote is loaded (or built here), and prints the runtime's totals as one JSON line. Run it with
``TRT_RUNTIME_VERBOSITY=debug`` to see each step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cache", default=None)
    parser.add_argument("--max-wait", type=float, default=500.0)
    args = parser.parse_args(argv)

    import trt_runtime
    from tests.support import tiny_models as tm
    from trt_runtime.modules.unet import apply_unet

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    unet = tm.sd_unet().eval().to(device, dtype)
    runtime = trt_runtime.TensorRTRuntime(backend="inductor", background=True,
                                          cache_dir=args.cache or tempfile.mkdtemp(prefix="bg_child_"))
    apply_unet(unet, runtime=runtime)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g).to(device, dtype)
    ctx = torch.randn(2, 8, 32, generator=g).to(device, dtype)
    start, calls = time.monotonic(), 0
    while time.monotonic() - start < args.max_wait:
        with torch.inference_mode():
            latents = torch.cat([x * 1] * 2)
            unet(latents, torch.tensor(10.0, device=device), encoder_hidden_states=ctx * 1, return_dict=False)
        calls += 1
        totals = runtime.stats.totals()
        if totals["loads"] or totals["compiles"]:
            break
        time.sleep(1)
    print(json.dumps({"calls": calls, "seconds": time.monotonic() - start, **runtime.stats.totals()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
