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

Shape ranges (``shapes=``) are declared per runtime component name, the names ``wrapped_components``
reports, and handed to that family's ``apply_*``; they are checked before anything is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from .component import Component
from .errors import ConfigurationError
from .modules.base import SpecLike, check_shapes
from .modules.controlnet import apply_controlnet
from .modules.family import Wrapped, check_offload
from .modules.text_encoders import apply_text_encoder, is_supported_text_encoder
from .modules.transformer import apply_transformer, wrap_module
from .modules.unet import apply_unet
from .modules.vae import SUPPORTED_VAES, apply_vae
from .runtime import TensorRTRuntime, get_default_runtime

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
    shapes: Mapping[str, SpecLike] | None = None,
    **settings: Any,
) -> Any:
    """Wrap ``pipe``'s components in place and return ``pipe``.

    ``settings`` are ``RuntimeSettings`` fields (``backend="inductor"``, ``strict=True``...) that apply
    to the components wrapped here, on top of ``runtime``'s (default: the process-wide runtime).
    Text encoders are off by default: they run once per prompt, so compiling them rarely pays.

    ``shapes`` declares dimension ranges, so that one artifact serves every resolution or batch size
    inside them instead of one build per exact shape. Keys are runtime component names: ``unet``,
    ``transformer``, ``vae.decoder``, ``vae.encoder``, ``controlnet`` (every net of a
    ``MultiControlNetModel``; ``controlnet.0``, ``controlnet.1``... replace it for one net),
    ``text_encoder``, ``text_encoder_2``... Values are shape specs for that component's forward:
    argument path -> {dimension index: ``Dim``, ``(min, max)`` or ``(min, opt, max)``}; ``opt`` is the
    size TensorRT tunes for. SD1.5 at 512..1024 px, whose VAE downsamples 8x (latents 64..128)::

        latent = (64, 96, 128)  # min, opt (768 px), max
        wrap_pipeline(pipe, shapes={
            "unet": {"sample": {2: latent, 3: latent}},
            "vae.decoder": {"sample": {2: latent, 3: latent}},  # decode(z) passes z as ``sample``
        })

    A call whose sizes fall outside a range gets an exact-shape artifact of its own, as without
    ``shapes``. The backend must be able to build the range; a build that fails is remembered for that
    key, which then runs eagerly (``runtime.summary()`` shows it). With a ControlNet, the UNet's
    residual inputs (``down_block_additional_residuals.0``...) change with the resolution too and need
    ranges of their own. A key that names no component wrapped here (or a path that names no argument
    of its forward) raises ``ConfigurationError`` before anything is installed.
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
    if shapes is not None and not isinstance(shapes, Mapping):
        raise ConfigurationError(f"shapes must map component names to shape specs, got {type(shapes).__name__}")
    shapes = dict(shapes or {})
    _check_shapes(shapes, plan)

    overrides = dict(settings) or None
    done: dict[str, Wrapped] = {}
    try:
        for name, family, module in plan:
            wrapped = _apply(family, name, module, runtime, overrides, shapes)
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


def _targets(family: str, name: str, module: torch.nn.Module) -> dict[str, list[torch.nn.Module]]:
    """The runtime components ``_apply`` will make of ``module``, each with the modules whose forward
    its shape spec addresses (``controlnet`` of a ``MultiControlNetModel``: every net)."""
    if family == "vae":
        if _is_supported_vae(module):
            parts = {part: getattr(module, part, None) for part in ("encoder", "decoder")}
            return {f"{name}.{part}": [m] for part, m in parts.items() if isinstance(m, torch.nn.Module)}
        return {}
    if family == "controlnet":
        nets = getattr(module, "nets", None)
        if isinstance(nets, torch.nn.ModuleList):
            return {name: list(nets), **{f"{name}.{index}": [net] for index, net in enumerate(nets)}}
    if family == "text_encoders" and not is_supported_text_encoder(module):
        return {}
    return {name: [module]}


def _check_shapes(shapes: dict[str, SpecLike], plan: list[tuple[str, str, torch.nn.Module]]) -> None:
    """Refuse ``shapes`` keys that name no component about to be wrapped, and specs whose paths name
    no forward argument: either would silently compile per exact shape instead."""
    if not shapes:
        return
    targets: dict[str, list[torch.nn.Module]] = {}
    for name, family, module in plan:
        targets.update(_targets(family, name, module))
    unknown = sorted(key for key in shapes if key not in targets)
    if unknown:
        raise ConfigurationError(
            f"shapes given for {', '.join(map(repr, unknown))}, which names no component wrapped here",
            hint=f"valid names: {', '.join(targets) or 'none (nothing is wrapped)'}; a family turned off "
            "(unet=False...) or a text encoder with text_encoders=False has no component",
        )
    for key, spec in shapes.items():
        for module in targets[key]:
            check_shapes(module, spec, key)
        logger.debug("[%s] declared shape ranges: %s", key, spec)


def _is_supported_vae(module: torch.nn.Module) -> bool:
    return any(cls.__name__ in SUPPORTED_VAES for cls in type(module).__mro__)


def _apply(family: str, name: str, module: torch.nn.Module, runtime: TensorRTRuntime,
           settings: dict | None, shapes: Mapping[str, SpecLike]) -> Wrapped | None:
    kw = dict(runtime=runtime, name=name, settings=settings)
    spec = shapes.get(name)
    if family == "unet":
        if any(cls.__name__ == "UNet2DConditionModel" for cls in type(module).__mro__):
            return apply_unet(module, shapes=spec, **kw)
        return wrap_module(module, shapes=spec, **kw)
    if family == "vae":
        if not _is_supported_vae(module):
            logger.warning("[%s] %s is not a supported VAE (%s); it stays eager", name, type(module).__name__,
                           ", ".join(SUPPORTED_VAES))
            return None
        return apply_vae(module, encoder_shapes=shapes.get(f"{name}.encoder"),
                         decoder_shapes=shapes.get(f"{name}.decoder"), **kw)
    if family == "transformer":
        return apply_transformer(module, shapes=spec, **kw)
    if family == "controlnet":
        prefix = f"{name}."
        per_net = {int(key[len(prefix):]): value for key, value in shapes.items() if key.startswith(prefix)}
        return apply_controlnet(module, shapes=spec, net_shapes=per_net or None, **kw)
    if not is_supported_text_encoder(module):
        logger.info("[%s] %s is not a supported text encoder; it stays eager", name, type(module).__name__)
        return None
    return apply_text_encoder(module, shapes=spec, **kw)


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
