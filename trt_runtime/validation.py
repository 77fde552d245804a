"""Compare a compiled artifact's output with eager PyTorch's, whatever the output's structure."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["relative_error"]


def relative_error(actual: Any, expected: Any) -> float:
    """Largest ``max|a - e| / max|e|`` over the floating tensors of two outputs (0.0 when equal).

    Outputs are flattened with torch's pytree, so dataclass and dict outputs compare field by field.
    A different structure, shape, dtype or a non-float leaf that differs counts as ``inf``; a NaN
    where eager has none counts as ``inf`` too.
    """
    from torch.utils import _pytree as pytree

    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    if a_spec != e_spec or len(a_leaves) != len(e_leaves):
        return math.inf
    worst = 0.0
    for a, e in zip(a_leaves, e_leaves, strict=True):
        if not isinstance(e, torch.Tensor):
            if a != e:
                return math.inf
            continue
        if not isinstance(a, torch.Tensor) or a.shape != e.shape:
            return math.inf
        if not e.is_floating_point():
            if not torch.equal(a.to(e.device), e):
                return math.inf
            continue
        a64 = a.detach().to(device=e.device, dtype=torch.float64)
        e64 = e.detach().to(torch.float64)
        if bool(torch.isnan(a64).any() & ~torch.isnan(e64).any()):
            return math.inf
        finite = torch.isfinite(e64) & torch.isfinite(a64)
        scale = e64[finite].abs().max().item() if bool(finite.any()) else 0.0
        diff = (a64 - e64)[finite].abs().max().item() if bool(finite.any()) else 0.0
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst
