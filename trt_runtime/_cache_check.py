"""Reading one cache entry safely: its ``meta.json`` schema, who could have written it, its checksums.

``inspect_entry`` never raises for anything found on disk: a missing entry is ``(None, None)``, anything
wrong is ``(None, Problem)`` with a reason a person can act on, and only a sound, trusted entry comes back
as a ``CacheEntry``. It reads through descriptors (see ``_cache_fs``) so the files it checks are the files
it found, and it decides trust (see ``trust``) before it hashes a byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from . import _cache_fs as fs
from . import pt2check, trust
from .errors import CacheError, UntrustedEntryError
from .trust import TrustKey, unsafe_reason

__all__ = ["CacheEntry", "Problem", "inspect_entry", "validate_meta", "parse_meta", "check_programs",
           "write_verified", "copy_verified", "META_FILE", "READY", "FAILED", "META_LIMIT"]

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
READY = "ready"
FAILED = "failed"
META_LIMIT = 1 << 20
"""meta.json is a few KB; anything past 1 MiB is not ours."""

_SHA256 = re.compile(r"[0-9a-f]{64}")
_OPTIONAL_TYPES: dict[str, Any] = {
    "component": str, "backend": str, "precision": str, "error": str, "written": (int, float),
    "compile_seconds": (int, float), "environment": dict, "module": dict, "options": dict, "shapes": list,
    "hmac": dict,
}


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One entry: its key, folder and parsed ``meta.json``.

    ``trust`` says why it may be loaded (``owner``: written by you into private folders; ``signature``:
    signed with the trust key; ``""``: listed by ``entries()`` without being checked). ``in_place``: its
    files may be handed to a backend where they lie (otherwise ``EngineCache.loading`` copies them)."""

    key: str
    path: Path
    meta: dict[str, Any]
    trust: str = dataclasses.field(default="", compare=False)
    in_place: bool = dataclasses.field(default=False, compare=False)
    ident: tuple[int, int] | None = dataclasses.field(default=None, compare=False, repr=False)
    mtime: float | None = dataclasses.field(default=None, compare=False, repr=False)
    checked: bool = dataclasses.field(default=False, compare=False, repr=False)
    """Whether its files are checked against their recorded sha256 before a backend reads them: hashed by
    ``read`` (``verify_checksum``, or signed in place), or copied through ``private_copy``, which hashes."""

    @property
    def status(self) -> str:
        return self.meta.get("status", "")

    @property
    def size(self) -> int:
        files = self.meta.get("files") or {}
        return sum(f.get("size", 0) for f in files.values() if isinstance(f, dict))

    @property
    def last_used(self) -> float:
        if self.mtime is not None:
            return self.mtime
        try:
            return os.stat(self.path / META_FILE, follow_symlinks=False).st_mtime
        except OSError:
            return 0.0


class Problem(NamedTuple):
    kind: str
    """``damaged`` (unreadable, truncated, wrong checksum, wrong key) or ``untrusted``."""
    reason: str


def parse_meta(data: bytes) -> tuple[Any, str | None]:
    """JSON from bytes; (None, reason) for anything that is not valid UTF-8 JSON of sane depth."""
    try:
        return json.loads(data.decode("utf-8")), None
    except RecursionError:
        return None, "meta.json is nested too deeply"
    except (ValueError, UnicodeDecodeError) as err:
        return None, f"meta.json is not valid JSON ({type(err).__name__})"


def validate_meta(meta: Any, key: str) -> str | None:
    """Why ``meta`` is not a well-formed description of entry ``key``, or None."""
    if not isinstance(meta, dict):
        return "meta.json is not a JSON object"
    if meta.get("key") != key:
        return f"meta.json names key {str(meta.get('key'))[:64]!r}, not its folder's key"
    status = meta.get("status")
    if status not in (READY, FAILED):
        return f"meta.json has unknown status {str(status)[:32]!r}"
    for field, types in _OPTIONAL_TYPES.items():
        value = meta.get(field)
        if value is not None and not isinstance(value, types):
            return f"meta.json field {field!r} has the wrong type ({type(value).__name__})"
    for shape in meta.get("shapes") or []:
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            return "meta.json field 'shapes' is not a list of integer lists"
    files = meta.get("files")
    if files is None and status == FAILED:
        return None
    if not isinstance(files, dict) or (status == READY and not files):
        return "meta.json lists no artifact files"
    for name, info in files.items():
        if not fs.valid_relpath(name) or name == META_FILE:
            return f"meta.json lists an invalid file name {str(name)[:64]!r}"
        if not isinstance(info, dict):
            return f"meta.json entry for {name!r} is not an object"
        size, digest = info.get("size"), info.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"meta.json gives {name!r} an invalid size"
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            return f"meta.json gives {name!r} an invalid sha256"
        if not isinstance(info.get("optional", False), bool):
            return f"meta.json field 'optional' of {name!r} is not a boolean"
        unsafe = info.get("pt2_unsafe", [])
        if not isinstance(unsafe, list) or not all(isinstance(u, str) for u in unsafe):
            return f"meta.json field 'pt2_unsafe' of {name!r} is not a list of strings"
    return None


