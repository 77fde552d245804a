"""STAND-IN for the ``tensorrt`` package (tests only; NOT TensorRT): version and plugin registry calls."""

from __future__ import annotations

import os
import re

_match = re.match(r"(\d+)\.(\d+)", os.environ.get("TRT_RUNTIME_STANDIN_VERSION", "2.14.0"))
_SERIES = (int(_match.group(1)), int(_match.group(2))) if _match else (2, 14)
_RTX = os.environ.get("TRT_RUNTIME_STANDIN_FLAVOUR") == "tensorrt-rtx"
if _RTX:
    __version__ = {(2, 11): "1.3.0.35", (2, 12): "1.4.0.76", (2, 13): "1.5.0.114"}.get(_SERIES, "1.6.1.120")

    class ComputeCapability:
        NONE, CURRENT, SM75, SM80, SM86, SM89, SM120 = "NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89", "SM120"
else:
    __version__ = {(2, 11): "10.15.1", (2, 12): "10.16.1", (2, 13): "11.0.0"}.get(_SERIES, "11.1.0")

PLUGIN_INITS: list[str] = []


class Logger:
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity: int = WARNING) -> None:
        self.min_severity = min_severity


def init_libnvinfer_plugins(logger, namespace: str) -> bool:
    PLUGIN_INITS.append(namespace)
    return True
