"""TensorRT-RTX's runtime cache, kept in the cache entry so a new process skips the just-in-time compile.

TensorRT-RTX compiles kernels when an engine first runs in a process. torch-tensorrt-rtx 2.13+ can keep
them in an ``IRuntimeCache`` (``torch_tensorrt.runtime.RuntimeCache``); see ``_tensorrt_api`` for which
release offers what. How trt_runtime uses it:

- Build: a path-less, in-memory ``RuntimeCache`` is attached to every engine of the compiled module, so
  the first call (run by the resolver before the entry is saved) fills it. ``save`` writes its bytes as
  ``RUNTIME_CACHE_FILE`` next to the program, and records their size and sha256 in the backend's own
  ``trt_inputs.json``: the cache stages, seals (checksums, signature) and commits it like every other
  file of the entry, marked optional (``Backend.optional_files``).
- Load: the bytes are read once, checked against that record, fed to a new in-memory ``RuntimeCache``
  and attached to the engines of the loaded program. A missing, damaged or refused file is not an
  error: the engines JIT-compile again, as they would without it (said at DEBUG).

Never a path: a path-backed ``RuntimeCache`` saves itself back to its file when it is collected or at
exit, which would rewrite a published (checksummed, maybe signed, maybe read-only) entry, or a private
copy that is already gone. Kernels compiled after loading (other shapes of a range) are therefore not
added to the entry.

Which engines: the module ``dynamo.compile`` returns holds ``TorchTensorRTModule`` submodules (their
public ``runtime_settings`` setter takes the cache); a program loaded with ``torch.export.load`` holds the
``torch.classes.tensorrt.Engine`` objects as attributes read by ``tensorrt::execute_engine``, which take
``update_runtime_settings(strategy, cuda_graph_strategy, handle)``. The private helpers used for the latter
(``_to_torchbind_handle``, the strategy maps) are pinned per release by the contract tests.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["RUNTIME_CACHE_FILE", "new_cache", "attach", "serialize", "record", "read_verified", "engines"]

logger = logging.getLogger(__name__)

RUNTIME_CACHE_FILE = "trt_runtime_cache.bin"
_MAX_BYTES = 4 << 30
"""A runtime cache larger than this is not read (damage, not kernels)."""


def new_cache(torch_tensorrt: Any, data: bytes | None = None) -> Any:
    """An in-memory ``RuntimeCache`` (no path, no autosave), primed with ``data``."""
    cache = torch_tensorrt.runtime.RuntimeCache(path="", autosave_on_del=False)
    if data:
        cache.load_from_stream(io.BytesIO(data))
    return cache


def engines(module: torch.nn.Module) -> Iterator[tuple[str, Any]]:
    """``(name, target)`` for every TensorRT engine of ``module``: a ``TorchTensorRTModule`` (compiled) or
    an engine object held as an attribute (a loaded program)."""
    for prefix, sub in module.named_modules():
        if hasattr(type(sub), "runtime_settings") and hasattr(sub, "engine"):
            yield prefix, sub
            continue
        for name, value in vars(sub).items():
            if callable(getattr(value, "update_runtime_settings", None)):
                yield f"{prefix}.{name}" if prefix else name, value


def attach(torch_tensorrt: Any, module: torch.nn.Module, cache: Any) -> int:
    """Attach ``cache`` to every engine of ``module``; returns how many took it."""
    attached = 0
    for name, target in engines(module):
        try:
            if isinstance(target, torch.nn.Module):
                target.runtime_settings = target.runtime_settings.merge(runtime_cache=cache)
            else:
                _update_engine(torch_tensorrt, target, cache)
            attached += 1
        except Exception as err:  # noqa: BLE001 - without the cache the engine JIT-compiles, as before
            logger.debug("could not attach the runtime cache to engine %s (%s: %s); it compiles its kernels "
                         "just in time", name, type(err).__name__, err)
    return attached


def _update_engine(torch_tensorrt: Any, engine: Any, cache: Any) -> None:
    from torch_tensorrt.runtime import _runtime_config as config
    from torch_tensorrt.runtime._runtime_cache import _to_torchbind_handle

    settings = torch_tensorrt.runtime.RuntimeSettings(runtime_cache=cache)
    if isinstance(engine, torch.ScriptObject):  # the C++ runtime's torch.classes.tensorrt.Engine
        engine.update_runtime_settings(
            config._DYNAMIC_SHAPES_KERNEL_STRATEGY_MAP[settings.dynamic_shapes_kernel_specialization_strategy],
            config._CUDA_GRAPH_STRATEGY_MAP[settings.cuda_graph_strategy],
            _to_torchbind_handle(cache),
        )
    else:  # the Python runtime's TRTEngine takes the settings object
        engine.update_runtime_settings(settings)


def serialize(cache: Any) -> bytes:
    out = io.BytesIO()
    cache.save_to_stream(out)
    return out.getvalue()


def record(data: bytes) -> dict[str, Any]:
    """What ``trt_inputs.json`` keeps about the runtime cache file: its name, size and sha256."""
    return {"file": RUNTIME_CACHE_FILE, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_verified(directory: Path, saved: Mapping[str, Any] | None, component: str) -> bytes | None:
    """The runtime cache bytes of an entry when they match what its writer recorded; None (and a DEBUG
    line saying why) when there is none, or it is missing or damaged."""
    if not isinstance(saved, Mapping):
        logger.debug("[%s] the entry has no TensorRT-RTX runtime cache; kernels compile just in time",
                     component)
        return None
    path = directory / RUNTIME_CACHE_FILE
    try:
        size = path.stat().st_size
        if size != saved.get("size") or size > _MAX_BYTES:
            raise ValueError(f"it has {size} bytes, its record says {saved.get('size')}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != saved.get("sha256"):
            raise ValueError("it fails its sha256 checksum")
    except (OSError, ValueError) as err:
        logger.debug("[%s] not using the TensorRT-RTX runtime cache %s (%s); kernels compile just in time",
                     component, path, getattr(err, "strerror", None) or err)
        return None
    return data
