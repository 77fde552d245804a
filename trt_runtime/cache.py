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
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import _cache_fs as fs
from . import _cache_locks as locks
from . import cache_archive, cache_maint, trust
from ._cache_check import (
    FAILED,
    META_FILE,
    READY,
    CacheEntry,
    Problem,
    check_programs,
    inspect_entry,
    listed_entry,
    private_copy,
    report_problem,
    same_folder,
)
from ._cache_store import publish, seal_files
from .errors import CacheError, ConfigurationError, ReadOnlyCacheError

__all__ = ["EngineCache", "CacheEntry", "Problem", "META_FILE", "MARKER", "READY", "FAILED"]

logger = logging.getLogger(__name__)

MARKER = ".trt_runtime_cache"
STAGING = ".staging"
LOCKS = ".locks"
_MARKER_TEXT = b'{"trt_runtime_cache": 1}\n'
_AUTO: Any = object()
_READER_WAIT_S = 10.0
"""A reader waits this long for a remover that holds an entry exclusively (removers are quick)."""


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
            report_problem(self.path_for(key), key, problem)
        return entry

    def check(self, key: str, *, verify_checksum: bool | None = None) -> tuple[CacheEntry | None, Problem | None]:
        """``read`` without the warning: (entry, None), (None, None) when absent, or (None, problem)."""
        _check_key(key)
        verify = self.verify_checksum if verify_checksum is None else verify_checksum
        real = self.real_root()  # resolved once: the chain checked is the chain a backend then opens
        try:
            root_fd = self.open_root(create=False, real=real)
        except CacheError as err:
            return None, Problem("damaged", err.message)
        if root_fd is None:
            return None, None
        try:
            return inspect_entry(root_fd, Path(real), key, trust_key=self.trust_key,
                                 root_reason=self._root_reason(root_fd, real), verify_checksum=verify,
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
        held = self.read_lock(entry.key, shared=True, wait=_READER_WAIT_S)
        try:
            if entry.in_place:
                same_folder(entry)
                check_programs(entry, entry.path)
                yield entry.path
            else:
                root_fd = self.open_root(create=False)
                if root_fd is None:
                    raise CacheError("the cache folder disappeared", path=self.root)
                try:
                    with private_copy(root_fd, entry) as folder:
                        check_programs(entry, folder)
                        yield folder
                finally:
                    os.close(root_fd)
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
            root_fd = self.open_root(create=False)
        except CacheError:
            return []
        if root_fd is None:
            return []
        try:
            found = [e for name in os.listdir(root_fd)
                     if fs.is_key(name) and (e := listed_entry(root_fd, self.root, name))]
        finally:
            os.close(root_fd)
        return sorted(found, key=lambda e: e.last_used, reverse=True)

    def total_bytes(self) -> int:
        """Bytes of all entries plus unfinished staging folders (they count against the cap)."""
        return sum(e.size for e in self.entries()) + self.staging_bytes()

    def staging_bytes(self) -> int:
        try:
            root_fd = self.open_root(create=False)
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

    def write(self, key: str, meta: dict[str, Any], fill: Callable[[Path], None], *,
              optional: frozenset[str] = frozenset()) -> CacheEntry:
        """Publish a ready entry: ``fill(folder)`` writes the artifact files, then one rename. Files named
        in ``optional`` are sealed like the others and marked optional: a reader loads the entry without
        one that is missing or damaged (``Backend.optional_files``).

        On any failure nothing is published, the staging folder is removed and ``CacheError`` raised
        (``ReadOnlyCacheError`` on a read-only cache). Signed when a trust key is configured."""
        def stage(folder: Path, folder_fd: int) -> dict[str, Any]:
            fill(folder)
            files = seal_files(self, folder_fd, folder, optional=optional)
            if not files:
                raise CacheError("the backend wrote no artifact files", path=folder)
            return {**meta, "status": READY, "files": files}

        entry = publish(self, key, stage)
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

        return publish(self, key, stage, keep_ready=not replace_ready)

    # ------------------------------------------------------------------------------------------ removing
    def remove(self, key: str, *, wait: float = _READER_WAIT_S) -> bool:
        """Delete entry ``key`` and its lock files; False when absent. Waits up to ``wait`` seconds for
        readers; raises ``CacheError`` when it is still being loaded or built by another process."""
        return cache_maint.remove_entry(self, _check_key(key), wait=wait)

    def clear(self, status: str | None = None) -> int:
        """Remove every entry (or only those with ``status``), unfinished staging folders and unused
        lock files; returns how many entries were removed. Entries in use are kept."""
        return cache_maint.clear(self, status)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries (never one in use) until the cache fits ``max_bytes``."""
        return cache_maint.evict(self, keep)

    def prune(self, **criteria: Any) -> list[str]:
        """See ``cache_maint.prune``: by size cap, age, component, failed entries; returns removed keys."""
        return cache_maint.prune(self, **criteria)

    def verify(self, keys: list[str] | None = None) -> list[cache_maint.Finding]:
        """See ``cache_maint.verify``: checksums, keys, signatures and programs of every entry."""
        return cache_maint.verify(self, keys)

    def export(self, dest: str | os.PathLike, keys: list[str] | None = None,
               **filters: Any) -> cache_archive.ArchiveReport:
        """See ``cache_archive.export_entries``."""
        return cache_archive.export_entries(self, dest, keys, **filters)

    def import_(self, source: str | os.PathLike, **options: Any) -> cache_archive.ArchiveReport:
        """See ``cache_archive.import_entries``."""
        return cache_archive.import_entries(self, source, **options)

    # ------------------------------------------------------------------------------------------ internals
    def real_root(self) -> str:
        return os.path.realpath(self.root)

    def open_root(self, create: bool, real: str | None = None) -> int | None:
        """A descriptor of the cache folder (``real``: its resolved path); None when it does not exist
        and ``create`` is False."""
        real = real or self.real_root()
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
            return self.open_root(create=False)
        except OSError as err:
            raise CacheError(f"cannot create the cache folder: {err.strerror or err}", path=self.root) from err

    def writable_root(self) -> int:
        """The cache folder, created (with its marker) if needed. Raises ``ReadOnlyCacheError``/``CacheError``."""
        if not self.writable:
            raise ReadOnlyCacheError("the engine cache is read-only", path=self.root,
                                     hint="cache_read_only is set or the folder is on a read-only mount")
        fd = self.open_root(create=True)
        try:
            fs.write_new_file(MARKER, fd, _MARKER_TEXT, self.file_mode)
        except FileExistsError:
            pass
        except OSError as err:
            os.close(fd)
            raise CacheError(f"cannot write the cache marker: {err.strerror or err}", path=self.root) from err
        return fd

    def _root_reason(self, root_fd: int, real: str) -> str | None:
        """Why someone other than us (or root) could change what is in the cache folder, or None."""
        reason = trust.ancestors_reason(real)
        if reason:
            return reason
        opened, named = os.fstat(root_fd), os.stat(real, follow_symlinks=False)
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

    def read_lock(self, key: str, *, shared: bool, wait: float) -> int | None:
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



def _check_key(key: str) -> str:
    if not isinstance(key, str) or not fs.is_key(key):
        raise CacheError(f"invalid cache key {str(key)[:80]!r}", hint="keys are 32-64 lowercase hex digits")
    return key
