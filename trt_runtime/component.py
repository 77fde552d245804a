"""``Component``: one wrapped module inside a runtime, with its signatures' states and CUDA graphs."""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from . import keys
from .calls import positional_names, precision_of
from .graphs import GraphCache
from .settings import RuntimeSettings
from .shapes import DimLike, normalize_spec
from .state import Slot, State

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import TensorRTRuntime

__all__ = ["Component"]

_VERSION = operator.attrgetter("_version")

logger = logging.getLogger(__name__)


class Component:
    """One wrapped module inside a runtime: its eager callable and its compiled signatures.

    ``eager`` is what runs when nothing is compiled (the module's own forward, or a wrapper's core
    around it); ``module`` is the ``nn.Module`` whose parameters the artifact is built from. Wrappers call
    the component like the module itself. ``settings`` override the runtime's for this component (only
    fields that are per component: a different cache folder or persistence is a runtime's, see
    ``TensorRTRuntime.component``).
    """

    def __init__(
        self,
        runtime: TensorRTRuntime,
        name: str,
        module: torch.nn.Module,
        eager: Callable[..., Any] | None = None,
        names: tuple[str, ...] | None = None,
        shapes: dict[str, dict[int, DimLike]] | None = None,
        settings: RuntimeSettings | None = None,
        traits: frozenset[str] = frozenset(),
        family: tuple[str, dict[str, Any], torch.nn.Module | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.traits = frozenset(traits)
        self.family = family
        """``("module:apply_function", options, owner)`` that wrapped the module (``owner``: the model it
        belongs to, e.g. the VAE of a decoder; None: the module itself), so a build process can rebuild the
        owner and wrap it the same way (None for the generic ``TensorRTModule``)."""
        self.name = name
        self.module = module
        self.eager = eager if eager is not None else module
        self.names = tuple(names) if names is not None else positional_names(type(module).forward)
        self.spec = normalize_spec(shapes)
        self.settings = settings or runtime.settings
        self.slots: dict[tuple, Slot] = {}
        self.graphs = GraphCache(name, self.settings.max_graphs_per_component)
        self._fingerprints: dict[Any, dict[str, Any]] = {}
        self._probe_owner, self._probe_name = _first_parameter(module)
        self._probe_state = self._read_probe()
        self._probe_ptr = self._read_ptr()
        self._warned: set[str] = set()
        self._tensors: list[torch.Tensor] | None = None
        self.generation = 0
        """Bumped by ``invalidate``: a build that started before finishes as STALE, not READY."""
        self.lock = threading.RLock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runtime.call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"Component({self.name!r}, {len(self.slots)} signatures)"

    # The module may be moved, cast or given new weights between calls; these keep the keys honest.
    @property
    def _probe(self) -> torch.nn.Parameter | None:
        """The module's first parameter, looked up again each time (a state dict loaded with
        ``assign=True`` replaces parameter objects): one dict lookup."""
        owner = self._probe_owner
        return None if owner is None else owner._parameters.get(self._probe_name)

    def _read_probe(self) -> tuple | None:
        p = self._probe
        return None if p is None else (p.dtype, p.device, p.requires_grad)

    def _read_ptr(self) -> int:
        p = self._probe
        return 0 if p is None or p.device.type == "meta" else p.data_ptr()

    def check_module(self) -> tuple | None:
        """O(1) read of the module's dtype/device on the hot path. Compiled signatures are kept per
        state, so offloading that moves a module back and forth reuses them instead of rebuilding. CUDA
        graphs hold weight addresses: when the weights moved, the graphs are dropped."""
        state = self._read_probe()
        if state != self._probe_state:
            logger.debug("[%s] module moved or cast (%s -> %s)", self.name, self._probe_state, state)
            self._probe_state = state
        ptr = self._read_ptr()
        if ptr != self._probe_ptr:
            self._probe_ptr = ptr
            if self.graphs:
                logger.debug("[%s] weights were reallocated; dropping CUDA graphs", self.name)
                self.graphs.clear()
        return state

    def weights_version(self) -> int | None:
        """Sum of the version counters of the module's parameters and buffers: it grows with every in-place
        edit (``load_state_dict``, a fused LoRA, ``copy_``). None where tensors keep no counter (inference
        tensors). Read on each call only for artifacts that hold a copy of the weights."""
        tensors = self._tensors
        if tensors is None:
            tensors = self._tensors = [*self.module.parameters(), *self.module.buffers()]
        try:
            return sum(map(_VERSION, tensors))
        except RuntimeError:
            return None

    def weights_changed(self) -> None:
        """The weights were edited in place (seen by ``weights_version``): every ready signature holding a
        copy of them goes stale, and the fingerprint is computed again."""
        with self.lock:
            for slot in self.slots.values():
                if slot.state is State.READY and slot.weights_version is not None:
                    slot.move(State.STALE)
            self._forget_weights()

    def invalidate(self) -> None:
        """Say that the weights changed in place (e.g. a fused LoRA). Ready signatures become stale: the
        next call of each refits, reloads or rebuilds for the new weights, never serving the old ones."""
        with self.lock:
            self.generation += 1
            self._tensors = None
            for sig, slot in list(self.slots.items()):
                if slot.state is State.READY:
                    slot.move(State.STALE)
                elif slot.state is not State.COMPILING:  # failures were for the old weights
                    del self.slots[sig]
            self._forget_weights()
            self.graphs.clear()

    def _forget_weights(self) -> None:
        """Drop remembered digests: writes through ``.data`` (how peft merges a LoRA) bump no version
        counter, so the per-tensor digest memo must be told."""
        from . import digest

        self._fingerprints.clear()
        digest.forget(self.module)

    def fingerprint(self, with_weights: bool = True) -> dict[str, Any]:
        """The module's fingerprint for its current dtype (computed once per dtype, then remembered).
        ``with_weights=False`` leaves the weight values out (and skips hashing them)."""
        tag = (None if self._probe is None else self._probe.dtype, with_weights)
        cached = self._fingerprints.get(tag)
        if cached is None:
            started = time.perf_counter()
            digest = self.settings.weights_digest if with_weights else None
            cached = self._fingerprints[tag] = keys.module_fingerprint(self.module, digest)
            logger.debug("[%s] fingerprinted module in %.3f s", self.name, time.perf_counter() - started)
        return cached

    @property
    def device(self) -> torch.device | None:
        return None if self._probe is None else self._probe.device

    @property
    def precision(self) -> str:
        if self.settings.precision:
            return self.settings.precision
        return precision_of(self._probe.dtype if self._probe is not None else None)

    def warn_once(self, topic: str, message: str, *args: Any) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            logger.warning(message, *args)


def _first_parameter(module: torch.nn.Module) -> tuple[torch.nn.Module | None, str]:
    """The submodule holding ``module``'s first parameter, and that parameter's name in it."""
    for name, _ in module.named_parameters():
        prefix, _, leaf = name.rpartition(".")
        return module.get_submodule(prefix), leaf
    return None, ""
