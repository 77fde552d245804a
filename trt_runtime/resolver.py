"""Getting a compiled callable for one signature: memory, refit, disk, or a build. Off the hot path.

``Resolver.resolve`` computes the cache key once, then tries in order: the artifact already in memory
(a stale signature whose key did not change), a refit of it (new weights, same engine), the disk cache,
and a build under the per-key lock (another process building the same key is waited for and loaded).
It returns a ``Resolution``: the state the signature goes to and, when the resolver ran the call
itself (a build or a load runs the real call once), that call's output.

Failures are told apart here, in one place:

- the caller's error: the call fails eagerly too (wrong dtype, wrong channel count, a meta tensor).
  Eager's exception propagates as eager raises it; nothing is recorded or counted.
- transient: out of memory, a full disk, an interrupted build. Remembered in memory with a retry after a
  backoff, never written to disk.
- deterministic: export or conversion cannot handle the graph, or validation rejects the output.
  Remembered in memory and on disk (``meta.json`` with the error text), so no process retries it on
  every call; ``retry_failed=True`` or ``trt-runtime cache clear --failed`` asks again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from . import keys
from .backends import Backend, CompileRequest
from .cache import FAILED, READY
from .calls import tensor_shapes
from .errors import CacheError, ConfigurationError, EngineBuildError, TrtRuntimeError, ValidationError
from .loaded import LOADED, Identity, identity
from .logging_utils import Heartbeat, event
from .settings import default_tolerance
from .shapes import active_dims
from .state import State
from .stats import short_shapes
from .validation import relative_error

if TYPE_CHECKING:  # pragma: no cover
    from .component import Component
    from .runtime import TensorRTRuntime

__all__ = ["Resolver", "Resolution", "NOTHING", "is_transient"]

logger = logging.getLogger(__name__)


class _Nothing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<nothing>"


NOTHING: Any = _Nothing()
"""``Resolution.output`` when the resolver did not run the call."""


@dataclasses.dataclass
class Resolution:
    """What a signature becomes, and the output of the call if the resolver ran it."""

    state: State
    key: str = ""
    fn: Callable[..., Any] | None = None
    output: Any = NOTHING
    error: str | None = None
    transient: bool = False
    stats: Any = None
    holds_weights: bool = False
    """The artifact holds a copy of the weights (a TensorRT engine): the runtime watches the module's
    weights for in-place changes and never serves it after one."""


_TRANSIENT_TEXT = ("out of memory", "no space left on device", "disk quota exceeded", "cannot allocate memory",
                   "resource temporarily unavailable")
_TRANSIENT_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EINTR, errno.EAGAIN}


def is_transient(err: BaseException) -> bool:
    """Whether a failure may go away by itself (memory, disk space, an interruption), judged by the
    exception and its causes. Such failures are retried later and never written to disk."""
    seen = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (MemoryError, torch.cuda.OutOfMemoryError, InterruptedError, TimeoutError)):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNO:
            return True
        text = str(current).lower()
        if any(marker in text for marker in _TRANSIENT_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - started


class Resolver:
    """Loads, refits, builds, validates and persists artifacts for a runtime's components."""

    def __init__(self, runtime: TensorRTRuntime) -> None:
        self.runtime = runtime

    # ------------------------------------------------------------------------------------------ entry
    def resolve(self, comp: Component, sig: tuple, args: tuple, kwargs: dict[str, Any], *,
                previous: Any = None, run_call: bool = True) -> Resolution:
        """Resolve ``sig``. ``previous`` is the slot being re-resolved (stale or retried);
        ``run_call=False`` when the call was already answered eagerly (background builds): then the
        resolver only needs the call as an example, and a failing example is not re-checked eagerly."""
        return self._resolve(comp, sig, args, kwargs, previous=previous, run_call=run_call)

    def load_beside_calls(self, comp: Component, sig: tuple, args: tuple, kwargs: dict[str, Any]) -> Resolution | None:
        """In a build worker, beside the caller's running modules: load, run and validate the entry a build process
        wrote for ``sig`` (an example call), where its backend can do that without tracing. None when it cannot
        or the entry does not serve (the caller's thread then resolves it, and says why)."""
        return self._resolve(comp, sig, args, kwargs, previous=None, run_call=False, beside=True)

    def _resolve(self, comp: Component, sig: tuple, args: tuple, kwargs: dict[str, Any], *,
                 previous: Any, run_call: bool, beside: bool = False) -> Resolution | None:
        runtime, settings = self.runtime, comp.settings
        try:
            backend = runtime.backend_for(comp.device, settings)
        except TrtRuntimeError as err:
            if settings.strict:
                raise
            comp.warn_once("backend", "[%s] %s; running eagerly", comp.name, err)
            return Resolution(State.EAGER, error=str(err))
        if backend.name == "eager":
            return Resolution(State.EAGER, error="backend 'eager'")
        if beside and not backend.persistent:
            return None

        phases: dict[str, float] = {}
        shapes = tensor_shapes(args, kwargs)
        with _phase(phases, "fingerprint"):
            request, key, meta = self._describe(comp, backend, sig, args, kwargs)
        row = runtime.stats.record(comp.name, key, short_shapes(shapes), backend=backend.name,
                                   state=State.COMPILING.value)
        job = _Job(self, comp, backend, request, key, meta, shapes, phases, row, run_call,
                   revalidate=bool(previous is not None and previous.revalidate), beside=beside)

        if previous is not None and previous.fn is not None:  # stale: the weights changed
            if backend.can_refit(settings):
                refitted = job.refit(previous.fn)
                if refitted is not None:
                    return refitted
            elif previous.key == key:  # the artifact reads weights at run time: nothing to redo
                return job.ready(previous.fn, NOTHING, source=None)
        if beside:
            return job.load(beside=True)
        loaded = job.load()
        if loaded is not None:
            return loaded
        if runtime.persisting(backend, settings) and runtime.cache_for(settings).writable:
            try:
                with runtime.cache_for(settings).lock(key, settings.lock_timeout_s):
                    loaded = job.load(quiet=True)  # another process may have built it while we waited
                    return loaded if loaded is not None else job.build()
            except CacheError as err:
                runtime.cache_unwritable(comp, err)
        return job.build()

    # ------------------------------------------------------------------------------------------ key
    def _describe(self, comp: Component, backend: Backend, sig: tuple, args: tuple, kwargs: dict[str, Any]):
        settings = comp.settings
        request = CompileRequest(
            component=comp.name, module=comp.eager if isinstance(comp.eager, torch.nn.Module) else comp.module,
            args=args, kwargs=kwargs, names=comp.names, dynamic=active_dims(sig, comp.spec),
            settings=settings, device=comp.device, precision=comp.precision, traits=comp.traits,
        )
        parts = {
            "component": comp.name,
            "module": comp.fingerprint(with_weights=backend.embeds_weights(settings)),
            "signature": keys.signature_json(sig[1]),
            "backend": backend.name,
            "options": settings.describe(backend.artifact_fields),
            "precision": comp.precision,
            "traits": sorted(comp.traits),
            "environment": self.runtime.environment(backend, comp.device),
        }
        key = keys.cache_key(parts)
        meta = {**parts, "key": key, "shapes": [list(s) for s in tensor_shapes(args, kwargs)]}
        if backend.can_refit(settings):  # keyed without weights: the entry says which weights it holds
            meta["weights"] = comp.fingerprint(with_weights=True)["weights"]
        return request, key, meta


