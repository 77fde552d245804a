"""``TensorRTRuntime``: compile on first use, cache on disk, reload later, fall back to eager on failure.

This module is the thin facade that serves calls. Per call of a wrapped component it looks the call's
signature up in memory (a tuple hash: no weight hashing, no module walk) and does what the signature's
state says (``state.py``): run the compiled callable, through CUDA graphs where safe (``graphs.py``), or
run eagerly. A miss, a stale signature or a retry that is due goes to the resolver (``resolver.py``),
in the caller's thread or, with ``background=True``, through a build worker (``builds.py``: a build process
writes the entry, and the worker loads it where that traces nothing, else the caller's next call does) while the
caller runs eagerly. No lock is held while a
build runs: other signatures, and other calls of the same signature, keep running (eagerly, until the
artifact is ready).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from typing import Any

import torch

from . import build_process, builds, keys
from .backends import Backend, check_backend_name, select_backend
from .cache import EngineCache
from .calls import tensor_shapes
from .component import Component
from .errors import CacheError, EngineRunError, TrtRuntimeError, UnkeyableInputError
from .graphs import unsafe_reason
from .logging_utils import install_default_handler
from .resolver import NOTHING, Resolution, Resolver
from .settings import RuntimeSettings
from .state import Slot, State
from .stats import RuntimeStats, short_shapes

__all__ = ["TensorRTRuntime", "Component", "get_default_runtime"]

logger = logging.getLogger(__name__)

_QUEUE_FULL_RETRY_S = 5.0
_RUN_FAILURES_BEFORE_GIVING_UP = 2


class TensorRTRuntime:
    """Compiles, caches and runs wrapped components. One per process is usually enough.

    ``TensorRTRuntime(settings=None, *, cache_dir=None, **overrides)``: ``overrides`` are
    ``RuntimeSettings`` fields (``backend="inductor"``, ``strict=True``...).
    """

    def __init__(self, settings: RuntimeSettings | None = None, *, cache_dir=None, **overrides: Any) -> None:
        install_default_handler()  # warnings a user must act on are visible without logging setup
        settings = settings or RuntimeSettings()
        if cache_dir is not None:
            overrides["cache_dir"] = os.fspath(cache_dir)
        self.settings = settings.replace(**overrides)
        check_backend_name(self.settings.backend)
        self.stats = RuntimeStats()
        self.resolver = Resolver(self)
        self._caches: dict[tuple, EngineCache] = {}
        self._backends: dict[str, Backend] = {}
        self._environments: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"TensorRTRuntime(backend={self.settings.backend!r}, cache_dir={str(self.cache.root)!r})"

    # ------------------------------------------------------------------------------------------ plumbing
    @property
    def cache(self) -> EngineCache:
        """The engine cache of the runtime's own settings."""
        return self.cache_for(self.settings)

    def cache_for(self, settings: RuntimeSettings) -> EngineCache:
        """The engine cache a component with ``settings`` uses (its own ``cache_dir`` and cache policy,
        when it was wrapped with them; the runtime's otherwise). One object per distinct cache."""
        tag = (settings.cache_dir, settings.max_cache_bytes, settings.verify_checksum, settings.cache_sharing,
               settings.cache_read_only, settings.trust_key_file)
        with self._lock:
            cache = self._caches.get(tag)
            if cache is None:
                cache = self._caches[tag] = EngineCache.from_settings(settings)
            return cache

    def component(self, name: str, module: torch.nn.Module, **kwargs: Any) -> Component:
        """A ``Component`` of this runtime for ``module`` (see ``Component`` for the arguments)."""
        return Component(self, name, module, **kwargs)

    def backend_for(self, device: torch.device | None, settings: RuntimeSettings | None = None) -> Backend:
        name = (settings or self.settings).backend
        with self._lock:
            tag = f"{name}:{device}"  # per device, not per type: `auto` may choose differently on each GPU
            if tag not in self._backends:
                self._backends[tag] = select_backend(name, device)
            return self._backends[tag]

    def environment(self, backend: Backend, device: torch.device | None) -> dict[str, Any]:
        """Versions and hardware that make an artifact of ``backend`` valid (computed once)."""
        tag = f"{backend.name}:{device}"
        if tag not in self._environments:
            self._environments[tag] = {**keys.environment(device), **backend.versions()}
        return self._environments[tag]

    @staticmethod
    def persisting(backend: Backend, settings: RuntimeSettings) -> bool:
        """Whether artifacts of ``backend`` go to disk for a component with ``settings``."""
        return settings.persist and backend.persistent

    def cache_unwritable(self, comp: Component, err: CacheError) -> None:
        comp.warn_once(f"cache:{err.path}", "[%s] engine cache unavailable (%s); compiled artifacts stay in "
                       "memory for this process only", comp.name, err)

    # ------------------------------------------------------------------------------------------ hot path
    def call(self, comp: Component, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Run ``comp`` on one call: compiled when possible, eagerly otherwise."""
        if torch.compiler.is_compiling():  # traced by an outer torch.compile/export: stay transparent
            return comp.eager(*args, **kwargs)
        state = comp.check_module()
        try:
            sig = (state, keys.signature(args, kwargs, comp.names, comp.spec))
        except UnkeyableInputError as err:
            if comp.settings.strict:
                raise
            comp.warn_once("unkeyable", "[%s] %s; running eagerly", comp.name, err.message)
            return comp.eager(*args, **kwargs)
        if state is not None and state[2] and torch.is_grad_enabled():  # state: (dtype, device, requires_grad)
            comp.warn_once("grad", "[%s] gradients are enabled for trainable weights; compiled artifacts "
                           "serve inference only, so every call runs eagerly. Call module.eval() and run under "
                           "torch.no_grad() or torch.inference_mode() (diffusers pipelines do)", comp.name)
            return comp.eager(*args, **kwargs)

        slot = comp.slots.get(sig)
        if slot is not None and slot.state is State.READY:
            if slot.weights_version is None or slot.weights_version == comp.weights_version():
                return self._run_ready(comp, sig, slot, args, kwargs)
            comp.weights_changed()  # edited in place under an artifact that holds a copy: stale now
        if slot is None or slot.due():
            return self._miss(comp, sig, slot, args, kwargs)
        if slot.key:
            self.stats.record(comp.name, slot.key, calls=1, fallbacks=1 if slot.state is State.FAILED else 0)
        return comp.eager(*args, **kwargs)

    def _run_ready(self, comp: Component, sig: tuple, slot: Slot, args: tuple, kwargs: dict[str, Any]) -> Any:
        fn = slot.fn
        try:
            if slot.graphs is None:
                slot.graphs = self._graphs_allowed(comp, args, kwargs)
            if slot.graphs:
                out, captured = comp.graphs.run(sig, fn, args, kwargs)
                if captured:
                    self.stats.record(comp.name, slot.key, graphs=1)
            else:
                out = fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - classified by _run_failed
            return self._run_failed(comp, slot, err, args, kwargs)
        slot.stats.calls += 1
        return out

    def _graphs_allowed(self, comp: Component, args: tuple, kwargs: dict[str, Any]) -> bool:
        """Decide once per signature whether its calls replay through CUDA graphs."""
        setting = comp.settings.cuda_graphs
        if setting is False:
            return False
        reason = unsafe_reason(comp.module, args, kwargs)
        if reason is None and comp.settings.inductor_mode in ("reduce-overhead", "max-autotune"):
            reason = f"inductor_mode {comp.settings.inductor_mode!r} captures CUDA graphs itself"
        if reason is None:
            return True
        if setting is True:
            comp.warn_once(f"graphs:{reason}", "[%s] cuda_graphs=True, but %s; running without CUDA graphs",
                           comp.name, reason)
        else:
            logger.debug("[%s] CUDA graphs off: %s", comp.name, reason)
        return False

    # ------------------------------------------------------------------------------------------ miss
    def _miss(self, comp: Component, sig: tuple, slot: Slot | None, args: tuple, kwargs: dict[str, Any]) -> Any:
        """Claim the signature (one resolution at a time), then resolve it here or in the background."""
        with comp.lock:
            claimed = comp.slots.get(sig) is slot and (slot is None or slot.due())
            handover = False
            if claimed and slot is None and len(comp.slots) >= comp.settings.max_shapes_per_component:
                comp.warn_once("too-many", "[%s] %d signatures compiled already (max_shapes_per_component); "
                               "new ones run eagerly", comp.name, len(comp.slots))
                claimed = False
            elif claimed and slot is None:
                slot = comp.slots[sig] = Slot()
            elif claimed:
                handover = slot.handover
                slot.move(State.COMPILING, handover=False)
            generation = comp.generation
        if not claimed:  # another thread claimed or moved it meanwhile, or the cap is reached
            current = comp.slots.get(sig)
            if current is not None and current.state is State.READY:
                return self._run_ready(comp, sig, current, args, kwargs)
            return comp.eager(*args, **kwargs)
        if comp.settings.background and not handover:
            return self._resolve_in_background(comp, sig, slot, generation, args, kwargs)
        try:
            result = self.resolver.resolve(comp, sig, args, kwargs, previous=slot)
        except BaseException:
            self._forget(comp, sig, slot)
            raise
        self._apply(comp, slot, result, generation)
        if result.output is not NOTHING and result.state is State.READY:
            return result.output  # the build or load ran this call (and counted it)
        if result.state is State.READY:
            return self.call(comp, args, kwargs)  # made ready without running it (memory, same key)
        if result.key:
            self.stats.record(comp.name, result.key, calls=1, fallbacks=1 if result.state is State.FAILED else 0)
        return result.output if result.output is not NOTHING else comp.eager(*args, **kwargs)

    def _resolve_in_background(self, comp: Component, sig: tuple, slot: Slot, generation: int, args: tuple,
                               kwargs: dict[str, Any]) -> Any:
        try:
            out = comp.eager(*args, **kwargs)  # the caller's own error surfaces here, before any build
        except BaseException:
            self._forget(comp, sig, slot)
            raise
        try:
            backend = self.backend_for(comp.device, comp.settings)
        except TrtRuntimeError as err:  # the next call resolves it in the caller's thread, which says why
            with comp.lock:
                slot.move(State.EAGER, error=str(err), retry_at=time.monotonic(), handover=True)
            return out
        if backend.name == "eager":  # nothing to build: no worker, no build process
            self._apply(comp, slot, Resolution(State.EAGER, error="backend 'eager'"), generation)
            return out
        in_child = comp.settings.build_process and build_process.can_build_in_process(comp)
        beside = backend.builds_beside_calls
        if not (in_child or beside):  # nothing the worker may do: the next call builds it, in this thread
            self._hand_over(comp, slot, built=False, in_child=False)
            return out
        example = builds.clone_call(args, kwargs)
        ready_event = None
        if comp.device is not None and comp.device.type == "cuda":
            ready_event = torch.cuda.Event()
            ready_event.record()
        build_queue = builds.queue_for(comp.device, comp.settings.max_pending_builds)
        modes = builds.grad_modes()  # per thread: the worker builds under the caller's grad/inference mode

        def job() -> None:
            if build_queue.cancelled():
                return
            if ready_event is not None:
                torch.cuda.current_stream().wait_event(ready_event)
            with builds.entered(modes):
                built = in_child and build_process.build_in_child(comp, *example)  # writes the entry
                if build_queue.cancelled():  # shutting down: nothing is loaded, built or published any more
                    return
                with comp.lock:  # a retried or stale signature keeps its history: the caller's thread resolves it
                    fresh = slot.fn is None and not slot.revalidate
                if built and fresh:
                    version = comp.weights_version()
                    loaded = self._load_beside_calls(comp, sig, example)
                    if build_queue.cancelled():
                        return
                    if loaded is not None:
                        self._apply(comp, slot, loaded, generation, version_before=version)
                        return
                if built or not beside:
                    if not build_queue.cancelled():
                        self._hand_over(comp, slot, built, in_child)
                    return
                version = comp.weights_version()
                try:
                    result = self.resolver.resolve(comp, sig, *example, previous=slot, run_call=False)
                except Exception as err:  # noqa: BLE001 - strict/configuration errors have no caller here
                    comp.warn_once(f"background:{type(err).__name__}", "[%s] background build failed: %s; running "
                                   "eagerly", comp.name, err)
                    result = Resolution(State.FAILED, slot.key, error=str(err))
            if not build_queue.cancelled():
                self._apply(comp, slot, result, generation, version_before=version)

        shapes = short_shapes(tensor_shapes(args, kwargs))
        if build_queue.submit(f"{comp.name} {shapes}", job):
            logger.info("[%s] queued a background build for input shapes %s; running eagerly until it is ready",
                        comp.name, shapes)
        else:
            with comp.lock:
                slot.move(State.EAGER, error="build queue full", retry_at=time.monotonic() + _QUEUE_FULL_RETRY_S)
        return out

    def _load_beside_calls(self, comp: Component, sig: tuple, example: tuple) -> Resolution | None:
        """Load what a build process wrote here, in the worker, so that no caller waits for it (an SD1.5 UNet's load
        took 11 s of one image in the caller's thread); None leaves it to the caller's next call."""
        try:
            result = self.resolver.load_beside_calls(comp, sig, *example)
        except Exception as err:  # noqa: BLE001 - the caller's thread loads it instead, and reports
            logger.debug("[%s] no load beside the calls (%s: %s)", comp.name, type(err).__name__, err)
            return None
        return result if result is not None and result.state in (State.READY, State.FAILED) else None

    def _hand_over(self, comp: Component, slot: Slot, built: bool, in_child: bool) -> None:
        """Leave the rest of a background build to the caller's thread: its next call of this signature
        loads the entry a child process wrote, or builds it there. Never in this worker thread: a trace
        beside the process's running modules can break them (``Backend.builds_beside_calls``)."""
        if built:
            reason = "built in a separate process; loaded by the next call"
            logger.info("[%s] background build finished in a separate process; the next call loads it", comp.name)
        else:
            reason = "to be built by the next call, in the caller's thread"
            why = ("its build process failed" if in_child else
                   "it cannot be rebuilt in a separate process (only diffusers and transformers models without "
                   "LoRA adapters or declared shape ranges, with a writable cache, can)")
            comp.warn_once("background:thread", "[%s] background=True, but %s: it is built in the calling thread "
                           "on its next call, since a compiler tracing in a thread beside running modules can "
                           "break them", comp.name, why)
        with comp.lock:
            slot.move(State.EAGER, error=reason, retry_at=time.monotonic(), handover=True)

    def _apply(self, comp: Component, slot: Slot, result: Resolution, generation: int,
               version_before: int | None = None) -> None:
        """Move ``slot`` to what the resolver found (the one place a resolution changes a slot).
        ``version_before``: the weights' version when a resolution beside the caller's calls began; an in-place edit
        since (a LoRA fused by the caller meanwhile) makes an artifact holding weights stale at once."""
        with comp.lock:
            if result.state is State.READY:
                version = comp.weights_version() if result.holds_weights else None
                stale = generation != comp.generation or (  # weights changed while it was being built
                    version_before is not None and version is not None and version != version_before)
                slot.move(State.READY, key=result.key, fn=result.fn, stats=result.stats, error=None,
                          revalidate=False, graphs=None, weights_version=version)
                if stale:
                    slot.move(State.STALE)
            elif result.state is State.FAILED:
                retry_at = None
                if result.transient:
                    slot.transient_failures += 1
                    retry_at = time.monotonic() + _backoff(comp.settings, slot.transient_failures)
                slot.move(State.FAILED, key=result.key or slot.key, error=result.error, retry_at=retry_at)
            else:
                slot.move(State.EAGER, key=result.key, error=result.error)

    def _forget(self, comp: Component, sig: tuple, slot: Slot) -> None:
        """The call was the caller's error (or was interrupted): leave no trace of it."""
        with comp.lock:
            if comp.slots.get(sig) is slot and not slot.key:
                del comp.slots[sig]
            elif slot.state is State.COMPILING:
                slot.move(State.FAILED, error="interrupted", retry_at=time.monotonic())

    def _run_failed(self, comp: Component, slot: Slot, err: Exception, args: tuple, kwargs: dict[str, Any]) -> Any:
        """A ready artifact raised. Re-run eagerly; if eager succeeds the artifact is at fault: it is
        re-validated against eager on a later call (not deleted, nothing written to disk), and given up
        for this process after repeated failures."""
        shapes = tensor_shapes(args, kwargs)
        if comp.settings.strict:
            raise EngineRunError(f"compiled artifact raised {type(err).__name__}: {err}", component=comp.name,
                                 shapes=shapes, hint="set strict=False to fall back to eager") from err
        out = comp.eager(*args, **kwargs)  # if eager raises too, the input is at fault: let it propagate
        error = f"run failed: {type(err).__name__}: {err}"[:2000]
        with comp.lock:
            if slot.state is State.READY:
                slot.run_failures += 1
                retry = slot.run_failures < _RUN_FAILURES_BEFORE_GIVING_UP
                slot.move(State.FAILED, error=error, revalidate=True,
                          retry_at=time.monotonic() + _backoff(comp.settings, slot.run_failures) if retry else None)
                comp.graphs.clear()
        self.stats.record(comp.name, slot.key, state=State.FAILED.value, error=error, fallbacks=1, calls=1)
        warnings.warn(f"trt_runtime: [{comp.name}] compiled artifact failed at run time for input shapes "
                      f"{short_shapes(shapes)} ({type(err).__name__}: {err}); running eagerly"
                      + (", will re-validate it later" if slot.retry_at is not None else " from now on"),
                      RuntimeWarning, stacklevel=5)
        return out

    # ------------------------------------------------------------------------------------------ public
    def summary(self) -> str:
        """A printable table of what was compiled, loaded and reused (and what is compiling now)."""
        return self.stats.summary()


def _backoff(settings: RuntimeSettings, failures: int) -> float:
    return min(settings.retry_backoff_s * 4 ** (failures - 1), 3600.0)


_DEFAULT: TensorRTRuntime | None = None
_DEFAULT_LOCK = threading.Lock()


def get_default_runtime() -> TensorRTRuntime:
    """The process-wide runtime used by wrappers that are given none (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TensorRTRuntime()
        return _DEFAULT
