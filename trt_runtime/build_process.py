"""Background builds in a separate process, so that the serving process keeps its speed while it builds.

Why: a build in a thread of the serving process slowed its eager steps down by an order of magnitude on an H100
(SD1.5: first image 19.6 s instead of 1.0 s while dynamo and inductor compiled beside it). A child process has
its own interpreter lock, allocator and CUDA context; the parent only waits for it, then loads the artifact the
child wrote into the shared engine cache (the same key: same module class, config and weights, same call, same
settings, same machine).

What can be rebuilt in a child: a diffusers ``ModelMixin`` (``from_config``) or a transformers
``PreTrainedModel`` (its config class) without LoRA adapters, wrapped by one of trt_runtime's family wrappers,
with no declared shape ranges. Anything else builds in the parent's worker thread as before. The child gets its
inputs through a private temporary folder: the module's config, the call, the settings and every parameter and
buffer by name; nothing of it is executed from an untrusted place (the folder is created 0700 by this process and
removed afterwards).

The child starts at a lower CPU priority (``nice`` +10 from its first instruction, before torch is imported:
``_build_child.py``; inherited by inductor's compile workers) and makes the
module's parameters on the meta device, then puts the parent's tensors in place: it neither initialises random
weights on the host (minutes of CPU and 48 GB for Flux) nor competes with the caller's kernel launches for the CPU. A child ends
with its parent: at exit the parent stops the builds it started (``stop_children``), and a child whose parent died
stops itself.

Weights on a GPU are not copied: the child maps the parent's own memory (CUDA IPC handles, as
``torch.multiprocessing`` passes tensors), so the first call does not wait for gigabytes to go to the host and
to disk while the caller generates, and the child holds no second copy. The child only reads them. Where that
cannot be done (weights on the CPU, an allocator without IPC, a child that cannot open the handles) the weights
go through the folder as host copies, as before.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

__all__ = ["can_build_in_process", "build_in_child", "stop_children", "rebuild", "main", "IMPORTS_ENV"]

logger = logging.getLogger(__name__)

_FAMILIES = {"TupleCore", "PassCore", "_FieldsCore"}
IMPORTS_ENV = "TRT_RUNTIME_BUILD_IMPORTS"
"""Comma-separated modules a build process imports first: ones that register custom backends, for instance."""
_TIMEOUT_S = 4 * 3600
_EXIT_NO_SHARED = 75
"""The child's exit status when it cannot open the parent's shared weights: the parent sends copies instead."""
_SHARING_FAILED = False
"""Set when a build process could not map this process's weights: later builds send copies."""
_PARENT_ENV = "TRT_RUNTIME_BUILD_PARENT"
"""The parent's pid, given to the child: it compares it with its own parent's from its first moment on."""
_CHILDREN: dict[subprocess.Popen, bool] = {}
"""The build processes running, and whether ``stop_children`` stopped them."""
_CHILDREN_LOCK = threading.Lock()


