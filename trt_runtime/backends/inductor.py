"""torch.compile (inductor) backend: runs on CPU and GPU, and persists through torch's cache artifacts.

Compiling is lazy: ``compile()`` returns the ``torch.compile`` wrapper and the runtime's first call
triggers (and times) the real work. ``save()`` stores the cache artifacts torch recorded during that first
call (the inductor FX-graph, AOTAutograd and autotuning cache entries of this key only: each entry holds
its own delta, so the disk grows linearly with the keys); ``load()`` feeds them to
``torch.compiler.load_cache_artifacts()`` so the next process's first call skips code generation.

When dynamo reuses code it already compiled in this process (the same module wrapped again after
``unwrap``), torch records nothing new and the delta is empty; that entry then stores the deltas of every
key this process saved, which always contains what it needs.

The backend never changes the user's module: ``channels_last`` converts the call's 4-D inputs, not the
weights (inductor chooses convolution weight layouts itself), and CUDA graphs are the runtime's
(``graphs.py``), not a process-wide mode.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..calls import dtype_of, iter_tensors
from ..errors import BackendUnavailableError, EngineBuildError
from ..logging_utils import event
from ..shapes import constraint_hint, first_lines
from . import _inductor_aot as aot
from .base import Backend, CompileRequest

__all__ = ["InductorBackend"]

logger = logging.getLogger(__name__)

ARTIFACT_STEM = "inductor_cache"
"""Artifact files are ``inductor_cache.<n>.bin``: one delta, or every delta of the process (see above)."""


class InductorBackend(Backend):
    name = "inductor"
    artifact_fields = frozenset(
        {"inductor_mode", "fullgraph", "inductor_options", "channels_last", "precision", "inductor_precompile"}
    )

    def embeds_weights(self, settings) -> bool:
        # Parameters are graph inputs of the compiled code unless inductor's "freezing" folds them in.
        return bool((settings.inductor_options or {}).get("freezing", False))

    def check_available(self, device):
        if not hasattr(torch, "compile") or not hasattr(torch.compiler, "save_cache_artifacts"):
            raise BackendUnavailableError(
                f"torch {torch.__version__} lacks torch.compile cache artifacts", hint="install torch>=2.11"
            )

    def versions(self):
        versions = {}
        try:
            import triton

            versions["triton"] = triton.__version__
        except ImportError:
            pass
        return versions

    def compile(self, request: CompileRequest):
        if _precompilable(request):
            try:
                return aot.compile_aot(request.module, request.args, dict(request.kwargs),
                                       dict(request.settings.inductor_options or {}),
                                       cpu=request.device is None or request.device.type == "cpu")
            except Exception as err:  # noqa: BLE001 - the plain path below is always there
                logger.info("[%s] ahead-of-time compile not possible here (%s: %s); using torch.compile",
                            request.component, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
        return _Recorded(self._wrap(request), request.component)

    def save(self, compiled, request: CompileRequest, directory: Path) -> None:
        if isinstance(compiled, aot.AotCall):
            aot.save_aot(compiled, directory)
            return
        delta = compiled.delta if isinstance(compiled, _Recorded) else None
        payloads = [delta] if delta else list(_SAVED)
        if not delta:
            logger.debug("[%s] no new cache artifacts for this key; storing the %d deltas this process saved",
                         request.component, len(payloads))
        if not payloads:
            raise RuntimeError("torch recorded no cache artifacts for this compile")
        for index, payload in enumerate(payloads):
            (directory / f"{ARTIFACT_STEM}.{index}.bin").write_bytes(payload)
        if delta and delta not in _SAVED:
            _SAVED.append(delta)

    def loads_beside_calls(self, directory: Path) -> bool:
        # an ahead-of-time function is unpickled, not traced; the plain path traces with dynamo on its first call
        return (directory / aot.ARTIFACT).is_file()

    def load(self, request: CompileRequest, directory: Path):
        if (directory / aot.ARTIFACT).is_file():
            return aot.load_aot(request.module, directory)
        files = sorted(directory.glob(f"{ARTIFACT_STEM}.*.bin"))
        if not files:
            raise FileNotFoundError(f"no {ARTIFACT_STEM}.*.bin in {directory}")
        for file in files:
            torch.compiler.load_cache_artifacts(file.read_bytes())
        return self._wrap(request)

    # ------------------------------------------------------------------------------------------------
    def _wrap(self, request: CompileRequest):
        settings = request.settings
        _raise_recompile_limit(settings.max_shapes_per_component)
        if request.dynamic:
            _mark_dynamic(request)
        kwargs = {"fullgraph": settings.fullgraph, "dynamic": None if request.dynamic else False}
        if settings.inductor_options:
            kwargs["options"] = dict(settings.inductor_options)
        elif settings.inductor_mode:
            kwargs["mode"] = settings.inductor_mode
        compiled = torch.compile(request.module, backend="inductor", **kwargs)
        autocast = _autocast_dtype(request)
        if autocast is None and not settings.channels_last:
            return compiled
        device_type = request.device.type if request.device is not None else "cpu"
        channels_last = settings.channels_last

        def run(*args, **kwargs):
            if channels_last:
                args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, _channels_last, (args, kwargs))
            if autocast is None:
                return compiled(*args, **kwargs)
            with torch.autocast(device_type, dtype=autocast):
                return compiled(*args, **kwargs)

        return run


class _Recorded:
    """The compiled callable; its first call runs with a fresh record of cache artifacts, kept as
    ``delta`` (this key's artifacts only) for ``save``."""

    def __init__(self, fn, component: str = "") -> None:
        self.fn = fn
        self.component = component
        self.delta: bytes | None = None
        self._first = True

    def __call__(self, *args, **kwargs):
        if not self._first:
            return self.fn(*args, **kwargs)
        from torch.compiler._cache import CacheArtifactManager

        logger.debug("[%s] first call: torch.compile traces the module and generates code", self.component,
                     extra=event("phase", self.component, phase="torch.compile (trace, generate code)"))
        with CacheArtifactManager.with_fresh_cache():
            try:
                out = self.fn(*args, **kwargs)
            except Exception as err:
                hint = constraint_hint(err)
                if hint is None:
                    raise
                raise EngineBuildError(f"torch.compile refused the declared shape range: {type(err).__name__}: "
                                       f"{first_lines(err).rstrip('.')}", hint=hint) from err
            saved = torch.compiler.save_cache_artifacts()
        self.delta = saved[0] if saved else None
        self._first = False
        return out


_SAVED: list[bytes] = []
"""Every delta this process wrote, for an entry whose own delta is empty."""


def _precompilable(request: CompileRequest) -> bool:
    """Whether this build can be compiled ahead of time (see ``_inductor_aot``)."""
    settings = request.settings
    return (settings.inductor_precompile and settings.fullgraph and settings.inductor_mode in (None, "default")
            and not request.dynamic and not settings.channels_last and _autocast_dtype(request) is None
            and aot.available())


def _mark_dynamic(request: CompileRequest) -> None:
    """Tell dynamo which dims of the example call vary, and how.

    A dim of step 1 whose symbol no other step shares gets its range (``mark_dynamic(min=, max=)``):
    dynamo then refuses, at compile time, a module that cannot take every size in it. A dim with a step
    (``multiple_of``) or derived from another (``h * 8``) is marked without a range: dynamo has no way to
    say "multiples of 8", and with a range it would reject the very guards the step exists for (``h % 2
    == 0``). The cache key admits only sizes inside the declared range and step, so no other size
    reaches this artifact.

    Dynamo specializes a size of 1 whatever is declared (and raises if it was marked): an example of
    size 1 is left unmarked, so the artifact is compiled for 1, and the first call of another size in
    the range recompiles it for the range inside the same process (dynamo's automatic dynamic shapes);
    that second graph is not part of the entry, so a later process compiles it again. Make the first
    call (or ``trt-runtime build``) use a size above 1 to get one graph for the whole range.
    """
    marks = []
    steps: dict[str, set[int]] = {}
    for path, tensor in iter_tensors(request.args, request.kwargs, request.names):
        for index, dim in request.dynamic.get(path, {}).items():
            if index < tensor.dim() and dim.contains(int(tensor.shape[index])) and tensor.shape[index] != 1:
                marks.append((tensor, index, dim))
                steps.setdefault(dim.symbol, set()).add(dim.multiple_of)
    for tensor, index, dim in marks:
        if steps[dim.symbol] == {1}:
            torch._dynamo.mark_dynamic(tensor, index, min=dim.min, max=dim.max)
        else:
            torch._dynamo.mark_dynamic(tensor, index)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _autocast_dtype(request: CompileRequest):
    """A requested fp16/bf16 precision for a module whose weights are wider runs under autocast."""
    target = dtype_of(request.settings.precision)
    if target is None or target is torch.float32:
        return None
    weights = next((p.dtype for p in request.module.parameters()), None)
    return target if weights == torch.float32 else None


def _raise_recompile_limit(limit: int) -> None:
    """Every signature of one module compiles the same forward code object; dynamo's default limit of
    8 recompiles would silently turn the 9th shape eager. Lift it to our own per-component cap."""
    config = torch._dynamo.config
    if getattr(config, "recompile_limit", limit) < limit:
        logger.debug("raising torch._dynamo.config.recompile_limit to %d", limit)
        config.recompile_limit = limit