def read_entry_meta(entry_fd: int, key: str) -> tuple[dict | None, os.stat_result | None, str | None]:
    """(meta, stat of meta.json, None) or (None, None, why not)."""
    try:
        data, st = fs.read_regular(META_FILE, entry_fd, META_LIMIT)
    except FileNotFoundError:
        return None, None, "it has no meta.json"
    except fs.NotRegularFile as err:
        return None, None, f"meta.json is not a regular file of at most 1 MiB ({err.strerror})"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, None, "meta.json is a symbolic link"
        return None, None, f"meta.json cannot be read ({err.strerror or err})"
    meta, reason = parse_meta(data)
    reason = reason or validate_meta(meta, key)
    return (None, None, reason) if reason else (meta, st, None)


def inspect_entry(root_fd: int, root: Path, key: str, *, trust_key: TrustKey | None, root_reason: str | None,
                  verify_checksum: bool, read_only_fs: bool) -> tuple[CacheEntry | None, Problem | None]:
    """Check entry ``key`` below the open cache folder ``root`` (its resolved path): schema, trust, then
    sizes and checksums. The entry's ``path`` is under ``root``, so a backend opens what was checked."""
    try:
        entry_fd = fs.open_dir(key, root_fd)
    except FileNotFoundError:
        return None, None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, Problem("untrusted", "its folder is a symbolic link")
        return None, Problem("damaged", f"its folder cannot be opened ({err.strerror or err})")
    try:
        return _inspect_open(entry_fd, root / key, key, trust_key, root_reason, verify_checksum, read_only_fs)
    except OSError as err:  # a hostile tree (too deep, too many items) or a race with a remover
        return None, Problem("damaged", f"it cannot be read ({err.strerror or err})")
    finally:
        os.close(entry_fd)


def _inspect_open(entry_fd, path, key, trust_key, root_reason, verify_checksum, read_only_fs):
    entry_st = os.fstat(entry_fd)
    items = list(fs.walk(entry_fd))
    for rel, st in items:
        if stat.S_ISLNK(st.st_mode):
            return None, Problem("untrusted", f"it contains a symbolic link ({rel})")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            return None, Problem("damaged", f"it contains {rel}, which is not a regular file or folder")
    meta, meta_st, reason = read_entry_meta(entry_fd, key)
    if reason:
        return None, Problem("damaged", reason)

    owner = root_reason or unsafe_reason(entry_st, "its folder") or next(
        (r for rel, st in items if (r := unsafe_reason(st, rel))), None)
    if owner is None:
        how, in_place = "owner", True
    elif trust_key is None:
        return None, Problem("untrusted", f"{owner}, and no trust key is configured to check a signature")
    elif (bad := trust_key.check(meta)) is not None:
        return None, Problem("untrusted", f"{owner}, and {bad}")
    else:
        how, in_place = "signature", read_only_fs

    must_hash = verify_checksum or (how == "signature" and in_place)
    if meta["status"] == READY:
        for name, info in meta["files"].items():
            problem = _check_file(entry_fd, name, info, must_hash)
            if problem and info.get("optional"):  # it only makes the load faster; the backend re-checks it
                logger.debug("cache entry %s: optional file %s is not used: %s", path, name, problem.reason)
            elif problem:
                return None, problem
    entry = CacheEntry(key, path, meta, trust=how, in_place=in_place, checked=must_hash or not in_place,
                       ident=(entry_st.st_dev, entry_st.st_ino), mtime=meta_st.st_mtime)
    return entry, None


def _check_file(entry_fd: int, name: str, info: dict, must_hash: bool) -> Problem | None:
    try:
        fd = fs.open_file(name, entry_fd)
    except FileNotFoundError:
        return Problem("damaged", f"{name} is missing")
    except OSError as err:
        return Problem("damaged", f"{name} cannot be opened ({err.strerror or err})")
    try:
        size = os.fstat(fd).st_size
        if size != info["size"]:
            return Problem("damaged", f"{name} has {size} bytes, expected {info['size']} (truncated?)")
        if must_hash and fs.sha256_fd(fd) != info["sha256"]:
            return Problem("damaged", f"{name} fails its sha256 checksum")
    finally:
        os.close(fd)
    return None


