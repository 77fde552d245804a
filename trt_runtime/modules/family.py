"""What every family wrapper shares: install in place, bind calls, track LoRA, rebuild outputs.

- ``Wrapped``: what one ``apply_*`` installed, and how to take it off.
- ``attach`` / ``detach``: ``install`` that keeps accelerate's offload hook outermost.
- ``CallBinder``: one canonical keyword call per signature.
- ``LoraTracker``: the LoRA state of a module as part of the key.
- ``TupleCore`` / ``PassCore``: the compiled unit around the module's original forward.
- ``wrap_in_place``: the one installer every family uses; a family only says how a call is made.

Why the wrappers rebuild outputs themselves: the compiled callable returns plain tensors and tuples
(what every backend, TensorRT included, hands back unchanged), and the wrapper turns them into the
output class the pipeline expects, so ``return_dict`` never enters a key.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import typing
from collections.abc import Callable
from typing import Any

import torch

from ..component import Component
from ..errors import ConfigurationError
from ..runtime import TensorRTRuntime
from .base import OriginalForward, SpecLike, install, installed, make_component, uninstall

__all__ = ["Wrapped", "attach", "detach", "check_offload", "CallBinder", "LoraTracker", "TupleCore", "PassCore",
           "LORA_KEY", "output_class", "scalar_to_tensor", "wrap_in_place"]

logger = logging.getLogger(__name__)

LORA_KEY = "_trt_runtime_lora"
"""Keyword the wrappers add to a call (and the core drops) so the LoRA state enters the key."""


@dataclasses.dataclass
class Wrapped:
    """What one ``apply_*`` call installed: its components by name and the modules to restore."""

    components: dict[str, Component]
    modules: list[torch.nn.Module]

    def remove(self) -> None:
        """Restore every module's original forward (artifacts on disk stay for the next wrap)."""
        for module in self.modules:
            detach(module)


# ----------------------------------------------------------------------------------------- install layering
def _accelerate_hooked(module: torch.nn.Module) -> bool:
    return "_hf_hook" in module.__dict__ and "_old_forward" in module.__dict__


def check_offload(module: torch.nn.Module, name: str) -> None:
    """Refuse offload modes that keep weights away from the module while it runs.

    ``enable_sequential_cpu_offload()`` (and accelerate ``device_map`` disk/CPU offload) park weights
    on the ``meta`` device and stream them in per submodule; diffusers group offloading does the same
    per block. A compiler would capture placeholders instead of weights, so we say so instead.
    ``enable_model_cpu_offload()`` moves the whole module at once and is supported.
    """
    if any(p.device.type == "meta" for p in module.parameters()):
        raise ConfigurationError(
            f"{name} has weights on the 'meta' device (enable_sequential_cpu_offload() or an accelerate "
            "device_map with offloading); its weights are not there to compile",
            component=name, hint="use enable_model_cpu_offload() instead, or leave this component eager "
            f"({name.split('.')[0]}=False)",
        )
    try:
        from diffusers.hooks.group_offloading import _is_group_offload_enabled
    except ImportError:  # older diffusers: no group offloading
        return
    if _is_group_offload_enabled(module):
        raise ConfigurationError(
            f"{name} uses diffusers group offloading (enable_group_offload()), which streams weights in "
            "per block while the module runs", component=name,
            hint="use enable_model_cpu_offload() instead, or leave this component eager",
        )


def attach(module: torch.nn.Module, make_forward: Callable[[OriginalForward], Callable[..., Any]]) -> Any:
    """``install`` that stays inside accelerate's offload hook when one is present.

    accelerate (``enable_model_cpu_offload``) replaces ``module.forward`` with a function that moves the
    module to the execution device and then calls ``module._old_forward``. Installing on top would run
    the compiled artifact before that move (and never offload the previous model), so ours goes into
    ``_old_forward`` instead. Offload enabled *after* wrapping needs nothing: accelerate then captures
    our forward as its ``_old_forward``, the same layering.
    """
    if not _accelerate_hooked(module):
        return install(module, make_forward)
    outer = module.__dict__["forward"]
    module.forward = module.__dict__["_old_forward"]  # expose the inner forward to install()
    try:
        ours = install(module, make_forward)
    finally:
        module.forward = outer
    module._old_forward = ours
    return ours


