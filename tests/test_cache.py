"""The on-disk store: atomic, verified, capped, and harmless when the disk misbehaves."""

from __future__ import annotations

import errno
import json
import os

import pytest

from trt_runtime import CacheError
from trt_runtime.cache import FAILED, READY, EngineCache

KEY = "ab" * 20
OTHER = "cd" * 20


def fill_with(data: bytes):
    def fill(folder):
        (folder / "engine.bin").write_bytes(data)

    return fill


def test_write_then_read_verifies_files(tmp_path):
    cache = EngineCache(tmp_path)
    entry = cache.write(KEY, {"component": "unet"}, fill_with(b"x" * 100))
    assert entry.status == READY and entry.size == 100
    read = cache.read(KEY)
    assert read.meta["component"] == "unet"
    assert read.meta["files"]["engine.bin"]["size"] == 100
    assert cache.read(OTHER) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_entries_read_as_a_miss(tmp_path, damage, caplog):
    cache = EngineCache(tmp_path)
    entry = cache.write(KEY, {}, fill_with(b"0123456789" * 10))
    artifact = entry.path / "engine.bin"
    if damage == "truncate":
        artifact.write_bytes(b"0123")
    elif damage == "flip":
        artifact.write_bytes(b"9" + artifact.read_bytes()[1:])
    elif damage == "delete":
        artifact.unlink()
    else:
        (entry.path / "meta.json").write_text("{not json")
    assert cache.read(KEY) is None
    assert caplog.records, "a damaged entry should be reported, not silently skipped"


def test_failures_are_recorded_and_replaced_by_a_later_success(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write_failure(KEY, {"component": "vae"}, "RuntimeError: boom")
    entry = cache.read(KEY)
    assert entry.status == FAILED and entry.meta["error"] == "RuntimeError: boom"
    cache.write(KEY, {}, fill_with(b"ok"))
    assert cache.read(KEY).status == READY


def test_failed_fill_publishes_nothing_and_cleans_up(tmp_path):
    cache = EngineCache(tmp_path)

    def fill(folder):
        (folder / "engine.bin").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CacheError, match="No space left") as info:
        cache.write(KEY, {}, fill)
    assert isinstance(info.value, OSError) and KEY in info.value.path
    assert cache.read(KEY) is None
    assert not any((tmp_path / ".staging").iterdir())


def test_unwritable_root_raises_cache_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    cache = EngineCache(blocker / "cache")
    with pytest.raises(CacheError):
        cache.write(KEY, {}, fill_with(b"x"))
    with pytest.raises(CacheError):
        with cache.lock(KEY, timeout=1):
            pass
    assert cache.read(KEY) is None and cache.entries() == []


def test_an_existing_entry_survives_a_failed_overwrite(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"generation": 1}, fill_with(b"first"))

    def broken(folder):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(CacheError):
        cache.write(KEY, {"generation": 2}, broken)
    assert cache.read(KEY).meta["generation"] == 1


def test_lru_eviction_keeps_newest_and_just_written(tmp_path):
    cache = EngineCache(tmp_path, max_bytes=250)
    keys = [f"{i:02x}" * 20 for i in range(4)]
    for age, key in enumerate(keys):
        cache.write(key, {}, fill_with(b"x" * 100))
        os.utime(cache.path_for(key) / "meta.json", (1000 + age, 1000 + age))
    # writing the fourth evicted the oldest entries down to the cap
    remaining = {e.key for e in cache.entries()}
    assert keys[-1] in remaining and keys[0] not in remaining
    assert cache.total_bytes() <= 250


def test_entry_in_use_by_another_lock_is_not_evicted(tmp_path):
    cache = EngineCache(tmp_path, max_bytes=150)
    cache.write(KEY, {}, fill_with(b"x" * 100))
    os.utime(cache.path_for(KEY) / "meta.json", (1000, 1000))
    with cache.lock(KEY, timeout=1):
        cache.write(OTHER, {}, fill_with(b"y" * 100))
        assert cache.read(KEY) is not None  # locked: skipped, even though over the cap