def check_programs(entry: CacheEntry, folder: Path) -> None:
    """Refuse (``UntrustedEntryError``, one warning) a ``.pt2`` program with records that run code on load
    which the entry's (trusted) meta.json does not declare as written by its writer."""
    for name, info in entry.meta.get("files", {}).items():
        if not name.endswith(".pt2"):
            continue
        undeclared = sorted(set(pt2check.unsafe_records(folder / name)) - set(info.get("pt2_unsafe", [])))
        if undeclared:
            reason = f"program {name} has records that unpickle or run code on load: {'; '.join(undeclared)}"
            trust.warn_once(entry.key, reason, "refusing cache entry %s: %s, and its writer did not record "
                            "writing them; treating it as a miss", entry.path, reason)
            raise UntrustedEntryError(reason, path=entry.path)


def write_verified(src: IO[bytes], folder_fd: int, rel: str, info: dict, mode: int) -> None:
    """Stream ``src`` into new file ``rel`` below ``folder_fd`` (folders 0700, the file ``mode``), then
    check it against ``info``'s size and sha256 (``UntrustedEntryError`` when it does not match)."""
    parts = rel.split("/")
    fds = []
    try:
        current = folder_fd
        for part in parts[:-1]:
            current = fs.make_dir(part, current, 0o700, exist_ok=True)
            fds.append(current)
        out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=current)
        try:
            os.fchmod(out, mode)
            h, size = hashlib.sha256(), 0
            while block := src.read(1 << 20):
                h.update(block)
                size += len(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view):]
        finally:
            os.close(out)
    finally:
        for fd in fds:
            os.close(fd)
    if size != info["size"] or h.hexdigest() != info["sha256"]:
        raise UntrustedEntryError(f"{rel} does not match the checksum in its meta.json")


def copy_verified(entry_fd: int, rel: str, info: dict, dest: Path) -> None:
    """Copy file ``rel`` of an open entry to ``dest/rel`` (0600), checking size and sha256 of the bytes
    copied: what a backend then reads is exactly what the signature covers."""
    src = fs.open_file(rel, entry_fd)
    try:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(src, "rb", closefd=False) as reader:
            dest_fd = fs.open_dir(str(target.parent), follow=True)
            try:
                write_verified(reader, dest_fd, target.name, info, 0o600)
            finally:
                os.close(dest_fd)
    finally:
        os.close(src)


def same_folder(entry: CacheEntry) -> None:
    """Raise ``CacheError`` unless ``entry.path`` is still the folder ``read`` checked."""
    try:
        st = os.stat(entry.path, follow_symlinks=False)
    except OSError as err:
        raise CacheError("the entry was removed after it was read", path=entry.path) from err
    if entry.ident is not None and (st.st_dev, st.st_ino) != entry.ident:
        raise CacheError("the entry was replaced after it was read; read it again", path=entry.path)


@contextlib.contextmanager
def private_copy(root_fd: int, entry: CacheEntry) -> Iterator[Path]:
    """A private temporary folder (0700) holding ``entry``'s files, each checked against meta.json as it
    is copied through descriptors of the folder ``read`` checked; removed afterwards."""
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
                try:
                    copy_verified(entry_fd, name, info, Path(tmp))
                except (OSError, UntrustedEntryError) as err:
                    if not info.get("optional"):
                        raise
                    (Path(tmp) / name).unlink(missing_ok=True)  # never hand over bytes the signature does not cover
                    logger.debug("cache entry %s: optional file %s is not used: %s", entry.path, name, err)
        finally:
            os.close(entry_fd)
        yield Path(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def listed_entry(root_fd: int, root: Path, name: str) -> CacheEntry | None:
    """Entry ``name`` for a listing: a well-formed meta.json naming its folder, nothing checked further."""
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


_HINT_UNTRUSTED = ("if you trust it, give its writer and this process the same trust key "
                   "(TRT_RUNTIME_TRUST_KEY or trust_key_file) so entries are signed, or keep the cache in a "
                   "folder only you can write and rebuild; see README, Reliability and security")


def report_problem(path: Path, key: str, problem: Problem) -> None:
    if problem.kind == "untrusted":
        trust.warn_once(key, problem.reason, "ignoring cache entry %s: %s. Loading it could run code that its "
                        "writer put there, so it is treated as a miss; %s", path, problem.reason, _HINT_UNTRUSTED)
    else:
        trust.warn_once(key, problem.reason, "cache entry %s is damaged (%s); treating it as a miss, it will "
                        "be rebuilt", path, problem.reason)
