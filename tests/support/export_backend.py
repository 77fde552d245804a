"""A test-only compiler backend: real ``torch.export`` tracing, no optimisation.

It exists because a CPU inductor compile of even a tiny UNet takes tens of seconds on CI's two cores,
while pipeline tests need many components compiled. ``export`` still does the part of compilation that
breaks wrappers in practice (graph capture of the real module with the real arguments, outputs rebuilt
with their original types) and persists a real artifact (``torch.export.save``) that a new process
loads. It is the TensorRT backend's path minus the TensorRT engine build. Not shipped in the package.
"""

from __future__ import annotations

from pathlib import Path

import torch

from trt_runtime.backends import Backend, CompileRequest

PROGRAM = "program.pt2"


class ExportBackend(Backend):
    name = "export"
    artifact_fields = frozenset({"precision"})

    def compile(self, request: CompileRequest):
        if request.dynamic:
            raise NotImplementedError("the test export backend compiles static shapes only")
        program = torch.export.export(request.module, tuple(request.args), dict(request.kwargs), strict=False)
        module = program.module()
        module._trt_test_program = program  # kept for save()
        return module

    def save(self, compiled, request: CompileRequest, directory: Path) -> None:
        torch.export.save(compiled._trt_test_program, str(directory / PROGRAM))

    def load(self, request: CompileRequest, directory: Path):
        return torch.export.load(str(directory / PROGRAM)).module()
