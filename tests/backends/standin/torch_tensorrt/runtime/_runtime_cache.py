"""STAND-IN for ``torch_tensorrt.runtime._runtime_cache`` of 2.13+ (tests only; NOT TensorRT-RTX).

``RuntimeCache`` keeps bytes in memory like the real facade over its handle; calls are recorded in
``torch_tensorrt.CALLS``. A path-backed cache would save itself to its file: the stand-in records
``autosave_on_del`` so tests can check that trt_runtime never asks for that.
"""

from __future__ import annotations

import torch

import torch_tensorrt as _root

if _root.SERIES < (2, 13):
    raise ImportError(f"torch_tensorrt {_root.__version__} has no runtime cache module")


class _Handle:
    """Imitates the torchbind ``RuntimeCacheHandle``: ``path``, ``serialize``, ``deserialize``."""

    def __init__(self, path: str = "") -> None:
        self.path = path
        self.data = b""

    def serialize(self) -> torch.Tensor:
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8) if self.data else torch.empty(0, dtype=torch.uint8)

    def deserialize(self, data: torch.Tensor) -> None:
        self.data = bytes(data.numpy())

    def has_cache(self) -> bool:
        return bool(self.data)


class RuntimeCache:
    def __init__(self, path: str = "", autosave_on_del: bool = False) -> None:
        self._handle = _Handle(path)
        self.autosave_on_del = autosave_on_del
        _root.CALLS.append(("RuntimeCache", {"path": path, "autosave_on_del": autosave_on_del}))

    @property
    def path(self) -> str:
        return self._handle.path

    def has_cache(self) -> bool:
        return self._handle.has_cache()

    def load_from_stream(self, stream) -> int:
        data = stream.read()
        _root.CALLS.append(("runtime_cache_load", {"bytes": data}))
        if data:
            self._handle.deserialize(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        return len(data)

    def save_to_stream(self, stream) -> int:
        data = self._handle.data
        if data:
            stream.write(data)
        return len(data)


def _to_torchbind_handle(rc):
    if rc is None:
        return None
    if isinstance(rc, RuntimeCache):
        return rc._handle
    return _Handle(rc)
