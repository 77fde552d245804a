"""Declared shape ranges: one artifact serves every input whose dimensions fall inside them.

A ``ShapeSpec`` maps an argument path (``"sample"``, ``"encoder_hidden_states"``,
``"added_cond_kwargs.text_embeds"``, ``"down_block_additional_residuals.0"``) to the dimensions of that
tensor that may vary, each a ``Dim``. Dims with the same name are one symbol: ``batch`` in ``sample`` and
in ``encoder_hidden_states`` must be equal, which is what exporters need to know.

Real models also constrain the *step* of a size, and relate sizes to each other. A UNet halves the latent
per level and concatenates skip connections, so its latent height must divide by ``2**levels``;
``torch.export`` refuses a range that admits sizes the model cannot take (``ConstraintViolationError``).
``Dim("h", 64, 128, multiple_of=8)`` admits 64, 72, ..., 128 and is exported as ``8 * k``. A
ControlNet's conditioning image is the latent times the VAE's scale, and the UNet's ControlNet residuals
are the latent at each level: ``h * 8`` and ``h // 2`` are *derived* dims, the same symbol scaled, so an
exporter knows how they relate instead of being told they are independent (which they are not).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from .errors import ConfigurationError

__all__ = ["Dim", "DimLike", "ShapeSpec", "normalize_spec", "constraint_hint", "first_lines", "active_dims"]


def _check_int(owner: str, field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"Dim {owner!r}: {field} must be an int, not {value!r}")


@dataclasses.dataclass(frozen=True)
class Dim:
    """A dimension that may take any value in ``[min, max]`` that divides by ``multiple_of``.

    ``opt`` is the size TensorRT tunes its kernels for (default: ``max``). ``h * n`` and ``h // n`` are
    dims derived from ``h`` (a ControlNet image ``h * 8``, a UNet residual ``h // 2``): exporters see one
    symbol for all of them. ``h // n`` needs ``h``'s ``multiple_of`` to divide by ``n``.
    """

    name: str
    min: int
    max: int
    opt: int | None = None
    multiple_of: int = 1
    root: str | None = dataclasses.field(default=None, kw_only=True)
    """Derived dims only: the name of the dim this one is a multiple or fraction of."""
    scale: Fraction = dataclasses.field(default=Fraction(1), kw_only=True)
    """Derived dims only: this dim's size over the root dim's size."""

    def __post_init__(self) -> None:
        if self.root is None and (not isinstance(self.name, str) or not self.name.isidentifier()):
            raise ConfigurationError(f"Dim name must be a Python identifier, not {self.name!r}")
        for field in ("min", "max", "multiple_of"):
            _check_int(self.name, field, getattr(self, field))
        if self.opt is not None:
            _check_int(self.name, "opt", self.opt)
        if self.multiple_of < 1:
            raise ConfigurationError(f"Dim {self.name!r}: multiple_of must be at least 1, not {self.multiple_of}")
        if not 1 <= self.min <= self.max:
            raise ConfigurationError(f"Dim {self.name!r}: need 1 <= min <= max, got {self.min}..{self.max}")
        if self.opt is not None and not self.min <= self.opt <= self.max:
            raise ConfigurationError(f"Dim {self.name!r}: opt {self.opt} outside {self.min}..{self.max}")
        step = self.multiple_of
        for field in ("min", "max", "opt"):
            value = getattr(self, field)
            if value is not None and value % step:
                raise ConfigurationError(
                    f"Dim {self.name!r}: {field} {value} is not a multiple of {step}",
                    hint=f"use {value // step * step or step} or {(value // step + 1) * step}",
                )
        object.__setattr__(self, "scale", Fraction(self.scale))
        if self.root is not None and (Fraction(step) / self.scale).denominator != 1:
            raise ConfigurationError(f"Dim {self.name!r}: multiple_of {step} does not fit scale {self.scale}")

    # ------------------------------------------------------------------------------------------ values
    @property
    def opt_value(self) -> int:
        return self.max if self.opt is None else self.opt

    def contains(self, size: int) -> bool:
        """Whether one artifact of this range can take ``size``."""
        return self.min <= size <= self.max and size % self.multiple_of == 0

    # ------------------------------------------------------------------------------------------ symbol
    @property
    def root_name(self) -> str:
        """The name every dim derived from the same declaration shares (its own for a declared dim)."""
        return self.root or self.name

    @property
    def root_step(self) -> int:
        """``multiple_of`` of the root dim: its size is ``root_step * k``."""
        return int(Fraction(self.multiple_of) / self.scale)

    @property
    def steps(self) -> tuple[int, int]:
        """The range of ``k``, the one free integer behind this dim: its size is ``multiple_of * k``."""
        return self.min // self.multiple_of, self.max // self.multiple_of

    @property
    def symbol(self) -> str:
        """Name of ``k`` for exporters: the root's name when ``k`` is the root's size itself, else
        ``<root>_div<step>``. Dims with the same symbol are one variable, scaled."""
        step = self.root_step
        return self.root_name if step == 1 else f"{self.root_name}_div{step}"

    # ------------------------------------------------------------------------------------------ derived
    def __mul__(self, factor: int) -> Dim:
        _check_int(self.name, "factor", factor)
        if factor < 1:
            raise ConfigurationError(f"Dim {self.name!r}: can only be multiplied by a positive int, not {factor}")
        return self._derive(f"{self.name}*{factor}", Fraction(factor))

    __rmul__ = __mul__

    def __floordiv__(self, divisor: int) -> Dim:
        _check_int(self.name, "divisor", divisor)
        if divisor < 1 or self.multiple_of % divisor:
            raise ConfigurationError(
                f"Dim {self.name!r} // {divisor}: sizes of {self.name!r} (multiple_of={self.multiple_of}) do not "
                f"all divide by {divisor}",
                hint=f"declare {self.name!r} with multiple_of={divisor} or a multiple of it",
            )
        return self._derive(f"{self.name}//{divisor}", Fraction(1, divisor))

    def _derive(self, name: str, factor: Fraction) -> Dim:
        def scaled(value: int | None) -> int | None:
            return None if value is None else int(value * factor)

        return Dim(name, scaled(self.min), scaled(self.max), scaled(self.opt), int(self.multiple_of * factor),
                   root=self.root_name, scale=self.scale * factor)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "min": self.min, "opt": self.opt_value, "max": self.max}
        if self.multiple_of != 1:
            out["multiple_of"] = self.multiple_of
        if self.root is not None:
            out["of"] = self.root
            out["scale"] = str(self.scale)
        return out


DimLike = Dim | tuple
ShapeSpec = Mapping[str, Mapping[int, Dim]]


def normalize_spec(spec: Mapping[str, Mapping[int, DimLike]] | None) -> dict[str, dict[int, Dim]] | None:
    """Check a user's spec and turn ``(min, max)`` / ``(min, opt, max)`` tuples into named ``Dim``s.

    Dims that share a name must agree on their range, and dims derived from one declaration must agree
    on the range of their common symbol, or the exporter would get two answers.
    """
    if not spec:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"shape spec must be a mapping of argument path to dims, got {type(spec)}")
    out: dict[str, dict[int, Dim]] = {}
    by_name: dict[str, Dim] = {}
    by_symbol: dict[str, Dim] = {}
    for path, dims in spec.items():
        if not isinstance(dims, Mapping):
            raise ConfigurationError(f"shape spec for {path!r} must map dimension index to Dim")
        out[path] = {}
        for index, dim in dims.items():
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ConfigurationError(f"shape spec for {path!r}: dimension index must be an int >= 0, not {index!r}")
            if isinstance(dim, tuple) and len(dim) in (2, 3):
                lo, hi = dim[0], dim[-1]
                opt = dim[1] if len(dim) == 3 else None
                dim = Dim(f"{path.replace('.', '_')}_{index}", lo, hi, opt)
            if not isinstance(dim, Dim):
                raise ConfigurationError(f"shape spec for {path!r}[{index}]: expected Dim or (min, max), got {dim!r}")
            seen = by_name.setdefault(dim.name, dim)
            if seen != dim:
                raise ConfigurationError(f"Dim {dim.name!r} declared twice with different ranges: {seen} vs {dim}")
            other = by_symbol.setdefault(dim.symbol, dim)
            if other.steps != dim.steps:
                raise ConfigurationError(
                    f"Dims {other.name!r} and {dim.name!r} are derived from {dim.root_name!r} but cover different "
                    f"ranges of it ({other.min}..{other.max} step {other.multiple_of} vs {dim.min}..{dim.max} step "
                    f"{dim.multiple_of})", hint="derive both from one Dim with * and //")
            out[path][index] = dim
    return out


_DIVISOR = re.compile(r"%\s*(\d+)\)?\s*==\s*0|Mod\([^,]+,\s*(\d+)\)")
_SPECIALIZED = re.compile(r"marked (\w+) as dynamic but your code specialized it to be a constant \((\d+)\)")
_GUARD_SIZE = re.compile(r"Not all values of (\S+)(?: = \S+)? in the specified range")


def constraint_hint(err: BaseException) -> str | None:
    """What to change in a declared range that torch.export or dynamo refused, read from their message
    (a ``ConstraintViolationError``), in the terms of ``Dim``; None when the error is about something else.

    Why here: torch's message speaks of guards such as ``(L['sample'].size()[2] % 2) == 0`` and
    suggests ``torch.export.Dim`` code; a user of ``wrap_pipeline`` or ``Dim`` needs to hear
    "``multiple_of=2``" or "declare the batch on every input that shares it".
    """
    text = str(err)
    hints = []
    divisors = sorted({int(a or b) for a, b in _DIVISOR.findall(text)})
    if divisors and _GUARD_SIZE.search(text):
        step = max(divisors)
        hints.append(f"the module only takes sizes that divide by {step}: declare the range with "
                     f"multiple_of={step} (a UNet's latent size must divide by 2 per down-sampling level)")
    for name, value in _SPECIALIZED.findall(text):
        hints.append(f"the module ties {name!r} to the size of an input where it is not declared (example size "
                     f"{value}): declare the same Dim on every input that shares it (the batch of "
                     "encoder_hidden_states and added_cond_kwargs too)")
    return "; ".join(hints) or None


def first_lines(err: BaseException, lines: int = 12) -> str:
    """The head of an exception's message: torch's export and dynamo errors run to hundreds of lines,
    and the cache's ``meta.json`` and the one warning of a failed build need what failed, not all of it."""
    text = str(err).strip().splitlines()
    return "\n".join(text[:lines]) + (f"\n... ({len(text) - lines} more lines)" if len(text) > lines else "")


def active_dims(sig: tuple, spec) -> dict:
    """The declared dims this call's tensors fall inside (only those become dynamic)."""
    if not spec:
        return {}
    active: dict[str, dict[int, Any]] = {}
    for path, dims in spec.items():
        for index, dim in dims.items():
            if _sig_has_dim(sig, dim):
                active.setdefault(path, {})[index] = dim
    return active


def _sig_has_dim(node: Any, dim) -> bool:
    if node is dim:
        return True
    if isinstance(node, tuple):
        return any(_sig_has_dim(child, dim) for child in node)
    return False
