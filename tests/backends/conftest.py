"""Fixtures for the backend tests: the torch_tensorrt stand-in, and the real wheels for contract tests."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STANDIN_DIR = HERE / "standin"
STANDIN_ENV = "TRT_RUNTIME_STANDIN_VERSION"

WHEEL_VERSIONS = ("2.11.0", "2.12.1", "2.13.0", "2.14.0")
"""One published release per supported series (2.12.0 and 2.12.1 have the same compile signature)."""
WHEELS = tuple((flavour, version) for flavour in ("tensorrt", "tensorrt-rtx") for version in WHEEL_VERSIONS)
"""Both distributions of each release: ``torch-tensorrt`` (TensorRT) and ``torch-tensorrt-rtx``
(TensorRT-RTX), the same ``torch_tensorrt`` package built against each library."""
_DISTRIBUTIONS = {"tensorrt": "torch-tensorrt", "tensorrt-rtx": "torch-tensorrt-rtx"}
WHEEL_TAGS = ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64")
"""A platform/python tag published for every release above; only the Python sources are read."""
WHEEL_CACHE_ENV = "TRT_RUNTIME_TEST_WHEELS"


def _purge_standin_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in ("torch_tensorrt", "tensorrt"):
            del sys.modules[name]


@pytest.fixture
def standin(monkeypatch):
    """``activate(version="2.14.0")`` puts the torch_tensorrt STAND-IN on sys.path, imitating
    ``version``, and (unless ``real_cuda_probe``) replaces the backend's CUDA probe so the stand-in runs
    on CPU. Returns the module."""
    from trt_runtime.backends import tensorrt as backend_module

    def activate(version: str = "2.14.0", real_cuda_probe: bool = False, flavour: str = "tensorrt"):
        _purge_standin_modules()
        monkeypatch.setenv(STANDIN_ENV, version)
        monkeypatch.setenv("TRT_RUNTIME_STANDIN_FLAVOUR", flavour)
        monkeypatch.syspath_prepend(str(STANDIN_DIR))
        if not real_cuda_probe:
            monkeypatch.setattr(backend_module, "cuda_unavailable_reason", lambda device: None)
        monkeypatch.setattr(backend_module, "_PLUGINS_READY", False)
        importlib.invalidate_caches()
        return importlib.import_module("torch_tensorrt")

    yield activate
    _purge_standin_modules()


@pytest.fixture(scope="session")
def child_env():
    """Environment for a child process that sees the repository and the stand-in."""
    repo = HERE.parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(STANDIN_DIR), str(repo), env.get("PYTHONPATH", "")])
    return env


def _wheel_cache() -> Path:
    explicit = os.environ.get(WHEEL_CACHE_ENV)
    return Path(explicit) if explicit else Path.home() / ".cache" / "trt_runtime_test_wheels"


_DOWNLOAD_FAILURES: dict[str, str] = {}
"""Why a download failed, so the other tests of that release skip at once instead of retrying."""


def _download(distribution: str, version: str, folder: Path) -> Path:
    pattern = f"{distribution.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    tag = f"{distribution} {version}"
    if tag in _DOWNLOAD_FAILURES:
        pytest.skip(_DOWNLOAD_FAILURES[tag])
    try:
        return _fetch(distribution, version, folder, pattern)
    except pytest.skip.Exception as skip:
        _DOWNLOAD_FAILURES[tag] = str(skip.msg)
        raise


def _fetch(distribution: str, version: str, folder: Path, pattern: str) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_TAGS,
               "--disable-pip-version-check", "--retries", "1", "--timeout", "30", "-q", "-d", str(folder),
               f"{distribution}=={version}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot download {distribution} {version} wheel from PyPI: {err}")
    found = sorted(folder.glob(pattern))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"cannot download {distribution} {version} wheel from PyPI (offline?): {tail[0]}")
    return found[0]


class WheelSource:
    """Read the Python sources of one published torch-tensorrt wheel without importing it."""

    def __init__(self, flavour: str, version: str, path: Path) -> None:
        self.flavour = flavour
        self.version = version
        self.path = path
        self._zip = zipfile.ZipFile(path)

    def read(self, member: str) -> str:
        return self._zip.read(f"torch_tensorrt/{member}").decode("utf-8")


@pytest.fixture(scope="session")
def wheel_versions() -> tuple[tuple[str, str], ...]:
    return WHEELS


@pytest.fixture(scope="session")
def wheel_folder():
    folder = _wheel_cache()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        pytest.skip(f"cannot create the wheel cache {folder}: {err}")
    return folder


@pytest.fixture(scope="session", params=WHEELS, ids=[f"{f}-{v}" for f, v in WHEELS])
def wheel(request, wheel_folder) -> WheelSource:
    """The published wheel of one supported release of one flavour (downloaded once, cached across runs)."""
    flavour, version = request.param
    return WheelSource(flavour, version, _download(_DISTRIBUTIONS[flavour], version, wheel_folder))
