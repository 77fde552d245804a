"""Moving cache entries between machines as one archive: ``trt-runtime cache export`` / ``import``.

An archive is a tar (gzip when the name ends in ``.tar.gz``/``.tgz``) holding, in this order::

    MANIFEST.json               format, version, and per entry: key, sha256 of its meta.json, environment
    entries/<key>/meta.json     the entry's meta.json (signed with the trust key when one is configured)
    entries/<key>/<file>        its artifact files, as listed with sizes and sha256 in meta.json

The manifest is signed too (``hmac``, domain ``archive``). Importing never extracts blindly: only regular
members with the names above are read, each streamed into a private staging folder of the cache while
its size and sha256 are checked against the entry's meta.json, which is checked against the manifest.
An entry is published only when

- its meta.json verifies with this deployment's trust key (an archive is foreign code: that is the
  whole point of the signature), or ``allow_unsigned=True`` says the user vouches for it; it is then
  signed with our key, if any, so it loads in the trust model;
- its ``environment`` (GPU compute capability and name, torch / TensorRT versions, ...) agrees with the
  ``environment`` given for every field both have -- otherwise it could never be used here, and the
  report says which field differs;
- it is ready (failures are local verdicts and are not shipped) and no ready entry exists already
  (unless ``replace=True``).

Paths with ``://`` go through ``fsspec`` when it is installed (``s3://...``, ``gs://...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import _cache_fs as fs
from . import _cache_locks as locks
from . import pt2check
from ._cache_check import META_LIMIT, READY, parse_meta, validate_meta, write_verified
from ._cache_store import publish
from .errors import CacheError, ReadOnlyCacheError, UntrustedEntryError

if TYPE_CHECKING:
    from .cache import EngineCache

__all__ = ["ArchiveReport", "export_entries", "import_entries", "environment_mismatch"]

FORMAT = "trt_runtime-cache-archive"
_MANIFEST = "MANIFEST.json"
_MANIFEST_LIMIT = 16 << 20
_MEMBER = re.compile(r"entries/([0-9a-f]{32,64})/(.+)")


@dataclasses.dataclass
class ArchiveReport:
    done: list[str] = dataclasses.field(default_factory=list)
    """Keys exported or imported."""
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(key, why) for each entry left out."""


