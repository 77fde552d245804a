"""File operations for the engine cache that never follow a link and never block.

Everything here works relative to an open directory descriptor (``dir_fd``) with ``O_NOFOLLOW``: once the
cache has opened a folder and checked who owns it, a name inside it cannot be swapped for a link that
leads elsewhere, and a FIFO planted where a file should be is reported instead of blocking the reader
(``O_NONBLOCK``). Deleting walks the tree the same way, so a symlinked ``.staging`` or entry is removed as
a link and what it points to is never touched.

Creation sets the mode with ``fchmod`` after ``open``/``mkdir``, so the user's umask cannot widen it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Iterator

__all__ = [
    "KEY_RE",
    "is_key",
    "NotRegularFile",
    "open_dir",
    "open_file",
    "read_regular",
    "walk",
    "make_dir",
    "subdir",
    "write_new_file",
    "remove_tree",
    "tree_bytes",
    "sha256_fd",
    "read_only_fs",
    "valid_relpath",
]

KEY_RE = re.compile(r"[0-9a-f]{32,64}")
"""A cache key as ``keys.cache_key`` makes them (40 hex digits), with room for a future length."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW
_FILE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_MAX_DEPTH = 16
_MAX_ITEMS = 10_000


class NotRegularFile(OSError):
    """A path that should be a regular file is a FIFO, a device, a socket, a folder or too large."""


def is_key(name: str) -> bool:
    return bool(KEY_RE.fullmatch(name))


def valid_relpath(name: object) -> bool:
    """A file name an entry may list: relative, '/'-separated, no '.', '..' or empty parts."""
    if not isinstance(name, str) or not name or len(name) > 255 or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    return len(parts) <= _MAX_DEPTH and all(p not in ("", ".", "..") for p in parts)


def open_dir(name: str | os.PathLike, dir_fd: int | None = None, *, follow: bool = False) -> int:
    """Open a folder for ``*at`` calls; a symlink raises ``OSError(ELOOP)`` unless ``follow``."""
    flags = _DIR_FLAGS & ~os.O_NOFOLLOW if follow else _DIR_FLAGS
    return os.open(name, flags, dir_fd=dir_fd)


def open_file(relpath: str, dir_fd: int) -> int:
    """Open ``relpath`` (which may name sub-folders) below ``dir_fd`` for reading, following no link.
    Returns a descriptor of a regular file; anything else raises ``NotRegularFile``/``OSError``."""
    parts = relpath.split("/")
    fds = []
    try:
        current = dir_fd
        for part in parts[:-1]:
            current = open_dir(part, current)
            fds.append(current)
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=current)
    finally:
        for fd_ in fds:
            os.close(fd_)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(errno.EINVAL, f"{relpath} is not a regular file")
    return fd


def read_regular(name: str, dir_fd: int, limit: int) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file of at most ``limit`` bytes, and its stat, read without blocking."""
    fd = open_file(name, dir_fd)
    try:
        st = os.fstat(fd)
        if st.st_size > limit:
            raise NotRegularFile(errno.EFBIG, f"{name} has {st.st_size} bytes, more than {limit}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotRegularFile(errno.EFBIG, f"{name} grew past {limit} bytes while read")
        return b"".join(chunks), st
    finally:
        os.close(fd)


def walk(dir_fd: int, prefix: str = "", depth: int = 0) -> Iterator[tuple[str, os.stat_result]]:
    """Every item below ``dir_fd`` as (relative path, lstat), folders before their contents.
    Links are reported, never followed. Bounded in depth and count (a hostile tree cannot hang us)."""
    if depth > _MAX_DEPTH:
        raise OSError(errno.ELOOP, f"folder tree deeper than {_MAX_DEPTH} at {prefix!r}")
    count = 0
    with os.scandir(dir_fd) as it:
        items = []
        for item in it:
            count += 1
            if count > _MAX_ITEMS:
                raise OSError(errno.E2BIG, f"more than {_MAX_ITEMS} items in {prefix or '.'!r}")
            items.append((item.name, item.stat(follow_symlinks=False)))
    for name, st in sorted(items):
        rel = f"{prefix}{name}"
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            sub = open_dir(name, dir_fd)
            try:
                yield from walk(sub, rel + "/", depth + 1)
            finally:
                os.close(sub)


def make_dir(name: str, dir_fd: int | None, mode: int, *, exist_ok: bool = False) -> int:
    """Create folder ``name`` with exactly ``mode`` (umask ignored) and return an open descriptor.
    With ``exist_ok`` an existing real folder is opened (its mode untouched); a link never is."""
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
        created = True
    except FileExistsError:
        if not exist_ok:
            raise
        created = False
    fd = open_dir(name, dir_fd)
    if created:
        try:
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            raise
    return fd


def subdir(parent_fd: int, name: str, mode: int, *, create: bool) -> int | None:
    """Open folder ``name`` below ``parent_fd``, creating it with ``mode`` if asked (None when absent and
    not created). A link or file where the folder belongs is unlinked (as a link) and replaced: the cache
    owns these names (``.staging``, ``.locks``), and following a planted link would lead outside."""
    for _ in range(3):
        try:
            return open_dir(name, parent_fd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                return make_dir(name, parent_fd, mode, exist_ok=True)
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
        except OSError as err:
            if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if not create:
                return None
        os.unlink(name, dir_fd=parent_fd)
    raise OSError(errno.EAGAIN, f"cannot open folder {name}")


def write_new_file(name: str, dir_fd: int, data: bytes, mode: int) -> None:
    """Create ``name`` (it must not exist), write ``data``, set ``mode`` exactly, fsync."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(name: str, dir_fd: int) -> bool:
    """Delete ``name`` below ``dir_fd``: a link or file is unlinked, a folder emptied and removed
    through descriptors (a link inside is unlinked, never followed). False when it was already gone."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return True
    sub = open_dir(name, dir_fd)
    try:
        if os.fstat(sub).st_ino != st.st_ino:  # swapped between stat and open: leave it
            return False
        with os.scandir(sub) as it:
            children = [item.name for item in it]
        for child in children:
            try:
                remove_tree(child, sub)
            except FileNotFoundError:
                pass
    finally:
        os.close(sub)
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def tree_bytes(name: str, dir_fd: int) -> int:
    """Bytes of the regular files below ``name`` (links not followed); 0 when unreadable."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            return st.st_size if stat.S_ISREG(st.st_mode) else 0
        sub = open_dir(name, dir_fd)
        try:
            return sum(s.st_size for _, s in walk(sub) if stat.S_ISREG(s.st_mode))
        finally:
            os.close(sub)
    except OSError:
        return 0


def sha256_fd(fd: int) -> str:
    """sha256 of a file read from its start through ``fd`` (``os.pread``: the offset is untouched)."""
    h = hashlib.sha256()
    offset = 0
    while True:
        block = os.pread(fd, 1 << 20, offset)
        if not block:
            break
        h.update(block)
        offset += len(block)
    return h.hexdigest()


def read_only_fs(path: str | os.PathLike) -> bool:
    """Whether ``path`` (or its nearest existing parent) lies on a file system mounted read-only."""
    current = os.path.abspath(os.fspath(path))
    while True:
        try:
            return bool(os.statvfs(current).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            parent = os.path.dirname(current)
            if parent == current:
                return False
            current = parent
        except OSError:
            return False
