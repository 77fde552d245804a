"""End to end through the tensorrt backend on CPU, with the torch_tensorrt STAND-IN (tests/backends/standin).

The stand-in accepts exactly the keywords of the imitated release and returns the exported program's
module instead of an engine, so these tests cover everything of ours: export, the compile call, save,
a new process loading from the cache, running, fallback and shape ranges. They do not build or run a
TensorRT engine.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import trt_runtime
from trt_runtime.errors import ConfigurationError, EngineBuildError

_SPEC = importlib.util.spec_from_file_location("standin_support", Path(__file__).with_name("standin_support.py"))
support = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(support)

VERSIONS = ("2.11.0", "2.12.1", "2.13.0", "2.14.0")
EDGE_VERSIONS = ("2.11.0", "2.14.0")  # one weakly typed, one strongly typed (autocast) release


def _eager(module, batch):
    args, kwargs = support.toy_inputs(batch)
    with torch.no_grad():
        return module(*args, **kwargs)[0]


def _run(wrapper, batch):
    args, kwargs = support.toy_inputs(batch)
    with torch.no_grad():
        return wrapper(*args, **kwargs)[0]


def _calls(trt, name):
    return [kwargs for called, kwargs in trt.CALLS if called == name]


def _child(cache_dir, case, version, child_env):
    env = {**child_env, "TRT_RUNTIME_STANDIN_VERSION": version, "TRT_CACHE_DIR": str(cache_dir)}
    script = Path(support.__file__)
    result = subprocess.run([sys.executable, str(script), str(cache_dir), case], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("version", VERSIONS)
def test_compile_save_and_load_in_a_new_process(version, standin, tmp_path, child_env):
    trt = standin(version)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    module = support.make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt)

    out = _run(wrapped, 2)
    torch.testing.assert_close(out, _eager(module, 2))
    totals = rt.stats.totals()
    assert (totals["compiles"], totals["loads"], totals["failed"]) == (1, 0, 0)
    assert len(_calls(trt, "compile")) == 1
    (save,) = _calls(trt, "save")
    assert save["output_format"] == "exported_program" and save["retrace"] is False
    assert list(tmp_path.glob("*/trt_program.pt2")), "artifact not written"
    assert not _calls(trt, "engine_copy"), "saving copied the engine (deserialized and JIT-compiled again)"

    child = _child(tmp_path, "static", version, child_env)
    assert child["totals"]["compiles"] == 0 and child["totals"]["loads"] == 1, child
    assert "compile" not in child["calls"]
    assert child["plugin_inits"] == 1, "plugin registry must be initialised before loading"
    torch.testing.assert_close(torch.tensor(child["output"]), out)


@pytest.mark.parametrize("version", EDGE_VERSIONS)
def test_one_artifact_serves_a_declared_batch_range(version, standin, tmp_path, child_env):
    trt = standin(version)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    module = support.make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt, shapes=support.SHAPES)

    for batch in (1, 2, 5):  # batch 1 first: torch.export would specialize it without our fix
        torch.testing.assert_close(_run(wrapped, batch), _eager(module, batch))
    totals = rt.stats.totals()
    assert (totals["keys"], totals["compiles"], totals["calls"]) == (1, 1, 3)
    (compiled,) = _calls(trt, "compile")
    sample, cond, bias = compiled["arg_inputs"]
    assert (sample.min_shape, sample.opt_shape, sample.max_shape) == ((1, 8), (4, 8), (8, 8))
    assert (cond.min_shape, cond.max_shape) == ((1, 3, 8), (8, 3, 8))
    assert bias.min_shape == bias.max_shape == (8,)

    child = _child(tmp_path, "dynamic", version, child_env)  # batch 3, same artifact
    assert (child["totals"]["compiles"], child["totals"]["loads"]) == (0, 1), child
    torch.testing.assert_close(torch.tensor(child["output"]), _eager(module, 3))


def test_batch_outside_the_range_gets_its_own_artifact(standin, tmp_path):
    standin()
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    module = support.make_toy()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt, shapes=support.SHAPES)
    for batch in (2, 9):
        torch.testing.assert_close(_run(wrapped, batch), _eager(module, batch))
    assert rt.stats.totals()["compiles"] == 2


@pytest.mark.parametrize("version", EDGE_VERSIONS)
def test_build_failure_falls_back_to_eager_and_is_remembered(version, standin, tmp_path):
    trt = standin(version)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path)
    torch.manual_seed(0)
    module = support.Unconvertible().eval()
    wrapped = trt_runtime.TensorRTModule(module, runtime=rt)
    x = torch.randn(2, 8)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(wrapped(x), module(x))
    totals = rt.stats.totals()
    assert (totals["compiles"], totals["failed"], totals["fallbacks"]) == (0, 1, 2)
    assert len(_calls(trt, "compile")) == 1, "a failed key must not rebuild"
    (meta,) = tmp_path.glob("*/meta.json")
    assert json.loads(meta.read_text())["status"] == "failed"
    assert "no TensorRT converter" in json.loads(meta.read_text())["error"]


def test_build_failure_raises_in_strict_mode(standin, tmp_path):
    standin()
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    wrapped = trt_runtime.TensorRTModule(support.Unconvertible().eval(), runtime=rt)
    with pytest.raises(EngineBuildError, match="could not build an engine"), torch.no_grad():
        wrapped(torch.randn(2, 8))


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.11.0", {"enabled_precisions": {torch.float16}, "use_explicit_typing": False}),
        ("2.12.1", {"enabled_precisions": {torch.float16}, "use_explicit_typing": False}),
        ("2.13.0", {"enable_autocast": True, "autocast_low_precision_type": torch.float16}),
        ("2.14.0", {"enable_autocast": True, "autocast_low_precision_type": torch.float16}),
    ],
)
def test_fp16_of_an_fp32_module_uses_each_release_keywords(version, expected, standin, tmp_path):
    trt = standin(version)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, precision="fp16")
    _run(trt_runtime.TensorRTModule(support.make_toy(), runtime=rt), 2)
    (compiled,) = _calls(trt, "compile")
    assert {k: compiled[k] for k in expected} == expected
    assert not {"enabled_precisions", "use_explicit_typing", "enable_autocast"} - expected.keys() & compiled.keys()


def test_standin_enforces_each_release_precision_rule(standin):
    """The stand-in must fail the way the real releases do, or the test above proves nothing."""
    program = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    trt = standin("2.11.0")
    with pytest.raises(AssertionError, match="use_explicit_typing was set to True"):
        trt.dynamo.compile(program, arg_inputs=[trt.Input(shape=(1, 2))], enabled_precisions={torch.float16})
    trt = standin("2.14.0")
    with pytest.raises(TypeError, match="enabled_precisions"):
        trt.dynamo.compile(program, arg_inputs=[trt.Input(shape=(1, 2))], enabled_precisions={torch.float16})


def test_settings_reach_compile(standin, tmp_path):
    trt = standin("2.13.0")
    rt = trt_runtime.TensorRTRuntime(
        backend="tensorrt", cache_dir=tmp_path, strict=True, optimization_level=5, workspace_size=1 << 30,
        min_block_size=2, truncate_double=False, refittable=True, offload_module_to_cpu=True,
        tensorrt_options={"use_fp32_acc": True, "torch_executed_ops": ("aten.softmax",)},
    )
    module = support.make_toy()
    torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=rt), 2), _eager(module, 2))
    (compiled,) = _calls(trt, "compile")
    compiled.pop("arg_inputs")
    assert compiled == {
        "optimization_level": 5, "workspace_size": 1 << 30, "min_block_size": 2, "truncate_double": False,
        "immutable_weights": False, "offload_module_to_cpu": True, "use_fp32_acc": True,
        "torch_executed_ops": ("aten.softmax",), "attn_bias_is_causal": False,
    }


def test_bad_tensorrt_option_is_named(standin, tmp_path):
    standin("2.14.0")
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True,
                                     tensorrt_options={"enabled_precisions": {torch.float16}})
    # a configuration mistake surfaces as itself (not as a failed build, and is not remembered as one)
    with pytest.raises(ConfigurationError, match="'enabled_precisions' is not a keyword"), torch.no_grad():
        _run(trt_runtime.TensorRTModule(support.make_toy(), runtime=rt), 2)


def test_the_backend_switches_no_process_wide_cuda_graph_mode(standin, tmp_path):
    """CUDA graphs are the runtime's own (graphs.py), captured around the engine call: the backend no
    longer enters torch_tensorrt's process-wide ``enable_cudagraphs``."""
    trt = standin()
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, cuda_graphs=True)
    module = support.make_toy()
    torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=rt), 2), _eager(module, 2))
    assert not _calls(trt, "enable_cudagraphs") and not trt.runtime.get_cudagraphs_mode()


