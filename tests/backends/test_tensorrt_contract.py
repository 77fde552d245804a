"""Contract tests: the keywords our tensorrt backend passes, checked against the published wheels.

For every supported release the real torch-tensorrt wheel is downloaded from PyPI (once; cached under
``~/.cache/trt_runtime_test_wheels`` or ``$TRT_RUNTIME_TEST_WHEELS``) and its sources are parsed with
``ast``: nothing is imported (TensorRT cannot be installed here). The keywords come from the very
functions the backend calls (``_tensorrt_api.compile_kwargs`` and friends), so the test cannot drift
from the code. Skipped, with the reason, when PyPI cannot be reached.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

from trt_runtime.backends import _tensorrt_api as api_table
from trt_runtime.backends._tensorrt_build import HOOKED_METHOD
from trt_runtime.errors import ConfigurationError
from trt_runtime.settings import RuntimeSettings
from trt_runtime.shapes import Dim

STANDIN_DIR = Path(__file__).resolve().with_name("standin")

SETTINGS = (
    RuntimeSettings(),
    RuntimeSettings(optimization_level=5, workspace_size=1 << 30, min_block_size=3, truncate_double=False,
                    refittable=True, offload_module_to_cpu=True),
)
PRECISIONS = (
    ("fp32", torch.float32), ("fp16", torch.float32), ("bf16", torch.float32),
    ("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", None),
)


def _every_compile_kwargs(api):
    for settings, (precision, dtype) in itertools.product(SETTINGS, PRECISIONS):
        yield api_table.compile_kwargs(api, settings, precision, dtype, torch.device("cuda", 0))


def _function(source: str, name: str) -> ast.FunctionDef:
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"no top-level function {name}()")


def _method(source: str, cls: str, name: str) -> ast.FunctionDef:
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"no {cls}.{name}()")


def _keyword_names(fn: ast.FunctionDef) -> set[str]:
    """Parameters that can be passed by keyword (``**kwargs`` excluded on purpose)."""
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def _defaults(source: str) -> dict[str, str]:
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out[node.targets[0].id] = ast.unparse(node.value)
    return out


def _kwargs_keys_read(fn: ast.FunctionDef) -> set[str]:
    """String keys a ``**kwargs`` function reads: ``kwargs["k"]``, ``kwargs.get("k")``, ``"k" in kwargs``."""
    keys = set()
    for node in ast.walk(fn):
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "kwargs"
                and isinstance(node.slice, ast.Constant)):
            keys.add(node.slice.value)
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            if any(isinstance(c, ast.Name) and c.id == "kwargs" for c in node.comparators):
                keys.add(node.left.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "kwargs"
                and node.args and isinstance(node.args[0], ast.Constant)):
            keys.add(node.args[0].value)
        if isinstance(node, ast.comprehension) and isinstance(node.iter, ast.List):
            # any(k in kwargs for k in ["min_shape", ...])
            keys.update(e.value for e in node.iter.elts if isinstance(e, ast.Constant))
    return keys


def _standin_signatures():
    spec = importlib.util.spec_from_file_location(
        "standin_signatures", STANDIN_DIR / "torch_tensorrt" / "_signatures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_covers_exactly_the_tested_releases(wheel_versions):
    assert {(f, api_table.parse_version(v)) for f, v in wheel_versions} == set(api_table._TABLE)


def _api(wheel):
    return api_table.api_for(wheel.version, wheel.flavour)


def test_version_table_matches_the_wheel(wheel):
    versions = _defaults(wheel.read("_version.py"))
    assert versions["__version__"].strip("'\"") == wheel.version
    api = _api(wheel)
    pin = "__tensorrt_rtx_version__" if wheel.flavour == "tensorrt-rtx" else "__tensorrt_version__"
    tensorrt = versions[pin].strip("'\"")
    assert tensorrt.startswith(api.tensorrt + "."), (tensorrt, api.tensorrt)


def test_every_compile_keyword_we_pass_exists(wheel):
    signature = _keyword_names(_function(wheel.read("dynamo/_compiler.py"), "compile"))
    api = _api(wheel)
    for kwargs in _every_compile_kwargs(api):
        passed = set(kwargs) | {"arg_inputs"}
        assert passed <= signature, f"torch_tensorrt {wheel.version} lacks {passed - signature}"


def test_removed_keywords_are_not_passed(wheel):
    compile_fn = _function(wheel.read("dynamo/_compiler.py"), "compile")
    signature = _keyword_names(compile_fn)
    api = _api(wheel)
    assert not set(api.removed) & signature, "the table lists a keyword this release still has"
    for kwargs in _every_compile_kwargs(api):
        assert not set(kwargs) & set(api.removed)
    if api.removed:
        # Why this matters: 2.13+ compile() takes **kwargs and ignores unknown names silently, so a
        # removed keyword would not fail; it would build an fp32 engine.
        assert compile_fn.args.kwarg is not None


def test_precision_mode_matches_the_release(wheel):
    source = wheel.read("dynamo/_compiler.py")
    signature = _keyword_names(_function(source, "compile"))
    defaults = _defaults(wheel.read("dynamo/_defaults.py"))
    api = _api(wheel)
    if api.lower_precision == api_table.WEAK_TYPING:
        assert {"enabled_precisions", "use_explicit_typing"} <= signature
        # Explicit typing is on by default and then rejects any enabled_precisions but {f32}:
        assert defaults["USE_EXPLICIT_TYPING"] == "True"
        assert "use_explicit_typing was set to True, however found that enabled_precisions" in source
        for kwargs in _every_compile_kwargs(api):
            if "enabled_precisions" in kwargs:
                assert kwargs["use_explicit_typing"] is False
    elif wheel.flavour == "tensorrt-rtx" and api.series < (2, 13):
        # The keywords exist but TensorRT-RTX forces strongly typed networks (with only a warning), so
        # enabled_precisions would silently build fp32: autocast is the way there.
        interpreter = wheel.read("dynamo/conversion/_TRTInterpreter.py")
        assert "if ENABLED_FEATURES.tensorrt_rtx:" in interpreter
        assert "compilation_settings.use_explicit_typing = True" in interpreter
        assert api.lower_precision == api_table.AUTOCAST
    else:
        assert api.lower_precision == api_table.AUTOCAST
        assert not {"enabled_precisions", "use_explicit_typing"} & signature
        assert "USE_EXPLICIT_TYPING" not in defaults and "ENABLED_PRECISIONS" not in defaults
    assert {"enable_autocast", "autocast_low_precision_type"} <= signature
    assert "enabled_precisions" not in wheel.read("dynamo/_settings.py") or api.series < (2, 13)


def test_input_keywords_exist(wheel):
    read = _kwargs_keys_read(_method(wheel.read("_Input.py"), "Input", "__init__"))
    for dims in ({}, {0: Dim("batch", 1, 8)}):
        for dtype in (torch.float16, torch.int64):
            assert set(api_table.input_kwargs((2, 4), dtype, dims)) <= read


def test_save_keywords_exist(wheel):
    source = wheel.read("_compile.py")
    save = _function(source, "save")
    assert set(api_table.SAVE_KWARGS) <= _keyword_names(save)
    formats = [node.value for node in ast.walk(save) if isinstance(node, ast.Assign)
               and any(isinstance(t, ast.Name) and t.id == "accepted_formats" for t in node.targets)]
    assert formats and api_table.SAVE_KWARGS["output_format"] in ast.literal_eval(formats[0])
    defaults = dict(zip((a.arg for a in save.args.kwonlyargs), save.args.kw_defaults, strict=True))
    assert ast.unparse(defaults["retrace"]) == "True", "we pass retrace=False explicitly"
    assert "if not retrace:" in ast.unparse(save)


def test_builder_config_hook_point(wheel):
    """``build_target`` wraps the method that creates the builder config of a build: pinned per release."""
    module_name, class_name, method_name = HOOKED_METHOD
    source = wheel.read(module_name.removeprefix("torch_tensorrt.").replace(".", "/") + ".py")
    method = _method(source, class_name, method_name)
    first = method.body[1] if isinstance(method.body[0], ast.Expr) else method.body[0]  # after a docstring
    assert ast.unparse(first) == "builder_config = self.builder.create_builder_config()"
    assert ast.unparse(method.body[-1]) == "return builder_config"
    params = [a.arg for a in method.args.args]
    expected = ["self", "strict_type_constraints", "algorithm_selector", "tactic_sources"]
    if api_table.parse_version(wheel.version) >= (2, 12):
        expected.remove("algorithm_selector")
    assert params == expected
    assert f"self.{method_name}(" in ast.unparse(_method(source, class_name, "run"))


def test_flavour_is_announced(wheel):
    assert "tensorrt_rtx" in wheel.read("_features.py")
    assert "ENABLED_FEATURES" in wheel.read("__init__.py") or "ENABLED_FEATURES" in wheel.read("_features.py")


def test_refit_signature(wheel):
    refit = _function(wheel.read("dynamo/_refit.py"), "refit_module_weights")
    params = [a.arg for a in refit.args.args + refit.args.kwonlyargs]
    assert params[:2] == ["compiled_module", "new_weight_module"] and "in_place" in params
    assert "refit_module_weights" in wheel.read("dynamo/__init__.py")


def test_attention_keywords_exist(wheel):
    signature = _keyword_names(_function(wheel.read("dynamo/_compiler.py"), "compile"))
    api = _api(wheel)
    traits = frozenset({api_table.ATTENTION_BIAS})
    kwargs = api_table.compile_kwargs(api, RuntimeSettings(), "fp16", torch.float16, torch.device("cuda"), traits)
    assert set(kwargs) <= signature
    assert kwargs["attn_bias_is_causal"] is False
    assert ("decompose_attention" in kwargs) is (not api.attention_bias_fixed)


def test_tensorrt_options_are_checked_against_the_release(wheel):
    signature = frozenset(_keyword_names(_function(wheel.read("dynamo/_compiler.py"), "compile")))
    api = _api(wheel)
    assert api_table.check_extra_options(api, {"use_fp32_acc": True}, signature) == {"use_fp32_acc": True}
    if api.series >= (2, 13):
        api_table.check_extra_options(api, {"fallback_data_dependent_ops": True}, signature)
        with pytest.raises(ConfigurationError, match="'enabled_precisions' is not a keyword"):
            api_table.check_extra_options(api, {"enabled_precisions": {torch.float16}}, signature)
    else:
        with pytest.raises(ConfigurationError, match="'fallback_data_dependent_ops' is not a keyword"):
            api_table.check_extra_options(api, {"fallback_data_dependent_ops": True}, signature)
        with pytest.raises(ConfigurationError, match="controlled by RuntimeSettings"):
            api_table.check_extra_options(api, {"enabled_precisions": {torch.float16}}, signature)


def test_standin_matches_the_release(wheel):
    """The stand-in used by the end-to-end tests accepts exactly what the real release accepts."""
    table = _standin_signatures()
    series = api_table.parse_version(wheel.version)
    compile_fn = _function(wheel.read("dynamo/_compiler.py"), "compile")
    assert table.COMPILE_KEYWORDS[series] == {a.arg for a in compile_fn.args.kwonlyargs}
    assert table.INPUT_KEYWORDS[series] == _kwargs_keys_read(_method(wheel.read("_Input.py"), "Input", "__init__"))
    save = _function(wheel.read("_compile.py"), "save")
    assert table.SAVE_KEYWORDS == {a.arg for a in save.args.kwonlyargs}
    if wheel.flavour == "tensorrt":
        tensorrt = _defaults(wheel.read("_version.py"))["__tensorrt_version__"].strip("'\"")
        assert table.TENSORRT_VERSION[series] == tensorrt


def test_wheel_is_cached(wheel):
    assert Path(wheel.path).stat().st_size > 1_000_000


def _class(source: str, name: str) -> ast.ClassDef:
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"no class {name}")


def _python_sources_mentioning(wheel, needle: str) -> set[str]:
    names = [n for n in wheel._zip.namelist() if n.startswith("torch_tensorrt/") and n.endswith(".py")]
    return {n.removeprefix("torch_tensorrt/") for n in names if needle in wheel._zip.read(n).decode("utf-8")}


def test_runtime_cache_trait_matches_the_release(wheel):
    """Where the table says how a release keeps TensorRT-RTX's JIT kernels, the wheel agrees."""
    api = _api(wheel)
    compile_keywords = _keyword_names(_function(wheel.read("dynamo/_compiler.py"), "compile"))
    runtime_api = "RuntimeCache" in wheel.read("runtime/__init__.py")
    exporter = wheel.read("dynamo/_exporter.py")
    # What a saved program holds: the C++ engine object as an attribute, read by tensorrt::execute_engine
    assert "setattr(gm, engine_name, trt_module.engine)" in exporter
    assert "torch.ops.tensorrt.execute_engine.default" in exporter
    if wheel.flavour == "tensorrt":
        assert api.runtime_cache == api_table.NO_RUNTIME_CACHE
        if runtime_api:  # same Python sources, but datacenter TensorRT has no IRuntimeConfig to take it
            assert "if not ENABLED_FEATURES.tensorrt_rtx:" in wheel.read("runtime/_runtime_config.py")
    elif api.runtime_cache == api_table.NO_RUNTIME_CACHE:
        assert not _python_sources_mentioning(wheel, "runtime_cache")
        assert "runtime_cache_path" not in compile_keywords and not runtime_api
    elif api.runtime_cache == api_table.PYTHON_RUNTIME_ONLY:
        assert "runtime_cache_path" in compile_keywords and not runtime_api
        readers = _python_sources_mentioning(wheel, "runtime_cache")
        assert "dynamo/runtime/_PythonTorchTensorRTModule.py" in readers
        assert "dynamo/runtime/_TorchTensorRTModule.py" not in readers  # the C++ runtime's module ignores it
    else:
        assert api.runtime_cache == api_table.RUNTIME_SETTINGS
        assert "runtime_cache_path" not in compile_keywords and runtime_api
        _check_runtime_cache_api(wheel)


