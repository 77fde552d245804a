"""Real TensorRT engines (markers ``gpu`` and ``tensorrt``: skipped unless torch_tensorrt imports on a CUDA
machine; on this project's GPU machine that is torch-tensorrt-rtx 2.11.0, see ../shared/GPU.md).

Every family, through tiny pipelines built from config (reduced width and depth: the same block types as
the published models), in fp16 on the GPU: each wrapped pipeline must give eager's image, and each
component either converts or falls back with a reason. Which components converted is written to
``$TRT_RUNTIME_TEST_REPORT`` (JSON lines) when set, so the GPU log says it per family and release.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import tiny_models as tm
from trt_runtime import Dim, TensorRTModule, TensorRTRuntime
from trt_runtime.pipeline import unwrap_pipeline, wrap_pipeline, wrapped_components

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = dict(prompt="a red lighthouse", height=64, width=64)


def _image(px: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(px, px, 3) * 255).astype("uint8"))


def _hunyuan_inputs() -> dict:
    """HunyuanVideo takes prompt embeddings (its prompt template needs a Llama tokenizer, which cannot be
    written from the tiny vocabulary); the Llama encoder is covered by ``test_text_encoders_convert``."""
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(1, 6, dtype=torch.int64, device="cuda")
    mask[:, 4:] = 0
    return dict(prompt_embeds=torch.randn(1, 6, 16, generator=g).to("cuda", torch.float16),
                pooled_prompt_embeds=torch.randn(1, 8, generator=g).to("cuda", torch.float16),
                prompt_attention_mask=mask, height=16, width=16, num_frames=5)

# name: (pipeline builder, call arguments, components that must convert on every supported release)
FAMILIES = {
    "sd15": (tm.sd_pipeline, SIZE, {"unet", "vae.decoder", "text_encoder"}),
    "sdxl": (tm.sdxl_pipeline, SIZE, {"unet", "vae.decoder"}),
    "controlnet": (lambda: tm.sd_pipeline("StableDiffusionControlNetPipeline", controlnet=tm.sd_controlnet()),
                   dict(image=torch.rand(1, 3, 64, 64), controlnet_conditioning_scale=0.6, **SIZE),
                   {"unet", "controlnet"}),
    "sd3": (tm.sd3_pipeline, SIZE, {"transformer"}),
    "flux": (tm.flux_pipeline, dict(max_sequence_length=16, **SIZE), {"transformer"}),
    "img2img": (lambda: tm.sd_pipeline("StableDiffusionImg2ImgPipeline"),
                dict(prompt="a red lighthouse", image=_image(), strength=0.9), {"unet", "vae.encoder", "vae.decoder"}),
    # the transformer failed in torch-tensorrt-rtx 2.11 until its broadcast mask write got a source of the
    # destination's shape (``_tensorrt_passes``; the copy converter ignores the destination's shape)
    "hunyuan_video": (tm.hunyuan_video_pipeline, None, {"transformer", "vae.decoder"}),
}


def _report(**row) -> None:
    path = os.environ.get("TRT_RUNTIME_TEST_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def _images(pipe, inputs) -> np.ndarray:
    out = pipe(**inputs, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    return np.asarray(out.images if hasattr(out, "images") else out.frames)


@torch.no_grad()
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_converts_and_matches_eager(family, cache_dir):
    build, inputs, must_convert = FAMILIES[family]
    inputs = inputs if inputs is not None else _hunyuan_inputs()
    pipe = build().to("cuda", torch.float16)
    reference = _images(pipe, inputs)
    runtime = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir)
    wrap_pipeline(pipe, runtime=runtime, text_encoders=True)
    images = _images(pipe, inputs)
    rows = {row.component: row for row in runtime.stats.rows()}
    for name in wrapped_components(pipe):
        row = rows.get(name)
        _report(family=family, component=name, state=row.state if row else "not called",
                error=row.error if row else None, phases=row.phases if row else None)
    converted = {name for name, row in rows.items() if row.state == "ready"}
    assert must_convert <= converted, {n: rows[n].error for n in must_convert - converted if n in rows}
    difference = float(np.abs(images.astype(np.float64) - reference.astype(np.float64)).max())
    _report(family=family, max_pixel_difference=difference)
    assert difference < 0.1, difference  # fp16 engines vs fp16 eager, 0..1 pixels after 2 steps


@torch.no_grad()
def test_engine_reloads_in_a_fresh_process_without_building(cache_dir):
    script = textwrap.dedent(f"""
        import json, sys, time, torch
        sys.path.insert(0, {ROOT!r})
        from tests.support import tiny_models as tm
        from trt_runtime import TensorRTRuntime
        from trt_runtime.modules.unet import apply_unet
        unet = tm.sd_unet().to("cuda", torch.float16).eval()
        rt = TensorRTRuntime(backend="tensorrt", cache_dir={str(cache_dir)!r}, strict=True)
        apply_unet(unet, runtime=rt)
        g = torch.Generator("cuda").manual_seed(0)
        x = torch.randn(2, 4, 16, 16, device="cuda", dtype=torch.float16, generator=g)
        ctx = torch.randn(2, 8, 32, device="cuda", dtype=torch.float16, generator=g)
        with torch.no_grad():
            out = unet(x, 10, ctx).sample
        # a second runtime of the same process (other serving settings) reuses the engine: no second load and JIT
        again = tm.sd_unet().to("cuda", torch.float16).eval()
        rt2 = TensorRTRuntime(backend="tensorrt", cache_dir={str(cache_dir)!r}, strict=True, cuda_graphs=False)
        apply_unet(again, runtime=rt2)
        torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.no_grad():
            out2 = again(x, 10, ctx).sample
        torch.cuda.synchronize()
        print(json.dumps({{"totals": rt.stats.totals(), "sum": float(out.float().sum()), "totals2": rt2.stats.totals(),
                          "second_s": time.perf_counter() - started, "sum2": float(out2.float().sum())}}))
    """)
    results, logs = [], []
    env = dict(os.environ, TRT_RUNTIME_VERBOSITY="info")
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        logs.append("\n".join(line for line in done.stderr.splitlines() if "trt_runtime" in line)[-3000:])
    first, second = results
    assert first["totals"]["compiles"] == 1 and second["totals"]["compiles"] == 0 and second["totals"]["loads"] == 1, (
        f"first process:\n{logs[0]}\nsecond process:\n{logs[1]}")
    assert second["sum"] == pytest.approx(first["sum"], rel=1e-3)
    # a program just built is not shared (its PyTorch parts may hold the builder's parameters): the second runtime
    # of the first process loads the entry; in the second process, where the first runtime loaded it, it reuses it
    built, loaded = results
    assert built["totals2"]["compiles"] == 0 and built["totals2"]["loads"] == 1, logs[0]
    assert loaded["totals2"]["reuses"] == 1 and loaded["totals2"]["loads"] == 0, logs[1]
    assert "already loaded in this process" in logs[1], logs[1]
    for result in results:
        assert result["sum2"] == pytest.approx(result["sum"], rel=1e-3)
    _report(test="reload", first_s=first["totals"]["compile_seconds"], load_s=second["totals"]["load_seconds"],
            second_runtime_s=[r["second_s"] for r in results])


@torch.no_grad()
def test_refittable_engine_follows_new_weights_and_back(cache_dir, caplog):
    """A -> B -> A without a rebuild: B is what fusing a LoRA does to the base weights (an in-place edit
    of the module, here through ``load_state_dict`` on the model itself, not on the wrapper)."""
    from trt_runtime.modules.unet import apply_unet

    unet = tm.sd_unet().to("cuda", torch.float16).eval()
    weights_a = {k: v.clone() for k, v in unet.state_dict().items()}
    weights_b = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights_a.items()}
    rt = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True, refittable=True)
    apply_unet(unet, runtime=rt)
    g = torch.Generator("cuda").manual_seed(0)
    x = torch.randn(2, 4, 16, 16, device="cuda", dtype=torch.float16, generator=g)
    ctx = torch.randn(2, 8, 32, device="cuda", dtype=torch.float16, generator=g)
    out_a = unet(x, 10, ctx).sample.clone()
    unet.load_state_dict(weights_b)
    out_b = unet(x, 10, ctx).sample.clone()
    unet.load_state_dict(weights_a)
    out_a2 = unet(x, 10, ctx).sample.clone()
    totals = rt.stats.totals()
    _report(test="refit", totals=totals, phases=[r.phases for r in rt.stats.rows()],
            warnings=[r.getMessage()[:1500] for r in caplog.records if r.levelno >= 30])
    assert totals["compiles"] == 1 and sum(r.refits for r in rt.stats.rows()) == 2
    assert not torch.allclose(out_a, out_b, atol=1e-3), "a stale engine was served"
    torch.testing.assert_close(out_a2, out_a, atol=0, rtol=0)


@torch.no_grad()
def test_cuda_graphs_replay_engines_and_keep_outputs(cache_dir):
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 64, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(64, 4, 3, padding=1)).eval().to("cuda", torch.float16)
    rt = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    wrapped = TensorRTModule(net, runtime=rt)
    xs = [torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16) for _ in range(4)]
    kept = [wrapped(x) for x in xs]
    for x, out in zip(xs, kept, strict=True):
        torch.testing.assert_close(out, net(x), atol=2e-2, rtol=2e-2)
    _report(test="cuda_graphs", graphs=rt.stats.totals()["graphs"])
    assert rt.stats.totals()["graphs"] == 1


@torch.no_grad()
def test_unconvertible_module_falls_back_with_a_reason(cache_dir):
    """Python control flow on a tensor's value cannot be exported: the build fails, the call is eager's.
    (An op TensorRT lacks is not a failure: torch_tensorrt leaves it in PyTorch.)"""

    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x - 1

    module = DataDependent().to("cuda")
    rt = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir)
    wrapped = TensorRTModule(module, runtime=rt)
    x = torch.randn(8, device="cuda")
    torch.testing.assert_close(wrapped(x), module(x))
    (row,) = rt.stats.rows()
    _report(test="fallback", state=row.state, error=row.error)
    assert row.state == "failed" and row.error


@torch.no_grad()
def test_declared_range_serves_several_resolutions_with_one_engine(cache_dir):
    """``wrap_pipeline(resolutions=..., batch_sizes=...)``: one engine per component (an optimization profile
    over the range) serves three sizes and two batches, each image matching eager's; a new runtime loads them."""
    pipe = tm.sd_pipeline().to("cuda", torch.float16)
    cases = [(32, 1), (48, 2), (40, 1)]  # the SD pipeline takes sizes in steps of 8 px

    def generate(px: int, batch: int) -> np.ndarray:
        return _images(pipe, dict(prompt=["a red lighthouse"] * batch, height=px, width=px))

    want = {case: generate(*case) for case in cases}
    runtime = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    wrap_pipeline(pipe, runtime=runtime, resolutions=(32, 48), batch_sizes=(1, 2))
    differences = {}
    for case in cases:
        differences[case] = float(np.abs(generate(*case).astype(np.float64) - want[case].astype(np.float64)).max())
    compiles = {row.component: row.compiles for row in runtime.stats.rows() if row.compiles}
    _report(test="declared_range", compiles=compiles, differences={f"{p}px x{b}": d for (p, b), d in differences.items()},
            totals=runtime.stats.totals())
    assert compiles == {"unet": 1, "vae.decoder": 1}, compiles
    assert runtime.stats.totals()["fallbacks"] == 0
    assert max(differences.values()) < 0.1, differences

    unwrap_pipeline(pipe)
    again = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    wrap_pipeline(pipe, runtime=again, resolutions=(32, 48), batch_sizes=(1, 2))
    generate(40, 2)
    totals = again.stats.totals()
    assert (totals["compiles"], totals["loads"], totals["fallbacks"]) == (0, 2, 0), totals


