"""Tiny diffusers/transformers models and pipelines built from config, with random weights.

Nothing is downloaded: tokenizers are written from a small vocabulary in a temporary folder (CLIP: one
token per character; T5: a unigram vocabulary built in memory). Sizes are the smallest that keep each
architecture's real structure (attention, up/down sampling, cross-attention, ControlNet residuals), so
the pipeline tests exercise exactly what a user's pipeline exercises, in seconds on a CPU.

Zero-initialised layers (ControlNet's zero convs) get random values, so a wrong residual or a wrong
``conditioning_scale`` shows up in the output instead of vanishing.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import torch

CLIP_MAX_LENGTH = 16
"""Token positions of the tiny CLIP tokenizers (real pipelines use 77; a short one keeps tests fast)."""


# --------------------------------------------------------------------------------------------- tokenizers
def clip_tokenizer(max_length: int = CLIP_MAX_LENGTH):
    """A ``CLIPTokenizer`` over single characters (BPE without merges): any ASCII prompt tokenizes."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "vocab.json").write_text(json.dumps(vocab))
        (Path(folder) / "merges.txt").write_text("#version: 0.2\n")
        return CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                             model_max_length=max_length)


def t5_tokenizer(max_length: int = 16):
    """A ``T5Tokenizer`` (unigram) over a small vocabulary of characters, built in memory."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)]
    pieces += [(ch, -2.0) for ch in string.ascii_lowercase + string.digits]
    pieces += [("\u2581" + ch, -1.5) for ch in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


# --------------------------------------------------------------------------------------------- text encoders
def clip_text_encoder(seed: int = 0, hidden: int = 32, projection: bool = False, vocab_size: int = 200):
    """``CLIPTextModel`` (or ``...WithProjection``, SDXL's second encoder) with 3 layers, so
    ``hidden_states[-2]`` is a real intermediate layer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="gelu",
        projection_dim=hidden, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def t5_encoder(seed: int = 0, d_model: int = 32, vocab_size: int = 80):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, decoder_start_token_id=0)
    return T5EncoderModel(config).eval()


def llama_encoder(seed: int = 0, hidden: int = 16, vocab_size: int = 200):
    """HunyuanVideo's text encoder family: a bare ``LlamaModel`` (the pipeline reads hidden_states[-3])."""
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return LlamaModel(config).eval()


# --------------------------------------------------------------------------------------------- diffusers models
_SD_BLOCKS = dict(
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
)


def sd_unet(seed: int = 0, in_channels: int = 4, cross_attention_dim: int = 32, time_cond_proj_dim=None):
    """SD1.5's UNet structure (cross-attention down/up blocks, one downsample) at width 16/32."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, cross_attention_dim=cross_attention_dim,
        attention_head_dim=4, up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        time_cond_proj_dim=time_cond_proj_dim, **_SD_BLOCKS,
    ).eval()


def sdxl_unet(seed: int = 0, text_hidden: int = 32):
    """SDXL's UNet structure: ``text_time`` added conditioning, linear projections, 2-layer transformer."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + text_hidden,
        cross_attention_dim=2 * text_hidden,
    ).eval()


def _randomize_zero_params(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def sd_controlnet(seed: int = 1, cross_attention_dim: int = 32):
    """A ControlNet matching ``sd_unet`` (same down blocks), its zero convs given random weights."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        in_channels=4, cross_attention_dim=cross_attention_dim, attention_head_dim=4,
        conditioning_embedding_out_channels=(8, 16), **_SD_BLOCKS,
    )
    _randomize_zero_params(net, seed)
    return net.eval()


def sdxl_controlnet(seed: int = 1, text_hidden: int = 32):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net = ControlNetModel(
        in_channels=4, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + text_hidden,
        cross_attention_dim=2 * text_hidden, conditioning_embedding_out_channels=(8, 16),
    )
    _randomize_zero_params(net, seed)
    return net.eval()


def vae_kl(seed: int = 0, latent_channels: int = 4, quant_conv: bool = True, force_upcast: bool = True,
           shift_factor: float | None = None):
    """``AutoencoderKL`` with one downsample (8 latent pixels per 16 image pixels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
        layers_per_block=1, norm_num_groups=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        use_quant_conv=quant_conv, use_post_quant_conv=quant_conv, force_upcast=force_upcast,
        shift_factor=shift_factor,
    ).eval()


def vae_hunyuan_video(seed: int = 0):
    """HunyuanVideo's causal 3D VAE: 8x spatial, 4x temporal compression, at width 8."""
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(seed)
    return AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    ).eval()


def sd3_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    ).eval()


def flux_transformer(seed: int = 0, guidance_embeds: bool = False):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    ).eval()


def hunyuan_video_transformer(seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    return HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
    ).eval()


# --------------------------------------------------------------------------------------------- pipelines
def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd_pipeline(cls_name: str = "StableDiffusionPipeline", in_channels: int = 4, controlnet=None):
    """SD1.5-structured pipelines: text2img, img2img (same parts), inpaint (9-channel UNet), ControlNet."""
    import diffusers

    cls = getattr(diffusers, cls_name)
    parts = dict(
        vae=vae_kl(), text_encoder=clip_text_encoder(), tokenizer=clip_tokenizer(),
        unet=sd_unet(in_channels=in_channels), scheduler=_ddim(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    if controlnet is not None:
        parts["controlnet"] = controlnet
    return _quiet(cls(**parts))


def sdxl_pipeline(controlnet=None):
    import diffusers

    parts = dict(
        vae=vae_kl(), text_encoder=clip_text_encoder(seed=0), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_text_encoder(seed=1, projection=True), tokenizer_2=clip_tokenizer(),
        unet=sdxl_unet(), scheduler=_euler(),
    )
    if controlnet is None:
        return _quiet(diffusers.StableDiffusionXLPipeline(**parts))
    return _quiet(diffusers.StableDiffusionXLControlNetPipeline(controlnet=controlnet, **parts))


def sd3_pipeline():
    """SD3 with all three text encoders (two CLIP with projection, T5), so prompts run end to end."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    return _quiet(StableDiffusion3Pipeline(
        transformer=sd3_transformer(), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae_kl(quant_conv=False, shift_factor=0.06), text_encoder=clip_text_encoder(seed=0, projection=True),
        tokenizer=clip_tokenizer(), text_encoder_2=clip_text_encoder(seed=1, projection=True),
        tokenizer_2=clip_tokenizer(), text_encoder_3=t5_encoder(), tokenizer_3=t5_tokenizer(),
    ))


def flux_pipeline():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    return _quiet(FluxPipeline(
        transformer=flux_transformer(guidance_embeds=True), scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae_kl(latent_channels=1, quant_conv=False, shift_factor=0.06), text_encoder=clip_text_encoder(seed=0),
        tokenizer=clip_tokenizer(), text_encoder_2=t5_encoder(), tokenizer_2=t5_tokenizer(),
    ))


def hunyuan_video_pipeline():
    """HunyuanVideo with its Llama and CLIP encoders in place; tests pass ``prompt_embeds`` (its prompt
    template needs a Llama tokenizer, which cannot be written from a tiny vocabulary here)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    return _quiet(HunyuanVideoPipeline(
        transformer=hunyuan_video_transformer(), vae=vae_hunyuan_video(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder=llama_encoder(),
        tokenizer=None, text_encoder_2=clip_text_encoder(hidden=8), tokenizer_2=clip_tokenizer(),
    ))


def _ddim():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _euler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                  beta_schedule="scaled_linear", timestep_spacing="leading")
