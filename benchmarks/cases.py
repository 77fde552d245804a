"""What is benchmarked: each case builds a module from its published config (or a tiny one), its inputs,
and knows how to call it, compile it plainly and wrap it with trt_runtime.

Full-size configs are those of ``../shared/GPU.md`` (the models' published config files); weights are
random (timings do not depend on values). ``tiny`` configs keep the same block types at a fraction of
the width so that the quick CPU mode runs anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CASES", "Case", "build_case", "flatten_output", "variant_copy"]

Module = torch.nn.Module


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table.

    ``build(size)`` returns the module in float32 on the CPU; ``inputs(size, device, dtype)`` the keyword
    arguments of one step; ``call(module, inputs)`` runs it and returns the output (tensors);
    ``compile_plain(module, mode)`` applies plain ``torch.compile`` (``mode`` None: default;
    ``"reduce-overhead"``: with CUDA graphs) to a copy the way a user would;
    ``wrap(module, runtime)`` installs trt_runtime's wrapper in place.
    """

    name: str
    title: str
    build: Callable[[str], Module]
    inputs: Callable[[str, torch.device, torch.dtype], dict[str, Any]]
    call: Callable[[Module, dict[str, Any]], Any]
    compile_plain: Callable[[Module, str | None], Module]
    wrap: Callable[[Module, Any], Any]
    dtype: torch.dtype = torch.float16
    note: str = ""


def flatten_output(out: Any) -> torch.Tensor:
    """All output tensors as one float64 vector (for the relative error against eager)."""
    tensors = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return torch.cat([t.detach().double().flatten().cpu() for t in tensors])


def _compile(module: Module, mode: str | None = None) -> Module:
    return torch.compile(module, fullgraph=True, mode=mode)


def _forward_tuple(module: Module, inputs: dict[str, Any]) -> Any:
    return module(**inputs, return_dict=False)


# ---------------------------------------------------------------------------------------------- UNets
_SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
_TINY_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    norm_num_groups=16, cross_attention_dim=32, attention_head_dim=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
_SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
_TINY_SDXL_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    norm_num_groups=16, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
    attention_head_dim=(2, 4), cross_attention_dim=32, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=80,
)


def _unet(config: dict, tiny: dict) -> Callable[[str], Module]:
    def build(size: str) -> Module:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**(config if size == "full" else tiny))

    return build


def _sd15_inputs(size: str, device, dtype) -> dict[str, Any]:
    latent, ctx, tokens = (64, 768, 77) if size == "full" else (16, 32, 8)
    return {
        "sample": torch.randn(2, 4, latent, latent, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(2, tokens, ctx, device=device, dtype=dtype),
    }


def _sdxl_inputs(size: str, device, dtype) -> dict[str, Any]:
    latent, ctx, pooled, tokens = (128, 2048, 1280, 77) if size == "full" else (16, 32, 32, 8)
    return {
        "sample": torch.randn(2, 4, latent, latent, device=device, dtype=dtype),
        "timestep": torch.tensor(500, device=device),
        "encoder_hidden_states": torch.randn(2, tokens, ctx, device=device, dtype=dtype),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2, device=device, dtype=dtype),
        },
    }


def _wrap_unet(module: Module, runtime) -> Any:
    from trt_runtime.modules.unet import apply_unet

    return apply_unet(module, runtime=runtime)


# ----------------------------------------------------------------------------------------------- VAE
_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)
_TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    norm_num_groups=16, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)


def _build_vae(size: str) -> Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(_VAE if size == "full" else _TINY_VAE))


def _vae_inputs(pixels: int) -> Callable[..., dict[str, Any]]:
    def inputs(size: str, device, dtype) -> dict[str, Any]:
        latent = pixels // 8 if size == "full" else 16
        return {"z": torch.randn(1, 4, latent, latent, device=device, dtype=dtype)}

    return inputs


def _vae_call(module: Module, inputs: dict[str, Any]) -> Any:
    return module.decode(inputs["z"], return_dict=False)[0]


