"""End-to-end cases: SD1.5 and SDXL pipelines built from their published configs, random weights.

Prompts go through a real ``CLIPTokenizer`` over single characters (no vocabulary can be downloaded),
so the text encoders run as in a user's pipeline. Three pipeline objects share the text encoders,
tokenizers and scheduler config; each has its own copy of the UNet and VAE: ``eager``, ``torch_compile``
(UNet and VAE decoder compiled, diffusers' documented recipe) and ``trt_runtime`` (``wrap_pipeline``).
The SDXL VAE is built with ``force_upcast=False`` (as with the widely used fp16-safe SDXL VAE), so the
decoder runs in fp16 in all three variants.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import torch

from .cases import _SD15_UNET, _SDXL_UNET, _TINY_SDXL_UNET, _TINY_UNET, _TINY_VAE, _VAE

__all__ = ["PIPELINES", "PipelineCase", "build_pipeline"]


@dataclasses.dataclass(frozen=True)
class PipelineCase:
    name: str
    title: str
    steps: dict[str, int]  # by size
    pixels: dict[str, int]


PIPELINES = {
    "sd15_pipeline": PipelineCase("sd15_pipeline", "SD1.5 pipeline, 512x512, 30 steps, CFG",
                                  {"full": 30, "tiny": 4}, {"full": 512, "tiny": 32}),
    "sdxl_pipeline": PipelineCase("sdxl_pipeline", "SDXL pipeline, 1024x1024, 25 steps, CFG",
                                  {"full": 25, "tiny": 4}, {"full": 1024, "tiny": 32}),
}


def _tokenizer():
    from transformers import CLIPTokenizer

    from trt_runtime.demo import write_char_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_char_tokenizer(Path(folder))
        return CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                             model_max_length=77)


def _clip(size: str, hidden: int, layers: int, heads: int, act: str, projection: int | None = None,
          tiny_hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if size == "tiny":
        hidden, layers, heads = tiny_hidden, 2, 2
        projection = projection and 32
    config = CLIPTextConfig(vocab_size=49408 if size == "full" else 256, hidden_size=hidden,
                            intermediate_size=4 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            max_position_embeddings=77, hidden_act=act, projection_dim=projection or hidden,
                            bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def build_pipeline(name: str, size: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """The pipeline, eval mode, on ``device`` in ``dtype``, progress bar off."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    full = size == "full"
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    with torch.device(device if device.type == "cuda" else "cpu"):
        vae = AutoencoderKL(**(_VAE if full else _TINY_VAE), force_upcast=False)
        if name == "sd15_pipeline":
            unet = UNet2DConditionModel(**(_SD15_UNET if full else _TINY_UNET))
            encoder = _clip(size, 768, 12, 12, "quick_gelu")
            pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=_tokenizer(), unet=unet,
                                           scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False)
        else:
            config = _SDXL_UNET if full else dict(_TINY_SDXL_UNET, cross_attention_dim=48)
            unet = UNet2DConditionModel(**config)
            pipe = StableDiffusionXLPipeline(
                vae=vae, unet=unet, scheduler=scheduler,
                text_encoder=_clip(size, 768, 12, 12, "quick_gelu", tiny_hidden=16), tokenizer=_tokenizer(),
                text_encoder_2=_clip(size, 1280, 32, 20, "gelu", projection=1280), tokenizer_2=_tokenizer(),
            )
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe.to(device=device, dtype=dtype)


def variant_pipelines(pipe: Any, runtime: Any) -> dict[str, Any]:
    """``eager`` (``pipe`` itself), ``torch_compile`` and ``trt_runtime``: same weights, own UNet/VAE."""
    import copy

    from trt_runtime import wrap_pipeline

    def clone() -> Any:
        parts = dict(pipe.components, unet=copy.deepcopy(pipe.unet), vae=copy.deepcopy(pipe.vae))
        extra = {"requires_safety_checker": False} if "safety_checker" in parts else {}
        other = type(pipe)(**parts, **extra)
        other.set_progress_bar_config(disable=True)
        return other

    plain = clone()
    plain.unet = torch.compile(plain.unet, fullgraph=True)
    plain.vae.decoder = torch.compile(plain.vae.decoder, fullgraph=True)
    ours = wrap_pipeline(clone(), runtime=runtime)
    return {"eager": pipe, "torch_compile": plain, "trt_runtime": ours}
