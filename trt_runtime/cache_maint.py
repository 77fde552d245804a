"""Removing from the engine cache: publish-over, remove, clear, evict, prune, verify, sweeps.

Rules that keep deletion inside the cache and away from readers:

- Only a folder carrying the marker file (``cache.MARKER``) is treated as a cache: ``clear``, ``evict``,
  ``prune`` and the sweeps raise ``CacheError`` on any other folder and delete nothing.
- Only names the cache writes are deleted: a folder whose name is a key and whose meta.json (read
  safely) names that same key, staging folders named ``<key>.<host>.<pid>.<rand>.<kind>``, lock files
  ``<key>.lock`` / ``<key>.read``. A link in any of those places is unlinked as a link, never followed.
- An entry is removed by renaming it into ``.staging`` while holding its read lock (and build lock)
  exclusively, then deleting it there. Eviction and pruning try those locks without waiting, so an
  entry that a process is loading (``EngineCache.loading``) or building is skipped, never deleted.
- Unfinished staging folders count against the size cap. One of this host is abandoned when its
  writer's pid is gone; one of another host (shared storage) only when older than
  ``stale_after_s`` (pids of other hosts mean nothing here).
- Lock files go with their entry and, when orphaned, in ``clear``/``prune``, by the protocol in
  ``_cache_locks`` that keeps mutual exclusion intact.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import stat
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from . import _cache_fs as fs
from . import _cache_locks as locks
from ._cache_check import FAILED, META_LIMIT, CacheEntry, check_programs
from ._cache_store import discard, staging_name, sweep
from .errors import CacheError, ReadOnlyCacheError, UntrustedEntryError

if TYPE_CHECKING:
    from .cache import EngineCache

__all__ = ["Finding", "remove_entry", "clear", "evict", "prune", "verify"]

logger = logging.getLogger(__name__)

_CAP: Any = object()


class Finding(NamedTuple):
    key: str
    state: str
    """``ok``, ``damaged`` or ``untrusted``."""
    reason: str = ""
    trust: str = ""


def _as_cache_error(func):
    """Maintenance raises ``CacheError`` (with the path) for file-system failures, never a bare OSError."""
    @functools.wraps(func)
    def run(cache: EngineCache, *args: Any, **kwargs: Any):
        try:
            return func(cache, *args, **kwargs)
        except CacheError:
            raise
        except OSError as err:
            raise CacheError(f"{func.__name__} failed: {err.strerror or err}", path=err.filename or cache.root) from err

    return run


# ------------------------------------------------------------------------------------------------ removing
class locks_folder:  # noqa: N801 - a context manager used like a function
    """The ``.locks`` folder of an open cache folder (created, links replaced)."""

    def __init__(self, cache: EngineCache, root_fd: int) -> None:
        self.fd = fs.subdir(root_fd, ".locks", cache.dir_mode, create=True)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)


def _hold(locks_fd: int, key: str, *, wait: float, build: bool) -> list[int]:
    """The entry's read lock (and build lock) exclusively; ``LockTimeout`` when in use."""
    held = [locks.acquire(locks_fd, f"{key}.read", shared=False, timeout=wait)]
    if build:
        try:
            held.append(locks.acquire(locks_fd, f"{key}.lock", shared=False, timeout=0))
        except OSError:
            locks.release(held[0])
            raise
    return held


@_as_cache_error
def remove_entry(cache: EngineCache, key: str, *, wait: float) -> bool:
    if not cache.writable:
        raise ReadOnlyCacheError("the engine cache is read-only", path=cache.root)
    root_fd = cache.open_root(create=False)
    if root_fd is None:
        return False
    try:
        return _remove_at(cache, root_fd, key, wait)
    finally:
        os.close(root_fd)


