"""Ahead-of-time compiled inductor artifacts: a new process runs them without dynamo re-tracing.

Why: with torch's cache artifacts alone, a new process still traces the module's Python code with dynamo
before it finds the compiled graph (measured on an H100 with the SD1.5 UNet: 4.9 s of tracing, 3.4 s of
AOTAutograd/inductor lookups and 0.9 s of guards out of a 12.6 s warm start, 21% of the cold first call).
``torch.compile(fn).aot_compile(...)`` serializes dynamo's output itself: transformed bytecode, guards and
the compiled backend with its Triton kernels. ``torch.compiler.load_compiled_function`` gets it back in
seconds (a research run on the H100: 5.0 s of a 48 s cold compile, 10.4%).

How: the compiled function is ``_run(module, *args, **kwargs)``, which takes the module as an argument so
that it is not serialized (its parameters are graph inputs), compiled with ``fullgraph=True`` for the one
signature of the call. Guards that cannot be serialized (object identities, globals: a new process has
new objects) are filtered out; the remaining guards (shapes, dtypes, devices, strides, grad mode) are
checked on every call, and a miss raises (the runtime then runs eagerly and re-validates). The runtime
keys each artifact by exactly what those guards check, so a miss means something changed behind the key.

On a CPU the serialized function does not carry the compiled C++ kernels (on a GPU the Triton kernels are
inside it): a new process would run g++ again for each. So a CPU artifact also stores the kernel files
the compile added to inductor's cache folder (``kernels/``), and loading puts back the ones missing there
(measured on two CPU cores, tiny UNet: warm 4.3 s with the kernels, 64 s without, cold 135 s).

``torch._dynamo.config.enable_aot_compile`` is switched on only around the compile (a scoped config
patch), never left on. Not used (the plain path is): with ``inductor_mode`` set, for declared dynamic
dims, with autocast or channels-last conversion, or where this torch lacks the API. Loading unpickles
code: only trusted cache entries reach it (``cache.py``'s trust model).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = ["available", "compile_aot", "save_aot", "load_aot", "AotCall", "ARTIFACT"]

logger = logging.getLogger(__name__)

ARTIFACT = "inductor_aot.bin"
KERNELS = "kernels"
_KERNEL_SUFFIXES = (".so", ".cpp", ".h", ".py", ".json")


def available() -> bool:
    return hasattr(torch._dynamo.config, "enable_aot_compile") and hasattr(torch.compiler,
                                                                            "load_compiled_function")


def _run(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
    """What is compiled: the module called with the call's arguments (the module is an input)."""
    return module(*args, **kwargs)


def _serializable_guards(entries: list[Any]) -> list[bool]:
    """Keep the guards a new process can check: drop identity, dict-version and global guards, also
    where such a guard type is only derived (torch's default filter misses those and then refuses to
    serialize an ``ID_MATCH``)."""
    from torch._dynamo.guards import CheckFunctionManager

    unsupported = set(CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [not (e.is_global or e.guard_type in unsupported or unsupported & set(e.derived_guard_types or ()))
            for e in entries]


class AotCall:
    """Calls an AOT-compiled function with the module first; ``compiled`` is what ``save_aot`` writes."""

    validate_on_load = True
    """Loaded from another process: compared with eager once before it serves (resolver)."""

    def __init__(self, compiled: Any, module: torch.nn.Module, kernels: list[str] | None = None) -> None:
        self.compiled = compiled
        self.module = module
        self.kernels = kernels or []
        """Inductor cache files (relative paths) this compile added: stored with a CPU artifact."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(self.module, *args, **kwargs)


def compile_aot(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], options: dict[str, Any] | None,
                cpu: bool = False) -> AotCall:
    """Compile ``module`` for this one call, ahead of time (raises where torch cannot). On a CPU, notes
    which kernel files the compile added to inductor's cache folder."""
    before = _kernel_files() if cpu else set()
    with torch._dynamo.config.patch(enable_aot_compile=True):
        compiled = torch.compile(_run, fullgraph=True, dynamic=False,
                                 options={"guard_filter_fn": _serializable_guards, **(options or {})})
        call = AotCall(compiled.aot_compile(((module, *args), dict(kwargs))), module)
    if cpu:
        call.kernels = sorted(_kernel_files() - before)
    return call


def save_aot(call: AotCall, directory: Path) -> None:
    call.compiled.save_compiled_function(str(directory / ARTIFACT))
    root = _cache_root()
    for relative in call.kernels:
        source, target = root / relative, directory / KERNELS / relative
        if source.is_file() and not source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)


def load_aot(module: torch.nn.Module, directory: Path) -> AotCall:
    _restore_kernels(directory / KERNELS)
    with open(directory / ARTIFACT, "rb") as f:
        return AotCall(torch.compiler.load_compiled_function(f), module)


def _cache_root() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def _kernel_files() -> set[str]:
    root = _cache_root()
    return {str((Path(folder) / name).relative_to(root))
            for folder, _, files in os.walk(root) for name in files if name.endswith(_KERNEL_SUFFIXES)}


def _restore_kernels(stored: Path) -> None:
    """Put the entry's kernel files where inductor looks for them, keeping any that are there already.
    The entry passed the cache's trust check; files are written privately, never through a link."""
    if not stored.is_dir():
        return
    root = _cache_root()
    for source in stored.rglob("*"):
        if not source.is_file() or source.is_symlink():
            continue
        target = root / source.relative_to(stored)
        if target.exists() or target.is_symlink():
            continue
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(source, temporary)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
