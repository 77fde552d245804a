"""Messages a user must act on are visible without logging setup; the rest only when asked.

Each case runs in a fresh interpreter with no logging configured, as a user's script would, and reads
its stderr.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from trt_runtime import logging_utils

_PRELUDE = textwrap.dedent("""
    import sys, torch
    import trt_runtime
    from trt_runtime import TensorRTModule, TensorRTRuntime
    from trt_runtime.backends import Backend, register_backend

    class Works(Backend):
        name = "works"
        persistent = False
        def compile(self, request):
            return request.module

    class Fails(Works):
        name = "fails"
        def compile(self, request):
            raise RuntimeError("no converter for aten.frobnicate")

    register_backend("works", Works)
    register_backend("fails", Fails)

    def call_twice(backend, grad=False, **settings):
        net = torch.nn.Linear(4, 4)
        if not grad:
            net = net.eval().requires_grad_(False)
        wrapped = TensorRTModule(net, runtime=TensorRTRuntime(backend=backend, persist=False, **settings))
        for _ in range(2):
            wrapped(torch.randn(2, 4))
""")


def _run(body: str, env: dict[str, str] | None = None, tmp_path=None) -> subprocess.CompletedProcess:
    script = _PRELUDE + textwrap.dedent(body)
    environ = {"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(_repo())}
    if tmp_path is not None:
        environ["TRT_CACHE_DIR"] = str(tmp_path)
    environ.update(env or {})
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=environ)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def _ours(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("trt_runtime ")]


def test_import_adds_no_handler_and_warnings_show_once_without_setup(tmp_path):
    proc = _run("""
        import logging
        assert logging.getLogger("trt_runtime").handlers == [], "import must not configure logging"
        call_twice("fails")
        call_twice("works", grad=True)
        call_twice("works")  # a successful compile: silent at the default level
    """, tmp_path=tmp_path)
    lines = _ours(proc.stderr)
    assert len(lines) == 2, proc.stderr
    assert lines[0].startswith("trt_runtime WARNING: [Linear] build for input shapes 2x4 failed, running eagerly")
    assert "no converter for aten.frobnicate" in lines[0]
    assert "gradients are enabled" in lines[1] and "module.eval()" in lines[1] and "torch.no_grad()" in lines[1]


def test_set_verbosity_info_shows_two_lines_per_compile(tmp_path):
    proc = _run("""
        trt_runtime.set_verbosity_info()
        call_twice("works")
    """, tmp_path=tmp_path)
    lines = _ours(proc.stderr)
    assert len(lines) == 2, proc.stderr
    assert "[Linear] compiling with works for input shapes 2x4" in lines[0]
    assert "[Linear] compiled in" in lines[1] and "kept in memory" in lines[1]


@pytest.mark.parametrize("value, shown", [("info", 4), ("ERROR", 0), ("40", 0), ("loud", 2)])
def test_environment_variable_sets_the_level_when_the_runtime_is_created(value, shown, tmp_path):
    proc = _run("""
        call_twice("fails")
        call_twice("works")
    """, env={logging_utils.VERBOSITY_ENV: value}, tmp_path=tmp_path)
    lines = _ours(proc.stderr)
    assert len(lines) == shown, proc.stderr
    if value == "loud":
        assert "ignoring TRT_RUNTIME_VERBOSITY='loud'" in lines[0]


def test_explicit_verbosity_wins_over_the_environment(tmp_path):
    proc = _run("""
        trt_runtime.set_verbosity_error()
        call_twice("fails")
        assert trt_runtime.get_verbosity() == 40
    """, env={logging_utils.VERBOSITY_ENV: "debug"}, tmp_path=tmp_path)
    assert _ours(proc.stderr) == []


def test_an_application_logging_setup_gets_each_record_once(tmp_path):
    proc = _run("""
        import logging
        logging.basicConfig(format="APP %(name)s %(levelname)s %(message)s")
        call_twice("fails")
        logging.getLogger().handlers.clear()
        trt_runtime.disable_default_handler()  # an application that routes our records elsewhere
        logging.getLogger("trt_runtime").addHandler(logging.NullHandler())
        call_twice("fails")
    """, tmp_path=tmp_path)
    app = [line for line in proc.stderr.splitlines() if line.startswith("APP trt_runtime")]
    assert len(app) == 1 and "build for input shapes" in app[0], proc.stderr
    assert _ours(proc.stderr) == [] and "frobnicate" not in proc.stderr.split(app[0])[1], proc.stderr


def test_level_parsing():
    assert logging_utils._parse_level("Info") == logging.INFO and logging_utils._parse_level(10) == 10
    with pytest.raises(ValueError, match="not a logging level"):
        logging_utils._parse_level("chatty")


# ------------------------------------------------------------------------------------------ progress display
def _emit(handler, kind, component="unet", **fields):
    record = logging.LogRecord("trt_runtime.resolver", logging.DEBUG, __file__, 1, "event", (), None)
    setattr(record, logging_utils.EVENT, {"kind": kind, "component": component, **fields})
    handler.handle(record)


@pytest.mark.parametrize("live", [False, True])
def test_build_progress_draws_component_shapes_phase_and_time(live):
    import io

    from trt_runtime.progress import BuildProgress

    stream = io.StringIO()
    progress = BuildProgress(stream=stream, live=live)
    _emit(progress, "build_start", backend="tensorrt", shapes="2x4x64x64, 2x77x768")
    _emit(progress, "phase", phase="torch.export")
    _emit(progress, "phase", phase="TensorRT engine build")
    _emit(progress, "build_end", seconds=12.34, ok=True)
    _emit(progress, "build_start", component="vae.decoder", backend="tensorrt", shapes="1x4x64x64")
    _emit(progress, "build_end", component="vae.decoder", ok=False)
    _emit(progress, "load_start", component="vae.encoder", backend="inductor", shapes="1x3x512x512")
    _emit(progress, "load_end", component="vae.encoder", seconds=0.5)
    progress.close()
    text = stream.getvalue()
    assert "compiled unet (2x4x64x64, 2x77x768) in 12.3 s" in text
    assert "compiling vae.decoder (1x4x64x64) failed after" in text and "runs eagerly" in text
    assert "loaded vae.encoder (1x3x512x512) in 0.5 s" in text
    if live:
        assert "TensorRT engine build" in text  # tqdm's status line
    else:
        lines = text.splitlines()
        assert lines[:3] == ["compiling unet (2x4x64x64, 2x77x768) with tensorrt",
                             "compiling unet (2x4x64x64, 2x77x768) with tensorrt: torch.export",
                             "compiling unet (2x4x64x64, 2x77x768) with tensorrt: TensorRT engine build"]


def test_progress_ignores_records_without_events():
    import io

    from trt_runtime.progress import BuildProgress

    stream = io.StringIO()
    progress = BuildProgress(stream=stream, live=False)
    progress.handle(logging.LogRecord("trt_runtime", logging.INFO, __file__, 1, "plain", (), None))
    _emit(progress, "phase", phase="never started")  # a phase of a build it never saw start
    assert stream.getvalue() == ""
