"""STAND-IN engines (tests only; NOT TensorRT-RTX): what ``dynamo.compile`` puts in the module it returns.

``Engine`` imitates the Python runtime's ``TRTEngine`` (``update_runtime_settings(RuntimeSettings)``) and
TensorRT-RTX's just-in-time compile: on its first run in a process it records ``("jit", ...)`` with
``skipped=True`` only when its runtime cache already holds its kernels, and otherwise adds them to the
cache. ``TorchTensorRTModule`` has the public ``runtime_settings`` property of 2.13+. Engines exist in the
compiled module only: a program saved by the stand-in and loaded with ``torch.export.load`` has none (the
real one holds ``torch.classes.tensorrt.Engine`` objects, which cannot be made without TensorRT).
"""

from __future__ import annotations

import torch

import torch_tensorrt as _root


class Engine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.settings = None
        self.ran = False

    @property
    def kernels(self) -> bytes:
        return f"standin-kernels:{self.name};".encode()

    def update_runtime_settings(self, new_settings) -> None:
        self.settings = new_settings
        cache = getattr(new_settings, "runtime_cache", None)
        _root.CALLS.append(("update_runtime_settings", {"engine": self.name, "cache": cache}))

    def __deepcopy__(self, memo):
        # the real C++ engine is pickled and built again from its bytes: deserialized, a new execution
        # context, and TensorRT-RTX's just-in-time kernels compiled once more
        _root.CALLS.append(("engine_copy", {"engine": self.name}))
        return Engine(self.name)

    def run(self) -> None:
        if self.ran:
            return
        self.ran = True
        cache = getattr(self.settings, "runtime_cache", None)
        handle = getattr(cache, "_handle", None)
        skipped = handle is not None and self.kernels in handle.data
        _root.CALLS.append(("jit", {"engine": self.name, "skipped": skipped}))
        if handle is not None and not skipped:
            handle.data += self.kernels


class TorchTensorRTModule(torch.nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.engine = Engine(name)
        self._runtime_settings = None

    @property
    def runtime_settings(self):
        if _root.SERIES < (2, 13):
            raise AttributeError("runtime_settings")
        if self._runtime_settings is None:
            from ._runtime_config import RuntimeSettings

            self._runtime_settings = RuntimeSettings()
        return self._runtime_settings

    @runtime_settings.setter
    def runtime_settings(self, settings) -> None:
        self._runtime_settings = settings
        self.engine.update_runtime_settings(settings)

    def forward(self, *args):
        self.engine.run()
        return args


def add_engine(module: torch.nn.Module, name: str = "_run_on_acc_0") -> torch.nn.Module:
    """Give ``module`` one engine that "runs" (JIT-compiles once) before each forward."""
    trt_module = TorchTensorRTModule(name)
    module.add_module(name, trt_module)
    module.register_forward_pre_hook(lambda mod, args: trt_module.engine.run())
    return module
