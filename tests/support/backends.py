"""Compiler doubles for the runtime's failure paths. Each stands in for an external compiler that
misbehaves in one specific way; the runtime under test is the real one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from trt_runtime.backends import Backend, CompileRequest

from .export_backend import ExportBackend


class CountingExport(ExportBackend):
    """The export backend, counting builds across processes in ``$TRT_TEST_BUILD_LOG`` (one line each)
    and sleeping ``$TRT_TEST_BUILD_SLEEP`` seconds per build to widen race windows."""

    name = "counting"

    def compile(self, request: CompileRequest):
        log = os.environ.get("TRT_TEST_BUILD_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(float(os.environ.get("TRT_TEST_BUILD_SLEEP", "0")))
        return super().compile(request)


class FailingBuild(Backend):
    """A compiler that rejects every module, like TensorRT on an unsupported op."""

    name = "failing"
    builds = 0
    builds_beside_calls = True  # traces nothing

    def compile(self, request: CompileRequest):
        type(self).builds += 1
        raise RuntimeError("unsupported operator aten::frobnicate")


class BrittleRun(ExportBackend):
    """Builds fine, then every later call of the artifact raises (an engine that breaks at run time,
    e.g. after a driver reset)."""

    name = "brittle"
    builds = 0

    def compile(self, request: CompileRequest):
        type(self).builds += 1
        good = super().compile(request)
        calls = {"n": 0}

        def run(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return good(*args, **kwargs)

        return run

    def save(self, compiled, request, directory: Path) -> None:
        (directory / "engine.bin").write_bytes(b"brittle")

    def load(self, request, directory: Path):
        def run(*args, **kwargs):
            raise RuntimeError("engine deserialization produced a broken context")

        return run


class WrongResult(ExportBackend):
    """Builds an artifact that computes something else (what validation exists to catch)."""

    name = "wrong"

    def compile(self, request: CompileRequest):
        good = super().compile(request)

        def run(*args, **kwargs):
            return good(*args, **kwargs) + 1.0

        return run

    def save(self, compiled, request, directory: Path) -> None:
        (directory / "engine.bin").write_bytes(b"wrong")


def tiny_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()


class FlakyBuild(ExportBackend):
    """The first ``failures`` builds run out of memory (a transient failure), later ones succeed."""

    name = "flaky"
    builds = 0
    failures = 1

    def compile(self, request: CompileRequest):
        type(self).builds += 1
        if type(self).builds <= type(self).failures:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().compile(request)


class SlowExport(ExportBackend):
    """The export backend, taking ``delay`` seconds per build (a compile of minutes, scaled down)."""

    name = "slow"
    builds = 0
    delay = 1.0
    builds_beside_calls = True  # torch.export alone: make_fx's tracer runs other threads' module calls as they are

    def compile(self, request: CompileRequest):
        type(self).builds += 1
        time.sleep(type(self).delay)
        return super().compile(request)


class TracingExport(SlowExport):
    """``SlowExport`` as a compiler that traces (like inductor or torch_tensorrt): it neither builds nor loads in a
    worker thread beside running modules."""

    name = "tracing"
    builds_beside_calls = False


class _Offset:
    """An artifact whose output is off by ``noise`` of its largest magnitude, validated when loaded (like an
    ahead-of-time inductor function)."""

    validate_on_load = True

    def __init__(self, run, noise: float) -> None:
        self.run, self.noise = run, noise

    def __call__(self, *args, **kwargs):
        out = self.run(*args, **kwargs)
        shifted = out.clone()
        shifted.view(-1)[0] += self.noise * out.abs().max()
        return shifted


class NoisyOnLoad(ExportBackend):
    """Artifacts that validate on load: off by ``build_noise`` when built, by ``load_noise`` when loaded in a
    later process (eager itself varies a little between processes; a wrong artifact varies a lot)."""

    name = "noisy"
    build_noise = 0.0
    load_noise = 0.0

    def compile(self, request: CompileRequest):
        return _Offset(super().compile(request), type(self).build_noise)

    def save(self, compiled, request, directory: Path) -> None:
        super().save(compiled.run, request, directory)

    def load(self, request, directory: Path):
        return _Offset(super().load(request, directory), type(self).load_noise)
