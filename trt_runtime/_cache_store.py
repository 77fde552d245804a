"""Publishing an entry (stage it privately, describe and seal it, one rename into place) and sweeping
what unfinished publications left behind.

``publish`` creates ``.staging/<key>.<host>.<pid>.<rand>.new`` (0700 while it is filled, so nobody can
slip a file in), lets the caller fill it, refuses links and special files, sets the final modes, records
size, sha256 and (for ``.pt2`` programs) the records that run code, writes meta.json (signed with the
trust key when there is one) and renames the folder to its key with directory descriptors. An existing
entry is moved aside first, after waiting for its readers, except a ready one when ``keep_ready`` asks
to keep it (``write_failure`` never downgrades).

The host and pid in a staging name let ``sweep`` tell an abandoned folder from one in progress: one of
this host is abandoned when its writer's pid is gone (or after a day: pids are reused); one of another host
(shared storage) only when older than ``stale_after_s``. Staging folders count against the size cap
until swept. Lock files of keys without an entry go by the protocol in ``_cache_locks``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _cache_fs as fs
from . import _cache_locks as locks
from . import pt2check, trust
from ._cache_check import META_FILE, READY, CacheEntry, read_entry_meta
from .errors import CacheError

if TYPE_CHECKING:
    from .cache import EngineCache

__all__ = ["publish", "seal_files", "seal_meta", "staging_name", "host", "discard", "sweep", "STAGING_RE",
           "REPLACE_WAIT_S"]

logger = logging.getLogger(__name__)

STAGING_RE = re.compile(r"(?P<key>[0-9a-f]{32,64})\.(?P<host>[A-Za-z0-9-]{1,63})\.(?P<pid>\d{1,10})\.[0-9a-f]{8}"
                        r"\.(?P<kind>new|old|rm)")
_LEGACY_RE = re.compile(r"[0-9a-f]{32,64}\.(\d{1,10}|old|rm)\.[0-9a-f]{8}")
_TRASH_GRACE_S = 600.0
_LOCAL_STALE_S = 24 * 3600.0
REPLACE_WAIT_S = 30.0
"""A writer replacing an entry waits this long for readers that are loading it."""


@functools.lru_cache(maxsize=1)
def host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def staging_name(key: str, kind: str) -> str:
    return f"{key}.{host()}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def publish(cache: EngineCache, key: str, stage: Callable[[Path, int], dict[str, Any]], *,
            keep_ready: bool = False) -> CacheEntry:
    """Stage, seal and install entry ``key``; ``stage(folder, folder_fd)`` fills it and returns its meta.
    Returns the new entry (or, with ``keep_ready``, the ready one that was kept). Raises ``CacheError``
    after removing the staging folder."""
    path = cache.path_for(key)
    root_fd = cache.writable_root()
    staging_fd = folder_fd = None
    name = staging_name(key, "new")
    try:
        staging_fd = fs.subdir(root_fd, ".staging", cache.dir_mode, create=True)
        folder_fd = fs.make_dir(name, staging_fd, 0o700)
        meta = seal_meta(cache, key, stage(Path(cache.real_root()) / ".staging" / name, folder_fd))
        fs.write_new_file(META_FILE, folder_fd, json.dumps(meta, indent=2, sort_keys=True).encode(), cache.file_mode)
        os.fchmod(folder_fd, cache.dir_mode)
        kept = _install(cache, root_fd, staging_fd, name, key, keep_ready=keep_ready)
        if kept is not None:
            return kept
        st = os.fstat(folder_fd)
        return CacheEntry(key, path, meta, ident=(st.st_dev, st.st_ino))
    except CacheError:
        raise
    except OSError as err:
        raise CacheError(f"cannot write cache entry: {err.strerror or err}", path=path) from err
    except Exception as err:
        raise CacheError(f"cannot write cache entry: {type(err).__name__}: {err}", path=path) from err
    finally:
        if staging_fd is not None:
            with contextlib.suppress(OSError):
                fs.remove_tree(name, staging_fd)
            os.close(staging_fd)
        if folder_fd is not None:
            os.close(folder_fd)
        os.close(root_fd)


def seal_files(cache: EngineCache, dir_fd: int, folder: Path, prefix: str = "", *,
               optional: frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Set the cache's modes on what a backend wrote and describe each file (size, sha256, pt2 records,
    ``optional`` for those named in ``optional``). Refuses links and special files: an entry holds
    nothing but regular files and folders."""
    files: dict[str, dict[str, Any]] = {}
    with os.scandir(dir_fd) as it:
        items = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
    for name, st in items:
        rel = prefix + name
        if stat.S_ISDIR(st.st_mode):
            sub = fs.open_dir(name, dir_fd)
            try:
                os.fchmod(sub, cache.dir_mode)
                files.update(seal_files(cache, sub, folder, rel + "/", optional=optional))
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and rel != META_FILE:
            fd = fs.open_file(name, dir_fd)
            try:
                os.fchmod(fd, cache.file_mode)
                info: dict[str, Any] = {"size": os.fstat(fd).st_size, "sha256": fs.sha256_fd(fd)}
            finally:
                os.close(fd)
            if rel.endswith(".pt2"):
                info["pt2_unsafe"] = pt2check.unsafe_records(folder / rel)
            if rel in optional:
                info["optional"] = True
            files[rel] = info
        else:
            raise CacheError(f"the backend wrote {rel}, which is not a regular file or folder; refusing to "
                             "publish it", path=folder)
    return files


