"""Serving helpers: get every artifact a deployment needs into memory before the first request.

A replica of a serving engine (Ray Serve, a Kubernetes pod, one rank of torchrun) calls ``warm_up`` in its
constructor. Each (resolution, batch size) the deployment serves is generated once with a couple of steps, so
each wrapped component loads its artifact from the shared engine cache (or, on the first replica of a fleet with
an empty cache, builds it under the cache's per-key lock, while the other replicas wait for it and then load it:
one build per key across the fleet). Requests then never pay for a compile or a load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["warm_up"]

logger = logging.getLogger(__name__)


def _sizes(resolutions: Iterable[int | tuple[int, int]] | None) -> list[tuple[int, int] | None]:
    if not resolutions:
        return [None]  # the pipeline's default size
    out = []
    for size in resolutions:
        height, width = (size, size) if isinstance(size, int) else size
        out.append((int(height), int(width)))
    return out


def warm_up(
    pipe: Any,
    *,
    resolutions: Iterable[int | tuple[int, int]] | None = None,
    batch_sizes: Sequence[int] = (1,),
    steps: int = 2,
    prompt: str = "warm-up",
    **call_kwargs: Any,
) -> dict[str, Any]:
    """Generate once per resolution and batch size with ``steps`` denoising steps, so that every component's
    artifact for those shapes is loaded (or built) now. The pipeline is wrapped with ``wrap_pipeline``'s
    defaults if it is not wrapped yet. ``resolutions``: pixel sizes, ``512`` or ``(768, 512)``; None uses the
    pipeline's default. ``call_kwargs`` go to every pipeline call (``guidance_scale``, ``image`` for a
    ControlNet...). Returns the runtime's totals (compiles, loads, seconds) and the seconds spent."""
    import torch

    from .pipeline import wrap_pipeline, wrapped_components

    if not wrapped_components(pipe):
        wrap_pipeline(pipe)
    components = wrapped_components(pipe)
    runtimes = {id(c.runtime): c.runtime for c in components.values()}
    started = time.perf_counter()
    for size in _sizes(resolutions):
        for batch in batch_sizes:
            shape = {} if size is None else {"height": size[0], "width": size[1]}
            logger.info("warm-up: %s, batch %d", "default size" if size is None else f"{size[0]}x{size[1]}", batch)
            with torch.inference_mode():
                pipe(prompt=[prompt] * batch, num_inference_steps=steps, **shape, **call_kwargs)
    totals: dict[str, Any] = {}
    for runtime in runtimes.values():
        for name, value in runtime.stats.totals().items():
            totals[name] = totals.get(name, 0) + value
    totals["warm_up_seconds"] = round(time.perf_counter() - started, 3)
    return totals