def detach(module: torch.nn.Module) -> bool:
    """Undo ``attach`` wherever accelerate's hooks have put our forward since."""
    ours = installed(module)
    if ours is None:
        return False
    if module.__dict__.get("_old_forward") is ours:
        outer = module.__dict__.get("forward")
        uninstall(module)
        module._old_forward = module.forward
        if outer is not None and outer is not ours:
            module.forward = outer
        else:
            module.__dict__.pop("forward", None)
        return True
    return uninstall(module)


# ----------------------------------------------------------------------------------------- calls
class CallBinder:
    """Turns any way of calling a module into one keyword dict, so equal calls get equal keys.

    Pipelines pass the same argument positionally in one place and by name in another, or pass an
    explicit ``None`` where another omits it; both would otherwise split one shape into two keys.
    """

    def __init__(self, forward: Callable[..., Any]) -> None:
        params = list(inspect.signature(forward).parameters.values())
        self.names = tuple(p.name for p in params
                           if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self")
        self.all_names = frozenset(p.name for p in params)
        self.none_default = frozenset(p.name for p in params if p.default is None)

    def bind(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > len(self.names):
            raise TypeError(f"forward() takes {len(self.names)} positional arguments but {len(args)} were given")
        call = dict(zip(self.names, args, strict=False))  # fewer args than names is normal
        for key, value in kwargs.items():
            if key in call:
                raise TypeError(f"forward() got multiple values for argument {key!r}")
            call[key] = value
        for key in [k for k, v in call.items() if v is None and k in self.none_default]:
            del call[key]
        return call


def scalar_to_tensor(value: Any, device: torch.device, batch: int | None = None) -> Any:
    """A Python number as a tensor (keys hold plain numbers by value: a timestep passed as a float would
    compile once per denoising step). ``batch`` None gives shape (1,), as diffusers' UNet builds it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    dtype = torch.int64 if isinstance(value, int) else torch.float32
    return torch.full((batch or 1,), value, dtype=dtype, device=device)


def output_class(forward: Callable[..., Any], base: type) -> type | None:
    """The ``base`` subclass (``BaseOutput``/``ModelOutput``) that ``forward`` is annotated to return."""
    try:
        hint = typing.get_type_hints(inspect.unwrap(forward)).get("return")
    except Exception:  # unresolvable annotations: the caller falls back to generic handling
        return None
    options = typing.get_args(hint) or (hint,)
    found = [t for t in options if isinstance(t, type) and issubclass(t, base)]
    return found[0] if len(found) == 1 else None


_UNSEEN = object()


class LoraTracker:
    """The LoRA state of a module as a hashable token, and what to do with ``"scale"``.

    PEFT LoRA layers multiply their update by ``scaling`` (a Python float the compiled graph bakes in);
    diffusers sets it per call from ``cross_attention_kwargs["scale"]`` (inside forward) or before
    calling a text encoder (outside). So a module with adapters keys on the adapter names, their current
    scaling, merged and disabled state (read from the first LoRA layer); without adapters ``"scale"``
    changes nothing and is dropped from the key. When adapters are loaded, fused or removed the weights change: the component's
    artifacts and fingerprint are forgotten, so the next call builds for the new weights.
    """

    def __init__(self, module: torch.nn.Module, component: Component | None = None) -> None:
        self.module = module
        self.component = component
        self._names: tuple | None = None
        self._layer: Any = None
        self._structure: Any = _UNSEEN

    def state(self) -> tuple | None:
        config = getattr(self.module, "peft_config", None)
        if not config:
            self._sync(None)
            return None
        names = tuple(sorted(config))
        if names != self._names:
            self._names = names
            self._layer = next((m for m in self.module.modules()
                                if isinstance(getattr(m, "scaling", None), dict) and hasattr(m, "merged_adapters")),
                               None)
        layer = self._layer
        if layer is None:
            self._sync((names,))
            return (names,)
        structure = (names, tuple(layer.merged_adapters), bool(getattr(layer, "disable_adapters", False)))
        self._sync(structure)
        return (*structure, tuple(sorted(layer.scaling.items())), tuple(getattr(layer, "active_adapters", ())))

    def _sync(self, structure: tuple | None) -> None:
        if structure != self._structure:
            if self._structure is not _UNSEEN and self.component is not None:
                logger.info("[%s] LoRA adapters changed (%s -> %s); forgetting compiled artifacts",
                            self.component.name, self._structure, structure)
                self.component.invalidate()
            self._structure = structure

    def prepare(self, call: dict[str, Any], kwargs_name: str | None) -> None:
        """Add the LoRA token to ``call``; drop an ineffective ``scale`` from the attention kwargs."""
        state = self.state()
        if state is not None:
            call[LORA_KEY] = state
        elif kwargs_name and isinstance(call.get(kwargs_name), dict) and "scale" in call[kwargs_name]:
            rest = {k: v for k, v in call[kwargs_name].items() if k != "scale"}
            if rest:
                call[kwargs_name] = rest
            else:
                del call[kwargs_name]


# ----------------------------------------------------------------------------------------- cores
class TupleCore(torch.nn.Module):
    """The compiled unit: calls the original forward with ``return_dict=False``, returns its tuple."""

    def __init__(self, original: OriginalForward) -> None:
        super().__init__()
        self.original = original

    def forward(self, **kwargs: Any) -> Any:
        kwargs.pop(LORA_KEY, None)
        return tuple(self.original(**kwargs, return_dict=False))


class PassCore(torch.nn.Module):
    """The compiled unit of the generic wrapper: the call exactly as made."""

    def __init__(self, original: OriginalForward) -> None:
        super().__init__()
        self.original = original

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop(LORA_KEY, None)
        return self.original(*args, **kwargs)



# ----------------------------------------------------------------------------------------- installer
CallFn = Callable[[Component, "LoraTracker", tuple, dict], Any]
"""How a family makes one call: ``(component, lora, args, kwargs) -> output``."""


def wrap_in_place(
    module: torch.nn.Module,
    name: str,
    *,
    core: Callable[[OriginalForward], torch.nn.Module],
    call: CallFn,
    runtime: TensorRTRuntime | None = None,
    shapes: SpecLike | None = None,
    settings: dict | None = None,
    traits: frozenset[str] = frozenset(),
    family: str | None = None,
    family_options: dict[str, Any] | None = None,
    owner: torch.nn.Module | None = None,
) -> Wrapped:
    """Install the runtime on ``module`` in place: its forward becomes ``call(component, lora, args,
    kwargs)``, where ``component`` compiles ``core(original_forward)``. Refuses offload modes that keep the
    weights away (``check_offload``); returns what was installed. ``family`` names the ``apply_*`` function
    (``"module:function"``) that wraps ``owner`` (default: ``module``) given ``runtime`` and ``family_options``
    (default: ``name``), so a separate build process can wrap a rebuilt copy alike."""
    check_offload(module, name)
    holder: dict[str, Component] = {}

    def make_forward(original: OriginalForward):
        component = make_component(module, runtime=runtime, name=name, shapes=shapes, eager=core(original),
                                   settings=settings, traits=traits,
                                   family=(family, family_options or {"name": name}, owner) if family else None)
        holder[name] = component
        lora = LoraTracker(module, component)

        def forward(*args: Any, **kwargs: Any) -> Any:
            return call(component, lora, args, kwargs)

        return forward

    attach(module, make_forward)
    return Wrapped(holder, [module])
