"""STAND-IN data: the keyword names published torch-tensorrt wheels accept, per release series.

Hand-written from the wheels' source (``torch_tensorrt/dynamo/_compiler.py`` ``compile``,
``torch_tensorrt/_Input.py`` ``Input.__init__`` and ``torch_tensorrt/_compile.py`` ``save``).
``tests/backends/test_tensorrt_contract.py`` re-reads the real wheels and fails if these lists drift.
"""

from __future__ import annotations

_COMPILE_2_11 = (
    "arg_inputs", "kwarg_inputs", "device", "disable_tf32", "assume_dynamic_shape_support",
    "sparse_weights", "enabled_precisions", "engine_capability", "num_avg_timing_iters",
    "workspace_size", "dla_sram_size", "dla_local_dram_size", "dla_global_dram_size",
    "truncate_double", "require_full_compilation", "min_block_size", "torch_executed_ops",
    "torch_executed_modules", "pass_through_build_failures", "max_aux_streams", "version_compatible",
    "optimization_level", "use_python_runtime", "use_fast_partitioner",
    "enable_experimental_decompositions", "dryrun", "hardware_compatible", "timing_cache_path",
    "lazy_engine_init", "cache_built_engines", "reuse_cached_engines", "engine_cache_dir",
    "engine_cache_size", "custom_engine_cache", "use_explicit_typing", "use_fp32_acc",
    "refit_identical_engine_weights", "strip_engine_weights", "immutable_weights",
    "enable_weight_streaming", "tiling_optimization_level", "l2_limit_for_tiling",
    "offload_module_to_cpu", "use_distributed_mode_trace", "enable_autocast",
    "autocast_low_precision_type", "autocast_excluded_nodes", "autocast_excluded_ops",
    "autocast_max_output_threshold", "autocast_max_depth_of_reduction",
    "autocast_calibration_dataloader", "cpu_memory_budget", "enable_resource_partitioning",
    "dynamically_allocate_resources", "decompose_attention", "attn_bias_is_causal",
)
_COMPILE_2_12 = _COMPILE_2_11 + ("runtime_cache_path", "dynamic_shapes_kernel_specialization_strategy")
_COMPILE_2_13 = tuple(
    k for k in _COMPILE_2_11 if k not in ("enabled_precisions", "use_explicit_typing")
) + ("fallback_data_dependent_ops",)
_COMPILE_2_14 = _COMPILE_2_13 + ("use_complex_decomposition", "disabled_constant_fold_exclusions")

COMPILE_KEYWORDS = {
    (2, 11): frozenset(_COMPILE_2_11),
    (2, 12): frozenset(_COMPILE_2_12),
    (2, 13): frozenset(_COMPILE_2_13),
    (2, 14): frozenset(_COMPILE_2_14),
}
"""Keyword-only parameters of ``torch_tensorrt.dynamo.compile`` (after ``exported_program, inputs``)."""

_INPUT_2_11 = ("shape", "min_shape", "opt_shape", "max_shape", "dtype", "format", "name", "torch_tensor",
               "tensor_domain", "is_shape_tensor", "shape_ranges")
INPUT_KEYWORDS = {
    (2, 11): frozenset(_INPUT_2_11),
    (2, 12): frozenset(_INPUT_2_11),
    (2, 13): frozenset(_INPUT_2_11 + ("shared_dims",)),
    (2, 14): frozenset(_INPUT_2_11 + ("shared_dims", "profiles")),
}
"""Keys ``torch_tensorrt.Input.__init__(**kwargs)`` reads."""

SAVE_KEYWORDS = frozenset(
    ("extra_files", "output_format", "inputs", "arg_inputs", "kwarg_inputs", "retrace",
     "use_legacy_exporter", "pickle_protocol", "dynamic_shapes")
)
"""Keyword-only parameters of ``torch_tensorrt.save`` (after ``module, file_path``), 2.11-2.14."""

TENSORRT_VERSION = {(2, 11): "10.15.1", (2, 12): "10.16.1", (2, 13): "11.0.0", (2, 14): "11.1.0"}
