"""The on-disk engine store: one folder per key, written atomically, locked per key, capped in size,
and loaded only when it can be trusted.

Layout under the cache root::

    .trt_runtime_cache      marker written when the cache creates the folder; deleting commands
                            (clear, evict, prune, staging sweeps) refuse a folder without it
    <key>/meta.json         status (ready | failed), key, component, signature, files with sizes and
                            sha256, and ``hmac`` when written with a trust key
    <key>/<artifact files>  whatever the backend wrote
    .locks/<key>.lock       held while a process builds that key
    .locks/<key>.read       shared while a process loads the entry, exclusive while one removes it
    .staging/<key>.<host>.<pid>.<rand>.<new|old|rm>
                            entries being assembled (one rename publishes them) or being deleted

A reader sees either no folder or a complete one. ``read`` returns an entry only when it is well formed
(schema, ``meta["key"]`` equal to its folder), trusted (see ``trust``: written by you into private
folders, or signed) and intact (sizes, sha256); anything else is a miss with one warning, never an
exception. ``loading`` then hands the verified files to a backend. Folders are created 0700 and files
0600 whatever the umask (``sharing="group"``: 2770 and 0640). Deleting never follows a link and only
touches what the cache wrote (``cache_maint``). Every write failure raises ``CacheError`` after
cleaning up, so the caller can go on with the artifact in memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _cache_fs as fs
from . import _cache_locks as locks
from . import pt2check, trust
from ._cache_check import FAILED, META_FILE, READY, CacheEntry, Problem, inspect_entry, read_entry_meta
from .errors import CacheError, ConfigurationError, ReadOnlyCacheError, UntrustedEntryError

__all__ = ["EngineCache", "CacheEntry", "Problem", "META_FILE", "MARKER", "READY", "FAILED"]

logger = logging.getLogger(__name__)

MARKER = ".trt_runtime_cache"
STAGING = ".staging"
LOCKS = ".locks"
_MARKER_TEXT = b'{"trt_runtime_cache": 1}\n'
_AUTO: Any = object()
_READER_WAIT_S = 10.0
"""A reader waits this long for a remover that holds an entry exclusively (removers are quick)."""
_REPLACE_WAIT_S = 30.0
"""A writer replacing an entry waits this long for readers that are loading it."""
_HINT_UNTRUSTED = ("if you trust it, give its writer and this process the same trust key "
                   "(TRT_RUNTIME_TRUST_KEY or trust_key_file) so entries are signed, or keep the cache in a "
                   "folder only you can write and rebuild; see README, Reliability and security")


class EngineCache:
    """Engine folders under ``root``. Safe for several threads and processes, and hosts, at once.

    ``sharing``: ``private`` or ``group`` (see ``RuntimeSettings.cache_sharing``). ``read_only``: never
    write, lock or evict (also on by itself on a read-only mount). ``trust_key``: a ``trust.TrustKey``,
    None for none, or by default the configured one (``trust_key_file``, ``$TRT_RUNTIME_TRUST_KEY``, the
    config dir). ``stale_after_s``: age after which another host's unfinished staging folder is swept.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None, verify_checksum: bool = True, *,
                 sharing: str = "private", read_only: bool = False, trust_key: Any = _AUTO,
                 trust_key_file: str | None = None, stale_after_s: float = 3600.0):
        if sharing not in ("private", "group"):
            raise ConfigurationError(f"sharing must be 'private' or 'group', not {sharing!r}")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.verify_checksum = verify_checksum
        self.sharing = sharing
        self.stale_after_s = stale_after_s
        self._read_only = read_only
        self._fs_read_only: bool | None = None
        self._trust_key = trust_key
        self._trust_key_file = trust_key_file

    @classmethod
    def from_settings(cls, settings) -> EngineCache:
        """The cache a ``RuntimeSettings`` describes (folder, cap, checksums, sharing, read-only, key)."""
        from .settings import resolve_cache_dir

        return cls(resolve_cache_dir(settings.cache_dir), settings.max_cache_bytes, settings.verify_checksum,
                   sharing=settings.cache_sharing, read_only=settings.cache_read_only,
                   trust_key_file=settings.trust_key_file)

    def __repr__(self) -> str:
        return f"EngineCache({str(self.root)!r})"

    # ------------------------------------------------------------------------------------------ properties
    @property
    def trust_key(self) -> trust.TrustKey | None:
        """The key that signs what we write and admits what others signed (loaded on first use; a
        configured but unusable key raises ``ConfigurationError``)."""
        if self._trust_key is _AUTO:
            self._trust_key = trust.load_trust_key(self._trust_key_file)
        return self._trust_key

    @property
    def read_only(self) -> bool:
        return self._read_only or self.read_only_mount

    @property
    def read_only_mount(self) -> bool:
        """Whether the cache lies on a read-only mount (checked once): then nobody can change an entry
        after it was checked, and signed entries load in place."""
        if self._fs_read_only is None:
            self._fs_read_only = fs.read_only_fs(self.root)
            if self._fs_read_only:
                logger.info("engine cache %s is on a read-only file system: reading only", self.root)
        return self._fs_read_only

    @property
    def writable(self) -> bool:
        """False in read-only mode: callers then neither lock, nor write, nor record failures."""
        return not self.read_only

    @property
    def dir_mode(self) -> int:
        return 0o2770 if self.sharing == "group" else 0o700

    @property
    def file_mode(self) -> int:
        return 0o640 if self.sharing == "group" else 0o600

    # ------------------------------------------------------------------------------------------ reading
    def path_for(self, key: str) -> Path:
        return self.root / _check_key(key)

    def read(self, key: str) -> CacheEntry | None:
        """The trusted, intact entry for ``key``, or None (absent, damaged or untrusted: one warning)."""
        entry, problem = self.check(key)
        if problem is not None:
            _report(self.path_for(key), key, problem)
        return entry

    def check(self, key: str, *, verify_checksum: bool | None = None) -> tuple[CacheEntry | None, Problem | None]:
        """``read`` without the warning: (entry, None), (None, None) when absent, or (None, problem)."""
        _check_key(key)
        verify = self.verify_checksum if verify_checksum is None else verify_checksum
        try:
            root_fd = self._open_root(create=False)
        except CacheError as err:
            return None, Problem("damaged", err.message)
        if root_fd is None:
            return None, None
        try:
            return inspect_entry(root_fd, self.root, key, trust_key=self.trust_key,
                                 root_reason=self._root_reason(root_fd), verify_checksum=verify,
                                 read_only_fs=self.read_only_mount)
        finally:
            os.close(root_fd)

    @contextmanager
    def loading(self, entry: CacheEntry) -> Iterator[Path]:
        """The folder to hand to ``backend.load`` for ``entry`` (from ``read``), for the block's duration.

        Holds the entry's shared read lock (eviction and removal wait or skip it), checks that the entry
        is still the folder ``read`` verified, and refuses a ``.pt2`` program with pickled or native
        records its writer did not declare. An entry trusted by signature on a writable file system is
        copied, checksum-verified, to a private temporary folder first, so nobody can swap its files
        between the check and the load. Raises ``CacheError`` (``UntrustedEntryError`` for a refused
        program): the caller treats it as a miss. The backend must have read everything it needs when
        the block ends."""
        held = self._read_lock(entry.key, shared=True, wait=_READER_WAIT_S)
        try:
            if entry.in_place:
                self._same_folder(entry)
                self._check_programs(entry, entry.path)
                yield entry.path
            else:
                with self._private_copy(entry) as folder:
                    self._check_programs(entry, folder)
                    yield folder
        finally:
            locks.release(held)

    def touch(self, entry: CacheEntry) -> None:
        """Mark ``entry`` as used now (for least-recently-used eviction); a read-only cache is fine."""
        if self.writable:
            with contextlib.suppress(OSError):
                os.utime(entry.path / META_FILE, follow_symlinks=False)

    def entries(self) -> list[CacheEntry]:
        """Every entry with a well-formed meta.json naming its folder, newest first. Neither trust nor
        checksums are checked (``trust`` is ""): this lists, it does not load."""
        try:
            root_fd = self._open_root(create=False)
        except CacheError:
            return []
        if root_fd is None:
            return []
        try:
            found = [e for name in os.listdir(root_fd) if fs.is_key(name) and (e := _listed(root_fd, self.root, name))]
        finally:
            os.close(root_fd)
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def total_bytes(self) -> int:
        """Bytes of all entries plus unfinished staging folders (they count against the cap)."""
        return sum(e.size for e in self.entries()) + self.staging_bytes()

    def staging_bytes(self) -> int:
        try:
            root_fd = self._open_root(create=False)
        except CacheError:
            return 0
        if root_fd is None:
            return 0
        try:
            return fs.tree_bytes(STAGING, root_fd)
        finally:
            os.close(root_fd)

    # ------------------------------------------------------------------------------------------ writing
    @contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[None]:
        """Hold the per-key build lock (across processes) for the duration of the block.

        Read-only caches take no lock (nothing will be written). Raises ``CacheError`` when the lock
        cannot be created or is still held by another process after ``timeout`` seconds; the lock is
        released if the holder dies."""
        _check_key(key)
        if not self.writable:
            yield
            return
        fd = None
        try:
            with self._locks_fd() as locks_fd:
                try:
                    fd = locks.acquire(locks_fd, f"{key}.lock", shared=False, timeout=0, mode=self.file_mode)
                except locks.LockTimeout:
                    if timeout <= 0:
                        raise
                    logger.info("another process is building cache entry %s; waiting up to %.0f s for it",
                                key[:12], timeout)
                    fd = locks.acquire(locks_fd, f"{key}.lock", shared=False, timeout=timeout, mode=self.file_mode)
        except locks.LockTimeout as err:
            raise CacheError(f"another process has been building this engine for over {timeout:.0f} s",
                             path=self.root / LOCKS / f"{key}.lock",
                             hint="raise lock_timeout_s; a lock is freed when its holder exits") from err
        except OSError as err:
            raise CacheError(f"cannot create lock file: {err.strerror or err}", path=self.root / LOCKS) from err
        try:
            yield
        finally:
            locks.release(fd)

    def write(self, key: str, meta: dict[str, Any], fill: Callable[[Path], None]) -> CacheEntry:
        """Publish a ready entry: ``fill(folder)`` writes the artifact files, then one rename.

        On any failure nothing is published, the staging folder is removed and ``CacheError`` raised
        (``ReadOnlyCacheError`` on a read-only cache). Signed when a trust key is configured."""
        def stage(folder: Path, folder_fd: int) -> dict[str, Any]:
            fill(folder)
            files = self._seal(folder_fd, folder)
            if not files:
                raise CacheError("the backend wrote no artifact files", path=folder)
            return {**meta, "status": READY, "files": files}

        entry = self._publish(key, stage)
        try:
            self.evict(keep=key)
        except CacheError as err:
            logger.debug("eviction after writing %s skipped: %s", key[:12], err)
        return entry

    def write_failure(self, key: str, meta: dict[str, Any], error: str, *, replace_ready: bool = False) -> CacheEntry:
        """Remember that building ``key`` failed deterministically, so later processes run it eagerly.

        Never downgrades: when a ready entry exists (built by another process, or by this one earlier)
        it is kept and returned, unless ``replace_ready``. Transient failures (out of memory, a full
        disk, an interrupted build) must not be written at all: the caller remembers them in memory."""
        def stage(folder: Path, folder_fd: int) -> dict[str, Any]:
            return {**{k: v for k, v in meta.items() if k != "files"}, "status": FAILED, "error": error}

        return self._publish(key, stage, keep_ready=not replace_ready)

    # ------------------------------------------------------------------------------------------ removing
    def remove(self, key: str, *, wait: float = _READER_WAIT_S) -> bool:
        """Delete entry ``key`` and its lock files; False when absent. Waits up to ``wait`` seconds for
        readers; raises ``CacheError`` when it is still being loaded or built by another process."""
        from .cache_maint import remove_entry

        return remove_entry(self, _check_key(key), wait=wait)

    def clear(self, status: str | None = None) -> int:
        """Remove every entry (or only those with ``status``), unfinished staging folders and unused
        lock files; returns how many entries were removed. Entries in use are kept."""
        from .cache_maint import clear

        return clear(self, status)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries (never one in use) until the cache fits ``max_bytes``."""
        from .cache_maint import evict

        return evict(self, keep)

    def prune(self, **criteria: Any) -> list[str]:
        """See ``cache_maint.prune``: by size cap, age, component, failed entries; returns removed keys."""
        from .cache_maint import prune

        return prune(self, **criteria)

    def verify(self, keys: list[str] | None = None) -> list:
        """See ``cache_maint.verify``: checksums, keys, signatures and programs of every entry."""
        from .cache_maint import verify

        return verify(self, keys)

    def export(self, dest: str | os.PathLike, keys: list[str] | None = None, **filters: Any):
        """See ``cache_archive.export_entries``."""
        from .cache_archive import export_entries

        return export_entries(self, dest, keys, **filters)

    def import_(self, source: str | os.PathLike, **options: Any):
        """See ``cache_archive.import_entries``."""
        from .cache_archive import import_entries

        return import_entries(self, source, **options)

    # ------------------------------------------------------------------------------------------ internals
    def real_root(self) -> str:
        return os.path.realpath(self.root)

    def _open_root(self, create: bool) -> int | None:
        """A descriptor of the cache folder; None when it does not exist and ``create`` is False."""
        real = self.real_root()
        try:
            return fs.open_dir(real, follow=True)
        except FileNotFoundError:
            if not create:
                return None
        except OSError as err:
            raise CacheError(f"cannot open the cache folder: {err.strerror or err}", path=self.root) from err
        try:
            os.makedirs(real, mode=0o700)
            fd = fs.open_dir(real)
            os.fchmod(fd, self.dir_mode)
            return fd
        except FileExistsError:
            return self._open_root(create=False)
        except OSError as err:
            raise CacheError(f"cannot create the cache folder: {err.strerror or err}", path=self.root) from err

    def writable_root(self) -> int:
        """The cache folder, created (with its marker) if needed. Raises ``ReadOnlyCacheError``/``CacheError``."""
        if not self.writable:
            raise ReadOnlyCacheError("the engine cache is read-only", path=self.root,
                                     hint="cache_read_only is set or the folder is on a read-only mount")
        fd = self._open_root(create=True)
        try:
            fs.write_new_file(MARKER, fd, _MARKER_TEXT, self.file_mode)
        except FileExistsError:
            pass
        except OSError as err:
            os.close(fd)
            raise CacheError(f"cannot write the cache marker: {err.strerror or err}", path=self.root) from err
        return fd

    def _root_reason(self, root_fd: int) -> str | None:
        """Why someone other than us (or root) could change what is in the cache folder, or None."""
        reason = trust.ancestors_reason(self.root)
        if reason:
            return reason
        opened, named = os.fstat(root_fd), os.stat(self.real_root(), follow_symlinks=False)
        if (opened.st_dev, opened.st_ino) != (named.st_dev, named.st_ino):
            return "the cache folder was replaced while it was being checked"
        return None

    @contextmanager
    def _locks_fd(self, root_fd: int | None = None) -> Iterator[int]:
        own = root_fd is None
        root_fd = self.writable_root() if own else root_fd
        try:
            fd = fs.subdir(root_fd, LOCKS, self.dir_mode, create=True)
        finally:
            if own:
                os.close(root_fd)
        try:
            yield fd
        finally:
            os.close(fd)

    def _read_lock(self, key: str, *, shared: bool, wait: float) -> int | None:
        """The entry's read lock, or None where locking is impossible (read-only cache, no permission):
        loading then goes on without it, as it did before locks existed."""
        if not self.writable:
            return None
        try:
            with self._locks_fd() as locks_fd:
                return locks.acquire(locks_fd, f"{key}.read", shared=shared, timeout=wait, mode=self.file_mode)
        except locks.LockTimeout as err:
            raise CacheError("the entry is being removed by another process", path=self.path_for(key)) from err
        except OSError as err:
            logger.debug("loading %s without a read lock: %s", key[:12], err)
            return None

    def _same_folder(self, entry: CacheEntry) -> None:
        try:
            st = os.stat(self.path_for(entry.key), follow_symlinks=False)
        except OSError as err:
            raise CacheError("the entry was removed after it was read", path=entry.path) from err
        if entry.ident is not None and (st.st_dev, st.st_ino) != entry.ident:
            raise CacheError("the entry was replaced after it was read; read it again", path=entry.path)

    @contextmanager
    def _private_copy(self, entry: CacheEntry) -> Iterator[Path]:
        from .cache_archive import copy_verified

        root_fd = self._open_root(create=False)
        if root_fd is None:
            raise CacheError("the cache folder disappeared", path=self.root)
        tmp = tempfile.mkdtemp(prefix="trt_runtime_load_")
        try:
            try:
                entry_fd = fs.open_dir(entry.key, root_fd)
            except OSError as err:
                raise CacheError("the entry was removed after it was read", path=entry.path) from err
            try:
                st = os.fstat(entry_fd)
                if entry.ident is not None and (st.st_dev, st.st_ino) != entry.ident:
                    raise CacheError("the entry was replaced after it was read; read it again", path=entry.path)
                for name, info in entry.meta["files"].items():
                    copy_verified(entry_fd, name, info, Path(tmp))
            finally:
                os.close(entry_fd)
            yield Path(tmp)
        finally:
            os.close(root_fd)
            shutil.rmtree(tmp, ignore_errors=True)

    def _check_programs(self, entry: CacheEntry, folder: Path) -> None:
        for name, info in entry.meta.get("files", {}).items():
            if not name.endswith(".pt2"):
                continue
            undeclared = sorted(set(pt2check.unsafe_records(folder / name)) - set(info.get("pt2_unsafe", [])))
            if undeclared:
                reason = f"program {name} has records that unpickle or run code on load: {'; '.join(undeclared)}"
                trust.warn_once(entry.key, reason, "refusing cache entry %s: %s, and its writer did not record "
                                "writing them; treating it as a miss", entry.path, reason)
                raise UntrustedEntryError(reason, path=entry.path)

    def _seal(self, dir_fd: int, folder: Path, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Set private modes on what ``fill`` wrote and describe each file (size, sha256, pt2 records).
        Refuses links and special files: an entry holds nothing but regular files and folders."""
        files: dict[str, dict[str, Any]] = {}
        with os.scandir(dir_fd) as it:
            items = sorted((e.name, e.stat(follow_symlinks=False)) for e in it)
        for name, st in items:
            rel = prefix + name
            if stat.S_ISDIR(st.st_mode):
                sub = fs.open_dir(name, dir_fd)
                try:
                    os.fchmod(sub, self.dir_mode)
                    files.update(self._seal(sub, folder, rel + "/"))
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode) and rel != META_FILE:
                fd = fs.open_file(name, dir_fd)
                try:
                    os.fchmod(fd, self.file_mode)
                    info: dict[str, Any] = {"size": os.fstat(fd).st_size, "sha256": fs.sha256_fd(fd)}
                finally:
                    os.close(fd)
                if rel.endswith(".pt2"):
                    info["pt2_unsafe"] = pt2check.unsafe_records(folder / rel)
                files[rel] = info
            else:
                raise CacheError(f"the backend wrote {rel}, which is not a regular file or folder; refusing to "
                                 "publish it", path=folder)
        return files

    def _publish(self, key: str, stage: Callable[[Path, int], dict[str, Any]], *,
                 keep_ready: bool = False) -> CacheEntry:
        from .cache_maint import install, staging_name

        path = self.path_for(key)
        root_fd = self.writable_root()
        staging_fd = folder_fd = None
        name = staging_name(key, "new")
        try:
            staging_fd = fs.subdir(root_fd, STAGING, self.dir_mode, create=True)
            folder_fd = fs.make_dir(name, staging_fd, 0o700)
            meta = self.seal_meta(key, stage(Path(self.real_root()) / STAGING / name, folder_fd))
            text = json.dumps(meta, indent=2, sort_keys=True).encode()
            fs.write_new_file(META_FILE, folder_fd, text, self.file_mode)
            os.fchmod(folder_fd, self.dir_mode)
            kept = install(self, root_fd, staging_fd, name, key, keep_ready=keep_ready)
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

    def seal_meta(self, key: str, meta: dict[str, Any]) -> dict[str, Any]:
        """meta as it will be read back (JSON round trip), with key, time and, given a key, ``hmac``."""
        meta = json.loads(json.dumps({**meta, "key": key, "written": time.time()}, default=str))
        meta.pop(trust.MAC_FIELD, None)
        if self.trust_key is not None:
            meta[trust.MAC_FIELD] = self.trust_key.sign(meta)
        return meta


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not fs.is_key(key):
        raise CacheError(f"invalid cache key {str(key)[:80]!r}", hint="keys are 32-64 lowercase hex digits")
    return key


def _listed(root_fd: int, root: Path, name: str) -> CacheEntry | None:
    try:
        fd = fs.open_dir(name, root_fd)
    except OSError:
        return None
    try:
        meta, st, reason = read_entry_meta(fd, name)
        if reason:
            logger.debug("skipping %s in the listing: %s", root / name, reason)
            return None
        dst = os.fstat(fd)
        return CacheEntry(name, root / name, meta, ident=(dst.st_dev, dst.st_ino), mtime=st.st_mtime)
    finally:
        os.close(fd)


def _report(path: Path, key: str, problem: Problem) -> None:
    if problem.kind == "untrusted":
        trust.warn_once(key, problem.reason, "ignoring cache entry %s: %s. Loading it could run code that its "
                        "writer put there, so it is treated as a miss; %s", path, problem.reason, _HINT_UNTRUSTED)
    else:
        trust.warn_once(key, problem.reason, "cache entry %s is damaged (%s); treating it as a miss, it will "
                        "be rebuilt", path, problem.reason)
