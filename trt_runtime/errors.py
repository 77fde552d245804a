"""Exception types of trt_runtime.

Every error subclasses a builtin so callers that already catch ``RuntimeError`` / ``OSError`` /
``ValueError`` / ``ImportError`` keep working, and carries the fields a person needs to act on it: the
component, the input shapes and the cache path involved. ``str(err)`` says what happened and what to do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "TrtRuntimeError",
    "ConfigurationError",
    "BackendUnavailableError",
    "EngineBuildError",
    "EngineRunError",
    "ValidationError",
    "CacheError",
    "UntrustedEntryError",
    "ReadOnlyCacheError",
    "UnkeyableInputError",
]


def _format_shapes(shapes: Any) -> str:
    if shapes is None:
        return ""
    if isinstance(shapes, str):
        return shapes
    if isinstance(shapes, Sequence):
        return ", ".join(str(tuple(s)) if isinstance(s, Sequence) else str(s) for s in shapes)
    return str(shapes)


class TrtRuntimeError(Exception):
    """Base class. ``component``, ``shapes`` and ``path`` are optional context, shown in the message."""

    def __init__(
        self,
        message: str,
        *,
        component: str | None = None,
        shapes: Any = None,
        path: Any = None,
        hint: str | None = None,
    ) -> None:
        self._set(message, component, shapes, path, hint)
        super().__init__(self._render())
        # ImportError.__init__ resets its own ``path`` attribute: set the fields again afterwards.
        self._set(message, component, shapes, path, hint)

    def _set(self, message, component, shapes, path, hint) -> None:
        self.message = message
        self.component = component
        self.shapes = shapes
        self.path = None if path is None else str(path)
        self.hint = hint

    def _render(self) -> str:
        parts = []
        if self.component:
            parts.append(f"[{self.component}]")
        parts.append(self.message)
        context = []
        if self.shapes is not None:
            context.append(f"input shapes: {_format_shapes(self.shapes)}")
        if self.path:
            context.append(f"path: {self.path}")
        text = " ".join(parts)
        if context:
            text += " (" + "; ".join(context) + ")"
        if self.hint:
            text += ". " + self.hint
        return text

    def __str__(self) -> str:  # OSError overrides __str__; keep ours for every subclass
        return self._render()

    def __reduce__(self):  # picklable across processes with the keyword fields intact
        return (
            _rebuild,
            (type(self), self.message, self.component, self.shapes, self.path, self.hint),
        )


def _rebuild(cls, message, component, shapes, path, hint):
    return cls(message, component=component, shapes=shapes, path=path, hint=hint)


class ConfigurationError(TrtRuntimeError, ValueError):
    """A setting or an argument has a value that cannot work (unknown backend, bad shape range, ...)."""


class BackendUnavailableError(TrtRuntimeError, ImportError):
    """The requested compiler backend cannot run here (package missing, no CUDA, unsupported version)."""


class EngineBuildError(TrtRuntimeError, RuntimeError):
    """Compiling a module for one input signature failed."""


class EngineRunError(TrtRuntimeError, RuntimeError):
    """A compiled artifact raised while running, although eager PyTorch could run the same call."""


class ValidationError(TrtRuntimeError, ArithmeticError):
    """A compiled artifact's output differs from eager PyTorch by more than the precision allows."""


class CacheError(TrtRuntimeError, OSError):
    """The on-disk engine cache could not be read or written (permissions, full disk, lock timeout)."""


class UntrustedEntryError(CacheError):
    """A cache entry (or an archive of entries) may have been written by someone this process does not
    trust: loading it could run their code (artifacts contain pickles), so it is treated as a miss."""


class ReadOnlyCacheError(CacheError):
    """A write was asked of a cache that is read-only (``cache_read_only=True`` or a read-only mount).
    Callers check ``EngineCache.writable`` first; this only reaches those that did not."""


class UnkeyableInputError(TrtRuntimeError, TypeError):
    """An argument has a type whose value cannot be part of a cache key (the call then runs eagerly)."""
