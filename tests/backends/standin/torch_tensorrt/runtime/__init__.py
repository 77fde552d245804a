"""STAND-IN for ``torch_tensorrt.runtime`` (tests only; NOT TensorRT): CUDA-graph switches that record."""

from __future__ import annotations

import torch_tensorrt as _root

_MODE = {"cudagraphs": False}


def set_cudagraphs_mode(mode: bool) -> None:
    _MODE["cudagraphs"] = bool(mode)


def get_cudagraphs_mode() -> bool:
    return _MODE["cudagraphs"]


class _CudagraphsContext:
    def __init__(self, module) -> None:
        self.module = module
        self.old = _MODE["cudagraphs"]

    def __enter__(self):
        set_cudagraphs_mode(True)
        return self.module

    def __exit__(self, *exc) -> None:
        set_cudagraphs_mode(self.old)


def enable_cudagraphs(compiled_module):
    """Same positional signature as 2.11-2.14 (2.13+ add a keyword-only ``cuda_graph_strategy``)."""
    _root.CALLS.append(("enable_cudagraphs", {"module": type(compiled_module).__name__}))
    return _CudagraphsContext(compiled_module)


if _root.SERIES >= (2, 13):  # the runtime cache API of torch-tensorrt(-rtx) 2.13+
    from ._runtime_cache import RuntimeCache, _to_torchbind_handle  # noqa: E402,F401
    from ._runtime_config import RuntimeSettings  # noqa: E402,F401
