"""VAEs: the ``encoder`` and ``decoder`` submodules are wrapped, not the autoencoder.

Why there: ``encode()``/``decode()`` do work a compiled graph should not own (tiling and slicing loops,
the latent distribution, ``return_dict``), and pipelines call those methods, not ``forward``. Wrapping
the two submodules keeps ``encode()`` returning an ``AutoencoderKLOutput`` with a
``DiagonalGaussianDistribution`` and ``decode()`` a ``DecoderOutput``; ``enable_tiling()`` and
``enable_slicing()`` keep working, each tile or slice shape getting its own key.

``quant_conv`` / ``post_quant_conv`` (1x1 convolutions) stay eager: folding them in would mean
replacing the autoencoder's own ``_encode``/``_decode``, for a negligible gain.

dtype: keys follow the module's dtype, so a VAE upcast to float32 for decoding (``force_upcast``,
``upcast_vae()``) runs a float32 artifact, and an fp16 one again after it is cast back.

Only autoencoders whose encoder and decoder are pure functions of their inputs are accepted. Video
VAEs that thread a feature cache through the decoder in place (Wan, LTX, Mochi, CogVideoX) would lose
those in-place updates inside a compiled graph; they are refused rather than silently wrong.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ..component import Component
from ..errors import ConfigurationError
from ..runtime import TensorRTRuntime
from .base import SpecLike
from .family import CallBinder, PassCore, Wrapped, check_offload, detach, wrap_in_place

__all__ = ["apply_vae", "SUPPORTED_VAES"]

logger = logging.getLogger(__name__)

SUPPORTED_VAES = ("AutoencoderKL", "AutoencoderKLHunyuanVideo", "AutoencoderTiny")
"""Class names whose ``encoder``/``decoder`` are pure (no caches carried between calls)."""


def apply_vae(
    vae: torch.nn.Module,
    *,
    runtime: TensorRTRuntime | None = None,
    name: str = "vae",
    encoder: bool = True,
    decoder: bool = True,
    encoder_shapes: SpecLike | None = None,
    decoder_shapes: SpecLike | None = None,
    settings: dict | None = None,
) -> Wrapped:
    """Install the runtime on ``vae.encoder`` and/or ``vae.decoder`` (components ``vae.encoder``,
    ``vae.decoder``). Raises ``ConfigurationError`` for autoencoders not in ``SUPPORTED_VAES``.

    ``encoder_shapes`` / ``decoder_shapes`` declare the ranges one artifact of each part serves. Both
    parts take their input as ``sample``: images for the encoder, latents for the decoder (what
    ``decode(z)`` passes on), e.g. ``decoder_shapes={"sample": {2: (64, 128), 3: (64, 128)}}``.
    A spec for a part that is not wrapped raises ``ConfigurationError``."""
    kind = next((cls.__name__ for cls in type(vae).__mro__ if cls.__name__ in SUPPORTED_VAES), None)
    if kind is None:
        raise ConfigurationError(
            f"{type(vae).__name__} is not a supported VAE (supported: {', '.join(SUPPORTED_VAES)})",
            component=name, hint="its encoder/decoder may carry state between calls; leave it eager (vae=False) "
            "or wrap a pure submodule with TensorRTModule",
        )
    specs = {"encoder": encoder_shapes, "decoder": decoder_shapes}
    parts = [(part, getattr(vae, part, None)) for part, wanted in (("encoder", encoder), ("decoder", decoder))
             if wanted]
    for part, spec in specs.items():
        if spec and not any(p == part and isinstance(m, torch.nn.Module) for p, m in parts):
            raise ConfigurationError(f"{part}_shapes given, but {name}.{part} is not wrapped", component=name,
                                     hint=f"drop {part}_shapes or wrap the {part} ({part}=True)")
    wrapped = Wrapped({}, [])
    try:
        for part, module in parts:
            if not isinstance(module, torch.nn.Module):
                continue
            check_offload(module, f"{name}.{part}")
            wrapped.components.update(_wrap_part(vae, part, module, name, runtime, settings, specs[part]))
            wrapped.modules.append(module)
    except BaseException:
        for module in wrapped.modules:
            detach(module)
        raise
    return wrapped


def _wrap_part(vae: torch.nn.Module, part: str, module: torch.nn.Module, name: str, runtime, settings, shapes
               ) -> dict[str, Component]:
    binder = CallBinder(type(module).forward)

    def call(component, lora, args: tuple, kwargs: dict[str, Any]) -> Any:
        return component(**binder.bind(args, kwargs))

    return wrap_in_place(module, f"{name}.{part}", core=PassCore, call=call, runtime=runtime, shapes=shapes,
                         settings=settings, family=f"{__name__}:apply_vae", owner=vae,
                         family_options={"name": name, "encoder": part == "encoder", "decoder": part == "decoder"}
                         ).components
