"""The tensorrt backend's own logic: availability errors, the version table, keyword building."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import subprocess
import sys
import textwrap

import pytest
import torch

from trt_runtime.backends import _tensorrt_api as api_table
from trt_runtime.backends import _tensorrt_export as export_module
from trt_runtime.backends import get_backend, select_backend
from trt_runtime.backends import tensorrt as backend_module
from trt_runtime.backends.base import CompileRequest
from trt_runtime.errors import BackendUnavailableError, ConfigurationError
from trt_runtime.settings import RuntimeSettings
from trt_runtime.shapes import Dim

ALL_SERIES = ("2.11.0", "2.12.1", "2.13.0", "2.14.0")


@pytest.fixture
def no_torch_tensorrt(monkeypatch):
    """Make torch_tensorrt look uninstalled, whatever this machine has."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "torch_tensorrt" else real(name, *a, **k))


def test_import_does_not_import_torch_tensorrt(child_env):
    code = "import sys, trt_runtime.backends.tensorrt; assert 'torch_tensorrt' not in sys.modules, 'imported'"
    result = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_missing_package_says_how_to_install(no_torch_tensorrt):
    with pytest.raises(BackendUnavailableError, match=r'pip install "trt-runtime\[tensorrt\]"'):
        get_backend("tensorrt").check_available(None)


def test_auto_skips_tensorrt_with_one_info_line(no_torch_tensorrt, caplog):
    caplog.set_level(logging.INFO, logger="trt_runtime")
    backend = select_backend("auto", None)
    assert backend.name == "inductor"
    lines = [r.getMessage() for r in caplog.records if r.name == "trt_runtime.backends"]
    assert len(lines) == 1, lines
    assert "selected inductor" in lines[0] and "tensorrt unavailable" in lines[0], lines
    assert "trt-runtime[tensorrt]" in lines[0], lines


def test_no_cuda_is_unavailable(standin, monkeypatch):
    standin()
    monkeypatch.setattr(backend_module, "cuda_unavailable_reason", _real_probe)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        get_backend("tensorrt").check_available(None)


def test_module_on_cpu_is_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "module is on cpu" in _real_probe(torch.device("cpu"))
    assert _real_probe(torch.device("cuda", 0)) is None


_real_probe = backend_module.cuda_unavailable_reason


@pytest.mark.parametrize("version", ["2.10.0", "2.15.0", "3.0.0"])
def test_unsupported_release_is_unavailable(version, standin):
    standin(version)
    with pytest.raises(BackendUnavailableError, match=r"not supported \(supported: 2.11 to 2.14\)"):
        get_backend("tensorrt").check_available(None)


def test_available_with_a_supported_release(standin):
    standin("2.12.1")
    backend = get_backend("tensorrt")
    backend.check_available(torch.device("cuda", 0))
    assert backend.versions() == {"torch_tensorrt": "2.12.1", "torch_tensorrt_flavour": "tensorrt",
                                  "tensorrt": "10.16.1"}


def test_artifact_fields_are_settings_that_change_the_engine():
    fields = get_backend("tensorrt").artifact_fields
    assert fields <= {f.name for f in dataclasses.fields(RuntimeSettings)}
    assert {"precision", "optimization_level", "workspace_size", "min_block_size", "truncate_double",
            "refittable", "tensorrt_options", "tensorrt_target"} <= fields
    assert not fields & {"cuda_graphs", "offload_module_to_cpu", "validate", "strict", "cache_dir"}


@pytest.mark.parametrize(("text", "series"), [("2.12.1+cu130", (2, 12)), ("2.14.0.dev20260101", (2, 14))])
def test_parse_version(text, series):
    assert api_table.parse_version(text) == series


@pytest.mark.parametrize("version", ALL_SERIES)
def test_precision_keywords_by_release(version):
    api = api_table.api_for(version)
    lowered = api_table.precision_kwargs(api, "fp16", torch.float32)
    if api.series < (2, 13):
        assert lowered == {"enabled_precisions": {torch.float16}, "use_explicit_typing": False}
    else:
        assert lowered == {"enable_autocast": True, "autocast_low_precision_type": torch.float16}
    assert api_table.precision_kwargs(api, "bf16", torch.float32) != {}
    # Weights already in the requested dtype: strongly typed default, no keyword in any release.
    assert api_table.precision_kwargs(api, "fp16", torch.float16) == {}
    assert api_table.precision_kwargs(api, "fp32", torch.float32) == {}
    assert api_table.precision_kwargs(api, "bf16", torch.float16) == {}


def test_compile_kwargs_defaults_and_device():
    api = api_table.api_for("2.14.0")
    kwargs = api_table.compile_kwargs(api, RuntimeSettings(), "fp32", torch.float32, torch.device("cuda", 1))
    assert kwargs == {"truncate_double": True, "immutable_weights": True, "offload_module_to_cpu": False,
                      "attn_bias_is_causal": False, "device": torch.device("cuda", 1)}
    assert "device" not in api_table.compile_kwargs(api, RuntimeSettings(), "fp32", None, torch.device("cpu"))


def test_input_kwargs():
    assert api_table.input_kwargs((2, 4), torch.float16, {}) == {"shape": (2, 4), "dtype": torch.float16}
    dims = {0: Dim("batch", 1, 8, opt=2)}
    assert api_table.input_kwargs((3, 4), torch.float32, dims) == {
        "min_shape": (1, 4), "opt_shape": (2, 4), "max_shape": (8, 4), "dtype": torch.float32}


