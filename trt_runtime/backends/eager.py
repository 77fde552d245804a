"""The floor every fallback lands on: the module itself, nothing compiled, nothing saved."""

from __future__ import annotations

from .base import Backend, CompileRequest

__all__ = ["EagerBackend"]


class EagerBackend(Backend):
    name = "eager"
    persistent = False

    def compile(self, request: CompileRequest):
        return request.module
