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
(measured on two CPU cores, tiny UNet: warm 4.3 s with the kernels, 64 s without, cold 135 s). It also stores
inductor's ISA probes (tiny programs inductor compiles and runs once per cache folder to learn which vector
instructions the CPU has, with their ``.load_ok`` markers): without them a new machine's first load compiled them
again, 10-11 s of a tiny CLIP's 12.7 s warm start on two cores (1.8 s with them), and an entry whose compile found
them already in the folder did not store them. They hold for the CPU features in the key (``keys.cpu_features``).

``torch._dynamo.config.enable_aot_compile`` is switched on only around the compile (a scoped config
patch), never left on. Not used (the plain path is): with ``inductor_mode`` set, for declared dynamic
dims, with autocast or channels-last conversion, or where this torch lacks the API. Loading unpickles
code: only trusted cache entries reach it (``cache.py``'s trust model).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["available", "compile_aot", "save_aot", "load_aot", "AotCall", "ARTIFACT"]

logger = logging.getLogger(__name__)

ARTIFACT = "inductor_aot.bin"
KERNELS = "kernels"
_KERNEL_SUFFIXES = (".so", ".cpp", ".h", ".py", ".json")
_STORED_SUFFIXES = (*_KERNEL_SUFFIXES, ".load_ok")


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
        self._accepted = False
        """Whether the function has run one call in this process. Until it has, a guard failure propagates:
        the resolver then treats the artifact as one that does not load (and builds again) rather than
        validating an eager result against eager."""
        self._reported: set[str] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled() and any(t.requires_grad for t in _tensors((args, kwargs))):
            # gradients are wanted through the inputs (the weights are frozen, or the runtime would not be here):
            # the function runs in no_grad, so eager PyTorch answers this call
            return self.module(*args, **kwargs)
        normal_args, normal_kwargs = normal_tensors((args, kwargs))
        with canonical_mode():
            try:
                out = self.compiled(self.module, *normal_args, **normal_kwargs)
            except RuntimeError as err:
                if not (self._accepted and str(err).startswith(_GUARD_FAILURE)):
                    raise
                reason = _guard_reason(str(err))
            else:
                self._accepted = True
                return out
        # A guard outside the key refused a call after the function had served this process (global state such
        # as deterministic algorithms): this call runs eagerly and the function stays. Under a CUDA graph the
        # guards are not checked again: the captured function replays whatever the state.
        if reason not in self._reported:
            self._reported.add(reason)
            logger.warning("an ahead-of-time compiled function does not accept this call (%s); calls like it run "
                           "eagerly. Keep that state as it was at the first call, or set inductor_precompile=False "
                           "to compile for each state", reason)
        return self.module(*args, **kwargs)


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


_GUARD_FAILURE = "GuardManager check failed"


def _guard_reason(message: str) -> str:
    """The failed guard's own words from torch's message (its ``verbose_code_parts``), else the first line."""
    start = message.find("verbose_code_parts=")
    if start >= 0:
        return message[start + len("verbose_code_parts="):].split("\n")[0].strip(" [],'\"")[:200]
    return message.splitlines()[0][:200]


def canonical_mode() -> contextlib.ExitStack:
    """The one autograd mode every ahead-of-time function is compiled and called in: ``no_grad`` outside
    ``inference_mode``. Its guards check dispatch keys, which differ between ``inference_mode`` (the
    ``build`` command, servers) and ``no_grad`` (diffusers pipelines); compiled in one and called in the other
    it refused every call. Outputs are then normal tensors, which both modes can use."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode(False))
    stack.enter_context(torch.no_grad())
    return stack


def normal_tensors(tree: Any) -> Any:
    """The call's tensors as normal (not inference) tensors that require no grad, for the same guards: an
    inference tensor (made inside ``torch.inference_mode``) has other dispatch keys than a normal one, and
    ``requires_grad`` is guarded too (calls that want gradients run eagerly, see ``AotCall``). The copy is of
    the inputs only (latents, embeddings), and under a CUDA graph it is part of the replay."""
    if not any(t.is_inference() or t.requires_grad for t in _tensors(tree)):
        return tree

    def normal(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_inference():
            with torch.inference_mode(False), torch.no_grad():
                return tensor.clone()
        return tensor.detach() if tensor.requires_grad else tensor

    return torch.utils._pytree.tree_map_only(torch.Tensor, normal, tree)


def compile_aot(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], options: dict[str, Any] | None,
                cpu: bool = False) -> AotCall:
    """Compile ``module`` for this one call, ahead of time (raises where torch cannot). On a CPU, notes
    which kernel files the compile added to inductor's cache folder."""
    before = _kernel_files() if cpu else set()
    args, kwargs = normal_tensors((tuple(args), dict(kwargs)))
    recording = _sources_used() if cpu else contextlib.nullcontext([])  # GPU kernels travel inside the function
    with recording as used, torch._dynamo.config.patch(enable_aot_compile=True), canonical_mode():
        compiled = torch.compile(_run, fullgraph=True, dynamic=False,
                                 options={"guard_filter_fn": _serializable_guards, **(options or {})})
        call = AotCall(compiled.aot_compile(((module, *args), dict(kwargs))), module)
    if cpu:
        call.kernels = sorted((_kernel_files() - before) | _with_their_files(used) | _isa_probe_files())
    return call


_RECORDERS: list[list[str]] = []
_RECORDERS_LOCK = threading.Lock()
_PATCHED: list[Any] = []  # [our wrapper, the function it wraps] while recording


@contextlib.contextmanager
def _sources_used():
    """The paths of every source file inductor writes *or finds* while this context is open: ``codecache.write`` is
    called for each kernel and wrapper, whether its file exists already or not. What a compile adds to the cache is
    not enough: a compile that reuses kernels an earlier one made (ControlNet after the UNet, the same down blocks)
    would store none of them, and a new machine would compile them at its first load. Concurrent compiles record
    each other's files too (stored, harmless)."""
    from torch._inductor import codecache

    used: list[str] = []
    with _RECORDERS_LOCK:
        if not _RECORDERS:
            original = codecache.write

            def write(*args: Any, **kwargs: Any) -> Any:
                result = original(*args, **kwargs)
                path = result[1] if isinstance(result, tuple) and len(result) == 2 else None
                if isinstance(path, str):
                    with _RECORDERS_LOCK:
                        if _PATCHED and _PATCHED[0] is write:  # not a wrapper left inside someone else's
                            for recorder in _RECORDERS:
                                recorder.append(path)
                return result

            codecache.write = write
            _PATCHED[:] = [write, original]
        _RECORDERS.append(used)
    try:
        yield used
    finally:
        with _RECORDERS_LOCK:
            _RECORDERS[:] = [recorder for recorder in _RECORDERS if recorder is not used]  # by identity: equal lists
            if not _RECORDERS and _PATCHED:
                ours, original = _PATCHED
                if codecache.write is ours:  # someone who wrapped it after us keeps their wrapper (and ours inside)
                    codecache.write = original
                _PATCHED.clear()


def _with_their_files(paths: list[str]) -> set[str]:
    """Each recorded source with the files inductor made from it (``c<hash>.main.cpp`` -> ``c<hash>.main.so``...),
    as paths relative to inductor's cache folder; files outside it are not ours to store."""
    root = _cache_root().resolve()
    found: set[str] = set()
    for path in {Path(p).resolve() for p in paths}:
        if not path.is_relative_to(root):
            continue
        stem = path.name.split(".", 1)[0]
        found.update(str(sibling.relative_to(root)) for sibling in path.parent.glob(f"{stem}.*")
                     if sibling.is_file() and not sibling.is_symlink() and sibling.name.endswith(_STORED_SUFFIXES))
    return found


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
    # Loading rebuilds the guards, and torch computes the dispatch keys a tensor guard expects from the
    # thread's state at that moment: loaded inside inference_mode (a pipeline call, a server), every tensor
    # guard then refused the calls, which run in the canonical mode (seen on torch 2.11 with CUDA).
    with open(directory / ARTIFACT, "rb") as f, canonical_mode():
        return AotCall(torch.compiler.load_compiled_function(f), module)


def _cache_root() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def _kernel_files() -> set[str]:
    root = _cache_root()
    return {str((Path(folder) / name).relative_to(root))
            for folder, _, files in os.walk(root) for name in files if name.endswith(_KERNEL_SUFFIXES)}


_ISA_PROBE_MARK = "_chk_kernel"
"""What inductor's ISA probe sources define (``__avx_chk_kernel``, ``__avx512_bf16_chk_kernel``...)."""


def _isa_probe_files() -> set[str]:
    """Inductor's finished ISA probes in its cache folder (a probe counts once its ``.load_ok`` marker is there: one
    another process is still writing is left out), each with its library and marker, fenced as ``_with_their_files``."""
    sources = []
    for source in _cache_root().resolve().glob("*/*.cpp"):
        try:  # a regular small file only: never read through a link, a pipe or a device
            if (source.is_symlink() or not source.is_file() or source.stat().st_size > 4096
                    or not source.with_suffix(".so.load_ok").is_file()
                    or _ISA_PROBE_MARK not in source.read_text(errors="ignore")):
                continue
        except OSError:
            continue
        sources.append(str(source))
    return _with_their_files(sources)


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
