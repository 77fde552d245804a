"""Compiler backends behind one protocol, looked up by name.

Backends are imported lazily: ``import trt_runtime`` never imports torch_tensorrt or inductor.
``register_backend`` lets a user (or a test) add another compiler under a new name.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import torch

from ..errors import BackendUnavailableError, ConfigurationError
from ..logging_utils import warn_once
from .base import Backend, CompileRequest, iter_tensors

__all__ = ["Backend", "CompileRequest", "iter_tensors", "check_backend_name", "get_backend", "register_backend",
           "unregister_backend", "select_backend"]

logger = logging.getLogger(__name__)

_FACTORIES: dict[str, Callable[[], Backend]] = {}
_BUILTIN = {
    "eager": ("trt_runtime.backends.eager", "EagerBackend"),
    "inductor": ("trt_runtime.backends.inductor", "InductorBackend"),
    "tensorrt": ("trt_runtime.backends.tensorrt", "TensorRTBackend"),
    "fastest": ("trt_runtime.backends.fastest", "FastestBackend"),
}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``factory()`` the backend used for ``settings.backend == name``."""
    _FACTORIES[name] = factory


def unregister_backend(name: str) -> bool:
    """Remove a backend added with ``register_backend``; False when none was registered under ``name``."""
    return _FACTORIES.pop(name, None) is not None


def check_backend_name(name: str) -> None:
    """Raise ``ConfigurationError`` unless ``name`` is ``auto``, built in or registered."""
    if name != "auto" and name not in _BUILTIN and name not in _FACTORIES:
        known = ", ".join(sorted({*_BUILTIN, *_FACTORIES, "auto"}))
        raise ConfigurationError(f"unknown backend {name!r}", hint=f"use one of {known}")


def get_backend(name: str) -> Backend:
    """A new instance of the backend called ``name``."""
    check_backend_name(name)
    if name in _FACTORIES:
        return _FACTORIES[name]()
    module_name, cls_name = _BUILTIN[name]
    return getattr(importlib.import_module(module_name), cls_name)()


def select_backend(name: str, device: torch.device | None) -> Backend:
    """Resolve ``auto`` (tensorrt when it can really run and suits the GPU, else inductor) and check
    availability."""
    if name != "auto":
        backend = get_backend(name)
        backend.check_available(device)
        return backend
    skipped = []
    for candidate in ("tensorrt", "inductor"):
        try:
            backend = get_backend(candidate)
            backend.check_available(device)
        except ImportError as err:  # BackendUnavailableError is an ImportError
            reason = err.message if isinstance(err, BackendUnavailableError) else str(err)
            skipped.append(f"{candidate} unavailable: {reason}")
            continue
        declined = backend.auto_declines(device)
        if declined:
            skipped.append(f"{candidate} not chosen: {declined}")
            warn_once(logger, f"auto:{candidate}", declined, "backend 'auto' did not choose %s: %s. Pass backend=%r "
                      "to use it anyway, or backend='fastest' to time both on your modules and keep the faster",
                      candidate, declined, candidate)
            continue
        break
    else:
        backend = get_backend("eager")
    # one line per decision: what was chosen and why each better candidate was not
    logger.info("backend 'auto' selected %s for device %s%s", backend.name, device or "cpu",
                f" ({'; '.join(skipped)})" if skipped else "")
    return backend

