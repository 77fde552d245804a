"""ControlNets: ``ControlNetModel`` (SD and SDXL) and ``MultiControlNetModel``.

``conditioning_scale`` is applied outside the compiled graph: the artifact always runs with scale 1.0
and the wrapper multiplies the residuals afterwards. ControlNet's scaling is linear in its outputs
(``guess_mode``'s per-block ``logspace`` factors times the scale, or one factor; pooling with
``global_pool_conditions`` is a mean), so this is the same computation, and one artifact serves every
scale, including the per-step scales of ``control_guidance_start``/``end``. ``guess_mode`` is a plain
bool in the key (at most two artifacts).

A ``MultiControlNetModel`` only loops over its ``nets``; each net is wrapped on its own (components
``controlnet.0``, ``controlnet.1``...), so each gets its own artifact and two identical nets share one
on disk. Other ControlNet families (SD3, Flux, Union) go through the generic wrapper, with the scale
inside the graph and keyed by value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigurationError
from ..runtime import TensorRTRuntime
from .base import SpecLike
from .family import CallBinder, LoraTracker, TupleCore, Wrapped, scalar_to_tensor, wrap_in_place
from .transformer import wrap_module

__all__ = ["apply_controlnet"]

logger = logging.getLogger(__name__)


def apply_controlnet(
    controlnet: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str = "controlnet",
    shapes: SpecLike | None = None,
    net_shapes: Mapping[int, SpecLike] | None = None,
    settings: dict | None = None,
) -> Wrapped:
    """Install the runtime on a ControlNet, or on each net of a ``MultiControlNetModel``.

    ``shapes`` declares the ranges one artifact serves (``sample`` in latent pixels, ``controlnet_cond``
    in image pixels) and applies to every net of a ``MultiControlNetModel``; ``net_shapes`` replaces it
    for single nets by index (``{1: {...}}``: ``controlnet.1`` takes that spec, the others ``shapes``).
    ``net_shapes`` with an index that names no net raises ``ConfigurationError``.
    """
    nets = getattr(controlnet, "nets", None)
    is_multi = isinstance(nets, torch.nn.ModuleList)
    count = len(nets) if is_multi else 0
    bad = sorted(set(net_shapes or ()) - set(range(count)), key=str)
    if bad:
        has = f"nets 0..{count - 1}" if is_multi else "no nets (it is a single ControlNet)"
        raise ConfigurationError(
            f"net_shapes names nets {bad}; {type(controlnet).__name__} has {has}", component=name,
            hint="per-net specs are for a MultiControlNetModel; shapes= applies to every net",
        )
    if is_multi:
        wrapped = Wrapped({}, [])
        try:
            for index, net in enumerate(nets):
                spec = (net_shapes or {}).get(index, shapes)
                part = apply_controlnet(net, runtime=runtime, name=f"{name}.{index}", shapes=spec,
                                        settings=settings)
                wrapped.components.update(part.components)
                wrapped.modules.extend(part.modules)
        except BaseException:
            wrapped.remove()
            raise
        return wrapped
    if not _is_controlnet_model(controlnet):
        logger.info("[%s] %s: conditioning_scale stays inside the graph (generic wrapper)",
                    name, type(controlnet).__name__)
        return wrap_module(controlnet, runtime=runtime, name=name, shapes=shapes, settings=settings)
    return _apply_one(controlnet, runtime, name, settings, shapes)


def _is_controlnet_model(module: torch.nn.Module) -> bool:
    return any(cls.__name__ == "ControlNetModel" for cls in type(module).__mro__)


def _apply_one(net: torch.nn.Module, runtime, name: str, settings, shapes) -> Wrapped:
    from diffusers.models.controlnets.controlnet import ControlNetOutput

    binder = CallBinder(type(net).forward)

    def call(component, lora: LoraTracker, args: tuple, kwargs: dict[str, Any]) -> Any:
        call = binder.bind(args, kwargs)
        return_dict = call.pop("return_dict", True)
        scale = call.pop("conditioning_scale", 1.0)
        sample = call["sample"]
        call["timestep"] = scalar_to_tensor(call["timestep"], sample.device)
        lora.prepare(call, "cross_attention_kwargs")
        down, mid = component(**call, conditioning_scale=1.0)
        if not (isinstance(scale, (int, float)) and scale == 1.0):
            down = [residual * scale for residual in down]
            mid = mid * scale
        if return_dict:
            return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)
        return down, mid

    return wrap_in_place(net, name, core=TupleCore, call=call, runtime=runtime, shapes=shapes, settings=settings,
                         family=f"{__name__}:apply_controlnet")
