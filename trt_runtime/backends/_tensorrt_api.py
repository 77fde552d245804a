"""What differs between the torch_tensorrt releases we support, in one table, and the pure functions
that turn our settings into their keyword arguments.

Everything here is a pure function of (torch_tensorrt version, settings): no torch_tensorrt import.
That is deliberate: the backend calls these functions, and the contract tests
(``tests/backends/test_tensorrt_contract.py``) call the very same functions and compare the keywords
they produce with the signatures parsed from the published wheels of every supported release. When a
new release changes its API, the change belongs in ``_TABLE`` and nowhere else.

Evidence for the table (paths inside the torch-tensorrt wheels from PyPI):

- 2.11.0 / 2.12.x: ``dynamo/_compiler.py`` ``compile()`` has ``enabled_precisions`` and
  ``use_explicit_typing``; ``dynamo/_defaults.py`` sets ``USE_EXPLICIT_TYPING = True`` and
  ``ENABLED_PRECISIONS = {dtype.f32}``; ``compile()`` raises ``AssertionError("use_explicit_typing was
  set to True, however found that enabled_precisions was also specified ...")`` unless
  ``enabled_precisions`` is exactly {f32} (or {f4}) while explicit typing is on. So a reduced-precision
  build of an fp32 module needs ``use_explicit_typing=False`` next to ``enabled_precisions``; the
  weakly typed builder then sets ``BuilderFlag.FP16`` / ``BF16`` (``conversion/_TRTInterpreter.py``).
  These wheels pin TensorRT 10.15 (2.11) and 10.16 (2.12).
- 2.13.0 / 2.14.0: both keywords are gone from ``compile()``, from ``CompilationSettings`` and from
  ``_defaults.py`` (TensorRT 11 builds strongly typed networks only). ``compile()`` still takes
  ``**kwargs`` and silently ignores unknown names, so passing ``enabled_precisions`` would not fail:
  it would build an fp32 engine. Precision follows the module's dtype, or ``enable_autocast=True``
  with ``autocast_low_precision_type``. These wheels pin TensorRT 11.0 (2.13) and 11.1 (2.14).
- All four: ``torch_tensorrt.save(module, file_path, *, output_format, arg_inputs, kwarg_inputs,
  retrace=True, use_legacy_exporter, dynamic_shapes, ...)`` has the same keywords. With
  ``retrace=False`` a compiled ``GraphModule`` is serialized by graph surgery (the legacy exporter),
  which needs neither example inputs nor ``dynamic_shapes``; ``retrace=True`` re-exports and needs
  both for dynamic shapes. ``torch_tensorrt.runtime.enable_cudagraphs(module)`` exists in all four
  (2.13 adds a keyword-only ``cuda_graph_strategy`` for TensorRT-RTX, unused here).

Runtime cache (``TensorRTApi.runtime_cache``): TensorRT-RTX compiles kernels just in time when an engine
runs in a process, and its ``IRuntimeCache`` keeps them for the next process. Read from the wheels:

- 2.11.0: no runtime cache anywhere (Python sources and ``libtorchtrt_runtime.so``).
- 2.12.x: a compile setting ``runtime_cache_path`` (``dynamo/_settings.py``, ``_compiler.py``), read only
  by ``PythonTorchTensorRTModule`` (``use_python_runtime=True``). A saved program runs on the C++
  runtime (``torch.ops.tensorrt.execute_engine`` with a ``torch.classes.tensorrt.Engine``), whose
  library has no runtime cache in this release: a cached entry cannot use it (PYTHON_RUNTIME_ONLY).
- 2.13.0 / 2.14.0: ``torch_tensorrt.runtime.RuntimeCache`` and ``RuntimeSettings(runtime_cache=...)``;
  the C++ ``Engine`` takes ``update_runtime_settings(strategy, cuda_graph_strategy, cache_handle)``,
  which is how trt_runtime reaches the engines of a loaded program (RUNTIME_SETTINGS).
- Datacenter TensorRT builds complete engines ahead of time; the same Python API exists in those wheels
  but is ignored (``RuntimeSettings`` is "only honored on TRT-RTX builds"): NO_RUNTIME_CACHE.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..calls import DTYPE_OF, dtype_of
from ..errors import BackendUnavailableError, ConfigurationError
from ..settings import RuntimeSettings
from ..shapes import Dim

__all__ = [
    "TensorRTApi",
    "SUPPORTED_RANGE",
    "WEAK_TYPING",
    "AUTOCAST",
    "SAVE_KWARGS",
    "OWNED_KEYWORDS",
    "MANAGED_KEYWORDS",
    "parse_version",
    "api_for",
    "installed_distribution",
    "TENSORRT",
    "TENSORRT_RTX",
    "TARGETS",
    "RTX_CAPABILITIES",
    "auto_declines",
    "supported_versions",
    "compile_kwargs",
    "ATTENTION_BIAS",
    "precision_kwargs",
    "input_kwargs",
    "check_extra_options",
    "NO_RUNTIME_CACHE",
    "PYTHON_RUNTIME_ONLY",
    "RUNTIME_SETTINGS",
    "warm_start_note",
]

WEAK_TYPING = "weak_typing"
"""Ask for a lower precision with ``enabled_precisions={dtype}`` and ``use_explicit_typing=False``."""
AUTOCAST = "autocast"
"""Ask for a lower precision with ``enable_autocast=True`` and ``autocast_low_precision_type=dtype``."""

NO_RUNTIME_CACHE = "none"
"""No runtime cache: every process JIT-compiles the kernels of a loaded engine again (TensorRT-RTX)."""
PYTHON_RUNTIME_ONLY = "python-runtime-only"
"""A ``runtime_cache_path`` compile setting that only the Python runtime reads; saved programs run on the
C++ runtime, so cached entries cannot use it."""
RUNTIME_SETTINGS = "runtime-settings"
"""``torch_tensorrt.runtime.RuntimeCache`` attached to the engines: trt_runtime stores it in the entry."""

INSTALL_HINT = ('install it with: pip install "trt-runtime[tensorrt]" (datacenter TensorRT) or '
                '"trt-runtime[tensorrt-rtx]" (TensorRT-RTX)')


TENSORRT = "tensorrt"
"""The ``torch-tensorrt`` distribution: torch_tensorrt built against datacenter TensorRT."""
TENSORRT_RTX = "tensorrt-rtx"
"""The ``torch-tensorrt-rtx`` distribution: the same ``torch_tensorrt`` package built against TensorRT-RTX."""
DISTRIBUTIONS: Mapping[str, str] = {TENSORRT: "torch-tensorrt", TENSORRT_RTX: "torch-tensorrt-rtx"}
EXTRAS: Mapping[str, str] = {TENSORRT: "tensorrt", TENSORRT_RTX: "tensorrt-rtx"}

TARGETS = ("current", "portable")
"""``RuntimeSettings.tensorrt_target``: ``current`` builds TensorRT-RTX engines for the GPU in the machine
(the builder config's ``ComputeCapability.CURRENT``); ``portable`` keeps TensorRT-RTX's own list of compute
capabilities (8.6 / 8.9 / 12.0 in RTX 1.4: an H100, 9.0, cannot run their Myelin kernels). Datacenter
TensorRT always builds for the GPU in the machine; there the setting changes nothing but the key."""

RTX_CAPABILITIES = frozenset({(7, 5), (8, 6), (8, 9), (12, 0)})
"""The GPU generations TensorRT-RTX is made for: Turing RTX (7.5, in its ``ComputeCapability`` enum though not in
its default build list), Ampere RTX (8.6), Ada (8.9, RTX cards and the L40 class) and Blackwell RTX (12.0), its
default ``portable`` build list in TensorRT-RTX 1.4 being the last three. ``backend="auto"`` does not pick
TensorRT-RTX on the datacenter parts (A100 8.0, H100/H200 9.0, B200 10.0): on H100 and H200 its engines ran slower than
inductor for the SD1.5 UNet (10.7 against 7.7 ms), the SDXL UNet (44.0 against 34.4 ms reduce-overhead),
ControlNet, CLIP-L and the SD1.5 and SDXL images, and slower than eager PyTorch for the SD3 and Flux transformers
(92 against 53 ms, 50.6 against 38.9 ms); only the VAE decoder was faster (24.5 against 36.2 ms at 1024x1024),
which ``backend="fastest"`` finds per component (benchmarks/results/2026-11-26b-h100, 2026-11-27d-h200)."""


def auto_declines(flavour: str | None, capability: tuple[int, int] | None) -> str | None:
    """Why ``backend="auto"`` leaves torch_tensorrt of ``flavour`` aside on a GPU of ``capability``; None to use it."""
    if flavour != TENSORRT_RTX or capability is None or tuple(capability) in RTX_CAPABILITIES:
        return None
    major, minor = capability
    made_for = "/".join(f"{a}.{b}" for a, b in sorted(RTX_CAPABILITIES))
    return (f"TensorRT-RTX is made for RTX GPUs (compute capability {made_for}); on this GPU ({major}.{minor}) its "
            "engines measured slower than inductor for UNets and transformers (H100/H200: SD1.5 UNet 10.7 against "
            "7.7 ms, SD3 and Flux slower than eager) and faster only for the VAE decoder")


@dataclasses.dataclass(frozen=True)
class TensorRTApi:
    """The facts about one torch_tensorrt release series (major, minor) of one flavour."""

    series: tuple[int, int]
    tensorrt: str
    """TensorRT (or TensorRT-RTX) series the wheel pins, major.minor: ``__tensorrt_version__`` in a
    ``torch-tensorrt`` wheel's ``_version.py``, ``__tensorrt_rtx_version__`` in a ``torch-tensorrt-rtx`` one."""
    lower_precision: str
    """How to build an engine in a lower precision than the module's weights: WEAK_TYPING or AUTOCAST."""
    removed: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Keywords of earlier releases that this one no longer accepts, with what to use instead."""
    flavour: str = TENSORRT
    attention_bias_fixed: bool = True
    """Whether a constant attention bias (a text encoder's causal mask, T5's position bias) converts: in
    2.11-2.13 the fused-attention converters pass it to ``add_cast`` as a torch tensor and the build fails
    with a TypeError, so for modules with such a bias trt_runtime asks for ``decompose_attention=True``."""
    attention_same_shapes: bool = False
    """Whether the attention converters take only a query, key and value of one shape (2.11): cross-attention
    then stays in PyTorch, so trt_runtime asks for ``decompose_attention=True`` up front for programs with such
    an attention (``_tensorrt_passes.uneven_attention``) instead of building twice."""
    runtime_cache: str = NO_RUNTIME_CACHE
    """How this release keeps TensorRT-RTX's just-in-time kernels across processes (module docstring)."""

    @property
    def name(self) -> str:
        return f"{DISTRIBUTIONS[self.flavour]} {self.series[0]}.{self.series[1]}"


_REMOVED_IN_2_13 = {
    "enabled_precisions": "precision follows the module's dtype; set RuntimeSettings.precision "
    "(trt_runtime passes enable_autocast=True, autocast_low_precision_type=...)",
    "use_explicit_typing": "TensorRT 11 networks are always strongly typed; use enable_autocast",
}

# TensorRT-RTX builds strongly typed networks in every release (TRTInterpreter forces explicit typing and
# only warns), so a lower precision is always asked for with autocast there.
_TABLE: dict[tuple[str, tuple[int, int]], TensorRTApi] = {
    (TENSORRT, (2, 11)): TensorRTApi((2, 11), "10.15", WEAK_TYPING, attention_bias_fixed=False,
                                     attention_same_shapes=True),
    (TENSORRT, (2, 12)): TensorRTApi((2, 12), "10.16", WEAK_TYPING, attention_bias_fixed=False),
    (TENSORRT, (2, 13)): TensorRTApi((2, 13), "11.0", AUTOCAST, _REMOVED_IN_2_13, attention_bias_fixed=False),
    (TENSORRT, (2, 14)): TensorRTApi((2, 14), "11.1", AUTOCAST, _REMOVED_IN_2_13),
    (TENSORRT_RTX, (2, 11)): TensorRTApi((2, 11), "1.3", AUTOCAST, flavour=TENSORRT_RTX, attention_bias_fixed=False,
                                         attention_same_shapes=True),
    (TENSORRT_RTX, (2, 12)): TensorRTApi((2, 12), "1.4", AUTOCAST, flavour=TENSORRT_RTX, attention_bias_fixed=False,
                                         runtime_cache=PYTHON_RUNTIME_ONLY),
    (TENSORRT_RTX, (2, 13)): TensorRTApi((2, 13), "1.5", AUTOCAST, _REMOVED_IN_2_13, flavour=TENSORRT_RTX,
                                         attention_bias_fixed=False, runtime_cache=RUNTIME_SETTINGS),
    (TENSORRT_RTX, (2, 14)): TensorRTApi((2, 14), "1.6", AUTOCAST, _REMOVED_IN_2_13, flavour=TENSORRT_RTX,
                                         runtime_cache=RUNTIME_SETTINGS),
}

SUPPORTED_RANGE = (min(series for _, series in _TABLE), max(series for _, series in _TABLE))

SAVE_KWARGS: Mapping[str, Any] = {"output_format": "exported_program", "retrace": False}
"""Keywords for ``torch_tensorrt.save``: an ExportedProgram by graph surgery, without re-tracing (the
same in 2.11-2.14; re-tracing would need example inputs and explicit ``dynamic_shapes``)."""

OWNED_KEYWORDS = frozenset({"exported_program", "inputs", "arg_inputs", "kwarg_inputs"})
"""``compile()`` keywords trt_runtime always sets from the call itself."""

MANAGED_KEYWORDS: Mapping[str, str] = {
    "optimization_level": "optimization_level",
    "workspace_size": "workspace_size",
    "min_block_size": "min_block_size",
    "truncate_double": "truncate_double",
    "immutable_weights": "refittable",
    "offload_module_to_cpu": "offload_module_to_cpu",
    "enabled_precisions": "precision",
    "use_explicit_typing": "precision",
    "device": "the module's device",
    "attn_bias_is_causal": "always False (True would silently turn any attention bias causal)",
}
"""``compile()`` keywords that a ``RuntimeSettings`` field controls: keyword -> field."""



def parse_version(text: str) -> tuple[int, int]:
    """``"2.12.1+cu130"`` -> ``(2, 12)``."""
    match = re.match(r"\s*(\d+)\.(\d+)", str(text))
    if not match:
        raise BackendUnavailableError(f"cannot read the torch_tensorrt version {text!r}", hint=INSTALL_HINT)
    return int(match.group(1)), int(match.group(2))


def supported_versions() -> str:
    lo, hi = SUPPORTED_RANGE
    return f"{lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}"


def installed_distribution() -> tuple[str | None, str | None]:
    """``(flavour, version)`` of the installed torch_tensorrt distribution, read from package metadata
    without importing it; ``(None, None)`` when neither is installed. With both installed, torch_tensorrt
    itself loads TensorRT-RTX (its ``_TensorRTProxyModule``), so that one is reported."""
    import importlib.metadata

    for flavour in (TENSORRT_RTX, TENSORRT):
        try:
            return flavour, importlib.metadata.version(DISTRIBUTIONS[flavour])
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def api_for(version: str, flavour: str = TENSORRT) -> TensorRTApi:
    """The table row for an installed torch_tensorrt version of ``flavour``, or BackendUnavailableError."""
    series = parse_version(version)
    api = _TABLE.get((flavour, series))
    if api is None:
        distribution = DISTRIBUTIONS.get(flavour, flavour)
        raise BackendUnavailableError(
            f"{distribution} {version} is not supported (supported: {supported_versions()})",
            hint=f'install a supported release: pip install "{distribution}>=2.11,<2.15"',
        )
    return api


def warm_start_note(api: TensorRTApi, version: str | None = None) -> str:
    """One plain sentence on what a fresh process loading a cached engine of this release pays."""
    name = f"{DISTRIBUTIONS[api.flavour]} {version or '.'.join(map(str, api.series))}"
    if api.flavour != TENSORRT_RTX:
        return f"warm start: {name} loads complete engines (no just-in-time compilation, no runtime cache)"
    if api.runtime_cache == RUNTIME_SETTINGS:
        return (f"warm start: {name} keeps TensorRT-RTX's runtime cache in each cache entry; a new process "
                "loads it and skips the just-in-time kernel compilation")
    if api.runtime_cache == PYTHON_RUNTIME_ONLY:
        return (f"warm start: {name} has a runtime cache only for its Python runtime, which saved programs do "
                "not use; each new process JIT-compiles the kernels again (2.13+ keeps them)")
    return (f"warm start: {name} has no runtime cache; each new process JIT-compiles the kernels of a "
            "cached engine again (2.13+ keeps them)")


def precision_kwargs(api: TensorRTApi, precision: str, module_dtype: torch.dtype | None) -> dict[str, Any]:
    """Keywords that make the engine run in ``precision``.

    Every supported release builds strongly typed engines by default, so a module whose weights are
    already in the requested dtype needs no keyword at all (and keeps the fp32 islands diffusers puts
    in fp16 models, such as upcast attention or VAE upcasting). Only lowering an fp32 module needs
    keywords, and those differ by release (see the module docstring).
    """
    target = dtype_of(precision)
    if target is None:
        raise ConfigurationError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(DTYPE_OF)}")
    if target is torch.float32 or module_dtype is None or module_dtype == target:
        return {}
    if module_dtype != torch.float32:
        # An fp16 module cannot be built as bf16 (or fp32) by compiler flags; it runs in its own dtype.
        return {}
    if api.lower_precision == WEAK_TYPING:
        return {"enabled_precisions": {target}, "use_explicit_typing": False}
    return {"enable_autocast": True, "autocast_low_precision_type": target}


