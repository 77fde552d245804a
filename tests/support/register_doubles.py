"""Imported by a build process in tests (``TRT_RUNTIME_BUILD_IMPORTS``): registers the test backends there."""

from trt_runtime.backends import register_backend

from .backends import SlowExport, TracingExport

register_backend("slow", SlowExport)
register_backend("tracing", TracingExport)