def test_lock_times_out_with_cache_error(tmp_path):
    import filelock

    cache = EngineCache(tmp_path)
    (tmp_path / ".locks").mkdir()
    holder = filelock.FileLock(str(tmp_path / ".locks" / f"{KEY}.lock"))
    holder.acquire()
    try:
        with pytest.raises(CacheError, match="another process"):
            with cache.lock(KEY, timeout=0.2):
                pass
    finally:
        holder.release()


def test_clear_by_status_and_invalid_keys(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    cache.write_failure(OTHER, {}, "boom")
    assert cache.clear(status=FAILED) == 1
    assert [e.key for e in cache.entries()] == [KEY]
    assert cache.clear() == 1 and cache.entries() == []
    with pytest.raises(CacheError):
        cache.read("../../etc")


def test_meta_json_is_readable(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"component": "unet", "shapes": [[2, 4, 64, 64]]}, fill_with(b"x"))
    meta = json.loads((tmp_path / KEY / "meta.json").read_text())
    assert meta["status"] == "ready" and meta["shapes"] == [[2, 4, 64, 64]] and "written" in meta


# ------------------------------------------------------------------------------------------------ trust era
from trt_runtime.cache import MARKER  # noqa: E402
from trt_runtime.errors import ReadOnlyCacheError  # noqa: E402

from .faults.helpers import isolate_trust  # noqa: E402


@pytest.fixture(autouse=True)
def _hermetic_trust(monkeypatch, tmp_path):
    yield from isolate_trust(monkeypatch, tmp_path)


@pytest.mark.parametrize("sharing, dir_mode, file_mode", [("private", 0o700, 0o600), ("group", 0o2770, 0o640)])
def test_folders_and_files_get_their_mode_whatever_the_umask(tmp_path, sharing, dir_mode, file_mode):
    old = os.umask(0)
    try:
        cache = EngineCache(tmp_path / "cache", sharing=sharing)
        cache.write(KEY, {}, fill_with(b"x"))
        with cache.lock(OTHER, timeout=1):
            pass
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o7777  # noqa: E731
    root = tmp_path / "cache"
    assert mode(root) == dir_mode and mode(root / ".staging") == dir_mode and mode(root / ".locks") == dir_mode
    assert mode(root / KEY) == dir_mode
    assert mode(root / KEY / "engine.bin") == file_mode and mode(root / KEY / "meta.json") == file_mode
    assert mode(root / MARKER) == file_mode
    assert mode(root / ".locks" / f"{OTHER}.lock") == file_mode


def test_write_failure_never_downgrades_a_ready_entry(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"component": "unet"}, fill_with(b"engine"))
    kept = cache.write_failure(KEY, {"component": "unet"}, "RuntimeError: one process could not use it")
    assert kept.status == READY and cache.read(KEY).status == READY
    cache.write_failure(KEY, {}, "deterministic", replace_ready=True)
    assert cache.read(KEY).status == FAILED