def _qualname(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def _load_name(path: str) -> Any:
    module, _, name = path.partition(":")
    value: Any = importlib.import_module(module)
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _recipe(module: torch.nn.Module) -> dict[str, Any] | None:
    """How a child rebuilds ``module``: its class and config (None when it cannot)."""
    if getattr(module, "peft_config", None) or "<locals>" in type(module).__qualname__:
        return None
    config = getattr(module, "config", None)
    try:
        from diffusers import ModelMixin

        if isinstance(module, ModelMixin):
            return {"kind": "diffusers", "class": _qualname(module), "config": dict(config)}
    except ImportError:
        pass
    try:
        from transformers import PreTrainedModel

        if isinstance(module, PreTrainedModel):
            return {"kind": "transformers", "class": _qualname(module), "config_class": _qualname(config),
                    "config": config.to_dict()}
    except ImportError:
        pass
    return None


def _owner(comp: Any) -> torch.nn.Module:
    return comp.family[2] if comp.family[2] is not None else comp.module


def can_build_in_process(comp: Any) -> bool:
    """Whether ``comp`` can be rebuilt in a child process (see the module docstring)."""
    settings = comp.settings
    return (settings.persist and not settings.cache_read_only  # the child hands over through the cache
            and comp.spec is None and type(comp.eager).__name__ in _FAMILIES and comp.family is not None
            and _recipe(_owner(comp)) is not None)


def build_in_child(comp: Any, args: tuple, kwargs: dict[str, Any]) -> bool:
    """Build ``comp``'s artifact for this call in a child process that writes it to the engine cache.
    Returns True when the child finished (the parent then loads the entry), False when it failed."""
    global _SHARING_FAILED
    module = _owner(comp)
    tensors = module_tensors(module)
    shared = None if _SHARING_FAILED else share_cuda(tensors)
    versions = _versions(tensors)
    try:
        done = _run_child(comp, module, args, kwargs, tensors, shared)
        if done is not None and done.returncode == _EXIT_NO_SHARED:
            _SHARING_FAILED = True  # for the rest of this process: every later build sends copies at once
            logger.info("[%s] the build process could not map this process's weights (%s); sending copies",
                        comp.name, (done.stderr.strip().splitlines() or ["no message"])[-1][:300])
            done = _run_child(comp, module, args, kwargs, tensors, None)
    finally:
        if shared is not None and torch.cuda.is_initialized():
            torch.cuda.ipc_collect()  # the child has exited: release what was kept alive for it
    if done is None:
        return False
    if done.returncode == 0 and shared is not None and _versions(tensors) != versions:
        # the child read the live weights while they were edited in place (a LoRA fused mid-build): what it built
        # may hold a mix under the key of the weights it saw first; drop it, the next call builds again
        _discard(comp, done.stdout)
        logger.info("[%s] the weights changed during the build in a separate process; its entry is discarded",
                    comp.name)
        return False
    if done.returncode != 0:
        lines = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line or "{" in line]
        logger.info("[%s] build process failed (exit %d: %s); building in this process", comp.name,
                    done.returncode, " | ".join(lines[-3:])[:1000])
        return False
    result = _result(done.stdout)
    held, storages = result.get("unreleased"), result.get("storages")
    if isinstance(held, int) and isinstance(storages, int):
        logger.log(logging.INFO if held else logging.DEBUG, "[%s] the build process finished holding %d of the %d "
                   "storages of the model's weights%s", comp.name, held, storages,
                   " (shared ones stay allocated in this process until the build process exits)" if held else "")
    return True


def _result(stdout: str) -> dict[str, Any]:
    """The result line a build process prints (the last JSON object with its keys; {} when there is none: anything
    its compiler's workers print after it is skipped)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "keys" in row:
            return row
    return {}


def _versions(tensors: dict[str, torch.Tensor]) -> list[int]:
    return [tensor._version for tensor in tensors.values()]  # detached tensors share the original's counter


def _discard(comp: Any, stdout: str) -> None:
    from .cache import EngineCache

    try:
        keys = _result(stdout)["keys"]
        cache = EngineCache.from_settings(comp.settings)
        for key in keys:
            cache.remove(key)
    except Exception as err:  # noqa: BLE001 - the entry's key no longer matches these weights either way
        logger.info("[%s] could not discard the build process's entry (%s: %s)", comp.name, type(err).__name__, err)


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by name (persistent or not), detached: what a child assigns to the
    module it rebuilt, so that it holds exactly the parent's tensors. Tied ones (T5's shared embedding) are one
    object under each of their names, and stay tied in the child (the key counts a tied weight once)."""
    named = dict(module.named_parameters(remove_duplicate=False))
    named.update(module.named_buffers(remove_duplicate=False))
    detached: dict[int, torch.Tensor] = {}
    return {name: detached.setdefault(id(tensor), tensor.detach()) for name, tensor in named.items()
            if tensor is not None}


