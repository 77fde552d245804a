"""``TensorRTRuntime``: compile on first use, cache on disk, reload later, fall back to eager on failure.

Per call of a wrapped component the runtime looks the call's signature up in memory (the hot path: a
tuple hash, no weight hashing, no module walk). On a miss it computes the full cache key once, tries
the disk, and else compiles under a per-key lock. Each key moves through
``miss -> compiling -> ready | failed``; ``failed`` is remembered in memory and on disk, so a bad key
runs eagerly instead of recompiling on every call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import keys
from .backends import Backend, CompileRequest, check_backend_name, select_backend
from .cache import FAILED, READY, EngineCache
from .errors import (
    CacheError,
    ConfigurationError,
    EngineBuildError,
    EngineRunError,
    TrtRuntimeError,
    UnkeyableInputError,
    ValidationError,
)
from .settings import RuntimeSettings, default_tolerance, resolve_cache_dir
from .shapes import DimLike, normalize_spec
from .stats import KeyStats, RuntimeStats
from .validation import relative_error

__all__ = ["TensorRTRuntime", "Component", "get_default_runtime"]

logger = logging.getLogger(__name__)

_DTYPE_PRECISION = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclasses.dataclass
class _Slot:
    """One signature's state in memory: ``ready`` with a callable, or ``failed``/``eager`` without."""

    state: str
    key: str = ""
    fn: Callable[..., Any] | None = None
    error: str | None = None
    stats: KeyStats | None = None
    """This key's statistics row: the hot path bumps ``calls`` on it directly, without the lock."""