def _check_runtime_cache_api(wheel):
    """Every name ``_tensorrt_rtcache`` uses, with the signature it uses."""
    cache_source = wheel.read("runtime/_runtime_cache.py")
    cache_cls = _class(cache_source, "RuntimeCache")
    init = next(n for n in cache_cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert [a.arg for a in init.args.args] == ["self", "path", "autosave_on_del"]
    methods = {n.name for n in cache_cls.body if isinstance(n, ast.FunctionDef)}
    assert {"load_from_stream", "save_to_stream"} <= methods
    assert [a.arg for a in _function(cache_source, "_to_torchbind_handle").args.args] == ["rc"]
    init_src = ast.unparse(init)
    assert "autosave_on_del" in init_src and "_register_atexit_autosave" in init_src  # why we pass no path

    config_source = wheel.read("runtime/_runtime_config.py")
    maps = {n.target.id: ast.literal_eval(n.value) for n in ast.parse(config_source).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id.endswith("_MAP")}
    assert maps["_DYNAMIC_SHAPES_KERNEL_STRATEGY_MAP"]["lazy"] == 0
    assert maps["_CUDA_GRAPH_STRATEGY_MAP"]["disabled"] == 0
    settings = _class(config_source, "RuntimeSettings")
    fields = {n.target.id for n in settings.body if isinstance(n, ast.AnnAssign)}
    assert {"dynamic_shapes_kernel_specialization_strategy", "cuda_graph_strategy", "runtime_cache"} <= fields
    assert any(isinstance(n, ast.FunctionDef) and n.name == "merge" for n in settings.body)

    module_source = wheel.read("dynamo/runtime/_TorchTensorRTModule.py")
    module = _class(module_source, "TorchTensorRTModule")
    setters = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "runtime_settings"
               and any(ast.unparse(d) == "runtime_settings.setter" for d in n.decorator_list)]
    assert setters, "TorchTensorRTModule.runtime_settings has no setter"
    send = ast.unparse(_method(module_source, "TorchTensorRTModule", "_send_to_engine"))
    calls = [n for n in ast.walk(ast.parse(send)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "update_runtime_settings"]
    # the Python TRTEngine takes the settings object, the C++ Engine (strategy, cuda graph strategy, handle)
    assert sorted(len(c.args) for c in calls) == [1, 3]
    assert "_to_torchbind_handle(rs.runtime_cache)" in send
    engine = _method(wheel.read("dynamo/runtime/_TRTEngine.py"), "TRTEngine", "update_runtime_settings")
    assert [a.arg for a in engine.args.args] == ["self", "new_settings"]


def test_standin_runtime_cache_follows_the_table(standin):
    for version in ("2.11.0", "2.12.1", "2.13.0", "2.14.0"):
        trt = standin(version, flavour="tensorrt-rtx")
        api = api_table.api_for(version, "tensorrt-rtx")
        assert hasattr(trt.runtime, "RuntimeCache") is (api.runtime_cache == api_table.RUNTIME_SETTINGS)


def test_runtime_assertions_are_dropped_before_conversion(wheel):
    """A program exported with deferred assertions (``_export_guards``: guards torch.export could not prove,
    checked at every size of the declared ranges) reaches the converters without them: every release removes
    ``_assert_scalar`` nodes in its lowering passes, before and after decomposition."""
    passes = wheel.read("dynamo/lowering/passes/_aten_lowering_pass.py")
    lists = {node.targets[0].id: ast.unparse(node.value) for node in ast.parse(passes).body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert "remove_assert_nodes" in lists["pre_lowering_pass_list"]
    assert "remove_assert_nodes" in lists["post_lowering_pass_list"]
    remover = _function(wheel.read("dynamo/lowering/passes/remove_assert_nodes.py"), "remove_assert_nodes")
    assert "torch.ops.aten._assert_scalar.default" in ast.unparse(remover)


def test_copy_converter_ignores_the_destination_shape(wheel):
    """Why ``_tensorrt_passes.expand_copy_sources`` exists: the ``aten.copy`` converter returns its source as
    it is (cast, from 2.12, to the destination's dtype; in 2.11 not even that), so a broadcast source gives a
    tensor of the wrong shape. When a release expands the source itself, the pass is no longer needed."""
    converters = wheel.read("dynamo/conversion/aten_ops_converters.py")
    copy = _function(converters, "aten_ops_copy")
    body = ast.unparse(copy)
    assert "expand" not in body and "broadcast" not in body
    dtype = "dest.dtype" if api_table.parse_version(wheel.version) >= (2, 12) else "src.dtype"
    assert dtype in body


def test_attention_shape_rule_matches_the_release(wheel):
    """Why a UNet's cross-attention is decomposed up front on 2.11 (``_tensorrt_passes.uneven_attention``): there
    every attention converter's validator refuses a query, key and value of different shapes; from 2.12 the
    sequence lengths may differ (``seq_len_dim``), and trt_runtime leaves the fused attention to the release."""
    converters = wheel.read("dynamo/conversion/aten_ops_converters.py")
    names = ["scaled_dot_product_attention_validator", "scaled_dot_product_flash_attention_validator",
             "scaled_dot_product_efficient_attention_validator"]
    bodies = [ast.unparse(_function(converters, name)) for name in names]
    if _api(wheel).attention_same_shapes:
        assert all("query_shape != key_shape" in body for body in bodies)
    else:
        assert "seq_len_dim" in bodies[0] and not any("query_shape != key_shape" in body for body in bodies)


def test_save_and_refit_copy_the_program(wheel):
    """Why ``_tensorrt_copies.engines_shared_in_copies`` wraps save and refit: the exporter (``transform``)
    and ``refit_module_weights(in_place=False)`` deep-copy the program. 2.12+'s ``TorchTensorRTModule`` shares
    its engine in a copy; 2.11's has no ``__deepcopy__``, so its engine was pickled and built again (on
    TensorRT-RTX with its kernels compiled once more), and no release shares a loaded program's engines."""
    transform = ast.unparse(_function(wheel.read("dynamo/_exporter.py"), "transform"))
    assert "copy.deepcopy(gm)" in transform
    refit = ast.unparse(_function(wheel.read("dynamo/_refit.py"), "refit_module_weights"))
    assert "copy.deepcopy(compiled_module)" in refit
    module = wheel.read("dynamo/runtime/_TorchTensorRTModule.py")
    try:
        copies = ast.unparse(_method(module, "TorchTensorRTModule", "__deepcopy__"))
    except AssertionError:
        copies = None
    if api_table.parse_version(wheel.version) >= (2, 12):
        assert copies is not None and "reuse the same C++ Engine" in module
    else:
        assert copies is None
