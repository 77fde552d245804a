"""Diagnostic (GPU): the inductor backend's ahead-of-time path on CUDA: does a CUDA graph capture it, does a
new process load it? Prints INFO logs of trt_runtime. ``python -m benchmarks.diag.aot_gpu CACHE_DIR``."""

from __future__ import annotations

import json
import logging
import sys

import torch

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
for noisy in ("torch", "filelock"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:
    from trt_runtime import TensorRTModule, TensorRTRuntime

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 64, 3, padding=1), torch.nn.GroupNorm(8, 64), torch.nn.SiLU(),
                              torch.nn.Conv2d(64, 4, 3, padding=1)).eval().to("cuda", torch.float16)
    rt = TensorRTRuntime(backend="inductor", cache_dir=sys.argv[1])
    w = TensorRTModule(net, runtime=rt, name="convnet")
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        for _ in range(4):
            out = w(x)
        err = float((out - net(x)).abs().max())
    entry = rt.cache.entries()[0] if rt.cache.entries() else None
    print(json.dumps({"totals": rt.stats.totals(), "err": err, "files": sorted(entry.meta.get("files", {})) if entry else None,
                      "slot_graphs": [s.graphs for s in w.component.slots.values()],
                      "fn": [type(s.fn).__name__ for s in w.component.slots.values()]}))


if __name__ == "__main__":
    main()
