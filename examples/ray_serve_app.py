"""Ray Serve: replicas of a wrapped diffusers pipeline that share one engine cache.

Run it (``pip install "ray[serve]"``; every replica reads the cache folder in ``TRT_CACHE_DIR``):

    TRT_CACHE_DIR=/shared/engines serve run examples.ray_serve_app:app

then ``curl -X POST localhost:8000/ -d '{"prompt": "a lighthouse at dawn"}'``. Each replica wraps its pipeline and
calls ``warm_up`` in its constructor, so it loads (or, first in the fleet, builds under the cache's lock while the
others wait) every artifact of the sizes it serves before Ray routes a request to it. Set ``TRT_PIPELINE`` to a
folder saved with ``save_pretrained`` to serve a real pipeline; without it, the built-in demo pipeline (SD1.5
architecture at reduced width, random weights) is served. For a fleet: prebuild with ``trt-runtime build`` on one
GPU of each type, ship the cache (``trt-runtime cache export`` / ``import``, or a shared volume), and start
replicas with ``cache_read_only=True`` where they must never write (see README, *Serving at scale*).
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

from ray import serve


@serve.deployment(num_replicas=2)
class Generator:
    def __init__(self, size: int = 512, steps: int = 30, backend: str = "auto") -> None:
        import torch

        from trt_runtime import TensorRTRuntime, wrap_pipeline
        from trt_runtime.serving import warm_up

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        path = os.environ.get("TRT_PIPELINE")
        if path:
            from diffusers import DiffusionPipeline

            self.pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype).to(device)
        else:
            from trt_runtime.demo import build_demo_pipeline

            self.pipe = build_demo_pipeline(device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.size, self.steps = size, steps
        self.runtime = TensorRTRuntime(backend=backend)  # the cache folder comes from TRT_CACHE_DIR
        wrap_pipeline(self.pipe, runtime=self.runtime)
        self.warm_up = warm_up(self.pipe, resolutions=[size], batch_sizes=[1], steps=2)

    def stats(self) -> dict[str, Any]:
        """What this replica compiled and loaded (its warm-up included)."""
        return {"warm_up": self.warm_up, "totals": self.runtime.stats.totals(), "pid": os.getpid()}

    def generate(self, prompt: str, seed: int = 0) -> Any:
        import torch

        generator = torch.Generator().manual_seed(seed)
        with torch.inference_mode():
            return self.pipe(prompt, height=self.size, width=self.size, num_inference_steps=self.steps,
                             generator=generator, output_type="np").images[0]

    async def __call__(self, request) -> dict[str, Any]:
        from PIL import Image

        body = await request.json()
        image = self.generate(body["prompt"], int(body.get("seed", 0)))
        buffer = io.BytesIO()
        Image.fromarray((image * 255).round().astype("uint8")).save(buffer, format="PNG")
        return {"png_base64": base64.b64encode(buffer.getvalue()).decode(), "replica": os.getpid()}


app = Generator.bind()
