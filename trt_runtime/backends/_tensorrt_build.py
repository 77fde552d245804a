"""What the tensorrt backend does inside torch_tensorrt beyond ``dynamo.compile``'s keywords.

- ``build_target``: build TensorRT-RTX engines for the GPU in the machine. No released torch-tensorrt-rtx
  (2.11-2.14) has a setting for it; the builder config is created in the first statement of
  ``TRTInterpreter._populate_trt_builder_config`` (2.11: three parameters after ``self``; 2.12-2.14: two),
  so that method is wrapped, and the wrapper changes only configs made while *this thread* is inside
  ``build_target`` (a ``ContextVar``). The wrapper is installed on the first entry and removed when the
  last build that needed it leaves: no patch outlives the builds, and builds of other threads or of
  other libraries meanwhile pass through untouched. The contract tests pin the method per release.
- ``engine_error_hint``: what to tell a user whose engine cannot run on this GPU.
- ``attention_retry_reason``: whether a failed build is worth one more try with the attention decomposed.
- ``short_of_memory``: whether an engine without an execution context failed for want of GPU memory (transient).

Nothing here imports torch_tensorrt at import time.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["attention_retry_reason", "build_target", "engine_error_hint", "short_of_memory", "HOOKED_METHOD"]

logger = logging.getLogger(__name__)

HOOKED_METHOD = ("torch_tensorrt.dynamo.conversion._TRTInterpreter", "TRTInterpreter",
                 "_populate_trt_builder_config")
"""Module, class and method whose returned builder config ``build_target`` adjusts."""

_CURRENT_GPU: contextvars.ContextVar[bool] = contextvars.ContextVar("trt_runtime_current_gpu", default=False)
_LOCK = threading.Lock()
_USERS = 0
_ORIGINAL: Any = None


def _set_current_compute_capability(config: Any) -> None:
    import tensorrt as trt  # inside torch_tensorrt-rtx this is its proxy of tensorrt_rtx

    capability = getattr(trt, "ComputeCapability", None)
    if capability is None or not hasattr(config, "set_compute_capability"):
        raise RuntimeError("this TensorRT build has no ComputeCapability API (not TensorRT-RTX?)")
    config.num_compute_capabilities = 1
    if not config.set_compute_capability(capability.CURRENT, 0):
        raise RuntimeError("IBuilderConfig.set_compute_capability(ComputeCapability.CURRENT, 0) was refused")


def _install() -> None:
    global _ORIGINAL
    import importlib

    module_name, class_name, method_name = HOOKED_METHOD
    cls = getattr(importlib.import_module(module_name), class_name)
    original = cls.__dict__[method_name]

    @functools.wraps(original)
    def populate(self, *args: Any, **kwargs: Any) -> Any:
        config = original(self, *args, **kwargs)
        if _CURRENT_GPU.get():
            _set_current_compute_capability(config)
        return config

    populate.__trt_runtime_hook__ = True  # type: ignore[attr-defined]
    setattr(cls, method_name, populate)
    _ORIGINAL = (cls, method_name, original)


def _uninstall() -> None:
    global _ORIGINAL
    cls, method_name, original = _ORIGINAL
    setattr(cls, method_name, original)
    _ORIGINAL = None


@contextlib.contextmanager
def build_target(flavour: str, target: str) -> Iterator[None]:
    """Within the block, TensorRT-RTX builds of this thread target the GPU in the machine when ``target``
    is ``current``. Datacenter TensorRT, or ``portable``, changes nothing."""
    global _USERS
    if flavour != "tensorrt-rtx" or target != "current":
        yield
        return
    with _LOCK:
        if _USERS == 0:
            _install()
        _USERS += 1
    token = _CURRENT_GPU.set(True)
    try:
        yield
    finally:
        _CURRENT_GPU.reset(token)
        with _LOCK:
            _USERS -= 1
            if _USERS == 0:
                _uninstall()


_NO_KERNELS = ("compatible cubin or ptx", "no kernel image is available")
# torch_tensorrt's TRTEngine checks the context it asked TensorRT for; TensorRT's own reason (a Myelin or cuDNN
# graph it could not compile for this GPU) goes to its logger, printed just before.
_NO_CONTEXT = ("exec_ctx.get() != nullptr", "createexecutioncontext")


def _context_failed(text: str) -> bool:
    return any(marker in text for marker in _NO_CONTEXT)


def short_of_memory(error: BaseException, device: Any) -> Exception | None:
    """For an engine whose execution context could not be created while the GPU is nearly full: an
    out-of-memory error to chain it to, so the runtime retries it later instead of remembering it on disk
    (TensorRT reports only "exec_ctx ... nullptr"; its own reason goes to its log). None otherwise."""
    import torch

    if not _context_failed(str(error).lower()) or getattr(device, "type", None) != "cuda":
        return None
    try:
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
    except Exception:  # noqa: BLE001 - no reading, no verdict
        return None
    if free >= max(1 << 30, total // 20):
        return None
    return torch.cuda.OutOfMemoryError(f"TensorRT could not create the engine's execution context with "
                                       f"{free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB GPU memory free")


def attention_retry_reason(error: BaseException) -> str | None:
    """Why a failed ``dynamo.compile`` should be tried once more with ``decompose_attention=True``, or None.

    - a constant attention bias (a causal mask made inside the module: HunyuanVideo's video VAE) reaches the
      fused-attention converter as a torch tensor (2.11-2.13): ``add_cast`` TypeError;
    - the engine built but TensorRT could not create its execution context (HunyuanVideo's transformer with
      TensorRT-RTX 1.4 on an H100/H200: "cuDNN graph compilation failed" in a Myelin region; a fused
      attention with a mask is what TensorRT hands to cuDNN's graph API)."""
    text = str(error)
    if isinstance(error, TypeError) and "add_cast" in text:
        return "the fused attention converter could not take a constant attention bias (add_cast TypeError)"
    if isinstance(error, RuntimeError) and _context_failed(text.lower()):
        return "the engine built but TensorRT could not create its execution context on this GPU"
    return None


def engine_error_hint(error: BaseException | str, flavour: str | None, target: str) -> str | None:
    """A hint for an engine that built but cannot run on this GPU (its kernels target other compute
    capabilities, or TensorRT could not create its execution context); None for any other error."""
    text = str(error).lower()
    if _context_failed(text) and not any(marker in text for marker in _NO_KERNELS):
        return ("the engine built, but TensorRT could not create its execution context on this GPU (its log "
                "above gives the reason, often a fused kernel it could not compile); the call runs eagerly. "
                "Keeping the op named there out of the engine (tensorrt_options {'torch_executed_ops': ...}) "
                "or backend='inductor' for this component avoids it; min_block_size does not")
    if not any(marker in text for marker in _NO_KERNELS):
        return None
    if flavour == "tensorrt-rtx" and target == "portable":
        return ("the engine has no kernels for this GPU's compute capability: TensorRT-RTX builds for its "
                "portable list (8.6/8.9/12.0) with tensorrt_target='portable'; use tensorrt_target='current'")
    return "the engine has no kernels for this GPU's compute capability; rebuild it on this GPU"