# ------------------------------------------------------------------------------------------------ export
def export_entries(cache: EngineCache, dest: str | os.PathLike, keys: list[str] | None = None, *,
                   component: str | None = None) -> ArchiveReport:
    """Write the ready, trusted entries (all, or ``keys``, or one ``component``) to archive ``dest``."""
    report = ArchiveReport()
    chosen = []
    for listed in cache.entries():
        if (keys is not None and listed.key not in keys) or (component and listed.meta.get("component") != component):
            continue
        if listed.status != READY:
            report.skipped.append((listed.key, "not ready (failures are not exported)"))
            continue
        entry, problem = cache.check(listed.key, verify_checksum=True)
        if entry is None:
            report.skipped.append((listed.key, problem.reason if problem else "removed meanwhile"))
            continue
        meta = dict(entry.meta)
        if cache.trust_key is not None:
            meta["hmac"] = cache.trust_key.sign(meta)
        chosen.append((entry, json.dumps(meta, indent=2, sort_keys=True).encode()))
    for key in set(keys or ()) - {e.key for e, _ in chosen} - {k for k, _ in report.skipped}:
        report.skipped.append((key, "no such entry"))
    manifest: dict[str, Any] = {"format": FORMAT, "version": 1, "created": time.time(), "entries": [
        {"key": e.key, "meta_sha256": hashlib.sha256(text).hexdigest(), "environment": e.meta.get("environment")}
        for e, text in chosen]}
    if cache.trust_key is not None:
        manifest["hmac"] = cache.trust_key.sign(manifest, "archive")
    gz = str(dest).endswith((".tar.gz", ".tgz"))
    try:
        with _sink(dest) as out, tarfile.open(fileobj=out, mode="w|gz" if gz else "w|") as tar:
            _add_bytes(tar, _MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
            for entry, text in chosen:
                _add_bytes(tar, f"entries/{entry.key}/meta.json", text)
                _add_files(cache, tar, entry)
                report.done.append(entry.key)
    except (tarfile.TarError, OSError) as err:
        if isinstance(err, CacheError):
            raise
        raise CacheError(f"cannot write the archive ({type(err).__name__}: {err})", path=dest) from err
    return report


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    return info


def _add_files(cache: EngineCache, tar: tarfile.TarFile, entry) -> None:
    held = cache.read_lock(entry.key, shared=True, wait=10.0)
    root_fd = cache.open_root(create=False)
    try:
        entry_fd = fs.open_dir(entry.key, root_fd)
        try:
            for name, info in entry.meta["files"].items():
                fd = fs.open_file(name, entry_fd)
                reader = _HashingReader(fd)
                try:
                    tar.addfile(_info(f"entries/{entry.key}/{name}", info["size"]), reader)
                finally:
                    os.close(fd)
                if reader.hash.hexdigest() != info["sha256"]:
                    raise CacheError(f"{name} changed while it was exported", path=entry.path)
        finally:
            os.close(entry_fd)
    finally:
        os.close(root_fd)
        locks.release(held)


class _HashingReader:
    def __init__(self, fd: int) -> None:
        self.fd, self.hash = fd, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = os.read(self.fd, size if size and size > 0 else 1 << 20)
        self.hash.update(data)
        return data


# ------------------------------------------------------------------------------------------------ import
def import_entries(cache: EngineCache, source: str | os.PathLike, *,
                   environment: Mapping[str, Any] | Callable[[dict], Mapping[str, Any] | None] | None = None,
                   allow_unsigned: bool = False, replace: bool = False) -> ArchiveReport:
    """Publish the entries of archive ``source`` into ``cache`` (see the module docstring for the rules).
    ``environment``: the fields an entry's ``environment`` must match (or a function of its meta
    returning them); None skips the check. Raises ``UntrustedEntryError`` when the archive's own
    signature fails, ``CacheError`` when it is not an archive of ours."""
    if not cache.writable:
        raise ReadOnlyCacheError("the engine cache is read-only; nothing was imported", path=cache.root)
    report = ArchiveReport()
    expected: dict[str, dict] = {}
    seen: set[str] = set()
    try:
        with _source(source) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            members = _Members(tar)
            manifest = _read_manifest(tar, members.next(), cache)
            expected = {e["key"]: e for e in manifest["entries"]}
            while (member := members.next()) is not None:
                match = _MEMBER.fullmatch(member.name)
                if not match or match.group(2) != "meta.json" or match.group(1) not in expected:
                    continue  # stray file of a skipped entry, or not ours: never extracted
                key = match.group(1)
                seen.add(key)
                why = _import_one(cache, tar, members, member, expected[key], environment, allow_unsigned, replace)
                (report.skipped.append((key, why)) if why else report.done.append(key))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, CacheError):
            raise
        raise CacheError(f"cannot read the archive ({type(err).__name__}: {err}); {len(report.done)} entries "
                         "were imported before that", path=source) from err
    report.skipped += [(k, "listed in the manifest but missing from the archive") for k in expected if k not in seen]
    with contextlib.suppress(CacheError):
        cache.evict()
    return report


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo | None, cache: EngineCache) -> dict:
    if member is None or member.name != _MANIFEST or not member.isreg() or member.size > _MANIFEST_LIMIT:
        raise CacheError("not a trt_runtime cache archive (it does not start with MANIFEST.json)")
    manifest, reason = parse_meta(tar.extractfile(member).read(_MANIFEST_LIMIT + 1))
    entries = manifest.get("entries") if isinstance(manifest, dict) else None
    if reason or manifest.get("format") != FORMAT or manifest.get("version") != 1 or not isinstance(entries, list) \
            or not all(isinstance(e, dict) and fs.is_key(str(e.get("key"))) and isinstance(e.get("meta_sha256"), str)
                       for e in entries):
        raise CacheError(f"not a trt_runtime cache archive of a known version ({reason or 'bad manifest'})")
    key = cache.trust_key
    if key is not None and "hmac" in manifest and (bad := key.check(manifest, "archive")):
        raise UntrustedEntryError(f"the archive's manifest cannot be trusted: {bad}", hint="nothing was imported")
    return manifest