@dataclasses.dataclass
class _Job:
    """One resolution in progress: the pieces every step needs, and the steps."""

    resolver: Resolver
    comp: Component
    backend: Backend
    request: CompileRequest
    key: str
    meta: dict[str, Any]
    shapes: list[tuple[int, ...]]
    phases: dict[str, float]
    row: Any
    run_call: bool
    revalidate: bool = False
    mismatched: bool = False
    """A loaded artifact of this key missed its validation against eager: not loaded again by this job, and the
    entry built instead says so (``_REBUILT_AFTER_MISMATCH``)."""
    measured_error: float | None = None
    """The relative error against eager that this job last measured (``_distance``)."""
    beside: bool = False
    """Running in a build worker beside the caller's calls (``Resolver.load_beside_calls``)."""

    @property
    def runtime(self) -> TensorRTRuntime:
        return self.resolver.runtime

    @property
    def persisting(self) -> bool:
        return self.runtime.persisting(self.backend, self.request.settings)

    @property
    def cache(self):
        return self.runtime.cache_for(self.request.settings)

    def _call(self, fn: Callable[..., Any]) -> Any:
        return fn(*self.request.args, **self.request.kwargs)

    def ready(self, fn: Callable[..., Any], output: Any, source: str | None, **counters: Any) -> Resolution:
        chosen = self.backend.artifact_meta(fn).get("fastest")
        if chosen:
            counters["backend"] = f"{self.backend.name}:{chosen['chosen']}"
        row = self.runtime.stats.record(self.comp.name, self.key, state=State.READY.value, error=None,
                                        phases=self.phases, **counters)
        self.phases = {}
        if source:
            logger.info("[%s] %s", self.comp.name, source)
        holds = self.backend.embeds_weights(self.request.settings) or self.backend.can_refit(self.request.settings)
        return Resolution(State.READY, self.key, fn, output, stats=row, holds_weights=holds)

    # ------------------------------------------------------------------------------------------ refit
    def refit(self, fn: Callable[..., Any]) -> Resolution | None:
        """New weights into an existing artifact, when the backend can (refittable engines)."""
        if not self.backend.can_refit(self.request.settings):
            return None
        try:
            with _phase(self.phases, "refit"):
                refitted = self.backend.refit(fn, self.request)
                output = self._call(refitted) if self.run_call else NOTHING
        except Exception as err:  # noqa: BLE001 - a failed refit rebuilds
            logger.warning("[%s] refit failed (%s: %s); rebuilding", self.comp.name, type(err).__name__, err)
            return None
        return self.ready(refitted, output, f"refitted the {self.backend.name} artifact with new weights "
                          f"in {self.phases['refit']:.2f} s", refits=1)

    # ------------------------------------------------------------------------------------------ disk
    def load(self, quiet: bool = False, beside: bool = False) -> Resolution | None:
        """The entry of this key loaded, run on the call and checked, or None (a miss). ``beside``: in a worker
        thread beside running modules, where only artifacts that load without tracing may be loaded, and an
        entry that does not serve is left to the caller's thread (which loads it again and says why)."""
        runtime, comp = self.runtime, self.comp
        if not self.persisting or self.mismatched:
            return None
        with _phase(self.phases, "checksum"):
            entry = self.cache.read(self.key)
        if entry is None:
            return None
        if entry.status == FAILED and not comp.settings.retry_failed:
            error = str(entry.meta.get("error", "unknown error"))
            comp.warn_once(f"failed:{self.key}", "[%s] an earlier build for shapes %s failed (%s); running "
                           "eagerly (clear it with `trt-runtime cache clear --failed` or retry_failed=True)",
                           comp.name, short_shapes(self.shapes), error)
            runtime.stats.record(comp.name, self.key, state=State.FAILED.value, error=error)
            return Resolution(State.FAILED, self.key, error=error)
        if entry.status != READY:
            return None
        started = time.perf_counter()
        refits = 0
        ident = self._shared_identity(entry.meta)
        shared = LOADED.get(ident)  # loaded by another wrapper of this process: not loaded (and JIT-compiled) again
        logger.debug("[%s] %s %s", comp.name, "reusing the artifact this process loaded from" if shared else
                     "loading", entry.path, extra=event("load_start", comp.name, backend=self.backend.name,
                                                        shapes=short_shapes(self.shapes)))
        try:
            # the reader lock keeps eviction away, and a program with undeclared pickles is refused
            with contextlib.nullcontext() if shared else self.cache.loading(entry) as folder:
                if shared:
                    if beside and not self.backend.builds_beside_calls:
                        return None  # a refit would trace beside the running modules: the caller's thread reuses it
                    fn = loaded = shared
                else:
                    if beside and not self.backend.loads_beside_calls(folder):
                        return None
                    with _phase(self.phases, "load"):
                        fn = loaded = self.backend.load(self.request, folder)
                if "weights" in self.meta and entry.meta.get("weights") != self.meta["weights"]:
                    with _phase(self.phases, "refit"):  # the entry holds other weights than the module's
                        fn = self.backend.refit(fn, self.request)
                    refits = 1
                with _phase(self.phases, "load"):
                    output = self._call(fn)
        except CacheError:
            return None  # refused or gone: the cache has said why (once)
        except Exception as err:  # noqa: BLE001 - an artifact that does not load is a miss
            if beside:
                logger.debug("[%s] %s did not load beside the running calls (%s: %s)", comp.name, entry.path,
                             type(err).__name__, err)
                return None
            logger.warning("[%s] cached artifact %s could not be loaded (%s: %s); building it again",
                           comp.name, entry.path, type(err).__name__, err,
                           extra=event("load_end", comp.name, ok=False))
            return None
        if self.revalidate and not self._validate(output):
            return Resolution(State.FAILED, self.key, error=self.row.error, output=NOTHING)
        if getattr(fn, "validate_on_load", False) and not self.revalidate and \
                not self._validate(output, _recorded_error(entry.meta)):
            if beside:
                return None
            if entry.meta.get(_REBUILT_AFTER_MISMATCH):
                # built again after the same miss in another process, and missed again: it is not a bad entry but
                # this machine's compile; remembered as a failure, not rebuilt by every process
                return self.failed(None, ValidationError, replace_ready=True)
            comp.warn_once(f"load-validation:{self.key}", "[%s] the cached artifact %s does not match eager PyTorch "
                           "(%s); building it again", comp.name, entry.path, self.row.error)
            self.mismatched = True
            return None
        seconds = time.perf_counter() - started
        self.cache.touch(entry)
        if not shared and entry.checked:
            LOADED.put(ident, loaded)  # only what was checked against the recorded checksums is shared under them
        where = ", beside the calls" if beside else ""
        how = "reused the" if shared else "loaded"
        message = None if quiet else f"{how} {self.backend.name} artifact from {entry.path} in {seconds:.2f} s{where}"
        if shared and not quiet:
            message += " (already loaded in this process)"
        logger.debug("[%s] loaded", comp.name, extra=event("load_end", comp.name, seconds=seconds, ok=True))
        counted = {"reuses": 1} if shared else {"loads": 1, "load_seconds": seconds}
        return self.ready(fn, output, message, calls=int(self.run_call), refits=refits, **counted)

    # ------------------------------------------------------------------------------------------ build
    def build(self) -> Resolution:
        runtime, comp, settings = self.runtime, self.comp, self.request.settings
        shapes = short_shapes(self.shapes)
        logger.info("[%s] compiling with %s for input shapes %s (key %s); this can take minutes",
                    comp.name, self.backend.name, shapes, self.key[:12],
                    extra=event("build_start", comp.name, backend=self.backend.name, shapes=shapes))
        started = time.perf_counter()
        self.measured_error = None  # a failed load's validation measured another artifact
        try:
            with Heartbeat(comp.name, self.backend.name, settings.progress_interval_s, logger), \
                    _phase(self.phases, "compile"):
                fn = self.backend.compile(self.request)
                output = self._call(fn)
            # the parts a backend timed inside its compile (export, engine build); the rest is the first call
            self.phases.update({f"compile: {name}": seconds
                                for name, seconds in (getattr(fn, "build_phases", None) or {}).items()})
        except ConfigurationError:
            raise  # the user's settings are wrong: say so now, do not remember it as this key's failure
        except Exception as err:  # noqa: BLE001 - every build failure is classified below
            return self.failed(err, EngineBuildError)
        seconds = time.perf_counter() - started
        if (settings.validate or self.revalidate) and not self._validate(output):
            return self.failed(None, ValidationError)
        where = "kept in memory"
        if self.persisting and self.cache.writable:
            meta = {**self.meta, "compile_seconds": round(seconds, 3), **self.backend.artifact_meta(fn)}
            if self.mismatched:
                meta[_REBUILT_AFTER_MISMATCH] = True
            error = self._error_at_build(fn, output)
            if error is not None:
                meta[_ERROR_AT_BUILD] = error
            logger.debug("[%s] saving the artifact", comp.name, extra=event("phase", comp.name, phase="save"))
            try:
                with _phase(self.phases, "save"):
                    entry = self.cache.write(self.key, meta, lambda folder: self._save(fn, folder),
                                             optional=self.backend.optional_files)
                where = f"saved to {entry.path}"
            except CacheError as err:
                if isinstance(err.__cause__, _SaveFailed):  # the backend's serializer, not the disk
                    comp.warn_once(f"save:{self.key}", "[%s] the %s artifact could not be saved (%s); it serves "
                                   "this process only, the next one builds it again", comp.name, self.backend.name,
                                   err.__cause__)
                else:
                    runtime.cache_unwritable(comp, err)
        logger.info("[%s] compiled in %.1f s, %s", comp.name, seconds, where,
                    extra=event("build_end", comp.name, seconds=seconds, ok=True))
        return self.ready(fn, output, None, compiles=1, compile_seconds=seconds, calls=int(self.run_call))

    def _shared_identity(self, meta: dict[str, Any]) -> Identity | None:
        """What identifies this entry's loaded artifact in ``trt_runtime.loaded`` (None: not shared)."""
        # only artifacts loaded from disk are shared: a program just built may run parts of itself in PyTorch
        # with the building module's own parameters, which another wrapper's weights do not follow
        if not (self.backend.shares_loaded and self.request.settings.share_loaded):
            return None
        return identity(self.backend.name, self.key, meta.get("files"), self.request.device)

    def _save(self, fn: Callable[..., Any], folder) -> None:
        try:
            self.backend.save(fn, self.request, folder)
        except OSError:
            raise  # the disk: the cache reports it
        except Exception as err:  # noqa: BLE001 - a serializer that cannot handle this artifact
            raise _SaveFailed(f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}") from err

    def _error_at_build(self, fn: Callable[..., Any], output: Any) -> float | None:
        """For an artifact that is validated when loaded: its distance from eager now, which a later process's
        first load is held to. None where it cannot be measured (no output, eager fails, not finite)."""
        if not getattr(fn, "validate_on_load", False) or output is NOTHING:
            return None
        error = self.measured_error
        if error is None:
            try:
                error = self._distance(output)
            except Exception as err:  # noqa: BLE001 - a measurement only: the entry is saved without it
                logger.debug("[%s] no error against eager recorded (%s: %s)", self.comp.name, type(err).__name__,
                             err)
                return None
        if not math.isfinite(error):
            return None
        if error > self.tolerance:
            self.comp.warn_once(f"build-error:{self.key}", "[%s] the compiled artifact differs from eager PyTorch by "
                                "%.3g (tolerance %.3g); set validate=True to refuse such builds", self.comp.name,
                                error, self.tolerance)
        return error

    @property
    def tolerance(self) -> float:
        return self.comp.settings.tolerance or default_tolerance(self.comp.precision)

    def _distance(self, output: Any) -> float:
        """``output``'s relative error against eager's for this call (eager runs once, without cudnn autotuning)."""
        # beside the caller's calls cuDNN's process-wide setting stays as it is: the caller has run these shapes already
        quiet_cudnn = contextlib.nullcontext() if self.beside else _no_cudnn_autotuning()
        with _phase(self.phases, "validate"), quiet_cudnn:
            self.measured_error = relative_error(output, self._call(self.comp.eager))
        return self.measured_error

    def _validate(self, output: Any, at_build: float | None = None) -> bool:
        """Compare ``output`` with eager's for this call. Accepted within the settings' tolerance, or, for an
        artifact loaded from disk, within twice the distance it had from eager when it was built, at most
        ``_MAX_LOAD_SLACK`` tolerances (a deep transformer in bf16 with random weights sits near the tolerance, and
        eager itself varies between processes): a wrong artifact misses by orders of magnitude."""
        comp = self.comp
        logger.debug("[%s] validating against eager", comp.name, extra=event("phase", comp.name, phase="validate"))
        error = self._distance(output)
        tolerance = self.tolerance
        if at_build is not None:
            tolerance = max(tolerance, min(2.0 * at_build, _MAX_LOAD_SLACK * tolerance))
        if error <= tolerance:
            logger.info("[%s] validated against eager: relative error %.3g", comp.name, error)
            return True
        self.row.error = f"output differs from eager by {error:.3g} (tolerance {tolerance:.3g})"
        return False

    def failed(self, err: BaseException | None, exc_type: type[TrtRuntimeError], *,
               replace_ready: bool = False) -> Resolution:
        """Classify a failure (caller's, transient, deterministic), remember it accordingly."""
        runtime, comp = self.runtime, self.comp
        error = self.row.error if err is None else f"{type(err).__name__}: {err}".strip()[:2000]
        output = NOTHING
        if err is not None and self.run_call:
            try:
                output = self._call(comp.eager)
            except BaseException:  # eager fails too: the caller's own error, nothing is recorded
                runtime.stats.discard(comp.name, self.key)
                raise
        transient = err is not None and is_transient(err)
        runtime.stats.record(comp.name, self.key, state=State.FAILED.value, error=error)
        logger.debug("[%s] build failed", comp.name, extra=event("build_end", comp.name, ok=False, error=error))
        if comp.settings.strict:
            raise exc_type(f"build failed: {error}", component=comp.name, shapes=self.shapes,
                           hint="set strict=False to fall back to eager PyTorch") from err
        if transient:
            comp.warn_once(f"transient:{self.key}", "[%s] build for input shapes %s failed for a reason that may "
                           "pass (%s); running eagerly and retrying later", comp.name, short_shapes(self.shapes),
                           error)
            return Resolution(State.FAILED, self.key, error=error, output=output, transient=True)
        if self.persisting and self.cache.writable:
            try:
                self.cache.write_failure(self.key, self.meta, error, replace_ready=replace_ready)
            except CacheError as cache_err:
                runtime.cache_unwritable(comp, cache_err)
        comp.warn_once(f"build:{self.key}", "[%s] build for input shapes %s failed, running eagerly from now on: "
                       "%s", comp.name, short_shapes(self.shapes), error)
        return Resolution(State.FAILED, self.key, error=error, output=output)


