"""The generic drop-in wrapper, and the forward hook that the component wrappers build on.

Two ways to put a module behind the runtime:

- ``TensorRTModule(module)``: a new ``nn.Module`` around it. Attributes of the wrapped module stay
  reachable (``config``, ``dtype``, ``device``...), ``.to()`` moves it, the state dict is the wrapped
  module's own, and calls return exactly what the module returns.
- ``install(module, forward)``: replace ``module.forward`` on the instance (the way diffusers hooks do),
  so the object a pipeline holds keeps its class, ``isinstance`` checks and attributes. ``uninstall``
  restores it. ``wrap_pipeline`` uses this.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..calls import is_extra_positional, positional_names
from ..component import Component
from ..errors import ConfigurationError
from ..runtime import TensorRTRuntime, get_default_runtime
from ..settings import RuntimeSettings
from ..shapes import Dim, DimLike, normalize_spec

__all__ = ["TensorRTModule", "OriginalForward", "SpecLike", "install", "uninstall", "installed",
           "make_component", "positional_names", "check_shapes"]

_ATTR = "_trt_runtime_component"

SpecLike = Mapping[str, Mapping[int, DimLike]]
"""A shape spec as users write it: argument path -> {dimension index: ``Dim``, ``(min, max)`` or
``(min, opt, max)``} (see ``trt_runtime.shapes``)."""


def check_shapes(
    module: torch.nn.Module, shapes: SpecLike | None, name: str
) -> dict[str, dict[int, Dim]] | None:
    """``shapes`` normalized (see ``normalize_spec``), after checking that every path starts with an
    argument of ``type(module).forward``.

    Why: a path that names no argument never matches a call, so the declared range would silently do
    nothing and every resolution would compile on its own (``AutoencoderKL.decode(z)`` calls
    ``decoder(sample)``: the decoder's path is ``"sample"``, not ``"z"``). Forwards that take
    ``**kwargs`` accept any name and are not checked; ``args0``... address extra positional arguments
    of a forward with ``*args``.
    """
    spec = normalize_spec(shapes)
    if spec is None:
        return None
    try:
        params = [p for p in inspect.signature(type(module).forward).parameters.values() if p.name != "self"]
    except (TypeError, ValueError):
        return spec
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return spec
    names = [p.name for p in params if p.kind != p.VAR_POSITIONAL]
    var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
    for path in spec:
        root = path.split(".", 1)[0]
        if root in names or (var_positional and is_extra_positional(root)):
            continue
        raise ConfigurationError(
            f"shape spec path {path!r} names no argument of {type(module).__name__}.forward",
            component=name, hint=f"paths start with one of: {', '.join(names)}",
        )
    return spec


def make_component(
    module: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str | None = None,
    shapes: SpecLike | None = None,
    eager: Callable[..., Any] | None = None,
    settings: RuntimeSettings | dict | None = None,
    traits: frozenset[str] = frozenset(),
    family: tuple[str, dict[str, Any]] | None = None,
) -> Component:
    """A runtime ``Component`` for ``module``; ``settings`` overrides the runtime's for this one, and
    ``shapes`` declares dimension ranges that one artifact serves (checked by ``check_shapes``);
    ``traits`` tell compilers what the family knows about the module (``CompileRequest.traits``)."""
    runtime = runtime or get_default_runtime()
    name = name or type(module).__name__
    if isinstance(settings, dict):
        settings = runtime.settings.replace(**settings)
    return runtime.component(
        name,
        module,
        eager=eager,
        names=positional_names(type(module).forward),
        shapes=check_shapes(module, shapes, name),
        settings=settings,
        traits=traits,
        family=family,
    )


class OriginalForward(torch.nn.Module):
    """Calls the forward a module had before ``install`` replaced it: the thing compilers trace.

    The module is a registered child, so exporters see its parameters, and the captured forward keeps
    any hook that was installed earlier (accelerate's offload hooks, for instance).
    """

    def __init__(self, module: torch.nn.Module, forward: Callable[..., Any]) -> None:
        super().__init__()
        self.inner = module
        self._forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward(*args, **kwargs)


def install(module: torch.nn.Module, make_forward: Callable[[OriginalForward], Callable[..., Any]]) -> Any:
    """Replace ``module.forward`` with ``make_forward(original)``; returns the new forward.

    ``original`` is an ``OriginalForward`` around the forward in place now. Installing twice is refused:
    uninstall first.
    """
    if installed(module):
        raise ValueError(f"{type(module).__name__} is already wrapped by trt_runtime; call uninstall() first")
    had_instance_forward = "forward" in module.__dict__
    original = OriginalForward(module, module.forward)
    new_forward = make_forward(original)
    try:
        functools.update_wrapper(new_forward, type(module).forward, updated=())
    except AttributeError:  # a bound method or partial cannot take attributes; its signature stays
        pass
    module.forward = new_forward
    object.__setattr__(module, _ATTR, (new_forward, original, had_instance_forward))
    return new_forward


def uninstall(module: torch.nn.Module) -> bool:
    """Restore the forward ``install`` replaced; False when nothing was installed."""
    record = module.__dict__.get(_ATTR)
    if record is None:
        return False
    _, original, had_instance_forward = record
    if had_instance_forward:
        module.forward = original._forward
    else:
        module.__dict__.pop("forward", None)
    module.__dict__.pop(_ATTR, None)
    return True


def installed(module: torch.nn.Module) -> Any | None:
    """The forward trt_runtime installed on ``module``, or None."""
    record = module.__dict__.get(_ATTR)
    return None if record is None else record[0]


class TensorRTModule(torch.nn.Module):
    """Wrap any ``nn.Module``: compiled per input signature on first use, cached on disk.

    ``TensorRTModule(module, runtime=None, name=None, shapes=None, **settings)``: ``settings`` are
    ``RuntimeSettings`` fields that override the runtime's for this module; ``shapes`` declares
    dynamic dimension ranges (see ``trt_runtime.Dim``).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        runtime: TensorRTRuntime | None = None,
        name: str | None = None,
        shapes: SpecLike | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.module = module
        component = make_component(module, runtime=runtime, name=name, shapes=shapes, settings=settings or None)
        object.__setattr__(self, "component", component)
        functools.update_wrapper(self, module, assigned=("__doc__",), updated=())

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.component(*args, **kwargs)

    @property
    def runtime(self) -> TensorRTRuntime:
        return self.component.runtime

    def invalidate(self) -> None:
        """Forget compiled artifacts in memory after changing weights in place."""
        self.component.invalidate()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("module")
            if inner is None:
                raise
            return getattr(inner, name)

    # The state dict is the wrapped module's own, so checkpoints load into either interchangeably.
    def state_dict(self, *args: Any, **kwargs: Any):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = self.module.load_state_dict(state_dict, strict=strict, assign=assign)
        self.invalidate()
        return result

    def extra_repr(self) -> str:
        return f"name={self.component.name!r}, backend={self.component.settings.backend!r}"