def _fused_attention_module() -> torch.fx.GraphModule:
    """A compiled program as TensorRT-RTX 1.4 left a UNet with 4-wide heads: the fused CUDA attention op in
    a PyTorch submodule beside the engine (which torch.export cannot serialise)."""

    def attention(q, k, v):
        return torch.ops.aten._scaled_dot_product_flash_attention.default(q, k, v, scale=0.5)[0]

    outer = torch.nn.Module()
    outer.add_module("_run_on_gpu_0", torch.fx.symbolic_trace(attention))
    return outer


def test_attention_left_outside_the_engine_is_built_again_decomposed(standin, tmp_path, monkeypatch, caplog):
    from trt_runtime.backends.tensorrt import attention_outside_engine

    assert attention_outside_engine(_fused_attention_module()) == ["_scaled_dot_product_flash_attention_default"]
    assert attention_outside_engine(torch.fx.symbolic_trace(torch.nn.Linear(2, 2))) == []
    trt = standin("2.11.0")
    real_compile = trt.dynamo.compile

    @functools.wraps(real_compile)  # the backend reads the release's keywords from the signature
    def compile_like_rtx(program, **kwargs):  # what the stand-in returns, plus the leftover attention
        module = real_compile(program, **kwargs)
        if not kwargs.get("decompose_attention"):
            module.add_module("_run_on_gpu_0", _fused_attention_module())
        return module

    monkeypatch.setattr(trt.dynamo, "compile", compile_like_rtx)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    module = support.make_toy()
    with caplog.at_level("INFO", logger="trt_runtime"):
        torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=rt), 2), _eager(module, 2))
    first, second = _calls(trt, "compile")
    assert "decompose_attention" not in first and second["decompose_attention"] is True
    assert any("left outside the engine" in r.getMessage() for r in caplog.records)
    assert rt.stats.totals()["compiles"] == 1 and list(tmp_path.glob("*/trt_program.pt2"))