ATTENTION_BIAS = "attention_bias"
"""A module trait (``CompileRequest.traits``): its attention takes an additive or boolean bias, such as a
text encoder's causal mask or T5's relative position bias."""


def compile_kwargs(
    api: TensorRTApi,
    settings: RuntimeSettings,
    precision: str,
    module_dtype: torch.dtype | None = None,
    device: torch.device | None = None,
    traits: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Keyword arguments for ``torch_tensorrt.dynamo.compile`` (besides the inputs) for one build.

    ``attn_bias_is_causal`` is always False: its default, True, makes torch_tensorrt replace *any* bias of
    an efficient-attention node by a causal mask, which silently changes T5's position bias or a padding
    mask. ``decompose_attention`` is set for modules with an attention bias on releases whose fused
    attention converters cannot take a constant bias (``TensorRTApi.attention_bias_fixed``).

    ``tensorrt_options`` are not merged here: ``check_extra_options`` validates them against the
    installed signature first.
    """
    kwargs: dict[str, Any] = {
        "truncate_double": settings.truncate_double,
        "immutable_weights": not settings.refittable,
        "offload_module_to_cpu": settings.offload_module_to_cpu,
        "attn_bias_is_causal": False,
    }
    if ATTENTION_BIAS in traits and not api.attention_bias_fixed:
        kwargs["decompose_attention"] = True
    if settings.optimization_level is not None:
        kwargs["optimization_level"] = settings.optimization_level
    if settings.workspace_size is not None:
        kwargs["workspace_size"] = settings.workspace_size
    if settings.min_block_size is not None:
        kwargs["min_block_size"] = settings.min_block_size
    if device is not None and device.type == "cuda":
        kwargs["device"] = device
    kwargs.update(precision_kwargs(api, precision, module_dtype))
    return kwargs


def input_kwargs(shape: tuple[int, ...], dtype: torch.dtype, dims: Mapping[int, Dim] | None) -> dict[str, Any]:
    """Keyword arguments for one ``torch_tensorrt.Input``: a fixed ``shape``, or ``min_shape`` /
    ``opt_shape`` / ``max_shape`` where ``dims`` declares a range (the same keywords in 2.11-2.14)."""
    shape = tuple(int(s) for s in shape)
    if not dims:
        return {"shape": shape, "dtype": dtype}
    lo, opt, hi = list(shape), list(shape), list(shape)
    for index, dim in dims.items():
        lo[index], opt[index], hi[index] = dim.min, dim.opt_value, dim.max
    return {"min_shape": tuple(lo), "opt_shape": tuple(opt), "max_shape": tuple(hi), "dtype": dtype}


def check_extra_options(
    api: TensorRTApi,
    options: Mapping[str, Any] | None,
    accepted: frozenset[str] | set[str],
    derived: Mapping[str, Any] = {},  # noqa: B006 - read only
    version: str | None = None,
) -> dict[str, Any]:
    """Validate ``RuntimeSettings.tensorrt_options`` against ``accepted`` (the named keyword parameters
    of the installed ``torch_tensorrt.dynamo.compile``; its ``**kwargs`` does not count, since 2.13+
    silently ignores names it does not know). Returns the options to merge; raises ConfigurationError
    naming every bad keyword.
    """
    if not options:
        return {}
    where = f"torch_tensorrt.dynamo.compile of torch_tensorrt {version or api.name}"
    problems = []
    for key in sorted(options):
        if key in OWNED_KEYWORDS:
            problems.append(f"{key!r} is set by trt_runtime from the call's inputs")
        elif key not in accepted:
            why = api.removed.get(key)
            problems.append(f"{key!r} is not a keyword of {where}" + (f" ({why})" if why else ""))
        elif key in MANAGED_KEYWORDS:
            problems.append(f"{key!r} is controlled by RuntimeSettings ({MANAGED_KEYWORDS[key]})")
        elif key in derived and derived[key] != options[key]:
            problems.append(f"{key!r} conflicts with {derived[key]!r} derived from RuntimeSettings.precision")
    if problems:
        raise ConfigurationError(
            "invalid tensorrt_options: " + "; ".join(problems),
            hint="see help(torch_tensorrt.dynamo.compile) for the keywords of the installed release",
        )
    return dict(options)
