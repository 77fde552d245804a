"""How a call's arguments are named and walked: the one place that knows the naming rule.

Every layer that addresses a tensor inside a call uses the same *path*: a positional argument is
named by the forward's parameter name (``sample``), or ``args<i>`` past the named ones (a forward with
``*args``); keyword arguments by their keyword; containers append ``.<index>`` or ``.<key>``
(``added_cond_kwargs.text_embeds``, ``down_block_additional_residuals.0``). Shape specs, cache keys,
the TensorRT exporter and the wrappers all agree because they all call these functions.

Also here: one table between torch dtypes and the precision names of ``RuntimeSettings``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "arg_path",
    "is_extra_positional",
    "positional_names",
    "iter_tensors",
    "tensor_shapes",
    "PRECISION_OF",
    "DTYPE_OF",
    "precision_of",
    "dtype_of",
]

_EXTRA = re.compile(r"args\d+")


def arg_path(index: int, names: tuple[str, ...]) -> str:
    """The path of positional argument ``index``: its parameter name, else ``args<index>``."""
    return names[index] if index < len(names) else f"args{index}"


def is_extra_positional(name: str) -> bool:
    """Whether ``name`` is an ``args<i>`` path (a positional argument past the named parameters)."""
    return _EXTRA.fullmatch(name) is not None


def positional_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    """Parameter names a positional call of ``fn`` binds to, ``self`` left out."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(
        p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    )


def iter_tensors(args: tuple, kwargs: Mapping[str, Any], names: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Yield ``(path, tensor)`` for every tensor of a call, depth first: positional arguments in order,
    then keyword arguments sorted by name, dict items sorted by key."""
    for index, value in enumerate(args):
        yield from _walk(arg_path(index, names), value)
    for key in sorted(kwargs):
        yield from _walk(key, kwargs[key])


def _walk(path: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(f"{path}.{index}", item)
    elif isinstance(value, Mapping):
        for key in sorted(value, key=str):
            yield from _walk(f"{path}.{key}", value[key])


def tensor_shapes(args: tuple, kwargs: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """Shapes of every tensor of a call, in ``iter_tensors`` order (for messages and logs)."""
    return [tuple(t.shape) for _, t in iter_tensors(args, kwargs)]


PRECISION_OF: Mapping[torch.dtype, str] = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
DTYPE_OF: Mapping[str, torch.dtype] = {name: dtype for dtype, name in PRECISION_OF.items()}


def precision_of(dtype: torch.dtype | None, default: str = "fp32") -> str:
    """The precision name of a floating dtype (``default`` for anything else)."""
    return PRECISION_OF.get(dtype, default) if dtype is not None else default


def dtype_of(precision: str | None) -> torch.dtype | None:
    """The torch dtype of a precision name, or None."""
    return DTYPE_OF.get(precision or "")
