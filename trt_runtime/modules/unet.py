"""UNet2DConditionModel (SD1.x/2.x, SDXL, inpainting, LCM), wrapped as a whole, in place.

Everything the UNet takes per step goes into the compiled call as an input, so one artifact serves a
whole generation and every ControlNet: ``added_cond_kwargs`` (SDXL's ``text_embeds``/``time_ids``),
``timestep_cond``, and the ControlNet residuals (``down_block_additional_residuals``,
``mid_block_additional_residual``: their shapes are the UNet's, whichever ControlNet made them).

Two things would otherwise compile per call: a timestep given as a Python number (keys hold plain
numbers by value) becomes a tensor here, the way diffusers' ``get_time_embed`` would build it; and
``cross_attention_kwargs["scale"]`` is dropped from the key when no LoRA adapter is loaded (it does
nothing then). With adapters it is keyed by value: PEFT bakes the scaling into the graph.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..runtime import TensorRTRuntime
from .base import SpecLike
from .family import CallBinder, LoraTracker, TupleCore, Wrapped, scalar_to_tensor, wrap_in_place

__all__ = ["apply_unet"]

logger = logging.getLogger(__name__)


def apply_unet(
    unet: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str = "unet",
    shapes: SpecLike | None = None,
    settings: dict | None = None,
) -> Wrapped:
    """Install the runtime on ``unet`` (a ``UNet2DConditionModel`` or one with its calling convention).

    The object keeps its class, config, dtype and device; ``unet(...)`` returns a
    ``UNet2DConditionOutput`` (or ``(sample,)`` with ``return_dict=False``) as before.
    ``shapes`` declares ranges one artifact serves, by forward argument (``{"sample": {2: (64, 128),
    3: (64, 128)}}``); with ControlNet, the residual paths (``down_block_additional_residuals.0``...)
    vary with the resolution too. Returns a ``Wrapped``; ``.remove()`` restores the original forward.
    """
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    binder = CallBinder(type(unet).forward)

    def call(component, lora: LoraTracker, args: tuple, kwargs: dict[str, Any]) -> Any:
        call = binder.bind(args, kwargs)
        return_dict = call.pop("return_dict", True)
        sample = call["sample"]
        call["timestep"] = scalar_to_tensor(call["timestep"], sample.device)
        lora.prepare(call, "cross_attention_kwargs")
        (out,) = component(**call)
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)

    return wrap_in_place(unet, name, core=TupleCore, call=call, runtime=runtime, shapes=shapes, settings=settings,
                         family=f"{__name__}:apply_unet")
