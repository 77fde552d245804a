"""Declared shape ranges: one artifact serves every input whose dimensions fall inside them.

A ``ShapeSpec`` maps an argument path (``"sample"``, ``"encoder_hidden_states"``,
``"added_cond_kwargs.text_embeds"``, ``"down_block_additional_residuals.0"``) to the dimensions of that
tensor that may vary, each a ``Dim``. Dims with the same name are one symbol: ``batch`` in ``sample`` and
in ``encoder_hidden_states`` must be equal, which is what exporters need to know.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

__all__ = ["Dim", "ShapeSpec", "normalize_spec"]


@dataclasses.dataclass(frozen=True)
class Dim:
    """A dimension that may take any value in ``[min, max]``; ``opt`` is what TensorRT tunes for
    (default: ``max``)."""

    name: str
    min: int
    max: int
    opt: int | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ConfigurationError(f"Dim name must be a Python identifier, not {self.name!r}")
        if not 1 <= self.min <= self.max:
            raise ConfigurationError(f"Dim {self.name!r}: need 1 <= min <= max, got {self.min}..{self.max}")
        if self.opt is not None and not self.min <= self.opt <= self.max:
            raise ConfigurationError(f"Dim {self.name!r}: opt {self.opt} outside {self.min}..{self.max}")

    @property
    def opt_value(self) -> int:
        return self.max if self.opt is None else self.opt

    def contains(self, size: int) -> bool:
        return self.min <= size <= self.max

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "min": self.min, "opt": self.opt_value, "max": self.max}


DimLike = Dim | tuple
ShapeSpec = Mapping[str, Mapping[int, Dim]]


def normalize_spec(spec: Mapping[str, Mapping[int, DimLike]] | None) -> dict[str, dict[int, Dim]] | None:
    """Check a user's spec and turn ``(min, max)`` / ``(min, opt, max)`` tuples into named ``Dim``s.

    Dims that share a name must agree on their range, or the exporter would get two answers.
    """
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"shape spec must be a mapping of argument path to dims, got {type(spec)}")
    out: dict[str, dict[int, Dim]] = {}
    by_name: dict[str, Dim] = {}
    for path, dims in spec.items():
        if not isinstance(dims, Mapping):
            raise ConfigurationError(f"shape spec for {path!r} must map dimension index to Dim")
        out[path] = {}
        for index, dim in dims.items():
            if not isinstance(index, int):
                raise ConfigurationError(f"shape spec for {path!r}: dimension index must be int, not {index!r}")
            if isinstance(dim, tuple) and len(dim) in (2, 3):
                lo, hi = dim[0], dim[-1]
                opt = dim[1] if len(dim) == 3 else None
                dim = Dim(f"{path.replace('.', '_')}_{index}", lo, hi, opt)
            if not isinstance(dim, Dim):
                raise ConfigurationError(f"shape spec for {path!r}[{index}]: expected Dim or (min, max), got {dim!r}")
            seen = by_name.setdefault(dim.name, dim)
            if seen != dim:
                raise ConfigurationError(f"Dim {dim.name!r} declared twice with different ranges: {seen} vs {dim}")
            out[path][index] = dim
    return out
