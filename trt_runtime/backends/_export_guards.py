"""The size guards of an exported program, checked at every size of the declared ranges before an engine is built.

An exported program holds conditions on its input sizes that torch checks when ``program.module()`` is called:
guards (``ExportedProgram._guards_code``: relations torch.export accepted without proving them, such as
``a * b % 2 == 0`` across two inputs) and, when export was asked to defer what it could not prove
(``prefer_deferred_runtime_asserts_over_guards``), runtime assertions in the graph. A TensorRT engine checks
neither: torch-tensorrt drops the assertions, and the engine serves its whole optimization profile. So every such
condition is evaluated here at every combination of the declared sizes it depends on, and the program is used only
when all hold; a condition that fails somewhere, or cannot be evaluated, keeps the engine from being built (the
call runs eagerly) with what failed and where.

Why the deferral at all: torch.export refuses a declared range when its solver cannot prove a guard that does hold.
Seen with torch 2.11 and transformers' Llama attention (``repeat_kv`` reshapes an expanded tensor; the contiguity
check asks ``Min(4*tokens, 8*tokens) == 4*tokens``, true for every positive size); torch 2.14 proves it. Such a
refusal is exported again with the guards deferred and checked here.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["is_constraint_violation", "SizeSpace", "failing_condition", "MAX_EVALUATIONS"]

MAX_EVALUATIONS = 1_000_000
"""Evaluations of conditions per program, over all of them; a program that needs more is not used (declare
narrower ranges)."""

_SIZE_REF = re.compile(r"L\['tensors'\]\[(\d+)\]\.(size|stride)\(\)\[(\d+)\]")
"""How a guard reads an input's size or stride: ``forward(*tensors)`` of ``FlatCall``."""
_BUILTINS = {"min": min, "max": max, "abs": abs, "int": int, "float": float, "bool": bool, "math": math}


def is_constraint_violation(err: BaseException) -> bool:
    """Whether ``err`` is torch.export refusing declared dynamic dims (not a tracing failure)."""
    kind = getattr(err, "error_type", None)
    return getattr(kind, "name", None) == "CONSTRAINT_VIOLATION"


class SizeSpace:
    """The sizes one export must serve: the example shapes, with each declared dim free over its range.

    ``dims`` holds one mapping (dim index -> ``shapes.Dim``) per flat input; a dim is ``multiple_of * k`` with
    ``k`` over ``Dim.steps``, and dims with the same ``Dim.symbol`` share ``k``."""

    def __init__(self, examples: Sequence[torch.Tensor], dims: Iterable[Mapping[int, Any]]) -> None:
        self.examples = list(examples)
        self.dims = [dict(d) for d in dims]
        self.ranges: dict[str, range] = {}
        self.where: dict[tuple[int, int], str] = {}
        for i, declared in enumerate(self.dims):
            for index, dim in declared.items():
                low, high = dim.steps
                self.ranges[dim.symbol] = range(low, high + 1)
                self.where[(i, index)] = dim.symbol
        self.variables = {symbol: f"k{i}" for i, symbol in enumerate(self.ranges)}
        """Each symbol's name in the code of a check (symbol names need not be identifiers)."""

    def describe(self, values: Mapping[str, int]) -> str:
        """``values`` as sizes of the declared dims: ``height = 40, batch = 3``."""
        shown = {}
        for declared in self.dims:
            for dim in declared.values():
                if dim.symbol in values:
                    shown.setdefault(dim.symbol, f"{dim.name} = {values[dim.symbol] * dim.multiple_of}")
        return ", ".join(shown.values())

    def shapes(self, values: Mapping[str, int]) -> list[list[int]]:
        out = []
        for i, example in enumerate(self.examples):
            shape = list(example.shape)
            for index, dim in self.dims[i].items():
                if dim.symbol in values:
                    shape[index] = values[dim.symbol] * dim.multiple_of
            out.append(shape)
        return out

    def strides(self, shapes: list[list[int]]) -> list[list[int]] | None:
        """Contiguous strides of ``shapes``, where every example is contiguous (else None: not evaluable)."""
        if not all(t.is_contiguous() for t in self.examples):
            return None
        result = []
        for shape in shapes:
            strides, step = [], 1
            for size in reversed(shape):
                strides.append(step)
                step *= max(size, 1)
            result.append(strides[::-1])
        return result


class _Check:
    """One condition as Python code over ``S`` (sizes), ``T`` (strides) and the symbols ``k0, k1...``."""

    def __init__(self, shown: str, code: str, symbols: list[str]) -> None:
        self.shown, self.symbols = shown, symbols
        self.sizes, self.strides = "S[" in code, "T[" in code
        self.code = compile(code, "<size guard>", "eval")


