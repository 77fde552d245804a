"""Issue 12, "Security: an entry in the cache is executable code": each attack tried, and what is left.

Each test asserts the state of the cache afterwards (what it holds, what was deleted) and, where code
could run, that a pickle payload's marker file never appears."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from trt_runtime import TensorRTModule, TensorRTRuntime
from trt_runtime.backends import _FACTORIES, Backend, register_backend
from trt_runtime.cache import MARKER, EngineCache
from trt_runtime.errors import CacheError, UntrustedEntryError

from ..support.backends import tiny_mlp
from .helpers import KEY, OTHER, STRANGER, Payload, chown_tree, cli, fill_with, rewrite_artifact

ARTIFACT = "inductor_cache.bin"


class PickledArtifacts(Backend):
    """Persists like inductor does: the artifact is a pickle and loading unpickles it."""

    name = "pickled"
    builds = 0

    def compile(self, request):
        type(self).builds += 1
        return request.module

    def save(self, compiled, request, directory: Path) -> None:
        (directory / ARTIFACT).write_bytes(pickle.dumps({"weights": "ours"}))

    def load(self, request, directory: Path):
        pickle.loads((directory / ARTIFACT).read_bytes())
        return request.module


@pytest.fixture
def pickled_backend():
    register_backend("pickled", PickledArtifacts)
    PickledArtifacts.builds = 0
    yield
    _FACTORIES.pop("pickled", None)


def test_planted_entry_is_refused_by_the_runtime_before_unpickling_and_replaced(tmp_path, pickled_backend, caplog):
    cache_dir, marker = tmp_path / "engines", tmp_path / "pwned"
    x = torch.randn(2, 8)
    with torch.no_grad():
        first = TensorRTModule(tiny_mlp(), runtime=TensorRTRuntime(backend="pickled", cache_dir=cache_dir), name="mlp")
        first(x)
        (key,) = [e.key for e in EngineCache(cache_dir).entries()]
        # the attacker: same key (public model), hostile artifact, fixed-up checksum, their own folder
        rewrite_artifact(cache_dir / key, ARTIFACT, pickle.dumps(Payload(marker)))
        chown_tree(cache_dir / key, STRANGER)
        module = tiny_mlp()
        second = TensorRTModule(module, runtime=TensorRTRuntime(backend="pickled", cache_dir=cache_dir), name="mlp")
        torch.testing.assert_close(second(x), module(x))
    assert not marker.exists() and PickledArtifacts.builds == 2
    entry = EngineCache(cache_dir).read(key)  # rebuilt, now ours again
    assert entry.trust == "owner" and pickle.loads((entry.path / ARTIFACT).read_bytes()) == {"weights": "ours"}
    assert f"uid {STRANGER}" in caplog.text


def test_symlinked_staging_is_unlinked_never_followed(tmp_path):
    outside = tmp_path / "precious"
    victim = outside / f"{KEY}.1.00000000"  # what the old sweep deleted: a key-ish name, old and dead
    victim.mkdir(parents=True)
    (victim / "meta.json").write_text(json.dumps({"key": KEY}))
    os.utime(victim, (0, 0))
    cache = EngineCache(tmp_path / "cache")
    cache.write(OTHER, {}, fill_with(b"x"))
    staging = tmp_path / "cache" / ".staging"
    os.rmdir(staging)
    staging.symlink_to(outside)
    cache.write(KEY, {}, fill_with(b"y"))  # publishing + eviction sweep
    assert victim.is_dir() and (victim / "meta.json").exists()
    assert staging.is_dir() and not staging.is_symlink()
    os.rmdir(staging)
    staging.symlink_to(outside)
    assert cache.clear() == 2
    assert victim.is_dir() and not staging.is_symlink()


def test_symlinked_entry_and_locks_are_unlinked_never_followed(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "meta.json").write_text(json.dumps({"key": KEY, "status": "ready"}))
    target_file = tmp_path / "bashrc"
    target_file.write_text("keep me")
    cache = EngineCache(tmp_path / "cache")
    cache.write(OTHER, {}, fill_with(b"x"))
    (cache.root / KEY).symlink_to(outside)
    (cache.root / ".locks").mkdir(exist_ok=True)
    (cache.root / ".locks" / f"{OTHER}.lock").symlink_to(target_file)
    assert cache.read(KEY) is None and [e.key for e in cache.entries()] == [OTHER]
    with cache.lock(OTHER, timeout=1):  # the planted lock link is removed, not opened (no truncation)
        pass
    assert target_file.read_text() == "keep me"
    assert cache.clear() == 1
    assert (outside / "meta.json").exists() and not (cache.root / KEY).exists()


def test_clear_on_a_folder_that_is_not_a_cache_deletes_nothing(tmp_path):
    project = tmp_path / "proj"
    for name in (KEY, OTHER):  # hex names with a meta.json: what the old clear deleted
        (project / name).mkdir(parents=True)
        (project / name / "meta.json").write_text(json.dumps({"key": name, "status": "ready"}))
    (project / ".staging").mkdir()
    before = sorted(project.rglob("*"))
    with pytest.raises(CacheError, match="does not look like a trt_runtime engine cache"):
        EngineCache(project).clear()
    result = cli("--cache-dir", str(project), "cache", "clear")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nothing was deleted" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for op in ("evict", "prune"):
        with pytest.raises(CacheError):
            getattr(EngineCache(project, max_bytes=1), op)()
    assert sorted(project.rglob("*")) == before


def test_clear_deletes_only_what_the_cache_wrote(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    foreign = tmp_path / OTHER  # key-named, but its meta.json names another key
    foreign.mkdir()
    (foreign / "meta.json").write_text(json.dumps({"key": KEY, "status": "ready"}))
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".staging" / "somebody-elses").mkdir()
    assert cache.clear() == 1
    assert foreign.is_dir() and (tmp_path / "notes.txt").exists() and (tmp_path / ".staging" / "somebody-elses").is_dir()
    assert (tmp_path / MARKER).exists()


def test_swapped_entry_folders_are_a_miss(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"component": "unet"}, fill_with(b"engine for key"))
    cache.write(OTHER, {"component": "unet"}, fill_with(b"engine for other"))
    os.rename(tmp_path / KEY, tmp_path / "swap")
    os.rename(tmp_path / OTHER, tmp_path / KEY)
    os.rename(tmp_path / "swap", tmp_path / OTHER)
    assert cache.read(KEY) is None and cache.read(OTHER) is None
    assert "names key" in cache.check(KEY)[1].reason


def _program_with_pickled_weight(marker: Path) -> bytes:
    """A real torch.export archive whose first weight is switched to ``use_pickle`` with a payload."""
    ep = torch.export.export(torch.nn.Linear(3, 3), (torch.randn(2, 3),))
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    src = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    config_name = next(n for n in src.namelist() if n.endswith("model_weights_config.json"))
    config = json.loads(src.read(config_name))
    weight = config["config"][sorted(config["config"])[0]]
    weight["use_pickle"] = True
    weight_name = f"{config_name.rsplit('/', 1)[0]}/{weight['path_name']}"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == config_name:
                data = json.dumps(config).encode()
            elif info.filename == weight_name:
                data = pickle.dumps(Payload(marker))
            dst.writestr(info, data)
    return out.getvalue()


def test_a_program_with_undeclared_pickled_weights_is_refused_before_loading(tmp_path):
    marker = tmp_path / "pwned"
    program = _program_with_pickled_weight(marker)
    cache = EngineCache(tmp_path / "cache", verify_checksum=False)
    cache.write(KEY, {}, fill_with(b"placeholder", "trt_program.pt2"))
    rewrite_artifact(cache.path_for(KEY), "trt_program.pt2", program)  # as if written by an old version
    entry = cache.read(KEY)
    assert entry is not None and entry.trust == "owner"
    with pytest.raises(UntrustedEntryError, match="stored as pickle"):
        with cache.loading(entry) as folder:
            torch.export.load(str(folder / "trt_program.pt2"))
    assert not marker.exists()


def test_the_pickled_program_twin_runs_its_payload_when_loaded_directly(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "program.pt2"
    path.write_bytes(_program_with_pickled_weight(marker))
    try:
        torch.export.load(str(path))
    except Exception:  # the payload is not a tensor: loading fails after it ran
        pass
    assert marker.exists()


def test_a_program_we_wrote_with_declared_records_loads(tmp_path):
    ep = torch.export.export(torch.nn.Linear(3, 3), (torch.randn(2, 3),))
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, lambda folder: torch.export.save(ep, str(folder / "trt_program.pt2")))
    entry = cache.read(KEY)
    assert entry.meta["files"]["trt_program.pt2"]["pt2_unsafe"] == []
    with cache.loading(entry) as folder:
        torch.export.load(str(folder / "trt_program.pt2"))
