"""``trt-runtime`` commands against a real cache, and its behaviour as a program (subprocesses)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

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
    header = out.splitlines()[1].split()
    assert header == ["KEY", "COMPONENT", "BACKEND", "STATUS", "SIZE", "LAST", "USED", "SHAPES"]
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
    assert "0 entries match 'ffffffff'" in capsys.readouterr().err


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


def test_env_warns_when_torch_has_no_bytecode_and_none_is_written(tmp_path):
    from trt_runtime.cli import bytecode_note

    package = tmp_path / "site-packages" / "torch"
    package.mkdir(parents=True)
    note = bytecode_note(package, dont_write=True)
    assert note and "PYTHONDONTWRITEBYTECODE" in note and f"compileall -q {package.parent}" in note
    assert bytecode_note(package, dont_write=False) is None
    (package / "__pycache__").mkdir()
    assert bytecode_note(package, dont_write=True) is None


@pytest.mark.slow
def test_build_prebuilds_engines_for_a_saved_pipeline(export_backend, tmp_path, capsys):
    from trt_runtime.demo import build_demo_pipeline

    folder = tmp_path / "pipeline"
    build_demo_pipeline().save_pretrained(folder)
    assert main(["build", str(folder), "--backend", "export", "--dtype", "fp32", "--device", "cpu",
                 "--size", "64x64", "--size", "64x96", "--steps", "1"]) == 0
    captured = capsys.readouterr()
    assert "64x64, batch 1" in captured.out and "64x96, batch 1" in captured.out
    # the progress display (stderr is not a terminal here: one plain line per start, phase and end)
    assert "compiling unet (" in captured.err and "compiled unet (" in captured.err
    main(["cache", "ls", "--json"])
    entries = json.loads(capsys.readouterr().out)
    components = {e["component"] for e in entries}
    assert any("unet" in c for c in components) and any("vae" in c for c in components)
    assert all(e["status"] == "ready" for e in entries)


# ------------------------------------------------------------------------------------------ as a program
REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "trt_runtime", *args], capture_output=True, text=True,
                          timeout=300, env=environ, **kwargs)


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_python_m_and_version():
    proc = _cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"trt-runtime {__import__('trt_runtime').__version__}"


@pytest.mark.parametrize("args, needles", [
    (["demo", "--backend", "foo"], ["invalid choice: 'foo'", "fastest"]),
    (["demo", "--size", "60"], ["60 px is not a multiple of 8"]),
    (["demo", "--device", "gpu"], ["'gpu' is not a device"]),
    (["build", "/no/such/folder"], ["is not a folder"]),
    (["cache"], ["required: COMMAND"]),
])
def test_usage_errors_are_one_line_with_exit_code_2(args, needles, tmp_path):
    _one_line_error(_cli(*args, env={"TRT_CACHE_DIR": str(tmp_path)}), 2, *needles)


def test_build_checks_its_arguments_before_loading_and_fails_cleanly(tmp_path):
    folder = tmp_path / "pipe"
    folder.mkdir()
    _one_line_error(_cli("build", str(folder)), 2, "no model_index.json")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    # validated before the (broken) pipeline is loaded: a usage error, not a load failure
    _one_line_error(_cli("build", str(folder), "--size", "51x64"), 2, "51 px is not a multiple of 8")
    _one_line_error(_cli("build", str(folder), "--batch", "0"), 2, "0 must be at least 1")
    _one_line_error(_cli("build", str(folder), "--device", "cpu", "--dtype", "fp32"), 1,
                    "cannot load the pipeline in")


def test_json_output_into_a_closed_pipe_is_quiet(tmp_path):
    from trt_runtime.cache import EngineCache

    cache = EngineCache(tmp_path)
    for index in range(60):  # more than a pipe buffer of JSON, so the writer meets the closed pipe
        key = hashlib.sha256(str(index).encode()).hexdigest()[:40]
        cache.write_failure(key, {"component": f"c{index}"}, "x" * 2000)
    for args in (["cache", "ls", "--json"], ["cache", "ls"]):
        proc = subprocess.Popen([sys.executable, "-m", "trt_runtime", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO), "TRT_CACHE_DIR": str(tmp_path)})
        proc.stdout.readline()  # `| head -1`
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=120)
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr and proc.returncode == 0, stderr


def test_cache_ls_names_shapes_as_summaries_do(tmp_path, monkeypatch, capsys):
    from trt_runtime.cache import EngineCache

    EngineCache(tmp_path).write_failure("ab" * 20, {"component": "unet", "shapes": [[2, 4, 8, 8], []]}, "boom")
    monkeypatch.setenv("TRT_CACHE_DIR", str(tmp_path))
    assert main(["cache", "ls"]) == 0
    assert "2x4x8x8, scalar" in capsys.readouterr().out
