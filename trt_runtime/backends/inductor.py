"""torch.compile (inductor) backend: runs on CPU and GPU, and persists through torch's cache artifacts.

Compiling is lazy: ``compile()`` returns the ``torch.compile`` wrapper and the runtime's first call
triggers (and times) the real work. ``save()`` stores ``torch.compiler.save_cache_artifacts()`` (the
inductor FX-graph, AOTAutograd and autotuning cache entries of this compile); ``load()`` feeds them to
``torch.compiler.load_cache_artifacts()`` so the next process's first call skips code generation.

The saved set is everything torch recorded in this process so far, not only this key's entries: when
dynamo reuses a graph it already compiled here (the same architecture wrapped twice, two identical
ControlNets, a rebuild), inductor records nothing new, and a per-key set would be empty. A superset
is larger but always complete.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import BackendUnavailableError
from .base import Backend, CompileRequest, iter_tensors

__all__ = ["InductorBackend"]

logger = logging.getLogger(__name__)

ARTIFACT = "inductor_cache.bin"


class InductorBackend(Backend):
    name = "inductor"
    artifact_fields = frozenset(
        {"inductor_mode", "fullgraph", "inductor_options", "channels_last", "cuda_graphs", "precision"}
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
        return self._wrap(request)

    def save(self, compiled, request: CompileRequest, directory: Path) -> None:
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            raise RuntimeError("torch.compiler.save_cache_artifacts() returned nothing to save")
        payload, info = saved
        (directory / ARTIFACT).write_bytes(payload)
        logger.debug("[%s] saved %d bytes of inductor cache artifacts: %s", request.component, len(payload), info)

    def load(self, request: CompileRequest, directory: Path):
        payload = (directory / ARTIFACT).read_bytes()
        torch.compiler.load_cache_artifacts(payload)
        return self._wrap(request)

    # ------------------------------------------------------------------------------------------------
    def _wrap(self, request: CompileRequest):
        settings = request.settings
        _raise_recompile_limit(settings.max_shapes_per_component)
        if request.dynamic:
            for path, tensor in iter_tensors(request.args, request.kwargs, request.names):
                for index, dim in request.dynamic.get(path, {}).items():
                    torch._dynamo.mark_dynamic(tensor, index, min=dim.min, max=dim.max)
        mode = settings.inductor_mode
        if settings.cuda_graphs and mode in (None, "default"):
            mode = "reduce-overhead"
        kwargs = {"fullgraph": settings.fullgraph, "dynamic": None if request.dynamic else False}
        if settings.inductor_options:
            kwargs["options"] = dict(settings.inductor_options)
        elif mode:
            kwargs["mode"] = mode
        if settings.channels_last:
            request.module.to(memory_format=torch.channels_last)  # in place: eager runs benefit too
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


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


_LOWER = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast_dtype(request: CompileRequest):
    """A requested fp16/bf16 precision for a module whose weights are wider runs under autocast."""
    target = _LOWER.get(request.settings.precision or "")
    if target is None:
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
