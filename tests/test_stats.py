"""trt_runtime.stats: the summary says where a first call's time went."""

from __future__ import annotations

from trt_runtime.stats import RuntimeStats, phases_line


def test_phases_line_nests_the_parts_a_backend_timed():
    line = phases_line({"fingerprint": 0.1, "compile": 107.7, "compile: export": 12.3,
                        "compile: engine build": 80.1, "save": 20.5})
    assert line == ("fingerprint 0.10 s, compile 107.70 s (export 12.30 s, engine build 80.10 s), save 20.50 s")


def test_summary_lists_the_phases_of_each_row():
    stats = RuntimeStats()
    stats.record("unet", "a" * 40, "2x4x64x64", compiles=1, compile_seconds=1.5,
                 phases={"compile": 1.5, "compile: export": 0.5})
    stats.record("vae.decoder", "b" * 40, "1x4x64x64", calls=1)
    text = stats.summary()
    assert "where the first calls' time went:" in text
    assert "unet aaaaaaaaaa: compile 1.50 s (export 0.50 s)" in text
    assert "vae.decoder bbbbbbbbbb:" not in text  # nothing timed
    empty = RuntimeStats()
    empty.record("unet", "a" * 40, calls=1)
    assert "where" not in empty.summary()
