"""Artifacts already loaded in this process, shared by every wrapper whose call resolves to the same entry.

Loading a TensorRT-RTX engine compiles its kernels just in time (26.6 s for an SD1.5 UNet on an H100), and a
second wrapper of the same model in one process (a pipeline wrapped again, a second runtime with other
serving settings, a benchmark's second variant) loaded the same entry again and paid it again. A backend
whose artifacts hold their weights and are safe to call from several wrappers (``Backend.shares_loaded``)
gets each entry loaded once per process and device; later resolutions of the same entry reuse it.

What makes two loads "the same": the backend, the entry's key, the sha256 of every file the entry was
sealed with (an entry rebuilt under the same key by another process has other files, so it is loaded
anew), and the device the module lives on (the key names the GPU model, not which of two equal GPUs).
The entry must still be on disk and pass the cache's checks for this runtime before a shared artifact is
used: sharing never serves something this runtime's cache would refuse, and a cleared entry is built again.
Only loads whose files were checked against those checksums are registered (``Resolver``), and only loads:
a program just built may run parts of itself in PyTorch with the building module's own parameters.

Only weak references are held: an artifact no wrapper uses any more is freed as before.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Identity", "LoadedArtifacts", "identity", "LOADED"]

Identity = tuple[str, str, tuple[tuple[str, str], ...], str]


def identity(backend_name: str, key: str, files: Any, device: Any) -> Identity | None:
    """What identifies one loaded artifact, or None where the entry's files carry no checksums (nothing is
    shared then)."""
    if not isinstance(files, dict) or not files:
        return None
    sums = []
    for name, info in sorted(files.items()):
        digest = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(digest, str) or not digest:
            return None
        sums.append((str(name), digest))
    return backend_name, key, tuple(sums), str(device)


class LoadedArtifacts:
    """A thread-safe map from ``identity`` to the callable a backend loaded (or built and saved), held weakly."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: weakref.WeakValueDictionary[Identity, Callable[..., Any]] = weakref.WeakValueDictionary()

    def get(self, ident: Identity | None) -> Callable[..., Any] | None:
        if ident is None:
            return None
        with self._lock:
            return self._items.get(ident)

    def put(self, ident: Identity | None, fn: Callable[..., Any]) -> None:
        if ident is None:
            return
        try:
            with self._lock:
                self._items[ident] = fn
        except TypeError:  # a callable without weak references (a builtin): not shared
            pass

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


LOADED = LoadedArtifacts()
"""The process's map (an empty dictionary until a backend that shares loads something)."""