def _vae_compile(module: Module, mode: str | None = None) -> Module:
    # diffusers' own recipe compiles the decoder (the part that carries all the compute)
    module.decoder = torch.compile(module.decoder, fullgraph=True, mode=mode)
    return module


def _wrap_vae(module: Module, runtime) -> Any:
    from trt_runtime.modules.vae import apply_vae

    return apply_vae(module, runtime=runtime, encoder=False)


# -------------------------------------------------------------------------------------------- CLIP-L
def _build_clip(size: str) -> Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    if size == "full":
        config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
    else:
        config = CLIPTextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    return CLIPTextModel(config)


def _clip_inputs(size: str, device, dtype) -> dict[str, Any]:
    vocab = 49408 if size == "full" else 128
    return {"input_ids": torch.randint(0, vocab, (1, 77), device=device)}


def _clip_call(module: Module, inputs: dict[str, Any]) -> Any:
    return module(**inputs, return_dict=False)[0]


def _wrap_clip(module: Module, runtime) -> Any:
    from trt_runtime.modules.text_encoders import apply_text_encoder

    return apply_text_encoder(module, runtime=runtime)


# ---------------------------------------------------------------------------------------- ControlNet
def _build_controlnet(size: str) -> Module:
    from diffusers import ControlNetModel

    if size == "full":
        keep = {k: v for k, v in _SD15_UNET.items()
                if k not in ("sample_size", "out_channels", "up_block_types")}
        return ControlNetModel(**keep, conditioning_embedding_out_channels=(16, 32, 96, 256))
    keep = {k: v for k, v in _TINY_UNET.items() if k not in ("sample_size", "out_channels", "up_block_types")}
    return ControlNetModel(**keep, conditioning_embedding_out_channels=(8, 16))


def _controlnet_inputs(size: str, device, dtype) -> dict[str, Any]:
    inputs = _sd15_inputs(size, device, dtype)
    pixels = inputs["sample"].shape[-1] * (8 if size == "full" else 2)
    inputs["controlnet_cond"] = torch.randn(2, 3, pixels, pixels, device=device, dtype=dtype)
    return inputs


def _wrap_controlnet(module: Module, runtime) -> Any:
    from trt_runtime.modules.controlnet import apply_controlnet

    return apply_controlnet(module, runtime=runtime)


# -------------------------------------------------------------------------------------- transformers
_SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                   attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                   caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
_TINY_SD3 = dict(sample_size=16, patch_size=2, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
                 num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=64,
                 pos_embed_max_size=32)
FLUX_LAYERS = (4, 8)
"""Flux.1-dev has 19 double and 38 single blocks (12 B parameters); the benchmark builds 4 + 8 of them
(per-block cost is what matters; a 12-block model compiles in a fraction of the time)."""
_FLUX = dict(patch_size=1, in_channels=64, num_layers=FLUX_LAYERS[0], num_single_layers=FLUX_LAYERS[1],
             attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
             guidance_embeds=True, axes_dims_rope=(16, 56, 56))
_TINY_FLUX = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                  axes_dims_rope=(4, 6, 6))


def _build_sd3(size: str) -> Module:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(**(_SD3_MEDIUM if size == "full" else _TINY_SD3))


def _sd3_inputs(size: str, device, dtype) -> dict[str, Any]:
    # 1024x1024 image: 128x128 latent; prompt: 77 CLIP + 256 T5 tokens
    latent, tokens, ctx, pooled = (128, 333, 4096, 2048) if size == "full" else (16, 8, 32, 64)
    return {
        "hidden_states": torch.randn(2, 16, latent, latent, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(2, tokens, ctx, device=device, dtype=dtype),
        "pooled_projections": torch.randn(2, pooled, device=device, dtype=dtype),
        "timestep": torch.tensor([500.0, 500.0], device=device),
    }


def _build_flux(size: str) -> Module:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**(_FLUX if size == "full" else _TINY_FLUX))