def _import_one(cache, tar, members, member, listed, environment, allow_unsigned, replace) -> str | None:
    """Publish one entry whose meta.json member is ``member``; returns why not, or None."""
    key = listed["key"]
    if not member.isreg() or member.size > META_LIMIT:
        return "its meta.json is not a regular file of at most 1 MiB"
    data = tar.extractfile(member).read(META_LIMIT + 1)
    if hashlib.sha256(data).hexdigest() != listed["meta_sha256"]:
        return "its meta.json does not match the manifest"
    meta, reason = parse_meta(data)
    reason = reason or validate_meta(meta, key)
    if reason:
        return reason
    if meta["status"] != READY:
        return "not a ready entry"
    trust_key = cache.trust_key
    bad = trust_key.check(meta) if trust_key is not None else "no trust key is configured here to check it"
    if bad and not allow_unsigned:
        return f"it cannot be trusted: {bad} (import with allow_unsigned / --trust-unsigned if you vouch for it)"
    wanted = environment(meta) if callable(environment) else environment
    if wanted is not None and (why := environment_mismatch(meta.get("environment") or {}, wanted)):
        return why

    def stage(folder: Path, folder_fd: int) -> dict[str, Any]:
        pending = dict(meta["files"])
        while pending:
            nxt = members.next()
            match = _MEMBER.fullmatch(nxt.name) if nxt is not None else None
            if match is None or match.group(1) != key or match.group(2) not in pending or not nxt.isreg():
                members.push(nxt)
                raise CacheError(f"the archive lacks {sorted(pending)[0]} of this entry")
            info = pending.pop(match.group(2))
            if nxt.size != info["size"]:
                raise CacheError(f"{match.group(2)} has {nxt.size} bytes in the archive, meta.json says {info['size']}")
            write_verified(tar.extractfile(nxt), folder_fd, match.group(2), info, cache.file_mode)
            if match.group(2).endswith(".pt2"):
                extra = set(pt2check.unsafe_records(folder / match.group(2))) - set(info.get("pt2_unsafe", []))
                if extra:
                    raise UntrustedEntryError(f"{match.group(2)} has undeclared records that run code: {sorted(extra)}")
        return meta

    if not replace and (existing := cache.check(key)[0]) is not None and existing.status == READY:
        return "a ready entry with this key exists already (import with replace=True to overwrite it)"
    try:
        publish(cache, key, stage, keep_ready=not replace)
    except CacheError as err:
        return err.message
    return None


class _Members:
    """The tar's members in order, with one member of push-back (streams cannot seek)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self._it, self._back = iter(tar), None

    def next(self) -> tarfile.TarInfo | None:
        if self._back is not None:
            member, self._back = self._back, None
            return member
        return next(self._it, None)

    def push(self, member: tarfile.TarInfo | None) -> None:
        self._back = member


def environment_mismatch(built: Mapping[str, Any], here: Mapping[str, Any]) -> str | None:
    """Why an entry built in ``built`` cannot serve ``here``: built for a GPU and here is none (or the
    reverse), or the first field both name with different values (compared as canonical JSON). Fields
    only one side has (a library not installed here) are not compared."""
    gpu_built, gpu_here = built.get("compute_capability"), here.get("compute_capability")
    if gpu_built and not gpu_here:
        return f"built for a GPU of compute capability {gpu_built}, this environment has no GPU"
    if gpu_here and not gpu_built:
        return f"built for the CPU, this environment has a GPU of compute capability {gpu_here}"
    for field in sorted(set(built) & set(here)):
        a, b = (json.dumps(v, sort_keys=True, default=str) for v in (built[field], here[field]))
        if a != b:
            return f"built for {field} {built[field]}, this environment has {here[field]}"
    return None


# ------------------------------------------------------------------------------------------------ streams
def _is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def _fsspec():
    try:
        import fsspec
    except ImportError as err:
        raise CacheError("archive URLs need fsspec", hint="pip install fsspec (and the filesystem's extra)") from err
    return fsspec


@contextlib.contextmanager
def _sink(dest: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A writable stream for ``dest``; a local file appears (0600) only when complete."""
    if _is_url(dest):
        with _fsspec().open(str(dest), "wb") as out:
            yield out
        return
    target = Path(dest).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _source(source: str | os.PathLike) -> Iterator[IO[bytes]]:
    if _is_url(source):
        with _fsspec().open(str(source), "rb") as stream:
            yield stream
    else:
        with open(Path(source).expanduser(), "rb") as stream:
            yield stream
