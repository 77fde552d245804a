"""trt_runtime: TensorRT (or torch.compile) speed for diffusers pipelines in one line.

    from trt_runtime import wrap_pipeline
    wrap_pipeline(pipe, unet=True, vae=True)

Importing the package does no work: no CUDA query, no torch_tensorrt import, no environment read, no
logging setup (the first ``TensorRTRuntime`` adds a stderr handler for warnings; ``set_verbosity``
changes what it shows). Names below load their module on first access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "RuntimeSettings": "trt_runtime.settings",
    "resolve_cache_dir": "trt_runtime.settings",
    "Dim": "trt_runtime.shapes",
    "TensorRTRuntime": "trt_runtime.runtime",
    "get_default_runtime": "trt_runtime.runtime",
    "EngineCache": "trt_runtime.cache",
    "TensorRTModule": "trt_runtime.modules.base",
    "register_backend": "trt_runtime.backends",
    "wrap_pipeline": "trt_runtime.pipeline",
    "unwrap_pipeline": "trt_runtime.pipeline",
    "wrapped_components": "trt_runtime.pipeline",
    "set_verbosity": "trt_runtime.logging_utils",
    "get_verbosity": "trt_runtime.logging_utils",
    "set_verbosity_debug": "trt_runtime.logging_utils",
    "set_verbosity_info": "trt_runtime.logging_utils",
    "set_verbosity_warning": "trt_runtime.logging_utils",
    "set_verbosity_error": "trt_runtime.logging_utils",
    "enable_default_handler": "trt_runtime.logging_utils",
    "disable_default_handler": "trt_runtime.logging_utils",
    "warm_up": "trt_runtime.serving",
    "TrtRuntimeError": "trt_runtime.errors",
    "ConfigurationError": "trt_runtime.errors",
    "BackendUnavailableError": "trt_runtime.errors",
    "EngineBuildError": "trt_runtime.errors",
    "EngineRunError": "trt_runtime.errors",
    "ValidationError": "trt_runtime.errors",
    "CacheError": "trt_runtime.errors",
    "UnkeyableInputError": "trt_runtime.errors",
    "UntrustedEntryError": "trt_runtime.errors",
    "ReadOnlyCacheError": "trt_runtime.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trt_runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .backends import register_backend
    from .cache import EngineCache
    from .errors import (
        BackendUnavailableError,
        CacheError,
        ConfigurationError,
        EngineBuildError,
        EngineRunError,
        ReadOnlyCacheError,
        TrtRuntimeError,
        UnkeyableInputError,
        UntrustedEntryError,
        ValidationError,
    )
    from .logging_utils import (
        disable_default_handler,
        enable_default_handler,
        get_verbosity,
        set_verbosity,
        set_verbosity_debug,
        set_verbosity_error,
        set_verbosity_info,
        set_verbosity_warning,
    )
    from .modules.base import TensorRTModule
    from .pipeline import unwrap_pipeline, wrap_pipeline, wrapped_components
    from .runtime import TensorRTRuntime, get_default_runtime
    from .serving import warm_up
    from .settings import RuntimeSettings, resolve_cache_dir
    from .shapes import Dim