class Component:
    """One wrapped module inside a runtime: its eager callable and its compiled signatures.

    ``eager`` is what runs when nothing is compiled (the module's own forward); ``module`` is the
    ``nn.Module`` whose parameters the artifact is built from. Wrappers call the component like the
    module itself.
    """

    def __init__(
        self,
        runtime: TensorRTRuntime,
        name: str,
        module: torch.nn.Module,
        eager: Callable[..., Any] | None = None,
        names: tuple[str, ...] = (),
        shapes: dict[str, dict[int, DimLike]] | None = None,
        settings: RuntimeSettings | None = None,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.module = module
        self.eager = eager if eager is not None else module
        self.names = tuple(names)
        self.spec = normalize_spec(shapes)
        self.settings = settings or runtime.settings
        self.slots: dict[tuple, _Slot] = {}
        self._fingerprints: dict[Any, dict[str, Any]] = {}
        self._probe = next(iter(module.parameters()), None)
        self._probe_state = self._read_probe()
        self._warned: set[str] = set()
        self._lock = threading.RLock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.runtime.call(self, args, kwargs)

    def __repr__(self) -> str:
        return f"Component({self.name!r}, {len(self.slots)} signatures)"

    # The module may be moved, cast or given new weights between calls; these keep the keys honest.
    def _read_probe(self) -> tuple | None:
        p = self._probe
        return None if p is None else (p.dtype, p.device, p.requires_grad)

    def check_module(self) -> tuple | None:
        """O(1) read of the module's dtype/device on the hot path. Compiled signatures are kept per
        state, so offloading that moves a module back and forth reuses them instead of rebuilding."""
        state = self._read_probe()
        if state != self._probe_state:
            logger.debug("[%s] module moved or cast (%s -> %s)", self.name, self._probe_state, state)
            self._probe_state = state
        return state

    def invalidate(self) -> None:
        """Forget compiled callables and the weights fingerprint (after changing weights in place,
        e.g. fusing a LoRA). The next call looks up or builds artifacts for the new weights."""
        with self._lock:
            self.slots.clear()
            self._fingerprints.clear()

    def fingerprint(self, with_weights: bool = True) -> dict[str, Any]:
        """The module's fingerprint for its current dtype (computed once per dtype, then remembered).
        ``with_weights=False`` leaves the weight values out (and skips hashing them)."""
        tag = (None if self._probe is None else self._probe.dtype, with_weights)
        if tag not in self._fingerprints:
            started = time.perf_counter()
            digest = self.settings.weights_digest if with_weights else None
            self._fingerprints[tag] = keys.module_fingerprint(self.module, digest)
            logger.debug("[%s] fingerprinted module in %.3f s", self.name, time.perf_counter() - started)
        return self._fingerprints[tag]

    @property
    def device(self) -> torch.device | None:
        return None if self._probe is None else self._probe.device

    @property
    def precision(self) -> str:
        if self.settings.precision:
            return self.settings.precision
        return _DTYPE_PRECISION.get(self._probe.dtype if self._probe is not None else None, "fp32")

    def warn_once(self, topic: str, message: str, *args: Any) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            logger.warning(message, *args)


class TensorRTRuntime:
    """Compiles, caches and runs wrapped components. One per process is usually enough.

    ``TensorRTRuntime(settings=None, *, cache_dir=None, **overrides)``: ``overrides`` are
    ``RuntimeSettings`` fields (``backend="inductor"``, ``strict=True``...).
    """

    def __init__(self, settings: RuntimeSettings | None = None, *, cache_dir=None, **overrides: Any) -> None:
        settings = settings or RuntimeSettings()
        if cache_dir is not None:
            overrides["cache_dir"] = os.fspath(cache_dir)
        self.settings = settings.replace(**overrides)
        check_backend_name(self.settings.backend)
        self.stats = RuntimeStats()
        self._cache: EngineCache | None = None
        self._backends: dict[str, Backend] = {}
        self._environments: dict[str, dict[str, Any]] = {}
        self._persist = self.settings.persist
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"TensorRTRuntime(backend={self.settings.backend!r}, cache_dir={str(self.cache.root)!r})"

    # ------------------------------------------------------------------------------------------ plumbing
    @property
    def cache(self) -> EngineCache:
        if self._cache is None:
            s = self.settings
            self._cache = EngineCache(resolve_cache_dir(s.cache_dir), s.max_cache_bytes, s.verify_checksum)
        return self._cache

    def component(self, name: str, module: torch.nn.Module, **kwargs: Any) -> Component:
        """A ``Component`` of this runtime for ``module`` (see ``Component`` for the arguments)."""
        return Component(self, name, module, **kwargs)

    def backend_for(self, device: torch.device | None, settings: RuntimeSettings | None = None) -> Backend:
        name = (settings or self.settings).backend
        device_type = device.type if device is not None else "cpu"
        with self._lock:
            cache_key = f"{name}:{device_type}"
            if cache_key not in self._backends:
                self._backends[cache_key] = select_backend(name, device)
            return self._backends[cache_key]

    def _environment(self, backend: Backend, device: torch.device | None) -> dict[str, Any]:
        tag = f"{backend.name}:{device}"
        if tag not in self._environments:
            self._environments[tag] = {**keys.environment(device), **backend.versions()}
        return self._environments[tag]

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
        if comp._probe is not None and comp._probe.requires_grad and torch.is_grad_enabled():
            comp.warn_once("grad", "[%s] gradients are enabled for trainable weights; compiled artifacts "
                           "serve inference only, running eagerly (use torch.no_grad())", comp.name)
            return comp.eager(*args, **kwargs)

        slot = comp.slots.get(sig)
        if slot is None:
            with comp._lock:
                slot = comp.slots.get(sig)
                if slot is None:
                    slot, out = self._resolve(comp, sig, args, kwargs)
                    comp.slots[sig] = slot
                    if out is not _NOTHING:
                        return out
        if slot.state == READY:
            try:
                out = slot.fn(*args, **kwargs)
            except Exception as err:
                return self._run_failed(comp, slot, err, args, kwargs)
            slot.stats.calls += 1
            return out
        if slot.key:
            self.stats.record(comp.name, slot.key, calls=1, fallbacks=1 if slot.state == FAILED else 0)
        return comp.eager(*args, **kwargs)

    # ------------------------------------------------------------------------------------------ miss
    def _resolve(self, comp: Component, sig: tuple, args: tuple, kwargs: dict[str, Any]):
        """Disk, else compile. Returns (slot, output of this call or _NOTHING)."""
        settings = comp.settings
        if len(comp.slots) >= settings.max_shapes_per_component:
            comp.warn_once("too-many", "[%s] %d signatures compiled already (max_shapes_per_component); "
                           "new ones run eagerly", comp.name, len(comp.slots))
            return _Slot("eager"), _NOTHING
        try:
            backend = self.backend_for(comp.device, settings)
        except TrtRuntimeError as err:
            if settings.strict:
                raise
            comp.warn_once("backend", "[%s] %s; running eagerly", comp.name, err)
            return _Slot("eager"), _NOTHING
        if backend.name == "eager":
            return _Slot("eager"), _NOTHING

        request = CompileRequest(
            component=comp.name, module=comp.eager if isinstance(comp.eager, torch.nn.Module) else comp.module,
            args=args, kwargs=kwargs, names=comp.names, dynamic=_active_dims(sig, comp.spec),
            settings=settings, device=comp.device, precision=comp.precision,
        )
        shapes = keys.tensor_shapes(args, kwargs)
        parts = {
            "component": comp.name,
            "module": comp.fingerprint(with_weights=backend.embeds_weights(settings)),
            "signature": keys.signature_json(sig[1]),
            "backend": backend.name,
            "options": settings.describe(backend.artifact_fields),
            "precision": comp.precision,
            "environment": self._environment(backend, comp.device),
        }
        key = keys.cache_key(parts)
        meta = {**parts, "key": key, "shapes": [list(s) for s in shapes]}
        self.stats.record(comp.name, key, _short_shapes(shapes), backend=backend.name)

        loaded = self._load(comp, backend, request, key, args, kwargs)
        if loaded is not None:
            return loaded
        if self._persist and backend.persistent:
            try:
                with self.cache.lock(key, settings.lock_timeout_s):
                    loaded = self._load(comp, backend, request, key, args, kwargs, quiet=True)
                    if loaded is not None:  # another process built it while we waited
                        return loaded
                    return self._build(comp, backend, request, key, meta, shapes)
            except CacheError as err:
                self._cache_unwritable(comp, err)
        return self._build(comp, backend, request, key, meta, shapes)

    def _load(self, comp, backend, request, key, args, kwargs, quiet=False):
        if not (self._persist and backend.persistent):
            return None
        entry = self.cache.read(key)
        if entry is None:
            return None
        if entry.status == FAILED and not comp.settings.retry_failed:
            error = entry.meta.get("error", "unknown error")
            comp.warn_once(f"failed:{key}", "[%s] an earlier build for shapes %s failed (%s); running eagerly "
                           "(clear it with `trt-runtime cache clear --failed` or retry_failed=True)",
                           comp.name, entry.meta.get("shapes"), error)
            self.stats.record(comp.name, key, state=FAILED, error=error)
            return _Slot(FAILED, key, error=error), _NOTHING
        if entry.status != READY:
            return None
        started = time.perf_counter()
        try:
            fn = backend.load(request, entry.path)
            out = fn(*args, **kwargs)
        except Exception as err:
            logger.warning("[%s] cached artifact %s could not be loaded (%s: %s); rebuilding it",
                           comp.name, entry.path, type(err).__name__, err)
            return None
        seconds = time.perf_counter() - started
        self.cache.touch(entry)
        if not quiet:
            logger.info("[%s] loaded %s artifact from %s in %.2f s", comp.name, backend.name, entry.path, seconds)
        row = self.stats.record(comp.name, key, state=READY, loads=1, load_seconds=seconds, calls=1)
        return _Slot(READY, key, fn, stats=row), out

    def _build(self, comp, backend, request, key, meta, shapes):
        settings = comp.settings
        logger.info("[%s] compiling with %s for input shapes %s (key %s); this can take minutes",
                    comp.name, backend.name, _short_shapes(shapes), key[:12])
        started = time.perf_counter()
        try:
            with _Progress(comp.name, backend.name, settings.progress_interval_s):
                fn = backend.compile(request)
                out = fn(*request.args, **request.kwargs)
        except ConfigurationError:
            raise  # the user's settings are wrong: say so now, do not remember it as this key's failure
        except Exception as err:
            error = f"{type(err).__name__}: {err}".strip()[:2000]
            return self._build_failed(comp, key, meta, shapes, error, err, EngineBuildError), _NOTHING
        seconds = time.perf_counter() - started
        logger.info("[%s] compiled in %.1f s", comp.name, seconds)
        row = self.stats.record(comp.name, key, state=READY, compiles=1, compile_seconds=seconds, calls=1)

        if settings.validate:
            reference = comp.eager(*request.args, **request.kwargs)
            tolerance = settings.tolerance or default_tolerance(comp.precision)
            error_value = relative_error(out, reference)
            if not error_value <= tolerance:
                message = f"output differs from eager by {error_value:.3g} (tolerance {tolerance:.3g})"
                slot = self._build_failed(comp, key, meta, shapes, message, None, ValidationError)
                return slot, reference
            logger.info("[%s] validated against eager: relative error %.3g", comp.name, error_value)

        if self._persist and backend.persistent:
            meta = {**meta, "compile_seconds": round(seconds, 3)}
            try:
                entry = self.cache.write(key, meta, lambda folder: backend.save(fn, request, folder))
                logger.info("[%s] saved artifact to %s", comp.name, entry.path)
            except CacheError as err:
                self._cache_unwritable(comp, err)
        return _Slot(READY, key, fn, stats=row), out

    def _build_failed(self, comp, key, meta, shapes, error, cause, exc_type) -> _Slot:
        """Remember a failed key (memory and disk) and warn once; strict mode raises instead."""
        self.stats.record(comp.name, key, state=FAILED, error=error)
        if comp.settings.strict:
            raise exc_type(f"build failed: {error}", component=comp.name, shapes=shapes,
                           hint="set strict=False to fall back to eager PyTorch") from cause
        if self._persist:
            try:
                self.cache.write_failure(key, meta, error)
            except CacheError as err:
                self._cache_unwritable(comp, err)
        comp.warn_once(f"build:{key}", "[%s] build for input shapes %s failed, running eagerly from now on: %s",
                       comp.name, _short_shapes(shapes), error)
        return _Slot(FAILED, key, error=error)

    def _run_failed(self, comp: Component, slot: _Slot, err: Exception, args, kwargs):
        """A ready artifact raised. Re-run eagerly once; if eager succeeds the artifact is at fault."""
        shapes = keys.tensor_shapes(args, kwargs)
        if comp.settings.strict:
            raise EngineRunError(f"compiled artifact raised {type(err).__name__}: {err}", component=comp.name,
                                 shapes=shapes, hint="set strict=False to fall back to eager") from err
        out = comp.eager(*args, **kwargs)  # if eager raises too, the input is at fault: let it propagate
        error = f"run failed: {type(err).__name__}: {err}"[:2000]
        slot.state, slot.fn, slot.error = FAILED, None, error
        self.stats.record(comp.name, slot.key, state=FAILED, error=error, fallbacks=1, calls=1)
        if self._persist:
            entry = self.cache.read(slot.key)
            try:
                self.cache.write_failure(slot.key, entry.meta if entry else {"component": comp.name}, error)
            except CacheError as cache_err:
                self._cache_unwritable(comp, cache_err)
        warnings.warn(f"trt_runtime: [{comp.name}] compiled artifact failed at run time for input shapes "
                      f"{_short_shapes(shapes)} ({type(err).__name__}: {err}); this call and later ones with "
                      "these shapes run eagerly", RuntimeWarning, stacklevel=4)
        return out

    def _cache_unwritable(self, comp: Component, err: CacheError) -> None:
        comp.warn_once(f"cache:{err.path}", "[%s] engine cache unavailable (%s); compiled artifacts stay in "
                       "memory for this process only", comp.name, err)

    # ------------------------------------------------------------------------------------------ public
    def summary(self) -> str:
        """A printable table of what was compiled, loaded and reused."""
        return self.stats.summary()


class _NothingType:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<nothing>"


_NOTHING = _NothingType()


def _active_dims(sig: tuple, spec) -> dict:
    """The declared dims this call's tensors fall inside (only those become dynamic)."""
    if not spec:
        return {}
    from .shapes import Dim

    active: dict[str, dict[int, Dim]] = {}
    for path, dims in spec.items():
        for index, dim in dims.items():
            if _sig_has_dim(sig, dim):
                active.setdefault(path, {})[index] = dim
    return active


def _sig_has_dim(node: Any, dim) -> bool:
    if node is dim:
        return True
    if isinstance(node, tuple):
        return any(_sig_has_dim(child, dim) for child in node)
    return False


def _short_shapes(shapes: list[tuple[int, ...]]) -> str:
    text = ", ".join("x".join(map(str, s)) or "scalar" for s in shapes[:6])
    return text + (f", ... ({len(shapes)} tensors)" if len(shapes) > 6 else "")


class _Progress:
    """Logs a line every ``interval`` seconds while a build runs, so nobody thinks the process hung."""

    def __init__(self, component: str, backend: str, interval: float) -> None:
        self.component, self.backend, self.interval = component, backend, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Progress:
        if self.interval > 0:
            self._started = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="trt_runtime-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            logger.info("[%s] still compiling with %s (%.0f s so far)", self.component, self.backend,
                        time.perf_counter() - self._started)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


_DEFAULT: TensorRTRuntime | None = None
_DEFAULT_LOCK = threading.Lock()


def get_default_runtime() -> TensorRTRuntime:
    """The process-wide runtime used by wrappers that are given none (created on first use)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = TensorRTRuntime()
        return _DEFAULT
