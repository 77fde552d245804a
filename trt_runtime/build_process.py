"""Background builds in a separate process, so that the serving process keeps its speed while it builds.

Why: a build in a thread of the serving process slowed its eager steps down by an order of magnitude on an H100
(SD1.5: first image 19.6 s instead of 1.0 s while dynamo and inductor compiled beside it). A child process has
its own interpreter lock, allocator and CUDA context; the parent only waits for it, then loads the artifact the
child wrote into the shared engine cache (the same key: same module class, config and weights, same call, same
settings, same machine).

What can be rebuilt in a child: a diffusers ``ModelMixin`` (``from_config``) or a transformers
``PreTrainedModel`` (its config class) without LoRA adapters, wrapped by one of trt_runtime's family wrappers,
with no declared shape ranges. Anything else builds in the parent's worker thread as before. The child gets its
inputs through a private temporary folder: the module's config and state dict, the call, the settings; nothing of
it is executed from an untrusted place (the folder is created 0700 by this process and removed afterwards).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["can_build_in_process", "build_in_child", "main", "IMPORTS_ENV"]

logger = logging.getLogger(__name__)

_FAMILIES = {"TupleCore", "PassCore", "_FieldsCore"}
IMPORTS_ENV = "TRT_RUNTIME_BUILD_IMPORTS"
"""Comma-separated modules a build process imports first: ones that register custom backends, for instance."""
_TIMEOUT_S = 4 * 3600


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
    folder = Path(tempfile.mkdtemp(prefix="trt_runtime_build_"))
    try:
        module = _owner(comp)
        dtype = next((p.dtype for p in module.parameters()), torch.float32)
        spec = {
            "recipe": _recipe(module), "family": comp.family[:2], "name": comp.name,
            "settings": {f.name: getattr(comp.settings, f.name) for f in dataclasses.fields(comp.settings)
                         if f.name not in ("background",)},
            "dtype": str(dtype).removeprefix("torch."), "device": str(comp.device or "cpu"),
            "inference_mode": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled(),
        }
        torch.save({"spec": spec, "state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                    "call": torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().cpu(), (args, kwargs))},
                   folder / "build.pt")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        done = subprocess.run([sys.executable, "-m", "trt_runtime.build_process", str(folder / "build.pt")],
                              capture_output=True, text=True, timeout=_TIMEOUT_S, env=env)
        if done.returncode != 0:
            lines = [line for line in (done.stdout + done.stderr).splitlines() if "Error" in line or "{" in line]
            logger.info("[%s] build process failed (exit %d: %s); building in this process", comp.name,
                        done.returncode, " | ".join(lines[-3:])[:1000])
            return False
        return True
    except Exception as err:  # noqa: BLE001 - the in-process build is always there
        logger.info("[%s] could not build in a separate process (%s: %s); building in this process", comp.name,
                    type(err).__name__, err)
        return False
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _rebuild(recipe: dict[str, Any]) -> torch.nn.Module:
    cls = _load_name(recipe["class"])
    if recipe["kind"] == "diffusers":
        return cls.from_config(recipe["config"])
    config = _load_name(recipe["config_class"]).from_dict(recipe["config"])
    return cls(config)


def main(argv: list[str] | None = None) -> int:
    """The child: rebuild the module, wrap it like the parent, make the one call (which builds and saves)."""
    import contextlib

    from .runtime import TensorRTRuntime
    from .settings import RuntimeSettings

    for name in filter(None, os.environ.get(IMPORTS_ENV, "").split(",")):
        importlib.import_module(name.strip())  # e.g. modules that register custom backends
    path = Path((argv or sys.argv[1:])[0])
    payload = torch.load(path, weights_only=False)  # written by our parent into a private folder, just now
    spec = payload["spec"]
    module = _rebuild(spec["recipe"])
    module.load_state_dict(payload["state"])
    module = module.to(device=spec["device"], dtype=getattr(torch, spec["dtype"])).eval()
    args, kwargs = torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.to(spec["device"]), payload["call"])
    settings = RuntimeSettings(**spec["settings"])
    runtime = TensorRTRuntime(settings)
    apply, options = spec["family"]
    wrapped = _load_name(apply)(module, runtime=runtime, **options)
    component = wrapped.components[spec["name"]]
    mode = torch.inference_mode() if spec["inference_mode"] else contextlib.nullcontext()
    with mode, torch.set_grad_enabled(spec["grad"]):
        component(*args, **kwargs)
    rows = runtime.stats.rows()
    print(json.dumps({"keys": [r.key for r in rows], "states": [r.state for r in rows]}))
    return 0 if rows and all(r.state == "ready" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