def test_outputs_come_back_in_the_modules_dtypes(standin, tmp_path, monkeypatch):
    """A strongly typed engine may infer another type for an output than the module returns (TensorRT-RTX
    gave a float32 hidden state for an fp16 T5 on the GPU): the caller gets the module's dtype, also from an
    engine loaded by a new runtime (the dtypes are saved with the entry)."""
    trt = standin("2.14.0")
    real_compile = trt.dynamo.compile

    class Float64Engine(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.double(), self.inner(*args))

    @functools.wraps(real_compile)
    def compile_with_wider_outputs(program, **kwargs):
        module = real_compile(program, **kwargs)
        wrapped = Float64Engine(module)
        wrapped._standin_program = module._standin_program  # what the stand-in's save writes
        return wrapped

    monkeypatch.setattr(trt.dynamo, "compile", compile_with_wider_outputs)
    module = support.make_toy()
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    out = _run(trt_runtime.TensorRTModule(module, runtime=rt), 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, _eager(module, 2))
    (saved,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/trt_inputs.json")]
    assert set(saved["output_dtypes"]) == {"torch.float32"}

    real_load = torch.export.load

    class LoadedProgram:  # what a loaded engine program does: the wider outputs again
        def __init__(self, program):
            self.program = program

        def module(self):
            return Float64Engine(self.program.module())

    monkeypatch.setattr(torch.export, "load", lambda *a, **k: LoadedProgram(real_load(*a, **k)))
    again = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    loaded = _run(trt_runtime.TensorRTModule(support.make_toy(), runtime=again), 2)
    assert again.stats.totals()["loads"] == 1 and loaded.dtype == torch.float32
    torch.testing.assert_close(loaded, out)


def test_constant_attention_bias_failure_is_built_again_decomposed(standin, tmp_path, caplog):
    """The add_cast TypeError of 2.11-2.13's fused-attention converters (a constant attention bias made
    inside the module, as HunyuanVideo's video VAE makes its causal mask; seen on the GPU) is built again
    with decompose_attention=True, once; any other TypeError is a failed build."""
    trt = standin("2.11.0")
    real_compile = trt.dynamo.compile
    failures = {"add_cast(): incompatible function arguments. Invoked with: tensor([[0., -inf]])": 1}

    @functools.wraps(real_compile)
    def compile_like_rtx(program, **kwargs):
        if not kwargs.get("decompose_attention"):
            for message, left in failures.items():
                if left:
                    raise TypeError(message)
        return real_compile(program, **kwargs)

    trt.dynamo.compile = compile_like_rtx
    try:
        rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
        module = support.make_toy()
        with caplog.at_level("INFO", logger="trt_runtime"):
            torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=rt), 2), _eager(module, 2))
        assert any("constant attention bias" in r.getMessage() for r in caplog.records)
        failures.clear()
        failures["unsupported operand type(s)"] = 1
        other = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path / "other")
        torch.testing.assert_close(_run(trt_runtime.TensorRTModule(support.make_toy(), runtime=other), 2),
                                   _eager(module, 2))
        (row,) = other.stats.rows()
        assert row.state == "failed" and "unsupported operand" in row.error
    finally:
        trt.dynamo.compile = real_compile