def share_cuda(tensors: dict[str, torch.Tensor]) -> bytes | None:
    """``tensors`` pickled as CUDA IPC handles (no copy), or None when they cannot be: any on the CPU, none at
    all, or an allocator or driver that refuses to export them."""
    if not tensors or any(t.device.type != "cuda" for t in tensors.values()):
        return None
    try:
        from multiprocessing.reduction import ForkingPickler

        import torch.multiprocessing  # noqa: F401 - registers the CUDA tensor reductions with ForkingPickler

        return bytes(ForkingPickler.dumps(tensors))
    except Exception as err:  # noqa: BLE001 - copies always work
        logger.debug("cannot share CUDA tensors with a build process (%s: %s); sending copies",
                     type(err).__name__, err)
        return None


def _run_child(comp: Any, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any],
               tensors: dict[str, torch.Tensor], shared: bytes | None) -> subprocess.CompletedProcess | None:
    folder = Path(tempfile.mkdtemp(prefix="trt_runtime_build_"))
    try:
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
        spec = {
            "recipe": _recipe(module), "family": comp.family[:2], "name": comp.name,
            "settings": {f.name: getattr(comp.settings, f.name) for f in dataclasses.fields(comp.settings)
                         if f.name not in ("background",)},
            "dtype": str(dtype).removeprefix("torch."), "device": str(comp.device or "cpu"),
            "inference_mode": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled(),
            "requires_grad": sorted(name for name, p in module.named_parameters(remove_duplicate=False)
                                    if p.requires_grad),
        }
        payload: dict[str, Any] = {
            "spec": spec,
            "call": torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().cpu(), (args, kwargs))}
        if shared is None:
            payload["tensors"] = {name: t.cpu() for name, t in tensors.items()}
        else:
            (folder / "tensors.ipc").write_bytes(shared)
        torch.save(payload, folder / "build.pt")
        logger.info("[%s] building in a separate process (weights %s)", comp.name,
                    "copied" if shared is None else "shared with it, not copied")
        return _wait_for_child([sys.executable, "-m", "trt_runtime._build_child", str(folder / "build.pt")])
    except Exception as err:  # noqa: BLE001 - the in-process build is always there
        logger.info("[%s] could not build in a separate process (%s: %s); building in this process", comp.name,
                    type(err).__name__, err)
        return None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_for_child(command: list[str]) -> subprocess.CompletedProcess | None:
    """Run the build process to its end; None when this process stopped it (exiting) or it ran too long."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{_PARENT_ENV: str(os.getpid())})
    if sys.platform == "win32":  # no os.nice there: the process starts below normal priority instead
        options: dict[str, Any] = {"creationflags": subprocess.BELOW_NORMAL_PRIORITY_CLASS}
    else:  # a group of its own, so that stopping it stops the compiler workers it started too
        options = {"start_new_session": True}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **options)
    with _CHILDREN_LOCK:
        _CHILDREN[child] = False
    try:
        stdout, stderr = child.communicate(timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        logger.warning("a build process ran for more than %d s and was stopped", _TIMEOUT_S)
        return None
    finally:
        with _CHILDREN_LOCK:
            stopped = _CHILDREN.pop(child, False)
    if stopped:
        return None
    return subprocess.CompletedProcess(command, child.returncode, stdout, stderr)


def stop_children(wait_s: float = 5.0) -> int:
    """Stop every build process this process started (at exit: a build nobody will load must not keep a GPU busy
    or write to the cache after its server has gone). Returns how many were running."""
    with _CHILDREN_LOCK:
        children = list(_CHILDREN)
        _CHILDREN.update(dict.fromkeys(children, True))
    for child in children:
        if child.poll() is None:
            _signal_group(child, terminate=True)
    deadline = time.monotonic() + wait_s
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
        _signal_group(child, terminate=False)  # whatever it started and left behind (inductor's compile workers)
    return len(children)


def _signal_group(child: subprocess.Popen, terminate: bool) -> None:
    """Stop ``child`` and the processes it started: its process group where it has one (POSIX, see
    ``_wait_for_child``), else the child alone. Its workers would otherwise keep its output pipes open, and the
    worker that waits for it would wait for them."""
    import signal

    if sys.platform != "win32":
        try:
            os.killpg(child.pid, signal.SIGTERM if terminate else signal.SIGKILL)
            return
        except OSError:  # gone already (ProcessLookupError), or not ours to signal
            if not terminate:
                return  # the group is gone already
    if terminate:
        child.terminate()


def _exit_with_parent() -> None:
    """In the child: stop when the parent is gone (killed, crashed), instead of building for nobody. The parent's pid
    comes from the parent itself, so a parent that died while this process was still importing is noticed too (its
    children are then the init process's). Where a dead parent's pid does not change (Windows), this never fires."""
    expected = os.environ.get(_PARENT_ENV)
    parent = int(expected) if expected and expected.isdigit() else os.getppid()
    if os.getppid() != parent:
        os._exit(70)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="trt_runtime-parent-watch", daemon=True).start()


def rebuild(recipe: dict[str, Any], tensors: dict[str, torch.Tensor], requires_grad: set[str]) -> torch.nn.Module:
    """The module from its recipe, holding ``tensors``. Its parameters are made on the meta device (no host memory,
    no random initialisation; buffers and other tensors ``__init__`` computes stay real), then replaced by the
    parent's tensors. Where that fails (an ``__init__`` that reads a parameter's value) or leaves a tensor on the meta
    device (one derived from a parameter), the module is built again on the host, as it always was."""
    try:
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            module = _rebuild(recipe)
        assign_tensors(module, tensors, requires_grad)
        left = _left_on_meta(module)
    except Exception as err:  # noqa: BLE001 - the host build below is how it was always done
        left = f"{type(err).__name__}: {str(err)[:200]}"
    if left is None:
        return module
    logger.info("rebuilding %s on the host (%s)", recipe["class"], left)
    module = _rebuild(recipe)
    assign_tensors(module, tensors, requires_grad)
    return module


def _left_on_meta(module: torch.nn.Module) -> str | None:
    """Where a tensor of ``module`` is still on the meta device, if anywhere: a parameter or buffer, or a tensor in
    a module's attributes (inside lists, tuples and dicts too)."""

    def meta(value: Any, depth: int = 0) -> bool:
        if isinstance(value, torch.Tensor):
            return value.is_meta
        if depth < 4 and isinstance(value, (list, tuple)):
            return any(meta(item, depth + 1) for item in value)
        if depth < 4 and isinstance(value, dict):
            return any(meta(item, depth + 1) for item in value.values())
        return False

    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if name in ("_parameters", "_buffers"):
                found = next((leaf for leaf, tensor in value.items() if meta(tensor)), None)
                if found is not None:
                    return f"{prefix}.{found}".lstrip(".")
            elif name != "_modules" and meta(value):
                return f"{prefix}.{name}".lstrip(".")
    return None