def test_read_only_cache_writes_nothing_and_takes_no_lock(tmp_path, monkeypatch):
    writer = EngineCache(tmp_path)
    writer.write(KEY, {}, fill_with(b"x"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    cache = EngineCache(tmp_path, read_only=True, max_bytes=1)
    assert not cache.writable and cache.read(KEY) is not None
    with cache.lock(OTHER, timeout=0):
        pass
    with cache.loading(cache.read(KEY)) as folder:
        assert (folder / "engine.bin").read_bytes() == b"x"
    with pytest.raises(ReadOnlyCacheError):
        cache.write(OTHER, {}, fill_with(b"y"))
    with pytest.raises(ReadOnlyCacheError):
        cache.write_failure(OTHER, {}, "boom")
    assert cache.evict() == [] and cache.read(OTHER) is None
    cache.touch(cache.read(KEY))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_read_only_mount_is_detected(tmp_path, monkeypatch):
    from trt_runtime import _cache_fs

    monkeypatch.setattr(_cache_fs, "read_only_fs", lambda path: True)
    cache = EngineCache(tmp_path / "cache")
    assert cache.read_only and not cache.writable
    with pytest.raises(ReadOnlyCacheError):
        cache.write(KEY, {}, fill_with(b"x"))
    assert not (tmp_path / "cache").exists()


def test_remove_deletes_the_entry_and_its_lock_files(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    with cache.lock(KEY, timeout=1):
        pass
    with cache.loading(cache.read(KEY)):
        pass
    assert sorted(os.listdir(tmp_path / ".locks")) == [f"{KEY}.lock", f"{KEY}.read"]
    assert cache.remove(KEY) and not cache.remove(KEY)
    assert os.listdir(tmp_path / ".locks") == [] and os.listdir(tmp_path / ".staging") == []


def test_clear_removes_orphan_lock_files_but_not_held_ones(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    for key in (OTHER, "ef" * 20):
        with cache.lock(key, timeout=1):
            pass
    with cache.lock("12" * 20, timeout=1):
        cache.clear()
        assert os.listdir(tmp_path / ".locks") == ["12" * 20 + ".lock"]


def test_entries_skip_folders_the_cache_did_not_write(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x"))
    (tmp_path / "not-a-key").mkdir()
    (tmp_path / OTHER).mkdir()  # a key-named folder without meta.json
    assert [e.key for e in cache.entries()] == [KEY]


def test_total_bytes_counts_unfinished_staging(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {}, fill_with(b"x" * 100))
    dead = tmp_path / ".staging" / f"{OTHER}.otherhost.1.00000000.new"
    dead.mkdir()
    (dead / "engine.bin").write_bytes(b"y" * 1000)
    assert cache.total_bytes() == 1100


def test_an_entry_we_cannot_delete_is_still_replaced(tmp_path, monkeypatch):
    """A non-root user cannot delete files inside another user's planted entry: it is moved aside and
    left in .staging, and our entry is published all the same."""
    from trt_runtime import _cache_fs

    cache = EngineCache(tmp_path)
    cache.write(KEY, {"generation": 1}, fill_with(b"planted"))
    real = _cache_fs.remove_tree

    def refuse_trash(name, dir_fd):
        if name.endswith((".old", ".rm")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(name, dir_fd)

    monkeypatch.setattr(_cache_fs, "remove_tree", refuse_trash)
    cache.write(KEY, {"generation": 2}, fill_with(b"ours"))
    assert cache.read(KEY).meta["generation"] == 2
    assert cache.remove(KEY) and cache.read(KEY) is None


def _fill_two(folder):
    (folder / "engine.bin").write_bytes(b"0123456789" * 10)
    (folder / "speedup.bin").write_bytes(b"kernels" * 10)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_optional_file_keeps_the_entry(tmp_path, damage, caplog):
    """An optional file (TensorRT-RTX's runtime cache) only makes a load faster: without it the entry loads."""
    cache = EngineCache(tmp_path)
    entry = cache.write(KEY, {}, _fill_two, optional=frozenset({"speedup.bin"}))
    assert entry.meta["files"]["speedup.bin"]["optional"] is True
    assert "optional" not in entry.meta["files"]["engine.bin"]
    extra = entry.path / "speedup.bin"
    os.chmod(extra, 0o600)
    if damage == "truncate":
        extra.write_bytes(b"kern")
    elif damage == "flip":
        extra.write_bytes(b"K" + extra.read_bytes()[1:])
    else:
        extra.unlink()
    with caplog.at_level("DEBUG", logger="trt_runtime"):
        read = cache.read(KEY)
    assert read is not None and read.status == READY
    assert "optional file speedup.bin is not used" in caplog.text
    assert not any(r.levelname == "WARNING" for r in caplog.records)
    # the same damage to a file that is not optional loses the entry
    os.chmod(entry.path / "engine.bin", 0o600)
    (entry.path / "engine.bin").unlink()
    assert cache.read(KEY) is None


def test_optional_must_be_a_boolean_in_meta(tmp_path):
    cache = EngineCache(tmp_path)
    entry = cache.write(KEY, {}, _fill_two, optional=frozenset({"speedup.bin"}))
    meta_file = entry.path / "meta.json"
    os.chmod(meta_file, 0o600)
    meta = json.loads(meta_file.read_text())
    meta["files"]["speedup.bin"]["optional"] = "yes"
    meta_file.write_text(json.dumps(meta))
    assert cache.read(KEY) is None
