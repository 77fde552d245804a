"""Guards that ``torch.export`` could not prove over a declared range, checked at every value of it.

torch.export refuses a declared range when the module's code asks a question of the symbolic sizes that its
solver cannot answer for the whole range, even when the answer is always yes. Seen with torch 2.11 and
transformers' Llama attention (``repeat_kv`` reshapes an expanded tensor; the contiguity check asks
``Min(4*tokens, 8*tokens) == 4*tokens``, true for every positive size). torch 2.14 proves it.

For such a refusal the program is exported again with the guards turned into runtime assertions
(``prefer_deferred_runtime_asserts_over_guards``), and each assertion is evaluated at every value of the
declared ranges it depends on. Only when all hold is the program used (torch-tensorrt drops the assertions
from the engine, so they must hold for every size the engine will serve); one that fails somewhere keeps the
refusal, with the value that breaks it. Sizes outside the declared ranges never reach the program.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["is_constraint_violation", "symbol_ranges", "failing_assertion", "MAX_EVALUATIONS"]

MAX_EVALUATIONS = 200_000
"""An assertion over more combinations of sizes than this is not checked: the refusal stands."""


def is_constraint_violation(err: BaseException) -> bool:
    """Whether ``err`` is torch.export refusing declared dynamic dims (not a tracing failure)."""
    kind = getattr(err, "error_type", None)
    return getattr(kind, "name", None) == "CONSTRAINT_VIOLATION"


def symbol_ranges(program: torch.export.ExportedProgram, dims: Iterable[Mapping[int, Any]]
                  ) -> dict[Any, tuple[str, range]]:
    """The name and the values of each size symbol of the program's inputs, from the declared dims (one
    mapping of dim index -> ``shapes.Dim`` per user input, in order): a dim of step ``n`` is ``n * symbol``
    and the symbol runs over ``Dim.steps``."""
    import sympy

    placeholders = [node for node in program.graph.nodes if node.op == "placeholder"
                    and node.name in set(program.graph_signature.user_inputs)]
    ranges: dict[Any, tuple[str, range]] = {}
    for node, declared in zip(placeholders, dims, strict=True):
        shape = getattr(node.meta.get("val"), "shape", ())
        for index, dim in declared.items():
            size = shape[index] if index < len(shape) else None
            expr = getattr(getattr(size, "node", None), "expr", None)
            if expr is None:
                continue
            coefficient, symbol = expr.as_coeff_Mul()
            if isinstance(symbol, sympy.Symbol) and coefficient == dim.multiple_of:
                low, high = dim.steps
                ranges[symbol] = (dim.symbol, range(low, high + 1))
    return ranges


def failing_assertion(program: torch.export.ExportedProgram, ranges: Mapping[Any, tuple[str, range]]
                      ) -> str | None:
    """None when every runtime assertion of ``program`` holds at every combination of the sizes it depends on;
    else what fails, and where (or why it could not be checked), in the declared dims' names."""
    import sympy

    names = {symbol: sympy.Symbol(name) for symbol, (name, _) in ranges.items()}

    for node in program.graph.nodes:
        if node.target is not torch.ops.aten._assert_scalar.default:
            continue
        value = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else node.args[0]
        expr = getattr(getattr(value, "node", None), "expr", value)
        if expr is True or expr is sympy.true:
            continue
        free = sorted(getattr(expr, "free_symbols", ()), key=str)
        unknown = [s for s in free if s not in ranges]
        shown = expr.xreplace(names) if hasattr(expr, "xreplace") else expr
        if unknown or not free:
            return f"{shown} depends on sizes that are not declared ({', '.join(map(str, unknown)) or 'none'})"
        if math.prod(len(ranges[s][1]) for s in free) > MAX_EVALUATIONS:
            return f"{shown} spans more than {MAX_EVALUATIONS} combinations of sizes; not checked"
        for values in itertools.product(*(ranges[s][1] for s in free)):
            result = expr.xreplace({s: sympy.Integer(v) for s, v in zip(free, values, strict=True)})
            if result is not sympy.true:
                at = ", ".join(f"{names[s]} = {v}" for s, v in zip(free, values, strict=True))
                return f"{shown} fails at {at}"
    return None
