"""Issue 12, "Hostile or damaged files", plus the damage that already held: every one is a miss with a
warning, never an exception or a hang, from ``read``, ``entries``, ``verify`` and ``cache ls``."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading

import pytest

from trt_runtime.cache import EngineCache
from trt_runtime.errors import CacheError

from .helpers import KEY, OTHER, cli, fill_with


def _meta(cache: EngineCache) -> dict:
    return json.loads((cache.path_for(KEY) / "meta.json").read_text())


HOSTILE_META = {
    "wrong types": lambda m: {**m, "files": "engine.bin", "shapes": "2x4", "component": 5},
    "files entry not an object": lambda m: {**m, "files": {"engine.bin": 7}},
    "shapes of strings": lambda m: {**m, "shapes": [["a", "b"]]},
    "size as text": lambda m: {**m, "files": {"engine.bin": {"size": "1", "sha256": "0" * 64}}},
    "path traversal": lambda m: {**m, "files": {"../../etc/passwd": {"size": 1, "sha256": "0" * 64}}},
    "unknown status": lambda m: {**m, "status": "compiling"},
    "list, not object": lambda m: [m],
    "other key": lambda m: {**m, "key": OTHER},
    "no key": lambda m: {k: v for k, v in m.items() if k != "key"},
    "hmac not an object": lambda m: {**m, "hmac": "x"},
}


@pytest.mark.parametrize("damage", sorted(HOSTILE_META))
def test_valid_json_with_a_wrong_schema_is_a_miss(tmp_path, damage, caplog):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"component": "unet", "shapes": [[1, 2]]}, fill_with(b"x"))
    (cache.path_for(KEY) / "meta.json").write_text(json.dumps(HOSTILE_META[damage](_meta(cache))))
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        assert cache.read(KEY) is None
    assert "damaged" in caplog.text
    assert cache.entries() == [] and cache.verify()[0].state == "damaged"
    assert cli("--cache-dir", str(tmp_path), "cache", "ls").returncode == 0


@pytest.mark.parametrize("damage", ["deep", "huge", "binary", "empty", "folder"])
def test_unparseable_meta_is_a_miss(tmp_path, damage):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    meta = cache.path_for(KEY) / "meta.json"
    if damage == "deep":
        meta.write_text("[" * 200_000 + "]" * 200_000)
    elif damage == "huge":
        meta.write_text(json.dumps({**_meta(cache), "pad": "x" * (2 << 20)}))
    elif damage == "binary":
        meta.write_bytes(b"\xff\xfe" + os.urandom(100))
    elif damage == "empty":
        meta.write_bytes(b"")
    else:
        meta.unlink()
        meta.mkdir()
    assert cache.read(KEY) is None and cache.entries() == []
    assert cache.check(KEY)[1].kind == "damaged"


def test_a_fifo_for_meta_json_never_blocks(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    meta = cache.path_for(KEY) / "meta.json"
    meta.unlink()
    os.mkfifo(meta)
    results = {}
    worker = threading.Thread(target=lambda: results.update(read=cache.read(KEY), entries=cache.entries()),
                              daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert results == {"read": None, "entries": []}
    assert cli("--cache-dir", str(tmp_path), "cache", "ls", timeout=60).returncode == 0
    assert cli("--cache-dir", str(tmp_path), "cache", "verify", timeout=60).returncode == 1


@pytest.mark.parametrize("damage", ["truncate", "zero", "garbage", "delete", "fifo", "folder"])
def test_damaged_artifacts_are_a_miss_and_get_rebuilt(tmp_path, damage):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"0123456789" * 10))
    artifact = cache.path_for(KEY) / "engine.bin"
    if damage in ("delete", "fifo", "folder"):
        artifact.unlink()
        {"delete": lambda: None, "fifo": lambda: os.mkfifo(artifact), "folder": artifact.mkdir}[damage]()
    else:
        artifact.write_bytes({"truncate": b"0123", "zero": b"", "garbage": os.urandom(100)}[damage])
    assert cache.read(KEY) is None
    cache.write(KEY, {}, fill_with(b"rebuilt"))  # what the runtime does next
    assert (cache.read(KEY).path / "engine.bin").read_bytes() == b"rebuilt"


def test_missing_or_blocked_cache_folders(tmp_path):
    assert EngineCache(tmp_path / "nowhere").read(KEY) is None
    assert EngineCache(tmp_path / "nowhere").entries() == []
    assert EngineCache(tmp_path / "nowhere").clear() == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = EngineCache(blocker / "cache")
    assert cache.read(KEY) is None and cache.entries() == []
    for action in (cache.verify, lambda: cache.write(KEY, {}, fill_with(b"x"))):
        with pytest.raises(CacheError, match="cache folder"):
            action()


def test_a_full_disk_publishes_nothing(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"generation": 1}, fill_with(b"first"))

    def fill(folder):
        (folder / "engine.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError, match="No space left"):
        cache.write(KEY, {"generation": 2}, fill)
    assert cache.read(KEY).meta["generation"] == 1 and os.listdir(tmp_path / ".staging") == []


def test_a_backend_that_writes_a_symlink_publishes_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def fill(folder):
        (folder / "engine.bin").symlink_to("/etc/hostname")

    with pytest.raises(CacheError, match="not a regular file"):
        cache.write(KEY, {}, fill)
    assert cache.read(KEY) is None and os.listdir(tmp_path / ".staging") == []
