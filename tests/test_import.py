"""``import trt_runtime`` works without CUDA or torch_tensorrt and does no work at import time."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_import_does_no_work():
    script = textwrap.dedent("""
        import os, sys
        os.environ.pop("TRT_CACHE_DIR", None)
        class Spy(dict):
            def get(self, key, default=None):
                if key == "TRT_CACHE_DIR":
                    raise SystemExit("TRT_CACHE_DIR read at import time")
                return super().get(key, default)
        import trt_runtime
        assert "torch" not in sys.modules, "torch imported at import time"
        assert "torch_tensorrt" not in sys.modules
        assert trt_runtime.__version__
        import logging
        handlers = logging.getLogger("trt_runtime").handlers
        assert all(isinstance(h, logging.NullHandler) for h in handlers), handlers
        # the public names resolve lazily, and still without CUDA or TensorRT work
        trt_runtime.TensorRTRuntime, trt_runtime.TensorRTModule, trt_runtime.RuntimeSettings
        assert "torch_tensorrt" not in sys.modules
        import torch
        assert not torch.cuda.is_initialized()
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


def test_tensorrt_backend_module_imports_without_torch_tensorrt():
    import importlib.util

    if importlib.util.find_spec("trt_runtime.backends.tensorrt") is None:
        return
    proc = subprocess.run([sys.executable, "-c", "import sys, trt_runtime.backends.tensorrt; "
                           "assert 'torch_tensorrt' not in sys.modules; print('OK')"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