def _remove_at(cache: EngineCache, root_fd: int, key: str, wait: float) -> bool:
    try:
        st = os.stat(key, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(key, dir_fd=root_fd)
        return True
    staging_fd = fs.subdir(root_fd, ".staging", cache.dir_mode, create=True)
    trash = staging_name(key, "rm")
    try:
        with locks_folder(cache, root_fd) as locks_fd:
            try:
                held = _hold(locks_fd, key, wait=wait, build=True)
            except locks.LockTimeout as err:
                raise CacheError("the entry is being loaded or built by another process",
                                 path=cache.path_for(key)) from err
            try:
                os.rename(key, trash, src_dir_fd=root_fd, dst_dir_fd=staging_fd)
            except FileNotFoundError:
                return False
            else:
                for suffix in (".read", ".lock"):  # held by us: safe to unlink (see _cache_locks)
                    try:
                        os.unlink(f"{key}{suffix}", dir_fd=locks_fd)
                    except OSError:
                        pass
            finally:
                for fd in held:
                    locks.release(fd)
        discard(trash, staging_fd)
        return True
    except CacheError:
        raise
    except OSError as err:
        raise CacheError(f"cannot remove cache entry: {err.strerror or err}", path=cache.path_for(key)) from err
    finally:
        os.close(staging_fd)


def require_marker(cache: EngineCache, root_fd: int) -> None:
    try:
        ok = stat.S_ISREG(os.stat(".trt_runtime_cache", dir_fd=root_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        ok = False
    if not ok:
        raise CacheError(
            "this folder does not look like a trt_runtime engine cache (it has no .trt_runtime_cache marker "
            "file); nothing was deleted", path=cache.root,
            hint="check --cache-dir / TRT_CACHE_DIR. A cache made by trt_runtime 0.1 gets the marker on its "
                 f"next write, or mark it yourself: touch {cache.root}/.trt_runtime_cache")


def _owned_meta(root_fd: int, name: str) -> dict | None:
    """meta.json of folder ``name`` if it is a JSON object naming ``name`` as its key (the proof that
    the cache wrote this folder; other fields may be damaged: a damaged entry must stay removable)."""
    try:
        fd = fs.open_dir(name, root_fd)
    except OSError:
        return None
    try:
        data, _ = fs.read_regular("meta.json", fd, META_LIMIT)
        meta = json.loads(data.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return meta if isinstance(meta, dict) and meta.get("key") == name else None


@_as_cache_error
def clear(cache: EngineCache, status: str | None) -> int:
    root_fd = cache.open_root(create=False)
    if root_fd is None:
        return 0
    try:
        require_marker(cache, root_fd)
        if not cache.writable:
            raise ReadOnlyCacheError("the engine cache is read-only; nothing was deleted", path=cache.root)
        removed = kept = 0
        for name in sorted(os.listdir(root_fd)):
            if not fs.is_key(name):
                continue
            st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                if status is None:
                    os.unlink(name, dir_fd=root_fd)  # a link where an entry belongs: the link goes
                continue
            meta = _owned_meta(root_fd, name) if stat.S_ISDIR(st.st_mode) else None
            if meta is None:
                logger.warning("leaving %s: its meta.json does not name it, so the cache did not write it",
                               cache.root / name)
                continue
            if status is not None and meta.get("status") != status:
                continue
            try:
                removed += _remove_at(cache, root_fd, name, wait=10.0)
            except CacheError as err:
                logger.debug("kept %s: %s", name[:12], err)
                kept += 1
        sweep(cache, root_fd)
        if kept:
            logger.warning("kept %d cache entries that other processes are loading or building", kept)
        return removed
    finally:
        os.close(root_fd)


@_as_cache_error
def evict(cache: EngineCache, keep: str | None) -> list[str]:
    if not cache.writable:
        return []
    root_fd = cache.open_root(create=False)
    if root_fd is None:
        return []
    try:
        require_marker(cache, root_fd)
        sweep(cache, root_fd, locks_too=False)
        if cache.max_bytes is None:
            return []
        return _shrink(cache, root_fd, cache.entries(), cache.max_bytes, keep)
    finally:
        os.close(root_fd)


def _shrink(cache: EngineCache, root_fd: int, candidates: list[CacheEntry], cap: int, keep: str | None,
            dry_run: bool = False) -> list[str]:
    total = cache.total_bytes()
    removed = []
    for entry in sorted(candidates, key=lambda e: e.last_used):  # oldest first
        if total <= cap:
            break
        if entry.key == keep:
            continue
        if not dry_run:
            try:
                if not _remove_at(cache, root_fd, entry.key, wait=0):
                    continue
            except CacheError as err:
                logger.debug("not evicting %s: %s", entry.key[:12], err)
                continue  # in use by another process: leave it
            logger.info("evicted cache entry %s (%s, %d bytes) to stay under the size cap",
                        entry.key, entry.meta.get("component"), entry.size)
        total -= entry.size
        removed.append(entry.key)
    return removed


@_as_cache_error
def prune(cache: EngineCache, *, max_bytes: int | None = _CAP, older_than_s: float | None = None,
          component: str | None = None, failed: bool = False, dry_run: bool = False) -> list[str]:
    """Remove entries; returns their keys (with ``dry_run``, those it would remove).

    ``failed`` and ``older_than_s`` (not used for that long) select entries to remove, combined (both:
    failed entries unused that long), within ``component`` when given. ``max_bytes`` then removes the
    least recently used (within ``component``) until the cache fits; by default the cache's own cap when
    no other criterion is given. Entries in use are skipped. Also sweeps abandoned staging folders and
    unused lock files. Safe while other processes read."""
    if max_bytes is _CAP:
        max_bytes = cache.max_bytes if not (failed or older_than_s is not None) else None
    root_fd = cache.open_root(create=False)
    if root_fd is None:
        return []
    try:
        require_marker(cache, root_fd)
        if not cache.writable and not dry_run:
            raise ReadOnlyCacheError("the engine cache is read-only; nothing was deleted", path=cache.root)
        entries = [e for e in cache.entries() if component is None or e.meta.get("component") == component]
        now, removed = time.time(), []
        if failed or older_than_s is not None:
            for entry in entries:
                if (failed and entry.status != FAILED) or (
                        older_than_s is not None and now - entry.last_used < older_than_s):
                    continue
                try:
                    if dry_run or _remove_at(cache, root_fd, entry.key, wait=0):
                        removed.append(entry.key)
                except CacheError as err:
                    logger.info("kept %s: %s", entry.key[:12], err)
        if max_bytes is not None:
            rest = [e for e in entries if e.key not in removed]
            removed += _shrink(cache, root_fd, rest, max_bytes, None, dry_run)
        if not dry_run:
            sweep(cache, root_fd)
        return removed
    finally:
        os.close(root_fd)


@_as_cache_error
def verify(cache: EngineCache, keys: list[str] | None) -> list[Finding]:
    """Check every entry (or ``keys``) fully: schema, key, trust/signature, sizes, sha256 (whatever
    ``verify_checksum`` says), ``.pt2`` records. Read-only and safe while other processes read or write."""
    root_fd = cache.open_root(create=False)
    if root_fd is None:
        return []
    try:
        names = keys if keys is not None else sorted(n for n in os.listdir(root_fd) if fs.is_key(n))
    finally:
        os.close(root_fd)
    findings = []
    for key in names:
        try:
            held = cache.read_lock(key, shared=True, wait=10.0) if cache.writable else None
        except CacheError:
            continue  # being removed right now: nothing left to verify
        try:
            entry, problem = cache.check(key, verify_checksum=True)
            if problem is not None:
                findings.append(Finding(key, problem.kind, problem.reason))
                continue
            if entry is None:
                findings.append(Finding(key, "damaged", "it does not exist"))
                continue
            try:
                if entry.in_place:
                    check_programs(entry, entry.path)
            except UntrustedEntryError as err:
                findings.append(Finding(key, "untrusted", err.message, entry.trust))
                continue
            findings.append(Finding(key, "ok", "", entry.trust))
        finally:
            locks.release(held)
    return findings