def _guard_checks(program, space: SizeSpace) -> list[_Check] | str:
    checks = []
    for guard in getattr(program, "_guards_code", None) or ():
        symbols = sorted({space.where[(int(i), int(d))] for i, kind, d in _SIZE_REF.findall(guard)
                          if kind == "size" and (int(i), int(d)) in space.where})
        if "stride" in guard:
            symbols = sorted(space.ranges)  # a stride depends on every size after it: vary them all
        code = _SIZE_REF.sub(lambda m: f"{'S' if m[2] == 'size' else 'T'}[{m[1]}][{m[3]}]", guard)
        try:
            checks.append(_Check(guard, code, symbols))
        except SyntaxError:
            return f"guard {guard!r} cannot be read"
    return checks


def _assertion_checks(program, space: SizeSpace) -> list[_Check] | str:
    """The graph's runtime assertions in terms of the declared symbols (those proven for every positive size of
    them are dropped; those on data-dependent values only are left to torch, as export leaves them)."""
    import sympy
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
    from torch.utils._sympy.printers import PythonPrinter

    names = _program_symbols(program, space)
    checks = []
    for node in program.graph.nodes:
        if node.target is not torch.ops.aten._assert_scalar.default:
            continue
        arg = node.args[0] if node.args else None
        value = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg
        if isinstance(value, (bool, int)):
            if value:
                continue
            return f"a runtime assertion of the program is always false ({value!r})"
        expr = getattr(getattr(value, "node", None), "expr", None)
        if expr is None:
            return f"a runtime assertion of the program cannot be read ({arg!r})"
        free = expr.free_symbols
        if free and free <= set(free_unbacked_symbols(expr)):
            continue  # about data values (torch._check on an .item()): kept or dropped as a direct export would
        unknown = sorted(str(s) for s in free if s not in names)
        if unknown:
            return f"{expr} depends on sizes that are not declared ({', '.join(unknown)})"
        positive = {s: sympy.Symbol(space.variables[names[s]], integer=True, positive=True) for s in free}
        renamed = expr.xreplace(positive)
        if renamed is sympy.true:
            continue
        shown = str(expr.xreplace({s: sympy.Symbol(names[s]) for s in free}))
        checks.append(_Check(shown, PythonPrinter().doprint(renamed), sorted({names[s] for s in free})))
    return checks


def _program_symbols(program, space: SizeSpace) -> dict[Any, str]:
    """The program's size symbols by declared symbol name: the user inputs' symbolic sizes, a dim of step ``n``
    being ``n * symbol``."""
    import sympy

    user_inputs = set(program.graph_signature.user_inputs)
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
    names: dict[Any, str] = {}
    for node, declared in zip(placeholders, space.dims, strict=False):
        shape = getattr(node.meta.get("val"), "shape", ())
        for index, dim in declared.items():
            expr = getattr(getattr(shape[index], "node", None), "expr", None) if index < len(shape) else None
            if expr is None:
                continue
            coefficient, symbol = expr.as_coeff_Mul()
            if isinstance(symbol, sympy.Symbol) and coefficient == dim.multiple_of:
                names[symbol] = dim.symbol
    return names


def failing_condition(program: torch.export.ExportedProgram, space: SizeSpace) -> str | None:
    """None when every guard and runtime assertion of ``program`` holds at every combination of the declared sizes
    it depends on; else what fails and where, or why it could not be checked, in the declared dims' names."""
    checks: list[_Check] = []
    for found in (_guard_checks(program, space), _assertion_checks(program, space)):
        if isinstance(found, str):
            return found
        checks.extend(found)
    budget = MAX_EVALUATIONS
    seen: set[tuple] = set()
    for check in checks:
        if (check.shown, tuple(check.symbols)) in seen:
            continue
        seen.add((check.shown, tuple(check.symbols)))
        combos = math.prod(len(space.ranges[s]) for s in check.symbols)
        if combos > budget:
            return (f"{check.shown} would need {combos} evaluations over the declared ranges, more than "
                    f"{MAX_EVALUATIONS} in all; not checked")
        budget -= combos
        variables = [space.variables[s] for s in check.symbols]
        for values in itertools.product(*(space.ranges[s] for s in check.symbols)):
            assignment = dict(zip(check.symbols, values, strict=True))
            scope = dict(zip(variables, values, strict=True))
            if check.sizes or check.strides:
                scope["S"] = sizes = space.shapes(assignment)
                scope["T"] = space.strides(sizes) if check.strides else None
            try:
                holds = bool(eval(check.code, {"__builtins__": _BUILTINS}, scope))  # noqa: S307 - torch's own guards
            except Exception as err:  # noqa: BLE001 - a condition we cannot evaluate is not trusted
                return f"{check.shown} cannot be evaluated ({type(err).__name__}: {err})"
            if not holds:
                return f"{check.shown} fails at {space.describe(assignment)}"
    return None