_ERROR_AT_BUILD = "error_vs_eager_at_build"
"""meta.json field: the relative error against eager an artifact that validates on load had when it was built."""
_REBUILT_AFTER_MISMATCH = "rebuilt_after_load_mismatch"
"""meta.json field: this entry replaced one whose loaded artifact did not match eager."""
_MAX_LOAD_SLACK = 5.0
"""A loaded artifact is held to twice its error at build time, but never to more than this many tolerances."""


def _recorded_error(meta: dict[str, Any]) -> float | None:
    value = meta.get(_ERROR_AT_BUILD)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return float(value)


class _SaveFailed(RuntimeError):
    """A backend could not serialize an artifact it built (told apart from a full or read-only disk)."""


@contextlib.contextmanager
def _no_cudnn_autotuning() -> Iterator[None]:
    """The eager reference of a validation runs once: with ``cudnn.benchmark`` on it would autotune every
    convolution first (seconds for a UNet, on the warm start it exists to shorten). Only that flag is touched
    (``cudnn.flags`` would also reset TF32 and precision settings, and reading ``allow_tf32`` raises once a
    user has set the newer ``fp32_precision``); it is restored afterwards."""
    cudnn = torch.backends.cudnn
    if not cudnn.benchmark:
        yield
        return
    cudnn.benchmark = False
    try:
        yield
    finally:
        cudnn.benchmark = True
