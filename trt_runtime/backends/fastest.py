"""``backend="fastest"``: build every compiler that can run here, time each on the real call, keep the
fastest, and record the choice in the cache entry so that no other process or replica measures again.

No backend wins everywhere (measured on an H100: TensorRT-RTX beat ``torch.compile`` on the VAE decoder and
lost on the SD1.5 ControlNet), so the choice is made per component and input signature, on the inputs the
pipeline really passes. Eager PyTorch is a candidate too: a compiled artifact slower than eager (a small
text encoder on a fast GPU) is not kept.

Timing is done the way calls will run: on a GPU through a CUDA graph per candidate (what ``cuda_graphs``
does by default), synchronised, median of ``_ROUNDS`` calls after warm-up. The first build is slow (every
candidate compiles), so this mode is meant for ``trt-runtime build`` or a server's warm-up.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import BackendUnavailableError
from .base import Backend, CompileRequest

__all__ = ["FastestBackend", "Chosen", "CHOICE_FILE"]

logger = logging.getLogger(__name__)

CHOICE_FILE = "fastest.json"
_WARMUP, _ROUNDS = 3, 10


class Chosen:
    """The winning candidate's callable, with what was measured."""

    def __init__(self, name: str, fn: Callable[..., Any], timings_ms: dict[str, float | str]) -> None:
        self.name, self.fn, self.timings_ms = name, fn, timings_ms

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class FastestBackend(Backend):
    name = "fastest"
    candidates: ClassVar[tuple[str, ...]] = ("tensorrt", "inductor", "eager")

    def __init__(self) -> None:
        from . import get_backend

        self._backends = {name: get_backend(name) for name in self.candidates}
        self._available: dict[str, dict[str, Backend]] = {}
        self.artifact_fields = frozenset().union(*(b.artifact_fields for b in self._backends.values()))
        self.optional_files = frozenset().union(*(b.optional_files for b in self._backends.values()))

    def _usable(self, device: torch.device | None) -> dict[str, Backend]:
        tag = str(device)
        if tag not in self._available:
            self._available[tag] = {name: b for name, b in self._backends.items() if b.is_available(device)}
        return self._available[tag]

    def check_available(self, device):
        if not [n for n in self._usable(device) if n != "eager"]:
            raise BackendUnavailableError("no compiler backend can run here to choose from")

    def embeds_weights(self, settings) -> bool:
        return any(b.embeds_weights(settings) for b in self._backends.values())

    def versions(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for backend in self._backends.values():
            try:
                out.update(backend.versions())
            except ImportError:
                continue
        return out

    def artifact_meta(self, compiled) -> dict[str, Any]:
        if isinstance(compiled, Chosen):
            return {"fastest": {"chosen": compiled.name, "timings_ms": compiled.timings_ms}}
        return {}

    # ------------------------------------------------------------------------------------------------
    def compile(self, request: CompileRequest) -> Chosen:
        timings: dict[str, float | str] = {}
        built: dict[str, Callable[..., Any]] = {}
        for name, backend in self._usable(request.device).items():
            try:
                fn = backend.compile(request)
                fn(*request.args, **request.kwargs)  # lazy compilers compile here
            except Exception as err:  # noqa: BLE001 - a candidate that fails is simply not chosen
                timings[name] = f"failed: {type(err).__name__}: {str(err)[:200]}"
                logger.info("[%s] candidate %s failed: %s", request.component, name, timings[name])
                continue
            built[name] = fn
            timings[name] = round(_time(fn, request) * 1e3, 4)
        if not built:
            raise RuntimeError(f"every candidate failed: {timings}")
        winner = min(built, key=lambda n: timings[n])
        logger.info("[%s] fastest backend: %s (%s)", request.component, winner,
                    ", ".join(f"{n} {t} ms" if isinstance(t, float) else f"{n} {t}" for n, t in timings.items()))
        return Chosen(winner, built[winner], timings)

    def save(self, compiled, request: CompileRequest, directory: Path) -> None:
        (directory / CHOICE_FILE).write_text(json.dumps({"chosen": compiled.name, "timings_ms": compiled.timings_ms}))
        backend = self._backends[compiled.name]
        if backend.persistent:
            backend.save(compiled.fn, request, directory)

    def load(self, request: CompileRequest, directory: Path) -> Chosen:
        choice = json.loads((directory / CHOICE_FILE).read_text())
        name = choice["chosen"]
        if name not in self._backends:
            raise ValueError(f"the entry chose {name!r}, which is not a candidate here")
        backend = self._backends[name]
        fn = backend.load(request, directory) if backend.persistent else backend.compile(request)
        return Chosen(name, fn, choice.get("timings_ms", {}))

    def can_refit(self, settings) -> bool:
        return False


def _time(fn: Callable[..., Any], request: CompileRequest) -> float:
    """Median seconds of one call as the runtime will make it (through a CUDA graph on a GPU)."""
    cuda = request.device is not None and request.device.type == "cuda"
    run = fn
    if cuda and request.settings.cuda_graphs is not False:
        from ..graphs import GraphCache

        graphs = GraphCache(request.component, capacity=1, capture_after=1)

        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return graphs.run("timing", fn, args, kwargs)[0]
            except Exception:  # noqa: BLE001 - a candidate that cannot be captured is timed without
                return fn(*args, **kwargs)

    for _ in range(_WARMUP):
        run(*request.args, **request.kwargs)
    seconds = []
    for _ in range(_ROUNDS):
        if cuda:
            torch.cuda.synchronize(request.device)
        started = time.perf_counter()
        run(*request.args, **request.kwargs)
        if cuda:
            torch.cuda.synchronize(request.device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)
