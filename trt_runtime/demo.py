"""The built-in demo: a small Stable-Diffusion-architecture pipeline built from config, no downloads.

It has the real SD1.5 structure (CLIP text encoder, cross-attention UNet, KL VAE, DDIM scheduler) at a
reduced width, with random weights and a character-level tokenizer written to a temporary folder, so
it runs on any machine in a minute or two and exercises exactly what a user's pipeline exercises:
wrapping, first-call compilation, reuse on the second call, and the disk cache in the next process.
"""

from __future__ import annotations

import json
import logging
import string
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["build_demo_pipeline", "run_demo", "write_char_tokenizer"]

logger = logging.getLogger(__name__)


def write_char_tokenizer(folder: Path) -> None:
    """A CLIP tokenizer over single characters (BPE without merges): enough for any ASCII prompt."""
    symbols = string.ascii_lowercase + string.digits + string.punctuation
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in symbols:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def build_demo_pipeline(device: str = "cpu", dtype: Any = None, seed: int = 0):
    """A ``StableDiffusionPipeline`` with SD1.5's architecture at reduced width and random weights."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dtype = dtype or torch.float32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=16, cross_attention_dim=64, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    with tempfile.TemporaryDirectory() as folder:
        write_char_tokenizer(Path(folder))
        tokenizer = CLIPTokenizer(str(Path(folder) / "vocab.json"), str(Path(folder) / "merges.txt"),
                                  model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    # float32 is what the modules were built in; casting only when asked avoids diffusers' upcast warning
    return pipe.to(device) if dtype == torch.float32 else pipe.to(device=device, dtype=dtype)


def run_demo(
    backend: str = "auto",
    device: str | None = None,
    steps: int = 4,
    size: int = 64,
    prompt: str = "a lighthouse at dawn",
    cache_dir: str | None = None,
    text_encoders: bool = False,
    out=print,
) -> dict[str, Any]:
    """Wrap the demo pipeline, run it twice, print what was compiled, reused and how long each took."""
    import torch

    from .pipeline import wrap_pipeline
    from .runtime import TensorRTRuntime

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = build_demo_pipeline(device, dtype)
    runtime = TensorRTRuntime(backend=backend, cache_dir=cache_dir)
    out(f"trt_runtime demo: SD1.5-architecture pipeline (reduced width, random weights) on {device}, "
        f"{str(dtype)[6:]}, {size}x{size}, {steps} steps")
    out(f"engine cache: {runtime.cache.root}")
    def generate():
        generator = torch.Generator(device="cpu").manual_seed(0)
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipe(prompt, num_inference_steps=steps, height=size, width=size, generator=generator,
                         output_type="np").images[0]
        return image, time.perf_counter() - start

    reference, eager_seconds = generate()
    out(f"eager PyTorch: {eager_seconds:.2f} s")
    wrap_pipeline(pipe, runtime=runtime, unet=True, vae=True, text_encoders=text_encoders)

    timings = []
    images = []
    for run in (1, 2):
        image, seconds = generate()
        totals = runtime.stats.totals()
        timings.append(seconds)
        images.append(image)
        out(f"wrapped, run {run}: {seconds:.2f} s (so far: {totals['compiles']} compiled, "
            f"{totals['loads']} loaded from the disk cache, {totals['fallbacks']} eager fallbacks)")
    difference = float(abs(images[-1].astype("float64") - reference.astype("float64")).max())
    speedup = eager_seconds / timings[-1] if timings[-1] > 0 else float("nan")
    out(f"run 2 against eager: {speedup:.2f}x" + (
        " (a CPU and this small model leave little to gain; on a GPU, see the README's benchmarks)"
        if not device.startswith("cuda") else ""))
    out(f"largest pixel difference to eager (0..1 scale): {difference:.2e}")
    out("")
    out(runtime.summary())
    backend_names = sorted({row.backend for row in runtime.stats.rows()}) or ["eager"]
    if runtime.stats.totals()["compiles"]:
        hint = "Run the demo again: the next process loads the artifacts from the cache instead of compiling."
    else:
        hint = "Nothing was compiled in this process: every artifact came from the cache."
    out(f"\nbackend: {', '.join(backend_names)}. {hint}")
    return {"eager_seconds": eager_seconds, "timings": timings, "totals": runtime.stats.totals(),
            "images": images, "reference": reference, "max_difference": difference, "backend": backend_names}