@pytest.mark.parametrize("decomposed_helps", [True, False])
def test_engine_without_execution_context_is_built_again_decomposed_then_falls_back_with_its_cause(
        decomposed_helps, standin, tmp_path, caplog):
    """TensorRT-RTX 1.4 built HunyuanVideo's transformer on the GPU but could not create its execution
    context (a cuDNN graph of a fused attention it could not compile). The build is tried once more with the
    attention decomposed; if that fails too, the call runs eagerly and the warning names the cause, not
    unsupported ops."""
    trt = standin("2.11.0")
    real_compile = trt.dynamo.compile
    context_error = "[Error thrown at core/runtime/TRTEngine.cpp:143] Expected (exec_ctx.get() != nullptr) to be " \
                    "true but got false"
    tries = []

    @functools.wraps(real_compile)
    def compile_like_rtx(program, **kwargs):
        tries.append(kwargs.get("decompose_attention"))
        if not (decomposed_helps and kwargs.get("decompose_attention")):
            raise RuntimeError(context_error)
        return real_compile(program, **kwargs)

    trt.dynamo.compile = compile_like_rtx
    try:
        rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path)
        module = support.make_toy()
        with caplog.at_level("INFO", logger="trt_runtime"):
            torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=rt), 2), _eager(module, 2))
        assert tries == [None, True]  # once more, decomposed; never a third time
        (row,) = rt.stats.rows()
        if decomposed_helps:
            assert row.state == "ready" and any("execution context" in r.getMessage() for r in caplog.records)
        else:
            assert row.state == "failed"
            (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
            assert "could not create its execution context" in warning and "min_block_size does not" in warning
            _run(trt_runtime.TensorRTModule(module, runtime=rt), 2)
            assert len(tries) == 2  # the failure is remembered
    finally:
        trt.dynamo.compile = real_compile


def test_second_wrapper_of_the_process_reuses_the_loaded_engine(standin, tmp_path, monkeypatch, caplog):
    """TensorRT-RTX compiles an engine's kernels on every load (34 s for an SD1.5 UNet on an H200): a second
    wrapper or runtime of the same process whose call resolves to the same entry reuses the engine loaded
    before, instead of loading it again. A program just built is not shared (its PyTorch parts may hold the
    building module's parameters); a cleared entry is not served from memory; ``share_loaded=False`` opts out."""
    standin("2.14.0")
    loads = []
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    module = support.make_toy()
    expected = _eager(module, 2)

    builder = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    built = trt_runtime.TensorRTModule(module, runtime=builder)
    torch.testing.assert_close(_run(built, 2), expected)
    assert builder.stats.totals()["compiles"] == 1
    (row,) = builder.stats.rows()  # the build's parts are timed apart from its first call
    assert {"compile: export", "compile: engine build"} <= row.phases.keys()
    assert row.phases["compile: export"] + row.phases["compile: engine build"] <= row.phases["compile"]

    first = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    kept = trt_runtime.TensorRTModule(module, runtime=first)
    torch.testing.assert_close(_run(kept, 2), expected)
    assert first.stats.totals()["loads"] == 1 and len(loads) == 1  # the built program was not shared

    with caplog.at_level("INFO", logger="trt_runtime"):
        second = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, cuda_graphs=False)
        other = trt_runtime.TensorRTModule(module, runtime=second)
        torch.testing.assert_close(_run(other, 2), expected)
    assert second.stats.totals()["reuses"] == 1 and second.stats.totals()["loads"] == 0
    assert second.stats.totals()["compiles"] == 0 and len(loads) == 1  # nothing read from disk again
    assert any("already loaded in this process" in r.getMessage() for r in caplog.records)
    assert "1 reused from another wrapper of this process" in second.summary()

    opted_out = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True, share_loaded=False)
    torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=opted_out), 2), expected)
    assert opted_out.stats.totals()["loads"] == 1 and len(loads) == 2

    # held weakly: once no wrapper holds it, the next one loads from disk again
    del kept, other, first, second
    gc.collect()
    again = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=again), 2), expected)
    assert again.stats.totals()["loads"] == 1 and len(loads) == 3

    # a cleared entry is built again, never served from memory
    cleared = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    cleared.cache.clear()
    torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=cleared), 2), expected)
    assert cleared.stats.totals()["compiles"] == 1


