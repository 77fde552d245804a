"""``trt-runtime`` commands against a real cache."""

from __future__ import annotations

import json

import pytest
import torch

from trt_runtime import TensorRTModule, TensorRTRuntime
from trt_runtime.cli import main

from .support.backends import FailingBuild, tiny_mlp


@pytest.fixture
def populated(export_backend, cache_dir):
    from trt_runtime.backends import register_backend, unregister_backend

    register_backend("failing", FailingBuild)
    with torch.no_grad():
        TensorRTModule(tiny_mlp(), runtime=TensorRTRuntime(backend="export"), name="mlp")(torch.randn(2, 8))
        TensorRTModule(tiny_mlp(), runtime=TensorRTRuntime(backend="failing"), name="broken")(torch.randn(3, 8))
    yield cache_dir
    unregister_backend("failing")


def test_cache_ls_shows_entries_and_errors(populated, capsys):
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert str(populated) in out and "2 entries" in out
    assert "mlp" in out and "ready" in out and "2x8" in out
    assert "broken" in out and "failed" in out and "frobnicate" in out


def test_cache_ls_json_and_info(populated, capsys):
    main(["cache", "ls", "--json"])
    entries = json.loads(capsys.readouterr().out)
    assert {e["component"] for e in entries} == {"mlp", "broken"}
    key = next(e["key"] for e in entries if e["component"] == "mlp")
    assert main(["cache", "info", key[:8]]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["key"] == key and meta["module"]["class"].endswith("Sequential")
    assert main(["cache", "info", "ffffffff"]) == 1


def test_cache_clear_failed_then_all(populated, capsys):
    assert main(["cache", "clear", "--failed"]) == 0
    assert "removed 1 failed" in capsys.readouterr().out
    main(["cache", "ls", "--json"])
    assert [e["component"] for e in json.loads(capsys.readouterr().out)] == ["mlp"]
    main(["cache", "clear"])
    assert "removed 1 entries" in capsys.readouterr().out
    main(["--cache-dir", str(populated), "cache", "ls", "--json"])
    assert json.loads(capsys.readouterr().out) == []


def test_cache_path_and_env(cache_dir, capsys):
    main(["cache", "path"])
    assert capsys.readouterr().out.strip() == str(cache_dir)
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "backend inductor: available" in out and "backend tensorrt:" in out


@pytest.mark.slow
def test_build_prebuilds_engines_for_a_saved_pipeline(export_backend, tmp_path, capsys):
    from trt_runtime.demo import build_demo_pipeline

    folder = tmp_path / "pipeline"
    build_demo_pipeline().save_pretrained(folder)
    assert main(["build", str(folder), "--backend", "export", "--dtype", "fp32", "--device", "cpu",
                 "--size", "64x64", "--size", "64x96", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "64x64 batch 1" in out and "64x96 batch 1" in out
    main(["cache", "ls", "--json"])
    entries = json.loads(capsys.readouterr().out)
    components = {e["component"] for e in entries}
    assert any("unet" in c for c in components) and any("vae" in c for c in components)
    assert all(e["status"] == "ready" for e in entries)