@torch.no_grad()
@pytest.mark.parametrize("kind", ["clip", "t5", "llama"])
def test_text_encoders_convert(kind, cache_dir):
    """CLIP, T5 and the Llama encoder of HunyuanVideo/FramePack, hidden states matching eager's in eager's
    dtype. T5 and Llama take a declared range of token counts (one engine for lengths 6 and 12; Llama's
    prompts vary in length, and torch 2.11 cannot prove the guards of its ``repeat_kv``, which are checked
    at every length instead: ``_export_guards``). CLIP is built for one length, as pipelines call it
    (padded to the tokenizer's maximum): over a range, its pooled-output index does not convert ("The
    indices should be broadcastable", torch-tensorrt-rtx 2.11, H100, 2026-11-26)."""
    from trt_runtime.modules.text_encoders import apply_text_encoder

    model = {"clip": tm.clip_text_encoder, "t5": tm.t5_encoder, "llama": tm.llama_encoder}[kind]()
    model = model.to("cuda", torch.float16).eval()
    lengths = (12, 12) if kind == "clip" else (6, 12)
    shapes = None
    if kind != "clip":
        length = Dim("tokens", 4, 16)
        shapes = {"input_ids": {1: length}, "attention_mask": {1: length}}
    g = torch.Generator().manual_seed(0)
    batches = []
    for n in lengths:
        ids = torch.randint(2, 60, (2, n), generator=g)
        ids[:, -1] = 1
        mask = torch.ones(2, n, dtype=torch.int64)
        mask[-1, -2:] = 0
        batches.append((ids.cuda(), mask.cuda()))
    extra = {"use_cache": False} if kind == "llama" else {}
    want = [model(ids, attention_mask=mask, output_hidden_states=True, **extra).hidden_states[-2]
            for ids, mask in batches]
    runtime = TensorRTRuntime(backend="tensorrt", cache_dir=cache_dir, strict=True)
    apply_text_encoder(model, runtime=runtime, name=kind, shapes=shapes)
    got = [model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2] for ids, mask in batches]
    errors = [float((a.float() - b.float()).abs().max()) for a, b in zip(got, want, strict=True)]
    _report(test="text_encoder", kind=kind, errors=errors, dtypes=[str(t.dtype) for t in got],
            totals=runtime.stats.totals(), phases=[r.phases for r in runtime.stats.rows()])
    assert runtime.stats.totals()["compiles"] == 1
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
