"""STAND-IN for ``torch_tensorrt.runtime._runtime_config`` of 2.13+ (tests only; NOT TensorRT-RTX)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch_tensorrt as _root

if _root.SERIES < (2, 13):
    raise ImportError(f"torch_tensorrt {_root.__version__} has no runtime settings module")

_DYNAMIC_SHAPES_KERNEL_STRATEGY_MAP = {"lazy": 0, "eager": 1, "none": 2}
_CUDA_GRAPH_STRATEGY_MAP = {"disabled": 0, "whole_graph_capture": 1}
RUNTIME_CACHE_PATH = "/tmp/torch_tensorrt_standin/runtime_cache.bin"


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    dynamic_shapes_kernel_specialization_strategy: str = "lazy"
    cuda_graph_strategy: str = "disabled"
    runtime_cache: Any = RUNTIME_CACHE_PATH

    def merge(self, **overrides: Any) -> RuntimeSettings:
        return dataclasses.replace(self, **overrides)