def _flux_inputs(size: str, device, dtype) -> dict[str, Any]:
    # 1024x1024 image: 128x128 latent packed 2x2 -> 64x64 = 4096 tokens of 64 channels; 512 T5 tokens
    side, tokens, channels, ctx, pooled = (64, 512, 64, 4096, 768) if size == "full" else (4, 8, 16, 32, 32)
    img_ids = torch.zeros(side, side, 3)
    img_ids[..., 1] = torch.arange(side)[:, None]
    img_ids[..., 2] = torch.arange(side)[None, :]
    return {
        "hidden_states": torch.randn(1, side * side, channels, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, tokens, ctx, device=device, dtype=dtype),
        "pooled_projections": torch.randn(1, pooled, device=device, dtype=dtype),
        "timestep": torch.tensor([0.5], device=device, dtype=dtype),
        "img_ids": img_ids.reshape(-1, 3).to(device=device, dtype=dtype),
        "txt_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
        "guidance": torch.tensor([3.5], device=device, dtype=dtype),
    }


def _wrap_transformer(module: Module, runtime) -> Any:
    from trt_runtime.modules.transformer import apply_transformer

    return apply_transformer(module, runtime=runtime)


CASES: dict[str, Case] = {case.name: case for case in (
    Case("sd15_unet", "SD1.5 UNet, batch 2, 64x64 latent", _unet(_SD15_UNET, _TINY_UNET), _sd15_inputs,
         _forward_tuple, _compile, _wrap_unet),
    Case("sdxl_unet", "SDXL UNet, batch 2, 128x128 latent", _unet(_SDXL_UNET, _TINY_SDXL_UNET), _sdxl_inputs,
         _forward_tuple, _compile, _wrap_unet),
    Case("vae_decoder_512", "VAE decode 512x512", _build_vae, _vae_inputs(512), _vae_call, _vae_compile,
         _wrap_vae),
    Case("vae_decoder_1024", "VAE decode 1024x1024", _build_vae, _vae_inputs(1024), _vae_call, _vae_compile,
         _wrap_vae),
    Case("clip_l", "CLIP-L text encoder, 77 tokens", _build_clip, _clip_inputs, _clip_call, _compile, _wrap_clip),
    Case("controlnet", "SD1.5 ControlNet, batch 2, 512x512", _build_controlnet, _controlnet_inputs,
         _forward_tuple, _compile, _wrap_controlnet),
    Case("sd3_medium", "SD3-medium transformer, batch 2, 1024x1024", _build_sd3, _sd3_inputs, _forward_tuple,
         _compile, _wrap_transformer),
    Case("flux", f"Flux transformer ({FLUX_LAYERS[0]}+{FLUX_LAYERS[1]} of 19+38 blocks), 1024x1024",
         _build_flux, _flux_inputs, _forward_tuple, _compile, _wrap_transformer, dtype=torch.bfloat16,
         note="reduced depth: per-block cost is the full model's"),
)}


def build_case(case: Case, size: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Module:
    """The module in eval mode on ``device`` in ``dtype`` (initialised on the device: fast at full size)."""
    torch.manual_seed(seed)
    init = device if device.type == "cuda" else torch.device("cpu")
    with torch.device(init):
        module = case.build(size)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def variant_copy(module: Module) -> Module:
    """A copy of the module object that shares the weights' storage (no extra memory, so a 12 B
    transformer fits three variants on one GPU).

    Each parameter gets a new ``Parameter`` over the same storage: a variant that moves or re-lays out
    its weights (``.to(memory_format=channels_last)`` sets ``param.data``) replaces its own tensors
    and leaves the others' alone. Buffers are shared as they are, since ``_apply`` replaces rather than
    mutates them. Wrappers install per-object ``forward``s, so variants never see each other's.
    """
    memo: dict[int, Any] = {}
    for param in module.parameters():
        memo[id(param)] = torch.nn.Parameter(param.data, requires_grad=param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(module, memo)
