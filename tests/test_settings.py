"""Settings: validated once, frozen, and the cache dir resolved in the documented order."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trt_runtime import ConfigurationError, RuntimeSettings, resolve_cache_dir


def test_defaults_are_valid_and_frozen():
    settings = RuntimeSettings()
    assert settings.backend == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.backend = "eager"


@pytest.mark.parametrize(
    "changes",
    [{"precision": "int4"}, {"optimization_level": 9}, {"weights_digest": "none"}, {"max_cache_bytes": 0},
     {"inductor_mode": "fastest"}, {"tolerance": -1.0}, {"backend": ""},
     {"inductor_mode": "max-autotune", "inductor_options": {"triton.cudagraphs": True}}],
)
def test_bad_values_raise_configuration_error(changes):
    with pytest.raises(ConfigurationError) as info:
        RuntimeSettings(**changes)
    assert isinstance(info.value, ValueError)


def test_replace_rejects_unknown_names_with_a_hint():
    with pytest.raises(ConfigurationError, match="unknown setting.*presicion"):
        RuntimeSettings().replace(presicion="fp16")
    assert RuntimeSettings().replace(strict=True).strict is True


def test_mappings_are_frozen_and_hashable():
    a = RuntimeSettings(inductor_options={"b": 1, "a": 2})
    b = RuntimeSettings(inductor_options={"a": 2, "b": 1})
    assert a == b and hash(a) == hash(b)
    with pytest.raises(TypeError):
        a.inductor_options["c"] = 3
    assert a.describe({"inductor_options"}) == {"inductor_options": {"a": 2, "b": 1}}


def test_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv("TRT_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_cache_dir() == tmp_path / "env"
    monkeypatch.delenv("TRT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    resolved = resolve_cache_dir()
    assert "trt_runtime" in resolved.parts and isinstance(resolved, Path)


def test_environment_is_read_when_called_not_at_import(monkeypatch, tmp_path):
    monkeypatch.setenv("TRT_CACHE_DIR", str(tmp_path / "first"))
    assert resolve_cache_dir() == tmp_path / "first"
    monkeypatch.setenv("TRT_CACHE_DIR", str(tmp_path / "second"))
    assert resolve_cache_dir() == tmp_path / "second"