def test_only_loads_checked_against_their_checksums_are_shared(standin, tmp_path):
    """A runtime that reads entries without checking their files' sha256 (``verify_checksum=False``) may load a
    damaged file of the right size: it must not be shared under the checksums the meta records."""
    standin("2.14.0")
    module = support.make_toy()
    expected = _eager(module, 2)
    _run(trt_runtime.TensorRTModule(module, runtime=trt_runtime.TensorRTRuntime(
        backend="tensorrt", cache_dir=tmp_path)), 2)
    unchecked = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, verify_checksum=False)
    held = trt_runtime.TensorRTModule(module, runtime=unchecked)
    torch.testing.assert_close(_run(held, 2), expected)
    assert unchecked.stats.totals()["loads"] == 1
    checked = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path)
    torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=checked), 2), expected)
    assert checked.stats.totals()["loads"] == 1 and checked.stats.totals()["reuses"] == 0


class _CrossAttention(torch.nn.Module):
    """A UNet's cross-attention in small: image tokens attend to text tokens of another length."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, context):
        q = self.proj(x).unflatten(-1, (2, 4)).transpose(1, 2)
        kv = context.unflatten(-1, (2, 4)).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, kv, kv).transpose(1, 2).flatten(-2)


@pytest.mark.parametrize("version", ["2.11.0", "2.12.1"])
def test_cross_attention_is_decomposed_up_front_where_the_release_needs_it(version, standin, tmp_path, caplog):
    """2.11's attention converters take only a query, key and value of one shape, so a UNet's cross-attention
    stayed in PyTorch and the UNet was built twice (126 s on an H200). Seen in the program, 2.11 gets
    decompose_attention=True in its one build; 2.12 converts such attention and is not asked to."""
    trt = standin(version)
    module = _CrossAttention().eval()
    x, context = torch.randn(2, 16, 8), torch.randn(2, 7, 8)
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, strict=True)
    with torch.no_grad(), caplog.at_level("INFO", logger="trt_runtime"):
        torch.testing.assert_close(trt_runtime.TensorRTModule(module, runtime=rt)(x, context), module(x, context))
    (call,) = _calls(trt, "compile")  # one build either way
    if version == "2.11.0":
        assert call["decompose_attention"] is True
        assert any("different shapes" in r.getMessage() for r in caplog.records)
    else:
        assert not call.get("decompose_attention")


def test_an_explicit_decompose_attention_false_is_kept(standin, tmp_path):
    """The up-front decomposition of 2.11 is a default: a user who set decompose_attention=False gets it."""
    trt = standin("2.11.0")
    module = _CrossAttention().eval()
    rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path,
                                     tensorrt_options={"decompose_attention": False})
    with torch.no_grad():
        trt_runtime.TensorRTModule(module, runtime=rt)(torch.randn(2, 16, 8), torch.randn(2, 7, 8))
    assert _calls(trt, "compile")[0]["decompose_attention"] is False


def test_a_shared_engine_is_not_refitted_beside_running_calls(standin, tmp_path, monkeypatch):
    """A background worker must not trace beside the caller's modules (``Backend.builds_beside_calls``): an
    engine shared in the process whose weights differ from the module's would need a refit (an export), so the
    worker leaves it to the caller's thread."""
    import copy
    import threading

    from trt_runtime import keys

    standin("2.14.0")
    module = support.make_toy()
    settings = dict(backend="tensorrt", cache_dir=tmp_path, cuda_graphs=False, refittable=True)
    _run(trt_runtime.TensorRTModule(module, runtime=trt_runtime.TensorRTRuntime(**settings)), 2)  # builds
    holder = trt_runtime.TensorRTModule(module, runtime=trt_runtime.TensorRTRuntime(**settings))
    _run(holder, 2)  # loads: now shared in the process
    other = copy.deepcopy(module)
    with torch.no_grad():
        other.proj.weight.mul_(2)  # same key (refittable engines leave the weights out), other weights
    rt = trt_runtime.TensorRTRuntime(**settings)
    wrapper = trt_runtime.TensorRTModule(other, runtime=rt)
    comp = wrapper.component
    args, kwargs = support.toy_inputs(2)
    sig = (comp.check_module(), keys.signature(args, kwargs, comp.names, comp.spec))
    exports, result = [], {}
    real_export = torch.export.export
    monkeypatch.setattr(torch.export, "export", lambda *a, **k: exports.append(1) or real_export(*a, **k))

    def worker():
        with torch.no_grad():
            result["resolution"] = rt.resolver.load_beside_calls(comp, sig, args, kwargs)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert result["resolution"] is None and exports == []
    torch.testing.assert_close(_run(wrapper, 2), _eager(other, 2))  # the caller's thread refits it
    assert rt.stats.totals()["reuses"] == 1


