"""Fixtures for the component wrapper tests: a runtime on the fast test-only ``export`` backend."""

from __future__ import annotations

import pytest
import torch

from trt_runtime import TensorRTRuntime


@pytest.fixture
def runtime(export_backend, cache_dir):
    """A runtime that really traces (torch.export), in memory only: serializing every artifact would
    double these tests' time, and persistence is the runtime's own tested business. Tests of a warm
    start use ``persistent_runtime``."""
    return TensorRTRuntime(backend="export", cache_dir=cache_dir, persist=False)


@pytest.fixture
def persistent_runtime(export_backend, cache_dir):
    """Make a runtime that writes and reads this test's disk cache (call it again for a "new process")."""
    return lambda: TensorRTRuntime(backend="export", cache_dir=cache_dir)


@pytest.fixture(autouse=True)
def _no_grad():
    """Inference, as pipelines run it (the runtime serves compiled artifacts without autograd)."""
    with torch.no_grad():
        yield
