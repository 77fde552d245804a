"""The README's main job: the built-in demo, wrapped vs eager, then reused by a second process."""

from __future__ import annotations

from trt_runtime.demo import run_demo


def test_demo_compiles_once_matches_eager_and_the_next_process_loads(export_backend, cache_dir):
    lines: list[str] = []
    first = run_demo(backend="export", device="cpu", steps=2, size=32, out=lines.append)
    assert first["totals"]["compiles"] >= 2 and first["totals"]["fallbacks"] == 0  # unet + vae decoder
    assert first["max_difference"] < 1e-3
    text = "\n".join(lines)
    assert "eager PyTorch" in text and "wrapped, run 2" in text and "unet" in text and "vae.decoder" in text
    assert "run 2 against eager: " in text and "Run the demo again" in text
    again: list[str] = []
    second = run_demo(backend="export", device="cpu", steps=2, size=32, out=again.append)
    assert second["totals"]["compiles"] == 0 and second["totals"]["loads"] == first["totals"]["compiles"]
    assert "every artifact came from the cache" in "\n".join(again)
