"""``wrap_pipeline`` / ``unwrap_pipeline``: put a diffusers pipeline's heavy modules behind the runtime.

Components are found by what the pipeline holds (``pipe.components``) under diffusers' own attribute
names: ``unet``, ``vae``, ``transformer``/``transformer_2``, ``controlnet``, ``text_encoder``/
``text_encoder_2``/``text_encoder_3``. Each is wrapped in place by its family's ``apply_*`` (the
pipeline keeps the very same objects, so ``pipe.unet.config``, ``pipe.vae.dtype``, ``.to()``, LoRA
loading and offload hooks all see what they expect). Anything else (image encoders, safety checkers,
schedulers) is left alone, and so is any family the caller turned off.

Offload: ``enable_model_cpu_offload()`` works before or after wrapping (the compiled call runs inside
accelerate's hook, after the module was moved to the execution device). Sequential CPU offload and
group offloading keep weights away from the module while it runs; wrapping such a pipeline raises
``ConfigurationError`` naming the component and the conflicting option, and nothing is installed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .errors import ConfigurationError
from .modules.controlnet import apply_controlnet
from .modules.text_encoders import apply_text_encoder, is_supported_text_encoder
from .modules.transformer import Wrapped, apply_transformer, check_offload, wrap_module
from .modules.unet import apply_unet
from .modules.vae import SUPPORTED_VAES, apply_vae
from .runtime import Component, TensorRTRuntime, get_default_runtime

__all__ = ["wrap_pipeline", "unwrap_pipeline", "wrapped_components"]

logger = logging.getLogger(__name__)

_RECORD = "_trt_runtime_wrapped"


def _family(name: str) -> str | None:
    if name in ("unet", "vae", "controlnet"):
        return name
    if name.startswith("transformer"):
        return "transformer"
    if name.startswith("text_encoder"):
        return "text_encoders"
    return None


def wrap_pipeline(
    pipe: Any,
    *,
    vae: bool = True,
    unet: bool = True,
    transformer: bool = True,
    text_encoders: bool = False,
    controlnet: bool = True,
    runtime: TensorRTRuntime | None = None,
    **settings: Any,
) -> Any:
    """Wrap ``pipe``'s components in place and return ``pipe``.

    ``settings`` are ``RuntimeSettings`` fields (``backend="inductor"``, ``strict=True``...) that apply
    to the components wrapped here, on top of ``runtime``'s (default: the process-wide runtime).
    Text encoders are off by default: they run once per prompt, so compiling them rarely pays.
    """
    if getattr(pipe, _RECORD, None):
        raise ConfigurationError("this pipeline is already wrapped", hint="call unwrap_pipeline(pipe) first")
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise ConfigurationError(f"{type(pipe).__name__} is not a diffusers pipeline (it has no .components)")
    runtime = runtime or get_default_runtime()
    runtime.settings.replace(**settings)  # unknown names raise ConfigurationError before anything changes
    enabled = {"vae": vae, "unet": unet, "transformer": transformer, "text_encoders": text_encoders,
               "controlnet": controlnet}

    plan: list[tuple[str, str, torch.nn.Module]] = []
    seen: set[int] = set()
    for name, module in components.items():
        family = _family(name)
        if family is None or not isinstance(module, torch.nn.Module) or id(module) in seen:
            continue
        if not enabled[family]:
            logger.debug("[%s] left eager (%s=False)", name, family)
            continue
        seen.add(id(module))
        plan.append((name, family, module))
    for name, _, module in plan:  # refuse conflicting offload modes before installing anything
        check_offload(module, name)

    overrides = dict(settings) or None
    done: dict[str, Wrapped] = {}
    try:
        for name, family, module in plan:
            wrapped = _apply(family, name, module, runtime, overrides)
            if wrapped is not None:
                done[name] = wrapped
    except BaseException:
        for wrapped in done.values():
            wrapped.remove()
        raise
    object.__setattr__(pipe, _RECORD, done)
    names = [c for w in done.values() for c in w.components]
    logger.info("trt_runtime wrapped %s: %s (backend %s)", type(pipe).__name__, ", ".join(names) or "nothing",
                runtime.settings.replace(**settings).backend)
    return pipe


def _apply(family: str, name: str, module: torch.nn.Module, runtime: TensorRTRuntime,
           settings: dict | None) -> Wrapped | None:
    kw = dict(runtime=runtime, name=name, settings=settings)
    classes = {cls.__name__ for cls in type(module).__mro__}
    if family == "unet":
        if "UNet2DConditionModel" in classes:
            return apply_unet(module, **kw)
        return wrap_module(module, **kw)
    if family == "vae":
        if classes.isdisjoint(SUPPORTED_VAES):
            logger.warning("[%s] %s is not a supported VAE (%s); it stays eager", name, type(module).__name__,
                           ", ".join(SUPPORTED_VAES))
            return None
        return apply_vae(module, **kw)
    if family == "transformer":
        return apply_transformer(module, **kw)
    if family == "controlnet":
        return apply_controlnet(module, **kw)
    if not is_supported_text_encoder(module):
        logger.info("[%s] %s is not a supported text encoder; it stays eager", name, type(module).__name__)
        return None
    return apply_text_encoder(module, **kw)


def unwrap_pipeline(pipe: Any) -> Any:
    """Restore every module ``wrap_pipeline`` wrapped (compiled artifacts stay in the disk cache)."""
    record: dict[str, Wrapped] | None = getattr(pipe, _RECORD, None)
    if not record:
        return pipe
    for wrapped in record.values():
        wrapped.remove()
    object.__delattr__(pipe, _RECORD)
    return pipe


def wrapped_components(pipe: Any) -> dict[str, Component]:
    """The runtime components of a wrapped pipeline by name (``unet``, ``vae.decoder``,
    ``controlnet.0``...): each has ``.runtime`` (statistics) and ``.invalidate()``."""
    record: dict[str, Wrapped] = getattr(pipe, _RECORD, None) or {}
    return {name: comp for wrapped in record.values() for name, comp in wrapped.components.items()}
