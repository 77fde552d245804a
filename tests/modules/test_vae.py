"""VAE wrapper: encoder/decoder submodules behind the runtime, encode()/decode() unchanged."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from trt_runtime import ConfigurationError, Dim
from trt_runtime.modules.base import installed
from trt_runtime.modules.vae import apply_vae

from ..support import tiny_models as tm


def _compiles(runtime) -> int:
    return runtime.stats.totals()["compiles"]


def _image(batch: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encode_decode_keep_their_output_types(runtime):
    vae = tm.vae_kl()
    image = _image()
    want_dist = vae.encode(image).latent_dist
    latents = want_dist.mean
    want_image = vae.decode(latents).sample
    wrapped = apply_vae(vae, runtime=runtime)
    assert set(wrapped.components) == {"vae.encoder", "vae.decoder"}
    assert installed(vae) is None and installed(vae.quant_conv) is None  # quant convs stay eager

    encoded = vae.encode(image)
    assert isinstance(encoded, AutoencoderKLOutput) and isinstance(encoded.latent_dist, DiagonalGaussianDistribution)
    torch.testing.assert_close(encoded.latent_dist.mean, want_dist.mean)
    torch.testing.assert_close(encoded.latent_dist.std, want_dist.std)
    sample = encoded.latent_dist.sample(generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sample, want_dist.sample(generator=torch.Generator().manual_seed(1)))
    decoded = vae.decode(latents)
    assert isinstance(decoded, DecoderOutput)
    torch.testing.assert_close(decoded.sample, want_image)
    (as_tuple,) = vae.decode(latents, return_dict=False)
    torch.testing.assert_close(as_tuple, want_image)
    assert _compiles(runtime) == 2
    vae.encode(image)
    vae.decode(latents)
    assert _compiles(runtime) == 2 and runtime.stats.totals()["fallbacks"] == 0

    wrapped.remove()
    assert installed(vae.encoder) is None and installed(vae.decoder) is None


def test_slicing_keys_per_slice(runtime):
    vae = tm.vae_kl()
    images = _image(batch=3)
    want = vae.decode(vae.encode(images).latent_dist.mean).sample
    apply_vae(vae, runtime=runtime)
    vae.enable_slicing()
    out = vae.decode(vae.encode(images).latent_dist.mean).sample
    torch.testing.assert_close(out, want)
    shapes = {row.shapes for row in runtime.stats.rows()}
    assert shapes == {"1x3x32x32", "1x4x16x16"}  # one slice per call: batch 1 artifacts only


def test_tiling_keys_per_tile_shape(runtime):
    vae = tm.vae_kl()  # sample_size 32: tiles of 32 pixels / 16 latents, 25% overlap
    vae.enable_tiling()
    image = _image(size=48)
    want_latents = vae.encode(image).latent_dist.mean
    want_image = vae.decode(want_latents).sample
    apply_vae(vae, runtime=runtime)
    latents = vae.encode(image).latent_dist.mean
    torch.testing.assert_close(latents, want_latents)
    torch.testing.assert_close(vae.decode(latents).sample, want_image)
    compiles = _compiles(runtime)
    assert 2 < compiles <= 8  # corner, edge and inner tile shapes, not one per tile position
    vae.decode(latents)
    assert _compiles(runtime) == compiles


def test_upcast_vae_runs_a_float32_artifact(runtime):
    """force_upcast: pipelines cast an fp16/bf16 VAE to float32 to decode; keys follow the dtype."""
    vae = tm.vae_kl(force_upcast=True).to(torch.bfloat16)
    latents = torch.randn(1, 4, 16, 16)
    want_low = vae.decode(latents.bfloat16()).sample
    apply_vae(vae, runtime=runtime)
    torch.testing.assert_close(vae.decode(latents.bfloat16()).sample, want_low)
    vae.to(torch.float32)  # what upcast_vae() does
    out = vae.decode(latents).sample
    assert out.dtype == torch.float32
    vae_ref = tm.vae_kl().to(torch.bfloat16).to(torch.float32)  # same weights, same rounding
    torch.testing.assert_close(out, vae_ref.decode(latents).sample)
    assert _compiles(runtime) == 2


@pytest.mark.parametrize("tiled", [False, True])
def test_hunyuan_video_vae(runtime, tiled):
    vae = tm.vae_hunyuan_video()
    size = 16
    if tiled:  # spatial tiles of 16 pixels (2 latents) every 8: 4 tile shapes each way
        vae.enable_tiling(tile_sample_min_height=16, tile_sample_min_width=16, tile_sample_stride_height=8,
                          tile_sample_stride_width=8)
        size = 24
    video = torch.rand(1, 3, 5, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    want_latents = vae.encode(video).latent_dist.mean
    want_video = vae.decode(want_latents).sample
    apply_vae(vae, runtime=runtime)
    latents = vae.encode(video).latent_dist.mean
    torch.testing.assert_close(latents, want_latents)
    torch.testing.assert_close(vae.decode(latents).sample, want_video)
    compiles = _compiles(runtime)
    assert compiles == (8 if tiled else 2)
    vae.decode(latents)
    assert _compiles(runtime) == compiles


def test_tiny_autoencoder(runtime):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
                          num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4).eval()
    image = _image()
    want = vae.decode(vae.encode(image).latents).sample
    apply_vae(vae, runtime=runtime)
    torch.testing.assert_close(vae.decode(vae.encode(image).latents).sample, want)


def test_unsupported_autoencoder_is_refused(runtime):
    class CachingVideoVAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Conv2d(3, 4, 1)
            self.decoder = torch.nn.Conv2d(4, 3, 1)

    vae = CachingVideoVAE()
    with pytest.raises(ConfigurationError, match="not a supported VAE"):
        apply_vae(vae, runtime=runtime)
    assert installed(vae.encoder) is None


def test_shapes_per_part(runtime):
    vae = tm.vae_kl()
    latent = (8, 16, 32)
    wrapped = apply_vae(vae, runtime=runtime, decoder_shapes={"sample": {2: latent, 3: latent}})
    assert wrapped.components["vae.encoder"].spec is None
    spec = wrapped.components["vae.decoder"].spec
    assert spec["sample"][2] == Dim("sample_2", 8, 32, 16) and set(spec["sample"]) == {2, 3}


@pytest.mark.parametrize("kwargs, match", [
    (dict(decoder=False, decoder_shapes={"sample": {2: (8, 32)}}), "decoder_shapes given"),
    (dict(decoder_shapes={"z": {2: (8, 32)}}), "'z' names no argument of Decoder.forward"),
])
def test_bad_part_shapes_install_nothing(runtime, kwargs, match):
    vae = tm.vae_kl()
    with pytest.raises(ConfigurationError, match=match):
        apply_vae(vae, runtime=runtime, **kwargs)
    assert installed(vae.encoder) is None and installed(vae.decoder) is None