def test_two_threads_loading_engines_take_turns(standin, tmp_path, monkeypatch):
    """torch.export.load keeps its deserializer in a module global and raises when two threads load at once;
    the failed load was then built again. Loads take turns, and neither thread builds."""
    import threading
    import time

    standin("2.14.0")
    module = support.make_toy()
    _run(trt_runtime.TensorRTModule(module, runtime=trt_runtime.TensorRTRuntime(backend="tensorrt",
                                                                               cache_dir=tmp_path)), 2)
    real_load, active = torch.export.load, []

    def load_like_torch(*args, **kwargs):  # the global's check, with a window wide enough to hit
        if active:
            raise AssertionError("_CURRENT_DESERIALIZER is already set")
        active.append(1)
        try:
            time.sleep(0.3)
            return real_load(*args, **kwargs)
        finally:
            active.pop()

    monkeypatch.setattr(torch.export, "load", load_like_torch)
    runtimes = [trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=tmp_path, share_loaded=False)
                for _ in range(2)]
    wrappers = [trt_runtime.TensorRTModule(module, runtime=rt) for rt in runtimes]
    outputs = {}
    threads = [threading.Thread(target=lambda i=i: outputs.__setitem__(i, _run(wrappers[i], 2))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, rt in enumerate(runtimes):
        torch.testing.assert_close(outputs[i], _eager(module, 2))
        assert rt.stats.totals()["loads"] == 1 and rt.stats.totals()["compiles"] == 0


def test_an_engine_without_context_on_a_full_gpu_is_a_transient_failure(standin, tmp_path, monkeypatch):
    """TensorRT says only "exec_ctx ... nullptr" when an execution context cannot be created, also when the GPU
    is out of memory: with the GPU nearly full the failure is transient (retried later, never written to disk);
    with memory to spare it is remembered like any failed build."""
    import types

    from trt_runtime.backends import _tensorrt_build as build
    from trt_runtime.backends import tensorrt as backend

    trt = standin("2.11.0")
    real_compile = trt.dynamo.compile
    error = "[Error thrown at core/runtime/TRTEngine.cpp:143] Expected (exec_ctx.get() != nullptr) to be true"

    builds = []

    @functools.wraps(real_compile)
    def compile_without_context(program, **kwargs):
        builds.append(kwargs.get("decompose_attention"))
        raise RuntimeError(error)

    trt.dynamo.compile = compile_without_context
    gib = 1 << 30
    try:
        for free, remembered in ((0.5 * gib, False), (40 * gib, True)):
            monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
            monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, f=free: (int(f), 80 * gib))
            monkeypatch.setattr(backend, "short_of_memory",
                                lambda err, device: build.short_of_memory(err, types.SimpleNamespace(type="cuda")))
            folder = tmp_path / str(remembered)
            rt = trt_runtime.TensorRTRuntime(backend="tensorrt", cache_dir=folder)
            module = support.make_toy()
            torch.testing.assert_close(_run(trt_runtime.TensorRTModule(module, runtime=rt), 2), _eager(module, 2))
            failed = [e for e in rt.cache.entries() if e.status == "failed"]
            assert bool(failed) is remembered, (free, failed)
            assert len(builds) == (2 if remembered else 1)  # a full GPU gets no decomposed second build
            builds.clear()
    finally:
        trt.dynamo.compile = real_compile
    assert build.short_of_memory(RuntimeError("another error"), types.SimpleNamespace(type="cuda")) is None
    assert build.short_of_memory(RuntimeError(error), torch.device("cpu")) is None
