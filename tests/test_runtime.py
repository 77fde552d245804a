"""TensorRTRuntime: memory -> disk -> compile, and every fallback path of the state machine."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from trt_runtime import (
    ConfigurationError,
    EngineBuildError,
    EngineRunError,
    TensorRTModule,
    TensorRTRuntime,
)
from trt_runtime.backends import register_backend, unregister_backend
from trt_runtime.validation import relative_error

from .support import backends as doubles
from .support.backends import tiny_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOUBLES = (doubles.CountingExport, doubles.FailingBuild, doubles.BrittleRun, doubles.WrongResult, doubles.FlakyBuild,
           doubles.SlowExport, doubles.NoisyOnLoad)


@pytest.fixture(autouse=True)
def _inference():
    """Pipelines run under no_grad; so do these tests (the grad case is tested explicitly)."""
    with torch.no_grad():
        yield


@pytest.fixture(autouse=True)
def _doubles():
    for cls in DOUBLES:
        register_backend(cls.name, cls)
        cls.builds = 0
    yield
    for cls in DOUBLES:
        unregister_backend(cls.name)


def wrapped(backend: str, cache_dir, **settings):
    rt = TensorRTRuntime(backend=backend, cache_dir=cache_dir, **settings)
    module = tiny_mlp()
    return rt, module, TensorRTModule(module, runtime=rt, name="mlp")


def test_second_call_compiles_nothing_and_new_shape_compiles_once(export_backend, cache_dir):
    rt, module, w = wrapped("export", cache_dir)
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), module(x))
    x2 = torch.randn(2, 8)
    torch.testing.assert_close(w(x2), module(x2))
    assert rt.stats.totals()["compiles"] == 1
    y = torch.randn(5, 8)
    torch.testing.assert_close(w(y), module(y))
    w(y)
    totals = rt.stats.totals()
    assert totals["compiles"] == 2 and totals["calls"] == 4 and totals["fallbacks"] == 0


def test_new_runtime_loads_from_disk_without_compiling(export_backend, cache_dir):
    rt1, module, w1 = wrapped("export", cache_dir)
    x = torch.randn(3, 8)
    expected = w1(x)
    rt2 = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    w2 = TensorRTModule(tiny_mlp(), runtime=rt2, name="mlp")
    torch.testing.assert_close(w2(x), expected)
    assert rt2.stats.totals()["compiles"] == 0 and rt2.stats.totals()["loads"] == 1


def test_changed_weights_get_a_new_key(export_backend, cache_dir):
    rt, module, w = wrapped("export", cache_dir)
    x = torch.randn(2, 8)
    w(x)
    other = TensorRTModule(tiny_mlp(seed=1), runtime=rt, name="mlp")
    torch.testing.assert_close(other(x), other.module(x))
    assert rt.stats.totals()["compiles"] == 2 and rt.stats.totals()["keys"] == 2
    # in-place change + invalidate(): the same wrapper builds for the new weights
    with torch.no_grad():
        module[0].bias.add_(1.0)
    w.invalidate()
    torch.testing.assert_close(w(x), module(x))
    assert rt.stats.totals()["compiles"] == 3


def test_to_dtype_uses_a_separate_artifact(export_backend, cache_dir):
    rt, module, w = wrapped("export", cache_dir)
    w(torch.randn(2, 8))
    w.to(torch.float64)
    x = torch.randn(2, 8, dtype=torch.float64)
    out = w(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, module(x))
    assert rt.stats.totals()["compiles"] == 2


def test_compile_failure_falls_back_once_and_is_remembered(cache_dir, caplog):
    rt, module, w = wrapped("failing", cache_dir)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        torch.testing.assert_close(w(x), module(x))
        torch.testing.assert_close(w(x), module(x))
    assert doubles.FailingBuild.builds == 1
    warnings = [r for r in caplog.records if "build for input shapes" in r.getMessage()]
    assert len(warnings) == 1 and "mlp" in warnings[0].getMessage() and "2x8" in warnings[0].getMessage()
    # a new process (new runtime) reads the failure from disk and does not retry
    rt2 = TensorRTRuntime(backend="failing", cache_dir=cache_dir)
    TensorRTModule(tiny_mlp(), runtime=rt2, name="mlp")(x)
    assert doubles.FailingBuild.builds == 1
    assert rt2.stats.totals()["failed"] == 1
    # ...unless asked to
    rt3 = TensorRTRuntime(backend="failing", cache_dir=cache_dir, retry_failed=True)
    TensorRTModule(tiny_mlp(), runtime=rt3, name="mlp")(x)
    assert doubles.FailingBuild.builds == 2


def test_strict_mode_raises_our_error(cache_dir):
    rt, module, w = wrapped("failing", cache_dir, strict=True)
    with pytest.raises(EngineBuildError, match=r"\[mlp\] build failed.*frobnicate") as info:
        w(torch.randn(2, 8))
    assert info.value.shapes == [(2, 8)] and isinstance(info.value, RuntimeError)


def test_run_time_failure_reruns_eagerly_keeps_the_entry_and_revalidates_later(cache_dir):
    rt, module, w = wrapped("brittle", cache_dir, retry_backoff_s=0.3)
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), module(x))  # build call
    with pytest.warns(RuntimeWarning, match=r"\[mlp\].*failed at run time.*2x8.*re-validate"):
        torch.testing.assert_close(w(x), module(x))  # artifact raises -> eager result
    torch.testing.assert_close(w(x), module(x))  # eager until the backoff passed: no rebuild yet
    assert doubles.BrittleRun.builds == 1
    assert rt.stats.totals()["fallbacks"] == 2
    assert rt.cache.entries()[0].status == "ready", "a run-time failure must not overwrite a good entry"
    time.sleep(0.35)
    # due again: the disk entry does not load (BrittleRun.load), so it is rebuilt and re-validated
    torch.testing.assert_close(w(x), module(x))
    assert doubles.BrittleRun.builds == 2
    with pytest.warns(RuntimeWarning, match="from now on"):
        torch.testing.assert_close(w(x), module(x))  # the second failure: given up for this process
    time.sleep(0.35)
    torch.testing.assert_close(w(x), module(x))
    assert doubles.BrittleRun.builds == 2 and rt.cache.entries()[0].status == "ready"


def test_run_time_failure_strict_raises(cache_dir):
    rt, module, w = wrapped("brittle", cache_dir, strict=True)
    w(torch.randn(2, 8))
    with pytest.raises(EngineRunError, match="illegal memory access"):
        w(torch.randn(2, 8))


@pytest.mark.parametrize(("load_noise", "loads"), [(0.025, True), (0.5, False)])
def test_a_loaded_artifact_is_held_to_its_own_distance_from_eager(cache_dir, caplog, load_noise, loads):
    """An artifact validated on load (ahead-of-time inductor functions) is accepted within the tolerance or within
    twice the error it had when built (recorded in its entry): a deep bf16 transformer sits near the tolerance and
    eager varies between processes. One that misses by far more is built again, with a warning."""
    doubles.NoisyOnLoad.build_noise, doubles.NoisyOnLoad.load_noise = 0.015, load_noise
    rt, module, w = wrapped("noisy", cache_dir, tolerance=0.01)
    x = torch.randn(2, 8)
    w(x)  # built and served (validate is off), its error recorded
    (entry,) = rt.cache.entries()
    assert entry.meta["error_vs_eager_at_build"] == pytest.approx(0.015, rel=1e-3)
    rt2, _, w2 = wrapped("noisy", cache_dir, tolerance=0.01)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        out = w2(x)
    totals = rt2.stats.totals()
    if loads:
        assert (totals["loads"], totals["compiles"]) == (1, 0) and "does not match" not in caplog.text
        assert relative_error(out, module(x)) == pytest.approx(0.025, rel=1e-3)
    else:
        assert (totals["loads"], totals["compiles"]) == (0, 1), totals
        assert "does not match eager PyTorch" in caplog.text and "building it again" in caplog.text
        assert caplog.text.count("does not match eager PyTorch") == 1  # loaded once, not again under the lock
        assert relative_error(out, module(x)) == pytest.approx(0.015, rel=1e-3)  # the new build's output
        # the rebuilt entry misses the same way in the next process: remembered as failed, not rebuilt by each
        rt3, _, w3 = wrapped("noisy", cache_dir, tolerance=0.01)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="trt_runtime"):
            torch.testing.assert_close(w3(x), module(x))
        assert "running eagerly from now on: output differs from eager by 0.5" in caplog.text
        totals = rt3.stats.totals()
        assert (totals["loads"], totals["compiles"]) == (0, 0) and rt3.cache.entries()[0].status == "failed"
        rt4, _, w4 = wrapped("noisy", cache_dir, tolerance=0.01)
        torch.testing.assert_close(w4(x), module(x))
        assert rt4.stats.totals()["compiles"] == 0


def test_the_slack_a_loaded_artifact_gets_is_capped(cache_dir, caplog):
    """A build far from eager (validate off: served, with a warning) does not license anything on load: the
    slack is twice its error but at most five tolerances."""
    doubles.NoisyOnLoad.build_noise, doubles.NoisyOnLoad.load_noise = 0.4, 0.075
    rt, module, w = wrapped("noisy", cache_dir, tolerance=0.01)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        w(x)
    assert "differs from eager PyTorch by 0.4" in caplog.text and "validate=True" in caplog.text
    rt2, _, w2 = wrapped("noisy", cache_dir, tolerance=0.01)
    w2(x)
    assert (rt2.stats.totals()["loads"], rt2.stats.totals()["compiles"]) == (0, 1)


def test_unloadable_artifact_is_rebuilt(cache_dir, caplog):
    rt, module, w = wrapped("brittle", cache_dir)
    x = torch.randn(2, 8)
    w(x)
    rt2 = TensorRTRuntime(backend="brittle", cache_dir=cache_dir)
    w2 = TensorRTModule(tiny_mlp(), runtime=rt2, name="mlp")
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        torch.testing.assert_close(w2(x), module(x))
    assert "could not be loaded" in caplog.text
    assert doubles.BrittleRun.builds == 2


def test_validation_rejects_a_wrong_artifact(cache_dir):
    rt, module, w = wrapped("wrong", cache_dir, validate=True)
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), module(x))
    torch.testing.assert_close(w(x), module(x))
    assert rt.stats.rows()[0].state == "failed" and "differs from eager" in rt.stats.rows()[0].error
    # without validation the wrong artifact would have been served
    rt2, module2, w2 = wrapped("wrong", cache_dir / "other")
    assert not torch.allclose(w2(x), module2(x))


def test_validation_runs_eager_without_cudnn_autotuning(export_backend, cache_dir, monkeypatch):
    """The eager reference runs once: cudnn.benchmark would autotune every convolution first (seconds on a
    warm start, which validation is part of). Only that flag is touched, and the user's setting is back
    afterwards."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seen = []
    rt, module, w = wrapped("export", cache_dir, validate=True)
    module.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cudnn.benchmark))
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), module(x))
    assert rt.stats.rows()[0].state == "ready", rt.stats.rows()[0].error
    assert False in seen and torch.backends.cudnn.benchmark is True


