"""How the tensorrt backend exports a call: its tensors as flat positional inputs, declared dims as
``torch.export`` symbols (derived dims included), non-tensor arguments as constants of the graph.

Flat inputs keep ``arg_inputs`` a flat list of ``torch_tensorrt.Input`` and the dynamic dims a flat tuple, the
one form every supported release handles alike. Dims declared with the same name become one
``torch.export.Dim``, so exporters know that ``batch`` of ``sample`` equals ``batch`` of
``encoder_hidden_states``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..calls import arg_path, iter_tensors
from ..errors import EngineBuildError
from ..shapes import Dim, constraint_hint, first_lines
from . import _export_guards as guards
from . import _tensorrt_api as api_table
from ._tensorrt_passes import expand_copy_sources
from .base import CompileRequest

__all__ = ["InputPlan", "FlatCall", "template", "fill"]

logger = logging.getLogger(__name__)


class _Slot:
    """Placeholder for a tensor inside the recorded call structure."""

    __slots__ = ("path",)

    def __init__(self, path: str) -> None:
        self.path = path


class FlatCall(torch.nn.Module):
    """What gets exported: ``forward(*tensors)`` rebuilds the original call around the module.

    Non-tensor arguments are held as constants; the module is a registered child, so its parameters
    are the exported program's parameters.
    """

    def __init__(self, module: torch.nn.Module, template: tuple, paths: tuple[str, ...]) -> None:
        super().__init__()
        self.inner = module
        self.template = template
        self._paths = paths

    def forward(self, *tensors: torch.Tensor) -> Any:
        lookup = dict(zip(self._paths, tensors, strict=True))
        args, kwargs = fill(self.template, lookup)
        return self.inner(*args, **kwargs)


class InputPlan:
    """The tensors of one call (by path), their declared dims, and what export and TensorRT need."""

    def __init__(self, request: CompileRequest) -> None:
        self.component = request.component
        self.items = [
            (path, tensor, _applicable(tensor, request.dynamic.get(path, {})))
            for path, tensor in iter_tensors(request.args, request.kwargs, request.names)
        ]
        self.paths = tuple(path for path, _, _ in self.items)
        self.shapes = [tuple(tensor.shape) for _, tensor, _ in self.items]
        self._widen_size_one()

    def _widen_size_one(self) -> None:
        """torch.export specializes a symbol whose example value is 1 and then rejects the declared range.
        For each such symbol (a batch of 1, or ``k`` = 1 of ``h = 8 * k`` with an example height of 8),
        every example tensor is repeated along every dim of that symbol, doubling it (``8 * 1`` becomes
        ``8 * 2`` consistently in every tensor that shares it), so the traced values stay realistic; a
        symbol whose range cannot exceed 1 is not dynamic at all."""
        values = _symbol_values(self.items, self.shapes, self.component)
        widen = {symbol for symbol, value in values.items() if value == 1}
        self.examples = []
        for _, tensor, dims in self.items:
            example = tensor
            for dim_index, dim in list(dims.items()):
                if dim.symbol not in widen:
                    continue
                if dim.steps[1] < 2:
                    dims.pop(dim_index)
                    continue
                example = torch.cat([example, example], dim=dim_index)
            self.examples.append(example)

    def dynamic_shapes(self) -> tuple | None:
        """One ``torch.export.Dim`` per symbol; a dim of step ``n`` is ``n * symbol`` (a derived dim)."""
        if not any(dims for _, _, dims in self.items):
            return None
        symbols: dict[str, Any] = {}

        def export_dim(dim: Dim):
            if dim.symbol not in symbols:
                low, high = dim.steps
                symbols[dim.symbol] = torch.export.Dim(dim.symbol, min=low, max=high)
            symbol = symbols[dim.symbol]
            return symbol if dim.multiple_of == 1 else dim.multiple_of * symbol

        # forward(*tensors) binds one argument, the tuple of tensors: hence the outer 1-tuple.
        return (tuple({i: export_dim(d) for i, d in dims.items()} or None for _, _, dims in self.items),)

    def input_specs(self) -> list[dict[str, Any]]:
        return [api_table.input_kwargs(tuple(t.shape), t.dtype, dims) for _, t, dims in self.items]

    def export(self, request: CompileRequest):
        """The call as an exported program that serves every size of the declared ranges: torch.export's
        guards and deferred assertions are checked at each of them (``_export_guards``)."""
        flat = FlatCall(request.module, template(request.args, request.kwargs, request.names), self.paths)
        dynamic = self.dynamic_shapes()
        try:
            program = torch.export.export(flat, tuple(self.examples), dynamic_shapes=dynamic, strict=False)
        except Exception as err:
            program = self._export_deferred(flat, dynamic, err, request)
        else:
            failure = guards.failing_condition(program, self._space()) if dynamic is not None else None
            if failure:
                raise EngineBuildError(
                    f"the exported program does not serve every size of the declared ranges: {failure}",
                    component=request.component, shapes=self.shapes,
                    hint="declare the ranges as the module takes them (a multiple_of, a narrower range, one Dim "
                    "for sizes that must be equal); the call runs eagerly")
        expand_copy_sources(program, request.component)
        return program

    def _space(self) -> guards.SizeSpace:
        return guards.SizeSpace(self.examples, (dims for _, _, dims in self.items))

    def _export_deferred(self, flat: FlatCall, dynamic: tuple | None, err: Exception, request: CompileRequest):
        """After a refusal of the declared ranges: the program with the guards torch.export could not prove
        deferred to assertions, if each of them holds at every size of the ranges; else the refusal."""
        detail = ""
        if dynamic is not None and guards.is_constraint_violation(err):
            try:
                program = torch.export.export(flat, tuple(self.examples), dynamic_shapes=dynamic, strict=False,
                                              prefer_deferred_runtime_asserts_over_guards=True)
            except Exception:  # noqa: BLE001 - the first refusal is the one to report
                detail = " (exported with those guards as runtime assertions, it was refused too)"
            else:
                failure = guards.failing_condition(program, self._space())
                if failure is None:
                    logger.info("[%s] torch.export could not prove its guards over the declared ranges; each "
                                "holds at every size of the ranges, so the program serves them", request.component)
                    return program
                detail = f" (checked at every size of the declared ranges: {failure})"
        raise EngineBuildError(
            f"torch.export could not capture the module: {type(err).__name__}: {first_lines(err).rstrip('.')}"
            f"{detail}", component=request.component, shapes=self.shapes,
            hint=constraint_hint(err) or "TensorRT needs a graph without Python-side data-dependent control "
            "flow; the call runs eagerly",
        ) from err


def _applicable(tensor: torch.Tensor, dims: Mapping[int, Dim]) -> dict[int, Dim]:
    """The declared dims that this tensor has and whose range holds its size: the others are exact in
    the cache key (``keys.signature``), so they must be static in the program too."""
    return {i: d for i, d in dims.items() if i < tensor.dim() and d.contains(int(tensor.shape[i]))}


def _symbol_values(items, shapes, component: str) -> dict[str, int]:
    """The example value of each symbol (size // multiple_of); the call's sizes must agree on it."""
    values: dict[str, tuple[int, str]] = {}
    for (path, _, dims), shape in zip(items, shapes, strict=True):
        for index, dim in dims.items():
            value = shape[index] // dim.multiple_of
            seen = values.setdefault(dim.symbol, (value, f"{path}[{index}] = {shape[index]} ({dim.name})"))
            if seen[0] != value:
                raise EngineBuildError(
                    f"the call's sizes break the declared relation of {dim.root_name!r}: {seen[1]} but "
                    f"{path}[{index}] = {shape[index]} ({dim.name})", component=component, shapes=shapes,
                    hint="dims derived with * and // must scale together; this call runs eagerly",
                )
    return {symbol: value for symbol, (value, _) in values.items()}


def template(args: tuple, kwargs: Mapping[str, Any], names: tuple[str, ...]) -> tuple:
    """The call with every tensor replaced by a ``_Slot`` carrying the same path as ``iter_tensors``."""

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            return _Slot(path)
        if isinstance(value, (list, tuple)):
            items = [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
            if isinstance(value, list):
                return items
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        if isinstance(value, Mapping):
            return {k: walk(v, f"{path}.{k}") for k, v in value.items()}
        return value

    positional = [walk(a, arg_path(i, names)) for i, a in enumerate(args)]
    return tuple(positional), {k: walk(v, k) for k, v in kwargs.items()}


def fill(value: Any, lookup: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, _Slot):
        return lookup[value.path]
    if isinstance(value, list):
        return [fill(v, lookup) for v in value]
    if isinstance(value, tuple):
        items = [fill(v, lookup) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict):
        return {k: fill(v, lookup) for k, v in value.items()}
    return value
