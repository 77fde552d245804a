"""Diagnostic (GPU): is a model's GPU memory freed once it is deleted after a background build that mapped its
weights into a build process? Runs the tiny VAE decoder two ways in one process and prints, per way, how many of
the weights' tensors still sit in allocated memory after deleting everything (``weights_still_allocated``, from the
allocator's snapshot: cuBLAS workspaces and other caches do not count) and the bytes still allocated (``left``):

- ``foreground``: no build process (the control: whatever the parent itself keeps);
- ``background``: a build process maps the weights (CUDA IPC), builds, exits; the parent loads the artifact.

``python -m benchmarks.diag.ipc_release`` (needs the repository's tests on the path, for the tiny model and the
test backends).
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time

import torch


def _one(background: bool, frozen: bool, poll: bool) -> dict:
    from tests.support import register_doubles  # noqa: F401 - the "slow" test backend, here and in the child
    from tests.support import tiny_models as tm
    from trt_runtime import TensorRTRuntime, builds
    from trt_runtime.modules.vae import apply_vae

    gc.collect()
    baseline = torch.cuda.memory_allocated()
    vae = tm.vae_kl().eval().requires_grad_(not frozen).to("cuda", torch.float16)
    weights = sum(t.numel() * t.element_size() for t in vae.state_dict().values())
    pointers = [t.data_ptr() for t in vae.state_dict().values()]
    with tempfile.TemporaryDirectory() as cache:
        rt = TensorRTRuntime(backend="slow", cache_dir=cache, background=background)
        wrapped = apply_vae(vae, runtime=rt, encoder=False)
        z = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16)
        for _ in range(200 if background else 3):
            if poll or not _:
                with torch.no_grad():
                    vae.decode(z)
            slots = list(wrapped.components["vae.decoder"].slots.values())
            if slots and all(s.state.value == "ready" or s.handover for s in slots):
                break
            torch.cuda.synchronize()
            time.sleep(0.5)
        states = [s.state.value for s in wrapped.components["vae.decoder"].slots.values()]
        builds.shutdown_all()
        with_model = torch.cuda.memory_allocated() - baseline
        del vae, wrapped, rt, z, slots
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.ipc_collect()
        return {"background": background, "frozen": frozen, "poll": poll, "states": states, "weights": weights,
                "with_model": with_model,
                "left": torch.cuda.memory_allocated() - baseline,
                "weights_still_allocated": sum(map(bool, allocated_blocks(pointers))), "of": len(pointers)}


def allocated_blocks(pointers: list[int]) -> list[bool]:
    """For each address, whether it lies in a block the CUDA caching allocator has handed out."""
    blocks = [(b["address"], b["address"] + b["size"]) for segment in torch.cuda.memory_snapshot()
              for b in segment["blocks"] if b["state"] == "active_allocated"]
    return [any(start <= p < end for start, end in blocks) for p in pointers]


def main() -> int:
    os.environ.setdefault("TRT_RUNTIME_BUILD_IMPORTS", "tests.support.register_doubles")
    # parameters with requires_grad off (as pipelines load them) or left on; calls made while the build runs (each
    # runs eagerly, the one after it loads the artifact) or one call and a wait (the worker loads it beside)
    for frozen, background, poll in ((True, False, True), (True, True, True), (True, True, False),
                                     (False, True, False), (False, True, True)):
        print(json.dumps(_one(background, frozen, poll)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