def test_extra_options_are_checked():
    api = api_table.api_for("2.13.0")
    accepted = frozenset({"use_fp32_acc", "workspace_size", "enable_autocast", "arg_inputs"})
    assert api_table.check_extra_options(api, {"use_fp32_acc": True}, accepted) == {"use_fp32_acc": True}
    cases = {
        "enabled_precisions": "'enabled_precisions' is not a keyword of torch_tensorrt.dynamo.compile",
        "bogus": "'bogus' is not a keyword",
        "workspace_size": "controlled by RuntimeSettings (workspace_size)",
        "arg_inputs": "set by trt_runtime",
    }
    for key, message in cases.items():
        with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            api_table.check_extra_options(api, {key: 1}, accepted)
    with pytest.raises(ConfigurationError, match="precision follows the module"):
        api_table.check_extra_options(api, {"enabled_precisions": 1}, accepted)
    with pytest.raises(ConfigurationError, match="conflicts"):
        api_table.check_extra_options(api, {"enable_autocast": False}, accepted, {"enable_autocast": True})


def _request(args, kwargs=None, dynamic=None, names=("x",)):
    return CompileRequest(component="m", module=torch.nn.Identity(), args=args, kwargs=kwargs or {},
                          names=names, dynamic=dynamic or {}, settings=RuntimeSettings(), device=None,
                          precision="fp32")


def test_size_one_examples_are_widened_for_export():
    batch = Dim("batch", 1, 4)
    plan = export_module.InputPlan(_request((torch.ones(1, 3),), dynamic={"x": {0: batch}}))
    assert plan.examples[0].shape == (2, 3)
    assert plan.input_specs()[0]["min_shape"] == (1, 3)
    # A range that cannot exceed 1 is not dynamic at all.
    plan = export_module.InputPlan(_request((torch.ones(1, 3),), dynamic={"x": {0: Dim("one", 1, 1)}}))
    assert plan.examples[0].shape == (1, 3) and plan.dynamic_shapes() is None


def test_flat_call_rebuilds_nested_arguments():
    class Echo(torch.nn.Module):
        def forward(self, x, extra=None, flag=True):
            return x, extra, flag

    x, y = torch.ones(1), torch.zeros(2)
    request = _request((x,), {"extra": {"b": [y]}, "flag": False})
    plan = export_module.InputPlan(request)
    assert plan.paths == ("x", "extra.b.0")
    flat = export_module.FlatCall(Echo(), export_module.template(request.args, request.kwargs, ("x",)),
                                    plan.paths)
    out_x, extra, flag = flat(x, y)
    assert out_x is x and extra["b"][0] is y and flag is False


@pytest.mark.parametrize(("flavour", "capability", "chosen"), [
    ("tensorrt-rtx", (9, 0), "inductor"),   # H100 / H200: measured slower than inductor
    ("tensorrt-rtx", (8, 0), "inductor"),   # A100
    ("tensorrt-rtx", (7, 5), "tensorrt"),   # Turing RTX
    ("tensorrt-rtx", (8, 9), "tensorrt"),   # Ada RTX / L40S
    ("tensorrt-rtx", (12, 0), "tensorrt"),  # Blackwell RTX
    ("tensorrt", (9, 0), "tensorrt"),       # datacenter TensorRT on a datacenter GPU
])
def test_auto_uses_tensorrt_rtx_only_on_the_gpus_it_is_made_for(flavour, capability, chosen, standin, monkeypatch):
    standin(flavour=flavour)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert select_backend("auto", torch.device("cuda", 0)).name == chosen
    assert select_backend("tensorrt", torch.device("cuda", 0)).name == "tensorrt"  # asked for: always


def test_auto_says_once_and_visibly_why_tensorrt_rtx_was_not_chosen(child_env):
    """In a fresh interpreter with no logging setup, as a user's script runs."""
    code = textwrap.dedent("""
        import torch, trt_runtime
        from trt_runtime.backends import tensorrt as backend_module
        backend_module.cuda_unavailable_reason = lambda device: None  # the stand-in runs on the CPU
        torch.cuda.get_device_capability = lambda device=None: (9, 0)
        for _ in range(3):
            rt = trt_runtime.TensorRTRuntime(backend="auto", persist=False)
            print(rt.backend_for(torch.device("cuda", 0)).name)
    """)
    env = {**child_env, "TRT_RUNTIME_STANDIN_VERSION": "2.11.0", "TRT_RUNTIME_STANDIN_FLAVOUR": "tensorrt-rtx"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["inductor"] * 3
    err = result.stderr
    assert err.count("did not choose tensorrt") == 1, err
    assert "compute capability 7.5/8.6/8.9/12.0" in err and "(9.0)" in err and "backend='tensorrt'" in err, err


def test_auto_chooses_per_gpu_on_a_machine_with_two_kinds(standin, monkeypatch):
    import trt_runtime

    standin(flavour="tensorrt-rtx")
    capabilities = {0: (8, 9), 1: (9, 0)}  # an RTX card beside an H100
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capabilities[device or 0])
    rt = trt_runtime.TensorRTRuntime(backend="auto", persist=False)
    chosen = {index: rt.backend_for(torch.device("cuda", index)).name for index in (1, 0)}
    assert chosen == {0: "tensorrt", 1: "inductor"}
