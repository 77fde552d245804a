"""Warm start on TensorRT-RTX through the STAND-IN torch_tensorrt: the runtime cache of the first run is
written into the cache entry (sealed like the program) and fed to the engines of a later runtime or
process, on the releases that have one (2.13+); 2.11 and 2.12 change nothing. A missing or damaged
runtime cache never costs the entry: the engines JIT-compile again."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trt_runtime
from trt_runtime.backends import _tensorrt_api as api_table
from trt_runtime.backends._tensorrt_rtcache import RUNTIME_CACHE_FILE

_SPEC = importlib.util.spec_from_file_location("standin_support", Path(__file__).with_name("standin_support.py"))
support = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(support)

VERSIONS = ("2.11.0", "2.12.1", "2.13.0", "2.14.0")
KERNELS = b"standin-kernels:_run_on_acc_0;"
"""What the stand-in engine's just-in-time compile puts into a runtime cache."""


def _calls(trt, name):
    return [kwargs for called, kwargs in trt.CALLS if called == name]


def _build(trt_version, standin, cache_dir, flavour="tensorrt-rtx"):
    trt = standin(trt_version, flavour=flavour)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    module = support.make_toy()
    args, kwargs = support.toy_inputs(2)
    with torch.no_grad():
        out = trt_runtime.TensorRTModule(module, runtime=rt)(*args, **kwargs)[0]
    (entry,) = rt.cache.entries()
    return trt, rt, entry, out


def _load(version, standin, cache_dir, flavour="tensorrt-rtx"):
    trt = standin(version, flavour=flavour)  # a fresh stand-in: nothing cached in memory
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    args, kwargs = support.toy_inputs(2)
    with torch.no_grad():
        out = trt_runtime.TensorRTModule(support.make_toy(), runtime=rt)(*args, **kwargs)[0]
    totals = rt.stats.totals()
    assert (totals["compiles"], totals["loads"]) == (0, 1), totals
    return trt, out


@pytest.mark.parametrize("version", VERSIONS)
def test_runtime_cache_is_written_with_the_entry_where_the_release_has_one(version, standin, tmp_path):
    trt, _, entry, _ = _build(version, standin, tmp_path)
    keeps = api_table.api_for(version, "tensorrt-rtx").runtime_cache == api_table.RUNTIME_SETTINGS
    assert keeps is (version >= "2.13")
    assert _calls(trt, "jit") == [{"engine": "_run_on_acc_0", "skipped": False}]
    inputs = json.loads((entry.path / "trt_inputs.json").read_text())
    if not keeps:
        assert not _calls(trt, "RuntimeCache") and not _calls(trt, "update_runtime_settings")
        assert not (entry.path / RUNTIME_CACHE_FILE).exists() and "runtime_cache" not in inputs
        assert RUNTIME_CACHE_FILE not in entry.meta["files"]
        return
    # an in-memory cache: a path-backed one would save itself over the published entry later
    assert _calls(trt, "RuntimeCache") == [{"path": "", "autosave_on_del": False}]
    (attached,) = _calls(trt, "update_runtime_settings")
    assert attached["engine"] == "_run_on_acc_0"
    data = (entry.path / RUNTIME_CACHE_FILE).read_bytes()
    assert data == KERNELS
    info = entry.meta["files"][RUNTIME_CACHE_FILE]
    assert info == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "optional": True}
    assert inputs["runtime_cache"] == {"file": RUNTIME_CACHE_FILE, "size": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}
    assert "optional" not in entry.meta["files"]["trt_program.pt2"]


@pytest.mark.parametrize("version", VERSIONS)
def test_a_new_runtime_feeds_the_entrys_runtime_cache_to_tensorrt(version, standin, tmp_path):
    _, _, _, out = _build(version, standin, tmp_path)
    trt, loaded = _load(version, standin, tmp_path)
    torch.testing.assert_close(loaded, out)
    if version < "2.13":
        assert not _calls(trt, "RuntimeCache") and not _calls(trt, "runtime_cache_load")
    else:
        assert _calls(trt, "RuntimeCache") == [{"path": "", "autosave_on_del": False}]
        assert _calls(trt, "runtime_cache_load") == [{"bytes": KERNELS}]


def test_datacenter_tensorrt_writes_no_runtime_cache(standin, tmp_path):
    trt, _, entry, _ = _build("2.14.0", standin, tmp_path, flavour="tensorrt")
    assert not _calls(trt, "RuntimeCache") and not (entry.path / RUNTIME_CACHE_FILE).exists()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_runtime_cache_costs_the_jit_not_the_entry(damage, standin, tmp_path, caplog):
    _, _, entry, out = _build("2.14.0", standin, tmp_path)
    path = entry.path / RUNTIME_CACHE_FILE
    os.chmod(path, 0o600)
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    elif damage == "truncate":
        path.write_bytes(data[:-3])
    else:
        path.unlink()
    with caplog.at_level(logging.DEBUG, logger="trt_runtime"):
        trt, loaded = _load("2.14.0", standin, tmp_path)
    torch.testing.assert_close(loaded, out)
    # never handed to TensorRT-RTX: the cache starts empty and the engines compile just in time
    assert _calls(trt, "runtime_cache_load") == []
    assert "not using the TensorRT-RTX runtime cache" in caplog.text or "is not used" in caplog.text
    assert not any(r.levelno >= logging.WARNING for r in caplog.records), caplog.text


def test_a_fresh_process_loads_the_runtime_cache_of_the_entry(standin, tmp_path, child_env):
    _, _, entry, out = _build("2.14.0", standin, tmp_path)
    env = {**child_env, "TRT_RUNTIME_STANDIN_VERSION": "2.14.0", "TRT_RUNTIME_STANDIN_FLAVOUR": "tensorrt-rtx",
           "TRT_CACHE_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, support.__file__, str(tmp_path), "static"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    child = json.loads(result.stdout.strip().splitlines()[-1])
    assert child["totals"]["compiles"] == 0 and child["totals"]["loads"] == 1, child
    assert child["runtime_caches"] == [{"path": "", "autosave_on_del": False}]
    assert child["runtime_cache_loads"] == [(entry.path / RUNTIME_CACHE_FILE).read_bytes().hex()]
    torch.testing.assert_close(torch.tensor(child["output"]), out)


def test_the_engines_of_a_refitted_program_keep_the_runtime_cache(standin, tmp_path):
    trt = standin("2.14.0", flavour="tensorrt-rtx")
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, refittable=True)
    module = support.make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt)
    args, kwargs = support.toy_inputs(2)
    with torch.no_grad():
        wrapped(*args, **kwargs)
        module.proj.weight.mul_(-1.0)
        wrapped(*args, **kwargs)
    assert len(_calls(trt, "refit")) == 1
    first, second = _calls(trt, "update_runtime_settings")
    assert first["cache"] is second["cache"]  # the refitted engine reuses the kernels compiled so far
    assert _calls(trt, "jit")[-1] == {"engine": "_run_on_acc_0", "skipped": True}
