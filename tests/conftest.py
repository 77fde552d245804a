"""Fixtures for every test: an isolated engine cache, a fresh default runtime, device probes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest

# One inductor cache for the whole session, never the user's: tests must not see kernels compiled by
# an earlier run, yet may share kernels between each other. Set before torch is imported by any test.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_DIR = os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="trt_runtime_inductor_")
else:
    _INDUCTOR_DIR = None


def pytest_unconfigure(config):
    if _INDUCTOR_DIR:
        shutil.rmtree(_INDUCTOR_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    gpu = tensorrt = None
    for item in items:
        if "gpu" in item.keywords:
            if gpu is None:
                import torch

                gpu = torch.cuda.is_available()
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)"))
        if "tensorrt" in item.keywords:
            if tensorrt is None:
                tensorrt = importlib.util.find_spec("torch_tensorrt") is not None
            if not tensorrt:
                item.add_marker(pytest.mark.skip(reason="torch_tensorrt is not installed"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own TRT_CACHE_DIR and a fresh process-wide default runtime."""
    import trt_runtime.runtime as runtime_module

    cache = tmp_path / "engines"
    monkeypatch.setenv("TRT_CACHE_DIR", str(cache))
    monkeypatch.setattr(runtime_module, "_DEFAULT", None)
    yield cache


@pytest.fixture
def cache_dir(_isolated_cache):
    return _isolated_cache


@pytest.fixture
def export_backend():
    """Register the test-only ``export`` backend (see tests/support/export_backend.py)."""
    from trt_runtime.backends import register_backend, unregister_backend

    from .support.export_backend import ExportBackend

    register_backend("export", ExportBackend)
    yield "export"
    unregister_backend("export")
