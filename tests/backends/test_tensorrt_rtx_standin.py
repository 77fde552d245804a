"""The TensorRT-RTX flavour of the tensorrt backend, end to end on CPU through the STAND-IN torch_tensorrt
imitating ``torch-tensorrt-rtx``: the build target hook, the flavour in the key, autocast precision,
attention-bias modules, and refittable engines (weights out of the key, refit instead of a rebuild).
No engine is built here; tests/backends/test_tensorrt_gpu.py runs the real thing on the GPU machine."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import trt_runtime
from trt_runtime.backends import _tensorrt_api as api_table
from trt_runtime.backends._tensorrt_build import HOOKED_METHOD

_SPEC = importlib.util.spec_from_file_location("standin_support", Path(__file__).with_name("standin_support.py"))
support = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(support)
make_toy, toy_inputs = support.make_toy, support.toy_inputs

EDGE_VERSIONS = ("2.11.0", "2.14.0")


def _calls(trt, name):
    return [kwargs for called, kwargs in trt.CALLS if called == name]


def _run(wrapper, batch=2):
    args, kwargs = toy_inputs(batch)
    with torch.no_grad():
        return wrapper(*args, **kwargs)[0]


def _eager(module, batch=2):
    args, kwargs = toy_inputs(batch)
    with torch.no_grad():
        return module(*args, **kwargs)[0]


def _interpreter():
    import importlib

    module_name, class_name, method_name = HOOKED_METHOD
    cls = getattr(importlib.import_module(module_name), class_name)
    return importlib.import_module(module_name), cls.__dict__[method_name]


@pytest.mark.parametrize("version", EDGE_VERSIONS)
@pytest.mark.parametrize(("target", "expected"), [("current", {0: "CURRENT"}), ("portable", None)])
def test_build_target_applies_to_the_build_only(version, target, expected, standin, tmp_path):
    trt = standin(version, flavour="tensorrt-rtx")
    interpreter_module, original = _interpreter()
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, tensorrt_target=target)
    module = make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt)
    torch.testing.assert_close(_run(wrapped), _eager(module))
    (config,) = interpreter_module.CONFIGS
    if expected is None:
        assert config.num_compute_capabilities == 3  # TensorRT-RTX's own portable list, untouched
    else:
        assert config.num_compute_capabilities == 1 and config.compute_capabilities == expected
    _, after = _interpreter()
    assert after is original, "the builder hook must not outlive the build"
    # a build outside trt_runtime meanwhile gets TensorRT-RTX's defaults
    interpreter_module.TRTInterpreter().run()
    assert interpreter_module.CONFIGS[-1].num_compute_capabilities == 3
    env = rt.cache.entries()[0].meta["environment"]
    assert env["torch_tensorrt_flavour"] == "tensorrt-rtx" and env["tensorrt"].startswith(("1.3", "1.6"))
    assert rt.cache.entries()[0].meta["options"]["tensorrt_target"] == target
    assert trt.ENABLED_FEATURES.tensorrt_rtx


def test_flavour_and_target_change_the_key(standin, tmp_path):
    keys = set()
    for flavour, target in (("tensorrt", "current"), ("tensorrt-rtx", "current"), ("tensorrt-rtx", "portable")):
        standin("2.14.0", flavour=flavour)
        rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, tensorrt_target=target)
        _run(trt_runtime.TensorRTModule(make_toy(), runtime=rt))
        keys |= {row.key for row in rt.stats.rows()}
    assert len(keys) == 3


def test_rtx_lowers_precision_with_autocast_in_every_release(standin, tmp_path):
    trt = standin("2.11.0", flavour="tensorrt-rtx")
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, precision="fp16")
    _run(trt_runtime.TensorRTModule(make_toy(), runtime=rt))
    (kwargs,) = _calls(trt, "compile")
    assert kwargs["enable_autocast"] is True and kwargs["autocast_low_precision_type"] == torch.float16
    assert "enabled_precisions" not in kwargs  # ignored by TensorRT-RTX: it would build fp32
    assert kwargs["attn_bias_is_causal"] is False


@pytest.mark.parametrize(("version", "decomposed"), [("2.11.0", True), ("2.13.0", True), ("2.14.0", False)])
def test_modules_with_an_attention_bias_decompose_attention_where_needed(version, decomposed, standin):
    api = api_table.api_for(version, "tensorrt-rtx")
    kwargs = api_table.compile_kwargs(api, trt_runtime.RuntimeSettings(), "fp16", torch.float16,
                                      traits=frozenset({api_table.ATTENTION_BIAS}))
    assert kwargs.get("decompose_attention", False) is decomposed
    plain = api_table.compile_kwargs(api, trt_runtime.RuntimeSettings(), "fp16", torch.float16)
    assert "decompose_attention" not in plain


@pytest.mark.parametrize("version", EDGE_VERSIONS)
def test_refittable_engine_refits_a_to_b_to_a_and_is_never_served_stale(version, standin, tmp_path):
    trt = standin(version, flavour="tensorrt-rtx")
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, refittable=True)
    module = make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt)
    weights_a = {k: v.clone() for k, v in module.state_dict().items()}
    out_a = _run(wrapped)
    torch.testing.assert_close(out_a, _eager(module))
    with torch.no_grad():  # B: edited in place on the module itself, not through the wrapper
        module.proj.weight.mul_(-1.0)
    out_b = _run(wrapped)
    torch.testing.assert_close(out_b, _eager(module))
    assert not torch.allclose(out_a, out_b)
    module.load_state_dict(weights_a)  # back to A
    torch.testing.assert_close(_run(wrapped), out_a, rtol=0, atol=0)
    assert len(_calls(trt, "compile")) == 1 and len(_calls(trt, "refit")) == 2
    assert rt.stats.totals()["compiles"] == 1 and len(rt.cache.entries()) == 1
    # refit and save each work on a deep copy of the program: the copies share its engine, never rebuild it
    assert not _calls(trt, "engine_copy")

    # a new runtime with weights B finds the entry (keyed without weights), loads it and refits
    with torch.no_grad():
        module.proj.weight.mul_(-1.0)
    rt2 = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, refittable=True)
    out = _run(trt_runtime.TensorRTModule(module, runtime=rt2))
    torch.testing.assert_close(out, out_b)
    totals = rt2.stats.totals()
    assert (totals["compiles"], totals["loads"]) == (0, 1) and len(_calls(trt, "refit")) == 3


def test_an_engine_without_refit_is_rebuilt_after_an_in_place_edit(standin, tmp_path):
    trt = standin("2.14.0", flavour="tensorrt-rtx")
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    module = make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt)
    _run(wrapped)
    with torch.no_grad():
        module.proj.bias.add_(1.0)
    torch.testing.assert_close(_run(wrapped), _eager(module))
    assert len(_calls(trt, "compile")) == 2 and not _calls(trt, "refit")
