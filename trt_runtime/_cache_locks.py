"""Per-key file locks that may be deleted without breaking mutual exclusion.

Locks are ``flock`` locks (per open file, so two threads exclude each other too, and the kernel drops
them when a holder dies) on files in ``<cache>/.locks``. Two per key:

- ``<key>.lock``: exclusive while a process builds the key (``EngineCache.lock``).
- ``<key>.read``: shared while a process loads the entry, exclusive while one removes it. Eviction and
  pruning try it without waiting, so an entry a reader is loading is skipped, never deleted under it.

Deleting a lock file is the classic way to break ``flock`` mutual exclusion: a waiter that opened the
old file gets its lock after the holder unlinks it, while a newcomer creates a new file at the same path
and locks that one; both then think they hold the lock. Two rules make deletion safe here:

1. a lock file is only unlinked by a process that holds it exclusively (``remove_lock_file``);
2. every acquirer, after ``flock`` succeeds, checks that the path still names the inode it locked
   (``fstat`` of its descriptor against ``stat`` of the path) and otherwise closes and starts over.

A waiter on an unlinked file therefore never believes it holds the lock; it reopens the path and
competes for the new file. Waiting is a poll (``LOCK_NB`` with growing sleeps up to 0.25 s) so that a
timeout is honoured and a stale descriptor is never waited on.

Lock files are opened ``O_RDONLY | O_CREAT | O_NOFOLLOW`` and never truncated: a link planted in a
shared ``.locks`` folder is removed, never followed, and ``flock`` needs no write permission, so a group
cache works with lock files 0640.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

__all__ = ["LockTimeout", "acquire", "release", "remove_lock_file"]

_MAX_SLEEP = 0.25


class LockTimeout(OSError):
    """The lock is held by another process (after waiting ``timeout`` seconds)."""


def acquire(locks_fd: int, name: str, *, shared: bool, timeout: float, mode: int = 0o600,
            create: bool = True) -> int | None:
    """Lock ``name`` below the open folder ``locks_fd``; returns the descriptor that holds it.

    ``timeout`` 0 tries once. Raises ``LockTimeout`` when it is still held after ``timeout`` seconds,
    ``OSError`` when the file cannot be created. With ``create=False`` a missing file returns None
    (nothing to lock: the caller treats it as unlocked)."""
    op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.005
    while True:
        fd = _open(locks_fd, name, mode, create)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(errno.EAGAIN, f"lock {name} is held by another process") from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_SLEEP)
            continue
        except OSError:
            os.close(fd)
            raise
        if _still_named(locks_fd, name, fd):
            return fd
        os.close(fd)  # unlinked or replaced while we waited: compete for the file now at the path


def release(fd: int | None) -> None:
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_lock_file(locks_fd: int, name: str) -> bool:
    """Unlink lock file ``name`` if nobody holds or waits-with-a-lock on it (rule 1 above)."""
    try:
        fd = acquire(locks_fd, name, shared=False, timeout=0, create=False)
    except LockTimeout:
        return False
    except OSError:
        return False
    if fd is None:
        return False
    try:
        os.unlink(name, dir_fd=locks_fd)
        return True
    except OSError:
        return False
    finally:
        release(fd)


def _open(locks_fd: int, name: str, mode: int, create: bool) -> int | None:
    for _ in range(3):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=locks_fd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                             0o600, dir_fd=locks_fd)
            except FileExistsError:
                continue  # another process created it first: open theirs
            try:
                os.fchmod(fd, mode)
            except OSError:
                pass
            return fd
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            os.unlink(name, dir_fd=locks_fd)  # a planted link: remove the link itself, then retry
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, f"lock file {name} is not a regular file")
        return fd
    raise OSError(errno.EAGAIN, f"cannot open lock file {name}")


def _still_named(locks_fd: int, name: str, fd: int) -> bool:
    try:
        at_path = os.stat(name, dir_fd=locks_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino)
