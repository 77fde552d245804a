"""The on-disk engine store: one folder per key, written atomically, locked per key, capped in size.

Layout under the cache root::

    <key>/meta.json         readable description: status (ready | failed), component, signature, ...
    <key>/<artifact files>  whatever the backend wrote; sizes and sha256 recorded in meta.json
    .locks/<key>.lock       held while a process compiles that key
    .staging/               where entries are assembled before one rename publishes them

A reader sees either no folder or a complete one: the folder is assembled in ``.staging`` and renamed
into place. An entry whose files are missing, short or fail their checksum reads as a miss, never as an
error. Every write failure (read-only folder, full disk) raises ``CacheError`` after cleaning up, so the
caller can go on with the artifact in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CacheError

__all__ = ["EngineCache", "CacheEntry", "META_FILE", "READY", "FAILED"]

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
READY = "ready"
FAILED = "failed"
_STAGING = ".staging"
_LOCKS = ".locks"
_STALE_STAGING_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def status(self) -> str:
        return self.meta.get("status", "")

    @property
    def size(self) -> int:
        return sum(f.get("size", 0) for f in self.meta.get("files", {}).values())

    @property
    def last_used(self) -> float:
        try:
            return (self.path / META_FILE).stat().st_mtime
        except OSError:
            return 0.0


class EngineCache:
    """Engine folders under ``root``. Safe for several threads and processes at once."""

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None, verify_checksum: bool = True):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.verify_checksum = verify_checksum

    def __repr__(self) -> str:
        return f"EngineCache({str(self.root)!r})"

    # ------------------------------------------------------------------------------------------ reading
    def path_for(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def read(self, key: str) -> CacheEntry | None:
        """The entry for ``key``, or None when absent or unreadable. Ready entries are verified."""
        path = self.path_for(key)
        meta = _read_meta(path)
        if meta is None:
            return None
        entry = CacheEntry(key, path, meta)
        if entry.status == READY and not self._intact(entry):
            return None
        if entry.status not in (READY, FAILED):
            logger.warning("cache entry %s has unknown status %r; treating it as a miss", path, entry.status)
            return None
        return entry

    def touch(self, entry: CacheEntry) -> None:
        """Mark ``entry`` as used now (for least-recently-used eviction); a read-only cache is fine."""
        try:
            os.utime(entry.path / META_FILE)
        except OSError:
            pass

    def entries(self) -> list[CacheEntry]:
        """Every readable entry, ready or failed, without verifying checksums."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            if child.name.startswith(".") or not child.is_dir():
                continue
            meta = _read_meta(child)
            if meta is not None:
                found.append(CacheEntry(child.name, child, meta))
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def _intact(self, entry: CacheEntry) -> bool:
        files = entry.meta.get("files")
        if not isinstance(files, dict) or not files:
            logger.warning("cache entry %s lists no artifact files; treating it as a miss", entry.path)
            return False
        for name, info in files.items():
            file = entry.path / name
            try:
                size = file.stat().st_size
            except OSError:
                logger.warning("cache entry %s is missing %s; it will be rebuilt", entry.path, name)
                return False
            if size != info.get("size"):
                logger.warning(
                    "cache artifact %s has %d bytes, expected %s (truncated?); it will be rebuilt",
                    file, size, info.get("size"),
                )
                return False
            if self.verify_checksum and _sha256(file) != info.get("sha256"):
                logger.warning("cache artifact %s fails its checksum; it will be rebuilt", file)
                return False
        return True

    # ------------------------------------------------------------------------------------------ writing
    @contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        """Hold the per-key lock (across processes) for the duration of the block.

        Raises ``CacheError`` when the lock cannot be created (read-only cache) or is still held by
        another process after ``timeout`` seconds. The lock is released if the holder dies.
        """
        import filelock

        lock_path = self.root / _LOCKS / f"{_check_key(key)}.lock"
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = filelock.FileLock(str(lock_path), timeout=timeout)
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                if timeout <= 0:
                    raise
                logger.info("another process is building cache entry %s; waiting up to %.0f s for it",
                            key[:12], timeout)
                lock.acquire()
        except filelock.Timeout as err:
            raise CacheError(
                f"another process has been building this engine for over {timeout:.0f} s",
                path=lock_path,
                hint="raise lock_timeout_s or remove the lock file if no other process runs",
            ) from err
        except OSError as err:
            raise CacheError(f"cannot create lock file: {err.strerror or err}", path=lock_path) from err
        try:
            yield
        finally:
            lock.release()

    def write(self, key: str, meta: dict[str, Any], fill: Callable[[Path], None]) -> CacheEntry:
        """Publish a ready entry: ``fill(folder)`` writes the artifact files, then one rename.

        On any failure nothing is published, the staging folder is removed and ``CacheError`` raised.
        """
        def stage(folder: Path) -> None:
            fill(folder)
            files = {}
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    rel = file.relative_to(folder).as_posix()
                    files[rel] = {"size": file.stat().st_size, "sha256": _sha256(file)}
            if not files:
                raise CacheError("the backend wrote no artifact files", path=folder)
            _write_meta(folder, {**meta, "status": READY, "files": files})

        entry = self._publish(key, stage)
        self.evict(keep=key)
        return entry

    def write_failure(self, key: str, meta: dict[str, Any], error: str) -> CacheEntry:
        """Remember that ``key`` failed, so later processes run it eagerly instead of rebuilding."""
        return self._publish(key, lambda folder: _write_meta(folder, {**meta, "status": FAILED, "error": error}))

    def _publish(self, key: str, stage: Callable[[Path], None]) -> CacheEntry:
        final = self.path_for(key)
        staging_root = self.root / _STAGING
        folder = staging_root / f"{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir(parents=True)
            stage(folder)
            if final.exists():
                trash = staging_root / f"{key}.old.{uuid.uuid4().hex[:8]}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(folder, final)
        except CacheError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise CacheError(f"cannot write cache entry: {err.strerror or err}", path=final) from err
        except Exception as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise CacheError(f"cannot write cache entry: {type(err).__name__}: {err}", path=final) from err
        return CacheEntry(key, final, _read_meta(final) or {})

    # ------------------------------------------------------------------------------------------ removing
    def remove(self, key: str) -> bool:
        path = self.path_for(key)
        if not path.exists():
            return False
        trash = self.root / _STAGING / f"{key}.rm.{uuid.uuid4().hex[:8]}"
        try:
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, trash)
        except OSError as err:
            raise CacheError(f"cannot remove cache entry: {err.strerror or err}", path=path) from err
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def clear(self, status: str | None = None) -> int:
        """Remove every entry (or only those with ``status``); returns how many were removed."""
        removed = sum(self.remove(e.key) for e in self.entries() if status is None or e.status == status)
        self._sweep_staging(max_age=0)
        return removed

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the cache fits ``max_bytes``."""
        self._sweep_staging(max_age=_STALE_STAGING_S)
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(e.size for e in entries)
        evicted = []
        for entry in reversed(entries):  # oldest first
            if total <= self.max_bytes:
                break
            if entry.key == keep:
                continue
            try:
                with self.lock(entry.key, timeout=0):
                    self.remove(entry.key)
            except CacheError:
                continue  # in use by another process, or read-only: leave it
            total -= entry.size
            evicted.append(entry.key)
            logger.info("evicted cache entry %s (%s, %d bytes) to stay under the size cap",
                        entry.key, entry.meta.get("component"), entry.size)
        return evicted

    def _sweep_staging(self, max_age: float) -> None:
        staging = self.root / _STAGING
        if not staging.is_dir():
            return
        now = time.time()
        for child in staging.iterdir():
            try:
                if now - child.stat().st_mtime >= max_age and not _owned_by_live_process(child.name):
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                continue


def _check_key(key: str) -> str:
    if not key or not all(c in "0123456789abcdef" for c in key):
        raise CacheError(f"invalid cache key {key!r}")
    return key


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        with open(folder / META_FILE, encoding="utf-8") as f:
            meta = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("cannot read %s (%s); treating the entry as a miss", folder / META_FILE, err)
        return None
    return meta if isinstance(meta, dict) else None


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    text = json.dumps({**meta, "written": time.time()}, indent=2, sort_keys=True, default=str)
    with open(folder / META_FILE, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _owned_by_live_process(name: str) -> bool:
    """Staging folders are named ``<key>.<pid>.<rand>``: keep those whose writer still runs."""
    parts = name.split(".")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
