"""Every code block of README.md runs as written, so a sample can never rot.

How (the one patch, and it is to the surroundings, never to the text of a block):

- Each ```python block is written to a file verbatim and run in a fresh interpreter, on the CPU, in a
  folder where the model ids the README uses (``stabilityai/stable-diffusion-xl-base-1.0``,
  ``stable-diffusion-v1-5/stable-diffusion-v1-5``) and ``./sdxl-base`` are *local folders*: tiny pipelines
  with the real architectures' structure (an SDXL- and an SD1.5-shaped UNet, an 8x VAE), random weights,
  written with ``save_pretrained``. diffusers loads a local folder of that name instead of downloading
  (and ``HF_HUB_OFFLINE=1`` makes sure nothing is downloaded).
- Each line of a ```bash block that starts with ``trt-runtime`` or ``python -m trt_runtime`` runs with
  bash in such a folder, with ``trt-runtime`` and ``python`` on ``PATH`` running this checkout, and an
  engine cache holding two example entries (one of them has the key prefix ``3f2a9c`` the README shows).
- An HTML comment right above a block says how to treat it: ``<!-- readme-test: skip (why) -->``,
  ``slow`` (it compiles: marked ``slow``), ``fast``, or ``run`` for a bash block (its ``demo`` and
  ``build`` lines compile and are ``slow``). Other bash lines (installs, the benchmark scripts) are not
  run here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .support import tiny_models as tm

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

MODEL_IDS = {
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl",
    "sdxl-base": "sdxl",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
}
"""Names the README loads from, and which tiny pipeline stands there."""

EXAMPLE_KEY = "3f2a9c" + "0" * 34
_COMPILING_COMMANDS = ("demo", "build")


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int
    directive: str | None


def readme_blocks() -> list[Block]:
    """The fenced code blocks of README.md with the ``readme-test`` directive above each."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        fence = re.match(r"^```(\w*)", lines[index])
        if not fence:
            index += 1
            continue
        above = index - 1
        while above >= 0 and not lines[above].strip():
            above -= 1
        directive = re.search(r"<!--\s*readme-test:\s*(\w+)", lines[above]) if above >= 0 else None
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        blocks.append(Block(fence.group(1), "\n".join(lines[index + 1:end]) + "\n", index + 1,
                            directive.group(1) if directive else None))
        index = end + 1
    return blocks


def _python_cases():
    for block in readme_blocks():
        if block.lang == "python" and block.directive != "skip":
            marks = [pytest.mark.slow] if block.directive == "slow" else []
            yield pytest.param(block, marks=marks, id=f"README.md:{block.line}")


def _command_cases():
    for block in readme_blocks():
        if block.lang != "bash" or block.directive == "skip":
            continue
        for offset, line in enumerate(block.text.splitlines(), start=1):
            command = line.split("  #")[0].strip()
            if not re.match(r"(trt-runtime|python -m trt_runtime)\b", command):
                continue
            words = command.split()
            marks = [pytest.mark.slow] if len(words) > 1 and words[1] in _COMPILING_COMMANDS else []
            yield pytest.param(command, marks=marks, id=f"README.md:{block.line + offset}")


# ----------------------------------------------------------------------------------------- tiny pipelines
def _vae():
    """An 8x VAE like SD's (four levels), narrow, without mid-block attention (so 1024 px fit a CPU)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
                         layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, mid_block_add_attention=False, sample_size=64)


def sd15_pipeline():
    """SD1.5's structure: a four-level UNet (latents in steps of 8), cross-attention at the deepest level."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
        norm_num_groups=4, cross_attention_dim=32, attention_head_dim=2,
        down_block_types=("DownBlock2D",) * 3 + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * 3,
    )
    return StableDiffusionPipeline(vae=_vae(), text_encoder=tm.clip_text_encoder(), tokenizer=tm.clip_tokenizer(),
                                   unet=unet, scheduler=tm._ddim(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl_pipeline():
    """SDXL's structure: a three-level UNet (latents in steps of 4) with text-time conditioning and two
    text encoders (the second with a projection)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16),
        norm_num_groups=4, attention_head_dim=2, use_linear_projection=True,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=tm.clip_text_encoder(seed=0), tokenizer=tm.clip_tokenizer(),
        text_encoder_2=tm.clip_text_encoder(seed=1, projection=True), tokenizer_2=tm.clip_tokenizer(),
        unet=unet, scheduler=tm._euler(),
    )


@pytest.fixture(scope="module")
def saved_pipelines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("readme_models")
    folders = {}
    for name, build in (("sdxl", sdxl_pipeline), ("sd15", sd15_pipeline)):
        build().save_pretrained(root / name)
        folders[name] = root / name
    return folders


@pytest.fixture
def workdir(tmp_path, saved_pipelines) -> Path:
    """A folder where the README's model ids are local folders, with ``trt-runtime`` and ``python``
    on PATH running this checkout."""
    work = tmp_path / "work"
    for model_id, name in MODEL_IDS.items():
        link = work / model_id
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(saved_pipelines[name], target_is_directory=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trt-runtime").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m trt_runtime "$@"\n')
    (bin_dir / "trt-runtime").chmod(0o755)
    (bin_dir / "python").symlink_to(sys.executable)
    return work


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
        "TRT_CACHE_DIR": str(tmp_path / "engines"),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    })
    env.pop("TRT_RUNTIME_VERBOSITY", None)
    return env


def _example_entries(cache_dir: Path) -> None:
    """Two entries for the cache commands: a ready UNet (the README's key prefix) and a failed build."""
    from trt_runtime.cache import EngineCache

    cache = EngineCache(cache_dir)
    meta = {"component": "unet", "backend": "inductor", "shapes": [[2, 4, 128, 128], [2, 77, 2048]]}
    cache.write(EXAMPLE_KEY, meta, lambda folder: (folder / "inductor_cache.0.bin").write_bytes(b"\0" * 1024))
    cache.write_failure("9e1b" + "0" * 36, {"component": "vae.decoder", "backend": "tensorrt",
                                            "shapes": [[1, 4, 128, 128]]}, "EngineBuildError: example failure")


# ----------------------------------------------------------------------------------------- tests
def test_the_readme_has_the_blocks_this_test_expects():
    blocks = readme_blocks()
    assert sum(b.lang == "python" for b in blocks) >= 5
    assert all(b.directive in (None, "skip", "slow", "fast", "run") for b in blocks), [b.directive for b in blocks]
    commands = [p.values[0] for p in _command_cases()]
    assert any(c.startswith("trt-runtime build") for c in commands) and "trt-runtime cache path" in commands


@pytest.mark.parametrize("block", list(_python_cases()))
def test_python_block_runs_as_written(block, workdir, tmp_path):
    script = workdir / "readme_block.py"
    script.write_text(block.text, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=workdir, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"README.md line {block.line}:\n{block.text}\n{proc.stderr[-4000:]}"
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("trt_runtime WARNING")]
    assert not warnings, f"README.md line {block.line} warns:\n" + "\n".join(warnings)
    if "summary()" in block.text:
        assert "0 eager fallbacks" in proc.stdout, proc.stdout


@pytest.mark.parametrize("command", list(_command_cases()))
def test_cli_line_runs_as_written(command, workdir, tmp_path):
    _example_entries(tmp_path / "engines")
    proc = subprocess.run(["bash", "-c", command], cwd=workdir, env=_env(tmp_path), capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr and "error:" not in proc.stderr, proc.stderr[-4000:]
    if "--json" in command:
        assert proc.stdout.startswith("[")
    elif command.endswith("cache info 3f2a9c"):
        assert json.loads(proc.stdout)["component"] == "unet"
    elif command == "trt-runtime cache ls":
        assert "KEY" in proc.stdout and "3f2a9c" in proc.stdout and "example failure" in proc.stdout
