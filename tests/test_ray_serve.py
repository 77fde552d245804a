"""The Ray Serve example (examples/ray_serve_app.py) on a local Ray instance on the CPU: two replicas of the
demo pipeline sharing one engine cache build each key once, answer with eager's image, and a replica started
later loads instead of building. Skipped where ``ray[serve]`` is not installed (CI installs the package's own
dependencies only; tests/test_serving.py runs the same fleet as plain OS processes there)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="ray[serve] is not installed")
serve = pytest.importorskip("ray.serve")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray(tmp_path):
    env = {"TRT_CACHE_DIR": str(tmp_path / "engines"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": ROOT}
    ray.init(num_cpus=4, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    yield
    serve.shutdown()
    ray.shutdown()


def test_two_replicas_share_one_cache(local_ray):
    sys.path.insert(0, ROOT)
    from examples.ray_serve_app import Generator
    from trt_runtime.demo import build_demo_pipeline

    # one request at a time per replica, so that concurrent requests reach both
    deployment = Generator.options(num_replicas=2, max_ongoing_requests=1)
    handle = serve.run(deployment.bind(size=32, steps=2, backend="inductor"), name="gen", route_prefix=None)
    images = [r.result() for r in [handle.generate.remote("a lighthouse", 0) for _ in range(6)]]
    stats = {info["pid"]: info for info in (r.result() for r in [handle.stats.remote() for _ in range(12)])}
    assert len(stats) == 2, "both replicas answered"
    keys = max(s["totals"]["keys"] for s in stats.values())
    assert sum(s["totals"]["compiles"] for s in stats.values()) == keys, stats  # each key built once in the fleet
    pipe = build_demo_pipeline("cpu")
    with torch.inference_mode():
        reference = pipe("a lighthouse", height=32, width=32, num_inference_steps=2,
                         generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert float(np.abs(images[0] - reference).max()) < 1e-3

    serve.delete("gen")  # a replica restarted later: loads, never builds
    handle = serve.run(Generator.options(num_replicas=1).bind(size=32, steps=2, backend="inductor"), name="gen2",
                       route_prefix=None)
    info = handle.stats.remote().result()
    assert info["totals"]["compiles"] == 0 and info["totals"]["loads"] == keys
