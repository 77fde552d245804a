"""The shape ranges ``wrap_pipeline(resolutions=..., batch_sizes=...)`` declares for known models.

A person knows the image sizes and batch sizes they serve; a compiler needs each input's dims, their
steps and how they relate. This module translates one into the other, per model family, from the
model's own config:

- UNet (``UNet2DConditionModel``): latents ``sample`` [batch, C, h, w] with ``h`` a multiple of the UNet's
  step (``2 ** (down blocks - 1)``: it halves the latent per level and concatenates skip connections);
  the batch of every input that shares it (``encoder_hidden_states``, SDXL's ``added_cond_kwargs``,
  LCM's ``timestep_cond``, the ControlNet residuals); the residuals' sizes are ``h // 2**level``.
- ControlNet (``ControlNetModel``, each net of a ``MultiControlNetModel``): ``sample`` as the UNet's,
  ``controlnet_cond`` in image pixels, ``h * factor`` (its conditioning embedding's down-sampling).
- VAE (``AutoencoderKL``...): ``vae.decoder`` takes latents ``h``, ``vae.encoder`` images ``h * scale``.
- SD3 transformer: latents ``h`` in steps of its patch size, batch of the text and pooled embeddings
  and of ``timestep`` (which the pipeline expands to the batch).
- Flux transformer: packed latents, ``hidden_states`` [batch, tokens, C] and ``img_ids`` [tokens, 3],
  tokens from the smallest to the largest resolution's count.

Batch: the pipeline's images per call (prompts x ``num_images_per_prompt``). Classifier-free guidance
doubles what the UNet, ControlNet and SD3 transformer see, so their batch range reaches twice the
largest batch (a guidance scale of 1 runs them at the batch itself, also inside the range). Text
encoders and other models get no ranges: each of their shapes compiles on its own, as without them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .errors import ConfigurationError
from .shapes import Dim

__all__ = ["declared_ranges", "parse_resolutions", "parse_batch_sizes"]

logger = logging.getLogger(__name__)


def parse_resolutions(resolutions: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((min_h, max_h), (min_w, max_w))`` in pixels, from sizes that apply to height and width alike
    (``(512, 1024)``, or one size), or from ``(height, width)`` pairs (``[(512, 768), (1024, 1024)]``)."""
    items = [resolutions] if _is_int(resolutions) else resolutions
    if not isinstance(items, (list, tuple)) or not items:
        raise ConfigurationError(f"resolutions must be image sizes in pixels, e.g. (512, 1024), not {resolutions!r}")
    heights, widths = [], []
    for item in items:
        if _is_int(item):
            height = width = item
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(_is_int(v) for v in item):
            height, width = item
        else:
            raise ConfigurationError(f"resolutions: {item!r} is not a size in pixels or a (height, width) pair")
        if height < 1 or width < 1:
            raise ConfigurationError(f"resolutions: {item!r} must be positive")
        heights.append(height)
        widths.append(width)
    return (min(heights), max(heights)), (min(widths), max(widths))