def seal_meta(cache: EngineCache, key: str, meta: dict[str, Any]) -> dict[str, Any]:
    """meta as it will be read back (JSON round trip), with key, time and, given a trust key, ``hmac``."""
    meta = json.loads(json.dumps({**meta, "key": key, "written": time.time()}, default=str))
    meta.pop(trust.MAC_FIELD, None)
    if cache.trust_key is not None:
        meta[trust.MAC_FIELD] = cache.trust_key.sign(meta)
    return meta


def _install(cache: EngineCache, root_fd: int, staging_fd: int, name: str, key: str, *,
             keep_ready: bool) -> CacheEntry | None:
    """Rename staged folder ``name`` to ``key``. An existing entry is moved aside first (after waiting
    for its readers), except a ready one when ``keep_ready``: that is returned and ours dropped."""
    for _ in range(4):
        try:
            os.rename(name, key, src_dir_fd=staging_fd, dst_dir_fd=root_fd)
            return None
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise
        try:
            st = os.stat(key, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(key, dir_fd=root_fd)  # a link or file where the entry belongs
            continue
        if keep_ready and (ready := _ready(root_fd, key, key, cache)) is not None:
            return ready
        trash = staging_name(key, "old")
        locks_fd = fs.subdir(root_fd, ".locks", cache.dir_mode, create=True)
        try:
            try:
                held = locks.acquire(locks_fd, f"{key}.read", shared=False, timeout=REPLACE_WAIT_S)
            except OSError as err:
                logger.debug("replacing %s while it may be read: %s", key[:12], err)
                held = None
            try:
                os.rename(key, trash, src_dir_fd=root_fd, dst_dir_fd=staging_fd)
            except FileNotFoundError:
                continue
            finally:
                locks.release(held)
        finally:
            os.close(locks_fd)
        if keep_ready and (ready := _ready(staging_fd, trash, key, cache)) is not None:
            try:  # a ready entry was published between our look and our move: put it back
                os.rename(trash, key, src_dir_fd=staging_fd, dst_dir_fd=root_fd)
                return ready
            except OSError:
                pass
        discard(trash, staging_fd)
    raise CacheError("another process kept replacing this entry while it was written", path=cache.path_for(key))


def discard(name: str, staging_fd: int) -> None:
    """Delete a folder moved aside; one we cannot delete (another user's files) is left to the sweeps."""
    try:
        fs.remove_tree(name, staging_fd)
    except OSError as err:
        logger.debug("leaving %s in .staging: %s", name, err)


def _ready(parent_fd: int, name: str, key: str, cache: EngineCache) -> CacheEntry | None:
    try:
        fd = fs.open_dir(name, parent_fd)
    except OSError:
        return None
    try:
        meta, _, _ = read_entry_meta(fd, key)
    finally:
        os.close(fd)
    return CacheEntry(key, cache.path_for(key), meta) if meta and meta.get("status") == READY else None


# ------------------------------------------------------------------------------------------------ sweeps
def sweep(cache: EngineCache, root_fd: int, *, locks_too: bool = True) -> None:
    """Delete abandoned staging folders and (``locks_too``) lock files of keys without an entry."""
    _sweep_staging(cache, root_fd)
    if locks_too:
        _sweep_locks(root_fd)


def _unlinked_if_link(root_fd: int, name: str) -> bool:
    try:
        st = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True
    if stat.S_ISDIR(st.st_mode):
        return False
    os.unlink(name, dir_fd=root_fd)  # a link (or file) where our folder belongs: remove it, never follow
    return True


def _sweep_staging(cache: EngineCache, root_fd: int) -> None:
    if _unlinked_if_link(root_fd, ".staging"):
        return
    staging_fd = fs.open_dir(".staging", root_fd)
    try:
        now = time.time()
        for name in os.listdir(staging_fd):
            try:
                st = os.stat(name, dir_fd=staging_fd, follow_symlinks=False)
                if _abandoned(name, st, now, cache.stale_after_s):
                    logger.debug("sweeping abandoned staging folder %s", name)
                    fs.remove_tree(name, staging_fd)
            except OSError as err:
                logger.debug("cannot sweep %s: %s", name, err)
    finally:
        os.close(staging_fd)


def _abandoned(name: str, st: os.stat_result, now: float, stale_after_s: float) -> bool:
    age = now - st.st_mtime
    m = STAGING_RE.fullmatch(name)
    if m is None:
        return bool(_LEGACY_RE.fullmatch(name)) and age > stale_after_s  # not ours: never
    if m["host"] != host():
        return age > stale_after_s  # another host's pid means nothing here: judge by age only
    alive = _pid_alive(int(m["pid"]))
    if m["kind"] != "new":  # trash: its creator deletes it right away
        return not alive or age > _TRASH_GRACE_S
    return not alive or age > _LOCAL_STALE_S


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _sweep_locks(root_fd: int) -> None:
    if _unlinked_if_link(root_fd, ".locks"):
        return
    locks_fd = fs.open_dir(".locks", root_fd)
    try:
        for name in os.listdir(locks_fd):
            key, _, kind = name.rpartition(".")
            if kind not in ("lock", "read") or not fs.is_key(key):
                continue
            if _exists(root_fd, key):
                continue
            locks.remove_lock_file(locks_fd, name)
    finally:
        os.close(locks_fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
