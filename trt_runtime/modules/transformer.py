"""Diffusion transformers (SD3, Flux, HunyuanVideo...) and the generic wrapper for any ``nn.Module``.

``timestep`` and ``guidance`` given as Python numbers become tensors of the batch size (keys hold plain
numbers by value: a float timestep would compile once per denoising step); the LoRA scale in
``joint_attention_kwargs`` / ``attention_kwargs`` is handled by ``LoraTracker``. The compiled unit returns
the forward's tuple and the wrapper rebuilds ``Transformer2DModelOutput``, so ``return_dict`` never
enters a key.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from ..runtime import TensorRTRuntime
from .base import SpecLike
from .family import (
    CallBinder,
    LoraTracker,
    PassCore,
    TupleCore,
    Wrapped,
    attach,
    detach,
    output_class,
    scalar_to_tensor,
    wrap_in_place,
)

__all__ = ["Wrapped", "apply_transformer", "wrap_module", "attach", "detach"]

logger = logging.getLogger(__name__)


def wrap_module(
    module: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str | None = None,
    shapes: SpecLike | None = None,
    settings: dict | None = None,
) -> Wrapped:
    """The generic wrapper: any module, in place, its calls passed through unchanged (``return_dict``
    and plain values included, keyed by value). Output types come back as the backend rebuilds them."""

    def call(component, lora: LoraTracker, args: tuple, kwargs: dict[str, Any]) -> Any:
        kwargs = dict(kwargs)
        lora.prepare(kwargs, None)
        return component(*args, **kwargs)

    return wrap_in_place(module, name or type(module).__name__, core=PassCore, call=call, runtime=runtime,
                         shapes=shapes, settings=settings)


def apply_transformer(
    module: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str = "transformer",
    shapes: SpecLike | None = None,
    settings: dict | None = None,
) -> Wrapped:
    """Wrap a diffusers transformer (SD3, Flux, HunyuanVideo, or any with a ``return_dict`` forward
    returning ``Transformer2DModelOutput``); other modules get ``wrap_module``."""
    from diffusers.utils import BaseOutput

    forward = type(module).forward
    cls = output_class(forward, BaseOutput)
    binder = CallBinder(forward)
    if cls is None or "return_dict" not in binder.all_names or len(dataclasses.fields(cls)) != 1:
        logger.info("[%s] %s has no single-output return_dict forward; using the generic wrapper",
                    name, type(module).__name__)
        return wrap_module(module, runtime=runtime, name=name, shapes=shapes, settings=settings)
    field = dataclasses.fields(cls)[0].name
    first = binder.names[0]
    attention = next((k for k in ("joint_attention_kwargs", "attention_kwargs", "cross_attention_kwargs")
                      if k in binder.all_names), None)

    def call(component, lora: LoraTracker, args: tuple, kwargs: dict[str, Any]) -> Any:
        call = binder.bind(args, kwargs)
        return_dict = call.pop("return_dict", True)
        sample = call.get(first)
        if isinstance(sample, torch.Tensor):
            for key in ("timestep", "guidance"):
                if key in call:
                    call[key] = scalar_to_tensor(call[key], sample.device, sample.shape[0])
        lora.prepare(call, attention)
        out = component(**call)
        return cls(**{field: out[0]}) if return_dict else out

    return wrap_in_place(module, name, core=TupleCore, call=call, runtime=runtime, shapes=shapes,
                         settings=settings, family=f"{__name__}:apply_transformer")