def parse_batch_sizes(batch_sizes: Any) -> tuple[int, int]:
    """``(min, max)`` images per pipeline call from ``(1, 4)``, ``[1, 2, 4]`` or ``4``."""
    items = [batch_sizes] if _is_int(batch_sizes) else batch_sizes
    if not isinstance(items, Sequence) or isinstance(items, str) or not items or not all(_is_int(v) for v in items):
        raise ConfigurationError(f"batch_sizes must be images per call, e.g. (1, 4), not {batch_sizes!r}")
    if min(items) < 1:
        raise ConfigurationError(f"batch_sizes must be at least 1, not {min(items)}")
    return min(items), max(items)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Plan:
    """The user's request in the units of one pipeline."""

    def __init__(self, pipe: Any, resolutions: Any, batch_sizes: Any) -> None:
        self.pixels = parse_resolutions(resolutions) if resolutions is not None else None
        self.batch = parse_batch_sizes(batch_sizes) if batch_sizes is not None else None
        self.vae_scale = _vae_scale(pipe) if self.pixels else 1

    def batch_dim(self, guidance_doubles: bool) -> Dim | None:
        if self.batch is None:
            return None
        low, high = self.batch
        high = 2 * high if guidance_doubles else high
        return Dim("batch", low, high) if high > low else None

    def latent_dims(self, step: int, component: str) -> tuple[Dim | None, Dim | None]:
        """``(height, width)`` of the latents in steps of ``step``; None for a size that does not vary."""
        if self.pixels is None:
            return None, None
        dims = []
        for axis, (low, high) in zip(("height", "width"), self.pixels, strict=True):
            pixel_step = step * self.vae_scale
            bad = [size for size in (low, high) if size % pixel_step]
            if bad:
                raise ConfigurationError(
                    f"resolutions: {axis} {bad[0]} px does not divide by {pixel_step} ({component} takes latents "
                    f"in steps of {step}, and the VAE scales by {self.vae_scale})",
                    component=component,
                    hint=f"use multiples of {pixel_step}, e.g. {low // pixel_step * pixel_step or pixel_step}..."
                    f"{high // pixel_step * pixel_step or pixel_step}; other sizes still run, each compiled on its own",
                )
            dims.append(Dim(axis, low // self.vae_scale, high // self.vae_scale, multiple_of=step)
                        if high > low else None)
        return dims[0], dims[1]


def declared_ranges(pipe: Any, plan: list[tuple[str, str, torch.nn.Module]], resolutions: Any,
                    batch_sizes: Any) -> dict[str, dict[str, dict[int, Dim]]]:
    """Shape specs by runtime component name (``unet``, ``vae.decoder``, ``controlnet``...) for the
    components of ``plan`` (``(name, family, module)`` as ``wrap_pipeline`` builds it)."""
    request = _Plan(pipe, resolutions, batch_sizes)
    specs: dict[str, dict[str, dict[int, Dim]]] = {}
    for name, family, module in plan:
        found = _FAMILIES.get(family, lambda *a: None)(request, name, module)
        if found is None:
            if family != "text_encoders":
                logger.info("[%s] no ranges known for %s; each of its shapes compiles on its own", name,
                            type(module).__name__)
            continue
        for key, spec in found.items():
            spec = {path: {i: d for i, d in dims.items() if d is not None} for path, dims in spec.items()}
            spec = {path: dims for path, dims in spec.items() if dims}
            if spec:
                specs[key] = spec
                logger.debug("[%s] declared ranges: %s", key, spec)
    return specs


# ----------------------------------------------------------------------------------------- families
def _unet(request: _Plan, name: str, module: torch.nn.Module) -> dict | None:
    if not _is(module, "UNet2DConditionModel"):
        return None
    config = module.config
    levels = len(config.down_block_types)
    step = 2 ** (levels - 1)
    batch = request.batch_dim(guidance_doubles=True)
    height, width = request.latent_dims(step, name)
    spec: dict[str, dict[int, Any]] = {
        "sample": {0: batch, 2: height, 3: width},
        "encoder_hidden_states": {0: batch},
        "added_cond_kwargs.text_embeds": {0: batch},
        "added_cond_kwargs.time_ids": {0: batch},
        "timestep_cond": {0: batch},
    }
    for index, level in enumerate(_residual_levels(config)):
        spec[f"down_block_additional_residuals.{index}"] = _residual(batch, height, width, level)
    spec["mid_block_additional_residual"] = _residual(batch, height, width, levels - 1)
    return {name: spec}


def _residual_levels(config: Any) -> list[int]:
    """The down-sampling level of each ControlNet residual the UNet adds: ``conv_in``, then each
    block's resnets, then its down-sampler (every block but the last has one)."""
    blocks = len(config.down_block_types)
    layers = config.layers_per_block
    layers = [layers] * blocks if isinstance(layers, int) else list(layers)
    levels = [0]
    for block in range(blocks):
        levels += [block] * layers[block]
        if block < blocks - 1:
            levels.append(block + 1)
    return levels


def _residual(batch: Dim | None, height: Dim | None, width: Dim | None, level: int) -> dict[int, Any]:
    def scaled(dim: Dim | None) -> Dim | None:
        return dim if dim is None or level == 0 else dim // 2 ** level

    return {0: batch, 2: scaled(height), 3: scaled(width)}


def _controlnet(request: _Plan, name: str, module: torch.nn.Module) -> dict | None:
    nets = getattr(module, "nets", None)
    nets = list(nets) if isinstance(nets, torch.nn.ModuleList) else [module]
    if not nets or not all(_is(net, "ControlNetModel") for net in nets):
        return None
    config = nets[0].config
    if any(net.config.down_block_types != config.down_block_types for net in nets):
        return None  # nets of different depths would need one spec each (shapes={"controlnet.0": ...})
    step = 2 ** (len(config.down_block_types) - 1)
    cond_scale = 2 ** (len(config.conditioning_embedding_out_channels) - 1)
    batch = request.batch_dim(guidance_doubles=True)
    height, width = request.latent_dims(step, name)
    return {name: {
        "sample": {0: batch, 2: height, 3: width},
        "encoder_hidden_states": {0: batch},
        "controlnet_cond": {0: batch, 2: height * cond_scale if height else None,
                            3: width * cond_scale if width else None},
        "added_cond_kwargs.text_embeds": {0: batch},
        "added_cond_kwargs.time_ids": {0: batch},
        "timestep_cond": {0: batch},
    }}


def _vae(request: _Plan, name: str, module: torch.nn.Module) -> dict | None:
    if not any(_is(module, cls) for cls in ("AutoencoderKL", "AutoencoderTiny")):
        return None
    batch = request.batch_dim(guidance_doubles=False)
    height, width = request.latent_dims(1, name)
    scale = request.vae_scale
    return {
        f"{name}.decoder": {"sample": {0: batch, 2: height, 3: width}},
        f"{name}.encoder": {"sample": {0: batch, 2: height * scale if height else None,
                                       3: width * scale if width else None}},
    }


def _transformer(request: _Plan, name: str, module: torch.nn.Module) -> dict | None:
    if _is(module, "SD3Transformer2DModel"):
        batch = request.batch_dim(guidance_doubles=True)
        height, width = request.latent_dims(int(module.config.patch_size), name)
        return {name: {"hidden_states": {0: batch, 2: height, 3: width}, "encoder_hidden_states": {0: batch},
                       "pooled_projections": {0: batch}, "timestep": {0: batch}}}
    if _is(module, "FluxTransformer2DModel"):
        batch = request.batch_dim(guidance_doubles=False)
        tokens = None
        if request.pixels is not None:
            request.latent_dims(2, name)  # sizes must divide: latents are packed 2x2 into one token
            (h_low, h_high), (w_low, w_high) = request.pixels
            per_side = 2 * request.vae_scale
            low, high = (h_low // per_side) * (w_low // per_side), (h_high // per_side) * (w_high // per_side)
            tokens = Dim("image_tokens", low, high) if high > low else None
        return {name: {"hidden_states": {0: batch, 1: tokens}, "img_ids": {0: tokens},
                       "encoder_hidden_states": {0: batch}, "pooled_projections": {0: batch},
                       "timestep": {0: batch}, "guidance": {0: batch}}}
    return None


_FAMILIES = {"unet": _unet, "controlnet": _controlnet, "vae": _vae, "transformer": _transformer}


def _is(module: torch.nn.Module, class_name: str) -> bool:
    return any(cls.__name__ == class_name for cls in type(module).__mro__)


def _vae_scale(pipe: Any) -> int:
    scale = getattr(pipe, "vae_scale_factor", None)
    if isinstance(scale, int) and scale >= 1:
        return scale
    vae = getattr(pipe, "vae", None)
    channels = getattr(getattr(vae, "config", None), "block_out_channels", None)
    if channels:
        return 2 ** (len(channels) - 1)
    raise ConfigurationError(f"{type(pipe).__name__} has no vae_scale_factor; resolutions cannot be turned "
                             "into latent sizes", hint="declare ranges yourself with shapes=")