def _rebuild(recipe: dict[str, Any]) -> torch.nn.Module:
    cls = _load_name(recipe["class"])
    if recipe["kind"] == "diffusers":
        return cls.from_config(recipe["config"])
    config = _load_name(recipe["config_class"]).from_dict(recipe["config"])
    return cls(config)


def assign_tensors(module: torch.nn.Module, tensors: dict[str, torch.Tensor], requires_grad: set[str]) -> None:
    """Put the parent's tensors in place of ``module``'s own, by name: parameters stay parameters (with the
    parent's ``requires_grad``), buffers stay buffers. A name the rebuilt module lacks is an error."""
    parameters: dict[int, torch.nn.Parameter] = {}  # one Parameter per tensor: tied names stay tied
    for name, tensor in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        try:
            owner = module.get_submodule(owner_name)
        except AttributeError:
            owner = None
        if owner is None:
            raise KeyError(f"the rebuilt module has no parameter or buffer {name!r}")
        if leaf in owner._parameters:
            owner._parameters[leaf] = parameters.setdefault(
                id(tensor), torch.nn.Parameter(tensor, requires_grad=name in requires_grad))
        elif leaf in owner._buffers:
            owner._buffers[leaf] = tensor
        else:
            raise KeyError(f"the rebuilt module has no parameter or buffer {name!r}")


def main(argv: list[str]) -> int:
    """The child (started as ``python -m trt_runtime._build_child``, which lowered its priority first): rebuild the
    module, wrap it like the parent, make the one call (which builds and saves), then let go of the parent's
    memory before exiting."""
    for name in filter(None, os.environ.get(IMPORTS_ENV, "").split(",")):
        importlib.import_module(name.strip())  # e.g. modules that register custom backends
    _exit_with_parent()
    path = Path(argv[0])
    payload = torch.load(path, weights_only=False)  # written by our parent into a private folder, just now
    tensors = payload.pop("tensors", None)
    if tensors is None:
        try:  # the parent's own CUDA memory, mapped here (it keeps it alive until this process lets go of it)
            tensors = pickle.loads((path.parent / "tensors.ipc").read_bytes())  # noqa: S301 - our parent's
        except Exception as err:  # noqa: BLE001
            print(f"cannot map the parent's weights ({type(err).__name__}: {err})", file=sys.stderr)
            return _EXIT_NO_SHARED
    spec, call = payload["spec"], payload["call"]
    del payload
    try:
        keys, states, storages = _build(spec, tensors, call)
    except Exception:  # noqa: BLE001 - reported like an uncaught error, after letting go of the weights
        traceback.print_exc()
        keys, states, storages = [], [], []
    del tensors
    held = _release(storages)
    print(json.dumps({"keys": keys, "states": states, "unreleased": held, "storages": len(storages)}), flush=True)
    return 0 if states and all(state == "ready" for state in states) else 1


def _build(spec: dict[str, Any], tensors: dict[str, torch.Tensor], call: Any
           ) -> tuple[list[str], list[str], list[Any]]:
    """The one call, in a frame of its own: when it returns, nothing of the module, its wrapper or its runtime is
    referenced from here. Also returns weak references to the storages of the module's tensors (the parent's mapped
    memory, or the copies it sent, once on the device)."""
    import contextlib

    from torch.multiprocessing.reductions import StorageWeakRef

    from .runtime import TensorRTRuntime
    from .settings import RuntimeSettings

    module = rebuild(spec["recipe"], tensors, set(spec["requires_grad"]))
    module = module.to(device=spec["device"]).eval()  # the parent's tensors are there already, in its dtypes
    storages = {t.untyped_storage()._cdata: StorageWeakRef(t.untyped_storage())
                for t in module_tensors(module).values()}  # one per storage: tied weights count once
    args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(spec["device"]), call)
    runtime = TensorRTRuntime(RuntimeSettings(**spec["settings"]))
    apply, options = spec["family"]
    wrapped = _load_name(apply)(module, runtime=runtime, **options)
    mode = torch.inference_mode() if spec["inference_mode"] else contextlib.nullcontext()
    with mode, torch.set_grad_enabled(spec["grad"]):
        wrapped.components[spec["name"]](*args, **kwargs)
    rows = runtime.stats.rows()
    return [r.key for r in rows], [r.state for r in rows], list(storages.values())


def _release(storages: list[Any]) -> int | None:
    """Drop what still holds the module's weights after the build (dynamo's caches, reference cycles) and return how
    many of ``storages`` are still alive (None when that cannot be told: it never fails a build).

    A CUDA tensor mapped from another process goes back to its owner when its storage is freed here (torch counts
    the mappings in a file both processes share). Python does not free every object when a process exits: without
    this the parent kept the weights it shared after it deleted the model, until it exited, with torch's "Producer
    process has been terminated before all shared CUDA tensors released" at its exit."""
    import gc

    try:
        dynamo = sys.modules.get("torch._dynamo")  # only if the build used it: importing it costs seconds
        if dynamo is not None:
            dynamo.reset()
        gc.collect()
        return sum(not ref.expired() for ref in storages)
    except Exception:  # noqa: BLE001 - a count we cannot take is not a failed build
        return None


if __name__ == "__main__":  # the entry point of earlier releases: a parent still running one may start it so
    from ._build_child import run

    raise SystemExit(run(sys.argv[1:]))
