"""STAND-IN for ``torch_tensorrt.dynamo.conversion._TRTInterpreter`` (tests only; NOT TensorRT).

``TRTInterpreter._populate_trt_builder_config`` makes a builder config the way the real one does (its
first statement), so trt_runtime's build-target hook can be exercised; the stand-in ``dynamo.compile``
calls it once per build and records the config it got back in ``CONFIGS``.
"""

from __future__ import annotations

import tensorrt as trt

CONFIGS: list = []


class _BuilderConfig:
    def __init__(self) -> None:
        self.num_compute_capabilities = 3  # TensorRT-RTX 1.4's default list: 8.6, 8.9, 12.0
        self.compute_capabilities = {0: "SM86", 1: "SM89", 2: "SM120"}

    def set_compute_capability(self, capability, index: int) -> bool:
        if index >= self.num_compute_capabilities:
            return False
        if capability == trt.ComputeCapability.CURRENT and (index != 0 or self.num_compute_capabilities != 1):
            return False
        self.compute_capabilities = {index: capability}
        return True


class TRTInterpreter:
    def _populate_trt_builder_config(self, strict_type_constraints: bool = False, tactic_sources=None):
        builder_config = _BuilderConfig()
        return builder_config

    def run(self) -> None:
        CONFIGS.append(self._populate_trt_builder_config())
