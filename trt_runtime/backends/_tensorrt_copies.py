"""Copies of a compiled program that share its TensorRT engines instead of re-creating them.

``torch_tensorrt.save`` deep-copies the program before its graph surgery (``_exporter.transform``), and
``refit_module_weights(..., in_place=False)`` deep-copies it before refitting. A deep copy of an engine
object (the C++ runtime's ``torch.classes.tensorrt.Engine``) pickles it and builds a new one from the
bytes: the engine is deserialized again, a second execution context is created, and TensorRT-RTX compiles
its kernels just in time once more. For the full-size SD1.5 UNet on torch-tensorrt-rtx 2.11 that made the
save of a just-built engine take 90 s, and it holds a second engine in GPU memory meanwhile.

Neither copy needs a new engine: the exporter only reads the engine, and a refit deserializes its own copy
of the bytes and replaces the engine attribute of the copy. torch-tensorrt 2.12.1+ shares the engine when a
``TorchTensorRTModule`` is copied (its ``__deepcopy__``); 2.11 has no such method, and no release shares the
engine attributes of a program loaded with ``torch.export.load``. ``engines_shared_in_copies`` makes every
deep copy of a program made inside the block keep the program's engine objects, for every release.

Scoped: the program's own ``__deepcopy__`` is set for the block and removed afterwards; nothing
process-wide is patched. Two threads copying one program at once are both served (the attribute is
removed by the outermost block only).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["engine_objects", "engines_shared_in_copies"]

_HOOK = "__deepcopy__"
_lock = threading.Lock()
_depth: dict[int, int] = {}


def engine_objects(module: torch.nn.Module) -> list[Any]:
    """Every engine object held by ``module`` or its submodules: the C++ runtime's engines (TorchScript
    objects) and the Python runtime's (objects with ``update_runtime_settings``)."""
    found: dict[int, Any] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.ScriptObject) or callable(getattr(value, "update_runtime_settings", None)):
                found[id(value)] = value
    return list(found.values())


@contextlib.contextmanager
def engines_shared_in_copies(module: torch.nn.Module) -> Iterator[int]:
    """Within the block, ``copy.deepcopy(module)`` keeps ``module``'s engine objects (yields how many).

    ``module`` is a compiled or loaded program (a ``torch.fx.GraphModule``); anything else is left alone."""
    engines = {id(engine): engine for engine in engine_objects(module)}
    if not engines or not isinstance(module, torch.fx.GraphModule):
        yield 0
        return
    class_copy = type(module).__deepcopy__

    def deepcopy(memo: dict[int, Any]) -> Any:
        for ident, engine in engines.items():
            memo.setdefault(ident, engine)
        copied = class_copy(module, memo)
        copied.__dict__.pop(_HOOK, None)  # GraphModule's copy keeps only what its graph uses; to be sure
        return copied

    with _lock:
        count = _depth.get(id(module), 0)
        if count == 0:
            module.__dict__[_HOOK] = deepcopy  # found by copy.deepcopy before the class's method
        _depth[id(module)] = count + 1
    try:
        yield len(engines)
    finally:
        with _lock:
            count = _depth.pop(id(module)) - 1
            if count:
                _depth[id(module)] = count
            else:
                module.__dict__.pop(_HOOK, None)
