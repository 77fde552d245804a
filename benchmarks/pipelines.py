"""End-to-end cases: SD1.5, SDXL and Flux pipelines built from their published configs, random weights.

Prompts go through real tokenizers (CLIP over single characters, T5 unigram over characters: no
vocabulary can be downloaded), so the text encoders run as in a user's pipeline. The variant pipelines
share the text encoders, tokenizers and scheduler config; each has its own module objects for the
denoiser (UNet or transformer) and the VAE, over the same weight storage (``variant_copy``): ``eager``,
``torch_compile`` (denoiser and VAE decoder compiled, diffusers' documented recipe) and ``trt_runtime``
(``wrap_pipeline``). The SDXL VAE is built with ``force_upcast=False`` (as with the widely used fp16-safe
SDXL VAE), so the decoder runs in fp16 in all variants.

Flux is the full Flux.1-dev architecture (19 + 38 blocks, 12 B parameters, T5-XXL and CLIP-L), built
directly in bf16 so that its 24 GB are never held in fp32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import string
import tempfile
from pathlib import Path
from typing import Any

import torch

from .cases import (
    _FLUX,
    _SD15_UNET,
    _SDXL_UNET,
    _TINY_FLUX,
    _TINY_SDXL_UNET,
    _TINY_UNET,
    _TINY_VAE,
    _VAE,
    variant_copy,
)

__all__ = ["PIPELINES", "PipelineCase", "build_pipeline", "variant_pipelines"]


@dataclasses.dataclass(frozen=True)
class PipelineCase:
    name: str
    title: str
    steps: dict[str, int]  # by size
    pixels: dict[str, int]
    guidance: float = 7.5
    dtype: torch.dtype = torch.float16


PIPELINES = {
    "sd15_pipeline": PipelineCase("sd15_pipeline", "SD1.5 pipeline, 512x512, 30 steps, CFG",
                                  {"full": 30, "tiny": 4}, {"full": 512, "tiny": 32}),
    "sdxl_pipeline": PipelineCase("sdxl_pipeline", "SDXL pipeline, 1024x1024, 25 steps, CFG",
                                  {"full": 25, "tiny": 4}, {"full": 1024, "tiny": 32}),
    "flux_pipeline": PipelineCase("flux_pipeline", "Flux.1-dev pipeline (full 19+38 blocks), 1024x1024, 28 steps",
                                  {"full": 28, "tiny": 4}, {"full": 1024, "tiny": 32}, guidance=3.5,
                                  dtype=torch.bfloat16),
}

_FLUX_FULL = dict(_FLUX, num_layers=19, num_single_layers=38)
_FLUX_VAE = dict(_VAE, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                 shift_factor=0.1159)
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, decoder_start_token_id=0)
_TINY_T5 = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, decoder_start_token_id=0)


def _tokenizer():
    from transformers import CLIPTokenizer

    from trt_runtime.demo import write_char_tokenizer

    with tempfile.TemporaryDirectory() as folder:
        write_char_tokenizer(Path(folder))
        return CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                             model_max_length=77)


def _t5_tokenizer():
    """A T5 unigram tokenizer over characters, built in memory (Flux pads prompts to 512 tokens)."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(ch, -2.0) for ch in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("\u2581" + ch, -1.5) for ch in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


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


