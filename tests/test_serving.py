"""Serving from several replicas: ``warm_up`` in each replica's constructor, one engine cache shared by all.

Replicas are real OS processes (what Ray Serve, Kubernetes or torchrun start). The compiler is the test-only
``counting`` export backend, which logs every build across processes: the fleet must build each key once, every
replica must answer with eager's image, and a replica started later must load instead of building.
tests/test_ray_serve.py runs the same through Ray Serve where ``ray[serve]`` is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REPLICA = textwrap.dedent(f"""
    import json, sys, torch
    sys.path.insert(0, {ROOT!r})
    from tests.support.backends import CountingExport
    from trt_runtime import TensorRTRuntime, wrap_pipeline
    from trt_runtime.backends import register_backend
    from trt_runtime.demo import build_demo_pipeline
    from trt_runtime.serving import warm_up

    register_backend("counting", CountingExport)
    pipe = build_demo_pipeline("cpu")

    def generate():
        g = torch.Generator().manual_seed(0)
        with torch.inference_mode():
            return pipe("a lighthouse", num_inference_steps=2, height=32, width=32, generator=g,
                        output_type="np").images
    reference = generate()
    runtime = TensorRTRuntime(backend="counting")
    wrap_pipeline(pipe, runtime=runtime)
    warmed = warm_up(pipe, resolutions=[32], batch_sizes=[1], steps=2)
    after_warm_up = runtime.stats.totals()
    image = generate()
    print(json.dumps({{"warm_up": warmed, "after_warm_up": after_warm_up, "totals": runtime.stats.totals(),
                      "max_difference": float(abs(image - reference).max())}}))
""")


def _start(env):
    return subprocess.Popen([sys.executable, "-c", REPLICA], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_replicas_build_each_key_once_and_a_late_replica_loads(tmp_path):
    log = tmp_path / "builds.log"
    env = {**os.environ, "TRT_CACHE_DIR": str(tmp_path / "engines"), "TRT_TEST_BUILD_LOG": str(log),
           "TRT_TEST_BUILD_SLEEP": "2"}
    first, second = [_result(p) for p in [_start(env), _start(env)]]
    keys = first["totals"]["keys"]
    assert keys == second["totals"]["keys"] >= 2  # UNet and VAE decoder at least
    assert len(log.read_text().split()) == keys, "a key was built by more than one replica"
    for replica in (first, second):
        assert replica["max_difference"] < 1e-4
        assert replica["after_warm_up"]["compiles"] + replica["after_warm_up"]["loads"] == keys
        assert replica["totals"]["compiles"] == replica["after_warm_up"]["compiles"], "a request compiled"
    assert first["totals"]["compiles"] + second["totals"]["compiles"] == keys

    late = _result(_start(env))  # a replica restarted later
    assert late["totals"]["compiles"] == 0 and late["totals"]["loads"] == keys and late["max_difference"] < 1e-4
    assert len(log.read_text().split()) == keys