def test_cudnn_switch_works_under_the_newer_tf32_settings(monkeypatch):
    """With torch's newer TF32 settings mixed (conv TF32, RNN IEEE) reading the legacy ``cudnn.allow_tf32``
    raises, so ``cudnn.flags`` (which reads it) cannot be how validation turns autotuning off."""
    from trt_runtime.resolver import _no_cudnn_autotuning

    cudnn = torch.backends.cudnn
    if getattr(getattr(cudnn, "conv", None), "fp32_precision", None) is None:
        pytest.skip("this torch has no per-operator fp32_precision")
    monkeypatch.setattr(cudnn, "benchmark", True)
    before = (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision)
    cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = "tf32", "ieee"
    try:
        with _no_cudnn_autotuning():
            assert cudnn.benchmark is False
        assert cudnn.benchmark is True and (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("tf32", "ieee")
    finally:
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = before


def test_eager_errors_propagate_untouched(export_backend, cache_dir):
    rt, module, w = wrapped("export", cache_dir)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        w(torch.randn(2, 7))  # eager PyTorch fails too: the caller's bug, reported as PyTorch says


def test_unkeyable_argument_runs_eagerly(export_backend, cache_dir, caplog):
    class TakesObject(torch.nn.Module):
        def forward(self, x, extra=None):
            return x * 2

    rt = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    w = TensorRTModule(TakesObject(), runtime=rt)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        assert torch.equal(w(torch.ones(2), extra=object()), torch.full((2,), 2.0))
    assert "cannot be part of a cache key" in caplog.text and rt.stats.totals()["compiles"] == 0


def test_unwritable_cache_keeps_artifacts_in_memory(export_backend, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rt, module, w = wrapped("export", blocker / "cache")
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        torch.testing.assert_close(w(x), module(x))
        torch.testing.assert_close(w(x), module(x))
    assert rt.stats.totals()["compiles"] == 1 and "cache unavailable" in caplog.text


def test_training_mode_with_grad_runs_eagerly(export_backend, cache_dir):
    rt = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt)
    with torch.enable_grad():
        w(torch.randn(2, 8)).sum().backward()  # eager: gradients flow
    assert module[0].weight.grad is not None and rt.stats.totals()["compiles"] == 0
    w(torch.randn(2, 8))  # no_grad (fixture): compiled
    assert rt.stats.totals()["compiles"] == 1


def test_max_shapes_per_component_bounds_compiles(export_backend, cache_dir):
    rt, module, w = wrapped("export", cache_dir, max_shapes_per_component=2)
    for batch in (1, 2, 3, 4):
        x = torch.randn(batch, 8)
        torch.testing.assert_close(w(x), module(x))
    assert rt.stats.totals()["compiles"] == 2


def test_unknown_backend_is_a_configuration_error(cache_dir):
    with pytest.raises(ConfigurationError, match="unknown backend 'tensorrtt'"):
        TensorRTRuntime(backend="tensorrtt")


def test_wrapper_is_drop_in(export_backend, cache_dir):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    rt = TensorRTRuntime(backend="export", cache_dir=cache_dir)
    w = TensorRTModule(vae, runtime=rt, name="vae")
    assert w.config.scaling_factor == vae.config.scaling_factor and w.dtype == torch.float32
    assert w.device.type == "cpu" and set(w.state_dict()) == set(vae.state_dict())
    x = torch.randn(1, 3, 16, 16)
    out, ref = w(x), vae(x)
    assert type(out) is type(ref)
    torch.testing.assert_close(out.sample, ref.sample)
    w.load_state_dict(vae.state_dict())
    assert w.to(torch.float64) is w and vae.dtype == torch.float64


def test_concurrent_processes_build_a_key_once(tmp_path):
    """Two processes start on the same key at once: one builds, the other waits and loads."""
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {ROOT!r})
        from tests.support.backends import CountingExport, tiny_mlp
        from trt_runtime import TensorRTModule, TensorRTRuntime
        from trt_runtime.backends import register_backend
        register_backend("counting", CountingExport)
        rt = TensorRTRuntime(backend="counting")
        w = TensorRTModule(tiny_mlp(), runtime=rt, name="mlp")
        torch.manual_seed(1)
        x = torch.randn(2, 8)
        with torch.no_grad():
            torch.testing.assert_close(w(x), w.module(x))
        t = rt.stats.totals()
        print("RESULT", t["compiles"], t["loads"])
    """)
    log = tmp_path / "builds.log"
    env = {**os.environ, "TRT_CACHE_DIR": str(tmp_path / "engines"), "TRT_TEST_BUILD_LOG": str(log),
           "TRT_TEST_BUILD_SLEEP": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert len(log.read_text().split()) == 1, "the key was built more than once"
    results = sorted(line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == [["0", "1"], ["1", "0"]]


def test_configuration_errors_from_a_backend_surface_and_are_not_remembered(cache_dir):
    class Misconfigured(doubles.ExportBackend):
        name = "misconfigured"

        def compile(self, request):
            raise ConfigurationError("tensorrt_options: unknown keyword 'enabled_precision'")

    register_backend("misconfigured", Misconfigured)
    try:
        rt, module, w = wrapped("misconfigured", cache_dir)
        with pytest.raises(ConfigurationError, match="enabled_precision"):
            w(torch.randn(2, 8))
        assert rt.cache.entries() == []
    finally:
        unregister_backend("misconfigured")


# ------------------------------------------------------------------------------------------ failure kinds
def test_callers_errors_propagate_and_leave_no_trace(export_backend, cache_dir):
    rt, module, w = wrapped("export", cache_dir, max_shapes_per_component=2)
    bad_calls = [torch.randn(2, 7), torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, device="meta")]
    for _ in range(11):  # 33 bad calls would have filled the cap 16 times over
        for x in bad_calls:
            with pytest.raises((RuntimeError, NotImplementedError)):
                w(x)
    assert rt.stats.rows() == [] and rt.cache.entries() == [] and w.component.slots == {}
    x = torch.randn(3, 8)
    torch.testing.assert_close(w(x), module(x))  # a valid shape still compiles
    assert rt.stats.totals()["compiles"] == 1


def test_transient_build_failure_is_retried_after_a_backoff_and_never_written(cache_dir, caplog):
    rt, module, w = wrapped("flaky", cache_dir, retry_backoff_s=0.3)
    x = torch.randn(2, 8)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        torch.testing.assert_close(w(x), module(x))  # out of memory: eager result
        torch.testing.assert_close(w(x), module(x))  # within the backoff: eager, no second build
    assert doubles.FlakyBuild.builds == 1 and rt.cache.entries() == []
    assert "may pass" in caplog.text and "retrying later" in caplog.text
    # a new process is not told it failed: nothing on disk
    time.sleep(0.35)
    torch.testing.assert_close(w(x), module(x))
    assert doubles.FlakyBuild.builds == 2 and rt.cache.entries()[0].status == "ready"
    assert rt.stats.totals()["compiles"] == 1


def test_foreground_build_does_not_block_other_signatures(cache_dir):
    """While one signature builds, calls of other signatures (and of the same one) do not wait."""
    import threading

    doubles.SlowExport.delay = 0.0
    rt, module, w = wrapped("slow", cache_dir)
    x_slow, x_other = torch.randn(2, 8), torch.randn(3, 8)
    w(x_other)  # compiled first
    doubles.SlowExport.delay = 8.0
    def build():
        with torch.no_grad():  # grad mode is per thread
            w(x_slow)

    builder = threading.Thread(target=build)
    builder.start()
    time.sleep(0.5)
    torch.testing.assert_close(w(x_other), module(x_other))
    torch.testing.assert_close(w(x_slow), module(x_slow))  # same signature, being built: runs eagerly
    assert builder.is_alive(), "the calls waited for the build"
    builder.join()
    assert doubles.SlowExport.builds == 2


def test_an_artifact_the_backend_cannot_save_serves_this_process_and_says_so(export_backend, cache_dir, caplog):
    class Unsaveable(doubles.ExportBackend):
        name = "unsaveable"

        def save(self, compiled, request, directory):
            raise RuntimeError("SerializeError: Failed serializing node _scaled_dot_product_flash_attention")

    register_backend("unsaveable", Unsaveable)
    try:
        rt, module, w = wrapped("unsaveable", cache_dir)
        x = torch.randn(2, 8)
        with caplog.at_level(logging.WARNING, logger="trt_runtime"):
            torch.testing.assert_close(w(x), module(x))
            torch.testing.assert_close(w(x), module(x))
        assert rt.stats.totals()["compiles"] == 1 and rt.cache.entries() == []
        assert "could not be saved" in caplog.text and "cache unavailable" not in caplog.text
    finally:
        unregister_backend("unsaveable")