@contextlib.contextmanager
def _building(device: torch.device, dtype: torch.dtype):
    """Create parameters on ``device`` directly in ``dtype`` (a 12 B model never exists in fp32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device if device.type == "cuda" else "cpu"):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline(name: str, size: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """The pipeline, eval mode, on ``device`` in ``dtype``, progress bar off."""
    import diffusers

    torch.manual_seed(seed)
    full = size == "full"
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                 steps_offset=1, timestep_spacing="leading")
    with _building(device, dtype):
        if name == "sd15_pipeline":
            pipe = diffusers.StableDiffusionPipeline(
                vae=diffusers.AutoencoderKL(**(_VAE if full else _TINY_VAE), force_upcast=False),
                text_encoder=_clip(size, 768, 12, 12, "quick_gelu"), tokenizer=_tokenizer(),
                unet=diffusers.UNet2DConditionModel(**(_SD15_UNET if full else _TINY_UNET)), scheduler=scheduler,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        elif name == "sdxl_pipeline":
            config = _SDXL_UNET if full else dict(_TINY_SDXL_UNET, cross_attention_dim=48)
            pipe = diffusers.StableDiffusionXLPipeline(
                vae=diffusers.AutoencoderKL(**(_VAE if full else _TINY_VAE), force_upcast=False),
                unet=diffusers.UNet2DConditionModel(**config), scheduler=scheduler,
                text_encoder=_clip(size, 768, 12, 12, "quick_gelu", tiny_hidden=16), tokenizer=_tokenizer(),
                text_encoder_2=_clip(size, 1280, 32, 20, "gelu", projection=1280), tokenizer_2=_tokenizer(),
            )
        elif name == "flux_pipeline":
            from transformers import T5Config, T5EncoderModel

            tiny_vae = dict(_TINY_VAE, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1)
            pipe = diffusers.FluxPipeline(
                transformer=diffusers.FluxTransformer2DModel(**(_FLUX_FULL if full else _TINY_FLUX)),
                vae=diffusers.AutoencoderKL(**(_FLUX_VAE if full else tiny_vae)),
                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
                text_encoder=_clip(size, 768, 12, 12, "quick_gelu"), tokenizer=_tokenizer(),
                text_encoder_2=T5EncoderModel(T5Config(**(_T5_XXL if full else _TINY_T5))),
                tokenizer_2=_t5_tokenizer(),
            )
        else:
            raise KeyError(f"unknown pipeline case {name!r}; known: {', '.join(PIPELINES)}")
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe.to(device=device, dtype=dtype)


def generate(pipe: Any, case: PipelineCase, size: str, prompt: str = "a lighthouse at dawn, oil painting",
             seed: int = 0, guidance: float | None = None) -> torch.Tensor:
    """One image (as a tensor) with the case's steps and resolution."""
    pixels = case.pixels[size]
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(prompt, num_inference_steps=case.steps[size], height=pixels, width=pixels,
                guidance_scale=case.guidance if guidance is None else guidance, generator=generator,
                output_type="pt").images


def variant_pipelines(pipe: Any, runtime: Any,
                      variants: tuple[str, ...] = ("eager", "torch_compile", "torch_compile_ro", "trt_runtime"),
                      ) -> dict[str, Any]:
    """``eager`` (``pipe`` itself), ``torch_compile`` (default mode), ``torch_compile_ro``
    (``mode="reduce-overhead"``) and ``trt_runtime``: same weights, their own denoiser and VAE objects."""
    from trt_runtime import wrap_pipeline

    denoiser = "unet" if "unet" in pipe.components else "transformer"

    def clone() -> Any:
        parts = dict(pipe.components, **{denoiser: variant_copy(pipe.components[denoiser]),
                                         "vae": variant_copy(pipe.vae)})
        extra = {"requires_safety_checker": False} if "safety_checker" in parts else {}
        other = type(pipe)(**parts, **extra)
        other.set_progress_bar_config(disable=True)
        return other

    out = {"eager": pipe}
    for name, mode in (("torch_compile", None), ("torch_compile_ro", "reduce-overhead")):
        if name in variants:
            plain = clone()
            setattr(plain, denoiser, torch.compile(getattr(plain, denoiser), fullgraph=True, mode=mode))
            plain.vae.decoder = torch.compile(plain.vae.decoder, fullgraph=True, mode=mode)
            out[name] = plain
    if "trt_runtime" in variants:
        out["trt_runtime"] = wrap_pipeline(clone(), runtime=runtime)
    return out
