"""The protocol every compiler backend implements, and the request the runtime hands it.

A backend turns (module, one call's example inputs, declared dynamic dims, settings) into a callable,
writes that callable's artifact into a folder, and loads it back in a later process. The runtime owns
keys, locking, fallback and statistics; a backend owns nothing but its compiler.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..calls import iter_tensors
from ..errors import BackendUnavailableError
from ..settings import RuntimeSettings
from ..shapes import Dim

__all__ = ["Backend", "CompileRequest", "iter_tensors"]


@dataclasses.dataclass(frozen=True)
class CompileRequest:
    """Everything a backend may read to compile, save or load one artifact."""

    component: str
    """Name of the wrapped component, for messages and logs (``unet``, ``vae.decoder``...)."""
    module: torch.nn.Module
    """Calling ``module(*args, **kwargs)`` runs the eager computation that is to be compiled."""
    args: tuple
    kwargs: Mapping[str, Any]
    """The example call (the real first call of this signature)."""
    names: tuple[str, ...]
    """Parameter names of the positional arguments, to address them by name in ``dynamic``."""
    dynamic: Mapping[str, Mapping[int, Dim]]
    """Declared dynamic dims that apply to this call, by argument path; empty: static shapes."""
    settings: RuntimeSettings
    device: torch.device | None
    """Device of the module's parameters (None for a module without any)."""
    precision: str
    """``fp32``/``fp16``/``bf16``: the requested precision, or the module's own dtype."""
    traits: frozenset[str] = frozenset()
    """What the wrapper knows about the module that a compiler may need (``attention_bias``: its attention
    takes a bias, such as a text encoder's causal mask). Part of the cache key."""


class Backend(abc.ABC):
    """One compiler. Subclasses set ``name`` and ``artifact_fields`` and implement the methods."""

    name: ClassVar[str]
    artifact_fields: ClassVar[frozenset[str]] = frozenset()
    """Settings fields that change what this backend produces; they enter the cache key."""
    persistent: ClassVar[bool] = True
    """Whether artifacts can be saved and loaded (eager has nothing to save)."""
    builds_beside_calls: ClassVar[bool] = False
    """Whether a build (or load) may run in a worker thread while other threads of the process run modules.
    False for every compiler that traces (dynamo, inductor, torch.export, torch_tensorrt): while torch.fx
    traces it patches ``nn.Module.__call__`` for the whole process, and a module called by another thread
    in that window raises ``NameError: module is not installed as a submodule`` (seen on an H100: a
    background build beside a generating pipeline). Background builds of such backends run in a child
    process, or in the caller's thread between its calls."""
    shares_loaded: ClassVar[bool] = False
    """Whether one loaded artifact may serve every wrapper of the process whose call resolves to the same cache
    entry (``trt_runtime.loaded``): true where the artifact holds its own weights and loading it again costs
    (TensorRT-RTX compiles an engine's kernels on every load). Refits must then return a new artifact, never
    change the shared one."""
    optional_files: ClassVar[frozenset[str]] = frozenset()
    """Files ``save`` may write that only make a load faster (TensorRT-RTX's runtime cache): sealed and
    signed like the others, but an entry whose optional file is missing or damaged still loads, without
    it. ``load`` must cope with their absence."""

    def embeds_weights(self, settings: RuntimeSettings) -> bool:
        """Whether artifacts contain the weight values (TensorRT engines do). Only then do the values
        enter the cache key; an artifact that reads weights at run time serves any checkpoint of the
        same architecture, and in-place weight changes reach it without a rebuild."""
        return True

    def check_available(self, device: torch.device | None) -> None:  # noqa: B027 - optional hook
        """Raise ``BackendUnavailableError`` saying why this backend cannot run on ``device``."""

    def auto_declines(self, device: torch.device | None) -> str | None:
        """Why ``backend="auto"`` should not pick this backend on ``device`` although it can run there
        (measured slower than the next candidate); None to accept. Asked only after ``check_available``."""
        return None

    def is_available(self, device: torch.device | None) -> bool:
        try:
            self.check_available(device)
        except BackendUnavailableError:
            return False
        return True

    def can_refit(self, settings: RuntimeSettings) -> bool:
        """Whether ``refit`` can put new weights into an artifact built with ``settings``."""
        return False

    def refit(self, compiled: Callable[..., Any], request: CompileRequest) -> Callable[..., Any]:
        """An artifact like ``compiled`` computing with ``request.module``'s current weights."""
        raise NotImplementedError(f"backend {self.name!r} cannot refit artifacts")

    def artifact_meta(self, compiled: Callable[..., Any]) -> dict[str, Any]:
        """Readable facts about an artifact for its ``meta.json`` (``trt-runtime cache info`` shows them)."""
        return {}

    def notes(self) -> list[str]:
        """Plain sentences for ``trt-runtime env`` about what this backend's installed release can do."""
        return []

    def versions(self) -> dict[str, str]:
        """Library versions that make an artifact valid (they enter the cache key)."""
        return {}

    @abc.abstractmethod
    def compile(self, request: CompileRequest) -> Callable[..., Any]:
        """Return a callable with the module's calling convention. It may compile lazily on its first
        call: the runtime times and guards the first call as part of the build."""

    def save(self, compiled: Callable[..., Any], request: CompileRequest, directory: Path) -> None:
        """Write the artifact of ``compiled`` into the empty folder ``directory``."""
        raise NotImplementedError(f"backend {self.name!r} cannot save artifacts")

    def load(self, request: CompileRequest, directory: Path) -> Callable[..., Any]:
        """Rebuild the callable from ``directory`` (written by ``save``, possibly in another process)."""
        raise NotImplementedError(f"backend {self.name!r} cannot load artifacts")

    def loads_beside_calls(self, directory: Path) -> bool:
        """Whether the artifact in ``directory`` may be loaded, run and validated in a worker thread while other
        threads run modules: only where loading it traces nothing (see ``builds_beside_calls``)."""
        return self.builds_beside_calls
