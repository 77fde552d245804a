"""Reading one cache entry safely: its ``meta.json`` schema, who could have written it, its checksums.

``inspect_entry`` never raises for anything found on disk: a missing entry is ``(None, None)``, anything
wrong is ``(None, Problem)`` with a reason a person can act on, and only a sound, trusted entry comes back
as a ``CacheEntry``. It reads through descriptors (see ``_cache_fs``) so the files it checks are the files
it found, and it decides trust (see ``trust``) before it hashes a byte.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any, NamedTuple

from . import _cache_fs as fs
from .trust import TrustKey, unsafe_reason

__all__ = ["CacheEntry", "Problem", "inspect_entry", "validate_meta", "parse_meta", "META_FILE", "READY",
           "FAILED", "META_LIMIT"]

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
    """Check entry ``key`` below the open cache folder: schema, trust, then sizes and checksums."""
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

    if meta["status"] == READY:
        must_hash = verify_checksum or (how == "signature" and in_place)
        for name, info in meta["files"].items():
            problem = _check_file(entry_fd, name, info, must_hash)
            if problem:
                return None, problem
    entry = CacheEntry(key, path, meta, trust=how, in_place=in_place,
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
