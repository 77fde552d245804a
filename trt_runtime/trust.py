"""Who may put code in this process: the trust model of the engine cache.

A cache entry is code. Inductor artifacts are pickles, TensorRT programs may carry pickled weights, and
loading either runs what its writer put there. A checksum in ``meta.json`` proves integrity, not
authorship: whoever can write the entry can fix the checksum too. So an entry loads only when

(a) it was written by this user (or root) into folders only this user (or root) can write: every folder
    from ``/`` down to the cache root is owned by us or root and not writable by group/others (or has the
    sticky bit, like ``/tmp``), and the entry folder and each of its files are owned by us or root and
    not group/world-writable. Then nobody else can have changed it, and it can be loaded in place; or
(b) its ``meta.json`` carries an HMAC-SHA256 (``meta["hmac"]``) over its canonical form (key, status,
    files with sizes and sha256, ...) that verifies with the deployment's trust key. The artifact bytes
    are then checked against those sha256 as they are copied to a private folder (unless the file
    system is read-only), so what the backend reads is what was signed.

Anything else is a miss with one warning that says why and what to do; it is never handed to a
backend. A symlink anywhere in an entry refuses it outright.

The trust key is a file holding at least 32 hex digits (``trt-runtime cache keygen`` writes one):
``RuntimeSettings.trust_key_file``, else the path in ``$TRT_RUNTIME_TRUST_KEY``, else ``trust.key`` in
``platformdirs.user_config_dir("trt_runtime")`` when present. A path, not the key itself, so the secret
stays out of process listings, crash reports and child environments, and a Kubernetes secret mounts as
is. A key file writable by group/others is refused: whoever could replace it could make us trust them.
With a key configured every entry written is signed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import logging_utils
from .errors import ConfigurationError

__all__ = [
    "TRUST_KEY_ENV",
    "TrustKey",
    "load_trust_key",
    "default_key_path",
    "generate_key",
    "canonical_bytes",
    "trusted_uids",
    "unsafe_reason",
    "ancestors_reason",
    "warn_once",
]

logger = logging.getLogger(__name__)

TRUST_KEY_ENV = "TRT_RUNTIME_TRUST_KEY"
KEY_FILE_NAME = "trust.key"
MAC_FIELD = "hmac"
"""The meta.json field holding the signature (``signature`` already names the input signature)."""
_ALG = "hmac-sha256"
_MIN_KEY_BYTES = 16
_MAX_KEY_FILE = 4096


@dataclasses.dataclass(frozen=True)
class TrustKey:
    """A deployment's HMAC key. ``key_id`` names it in signatures (a hash of the key, not the key)."""

    secret: bytes = dataclasses.field(repr=False)
    source: str = ""

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"trt_runtime key id\0" + self.secret).hexdigest()[:16]

    def sign(self, obj: Mapping[str, Any], domain: str = "entry") -> dict[str, str]:
        """The signature of ``obj`` (without its own ``hmac`` field) in this ``domain``."""
        mac = hmac.new(self.secret, _message(obj, domain), hashlib.sha256).hexdigest()
        return {"alg": _ALG, "key_id": self.key_id, "value": mac}

    def check(self, obj: Mapping[str, Any], domain: str = "entry") -> str | None:
        """None when ``obj[MAC_FIELD]`` verifies, else why not (for a warning)."""
        sig = obj.get(MAC_FIELD)
        if not isinstance(sig, Mapping):
            return "it carries no signature"
        if sig.get("alg") != _ALG or not isinstance(sig.get("value"), str):
            return f"its signature uses an unknown algorithm ({sig.get('alg')!r})"
        if sig.get("key_id") != self.key_id:
            return (f"it is signed with another key (id {str(sig.get('key_id'))[:16]}), not this "
                    f"deployment's key (id {self.key_id})")
        want = hmac.new(self.secret, _message(obj, domain), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, sig["value"]):
            return "its signature does not match its contents (edited after signing)"
        return None


def canonical_bytes(obj: Mapping[str, Any]) -> bytes:
    """``obj`` without its signature as canonical JSON: sorted keys, no spaces, ASCII. Signed and
    verified on the parsed JSON, so formatting of meta.json does not matter."""
    body = {k: v for k, v in obj.items() if k != MAC_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _message(obj: Mapping[str, Any], domain: str) -> bytes:
    return f"trt_runtime {domain} v1\n".encode() + canonical_bytes(obj)


# ------------------------------------------------------------------------------------------------ keys
def default_key_path() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("trt_runtime", appauthor=False)) / KEY_FILE_NAME


def load_trust_key(explicit: str | os.PathLike | None = None) -> TrustKey | None:
    """The configured trust key, or None. ``explicit`` (``RuntimeSettings.trust_key_file``) wins; ``""``
    means no key. A key that is configured but unusable raises ``ConfigurationError``: running
    without it would silently refuse (or, worse, accept) entries the user meant to govern."""
    if explicit is not None:
        return _read_key(Path(explicit).expanduser(), "trust_key_file") if os.fspath(explicit) else None
    from_env = os.environ.get(TRUST_KEY_ENV)
    if from_env is not None:
        return _read_key(Path(from_env).expanduser(), f"${TRUST_KEY_ENV}") if from_env.strip() else None
    path = default_key_path()
    if not os.path.lexists(path):
        return None
    return _read_key(path, "the default key file")


def _read_key(path: Path, origin: str) -> TrustKey:
    hint = "write one with `trt-runtime cache keygen` (a file of 64 hex digits, mode 0600)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise ConfigurationError(f"cannot read the trust key named by {origin}: {err.strerror or err}",
                                 hint=hint) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_KEY_FILE:
            raise ConfigurationError(f"the trust key named by {origin} ({path}) is not a small regular file",
                                     hint=hint)
        if st.st_mode & 0o022:
            raise ConfigurationError(
                f"the trust key {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                "whoever can replace it can make this process trust their cache entries",
                hint=f"chmod 600 {path}")
        text = os.read(fd, _MAX_KEY_FILE + 1).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) < _MIN_KEY_BYTES:
        raise ConfigurationError(f"the trust key {path} must hold at least {2 * _MIN_KEY_BYTES} hex digits",
                                 hint=hint)
    return TrustKey(secret, str(path))


def generate_key(path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
    """Write a new random 256-bit key (hex, mode 0600, folder 0700 when created). Refuses to replace
    an existing key unless ``overwrite``: entries signed with the old one would stop loading."""
    target = Path(path).expanduser() if path else default_key_path()
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(target, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


# ------------------------------------------------------------------------------------------------ owners
def trusted_uids() -> frozenset[int]:
    """This user and root (root can change anything anyway; a root-owned baked image is as safe as ours)."""
    return frozenset({os.getuid(), 0})


def unsafe_reason(st: os.stat_result, what: str, *, dir_ok_if_sticky: bool = False) -> str | None:
    """Why a file or folder with this (l)stat could have been written by someone else, or None.

    Group write is harmless when the group is the owner's private group (named like the user, no other
    members: the "user private group" of Debian/Ubuntu, where umask 002 is common)."""
    uids = trusted_uids()
    if stat.S_ISLNK(st.st_mode):
        return f"{what} is a symbolic link"
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return f"{what} is not a regular file or folder"
    if st.st_uid not in uids:
        return f"{what} is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if dir_ok_if_sticky and st.st_mode & stat.S_ISVTX:
        return None
    writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and not _private_group(st.st_gid, st.st_uid))
    if writable:
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


@functools.lru_cache(maxsize=64)
def _private_group(gid: int, uid: int) -> bool:
    try:
        import grp
        import pwd

        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except (ImportError, KeyError):
        return False
    return group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def ancestors_reason(folder: str | os.PathLike) -> str | None:
    """Why another user could replace ``folder`` or a folder above it, or None.

    Pass a resolved path (``os.path.realpath``): the chain is checked with ``lstat`` as given, so a
    component that is (or became) a link is reported, not followed. A folder above may be writable by
    others only with the sticky bit (``/tmp``): then nobody can rename what they do not own."""
    path = os.path.abspath(folder)
    parts = Path(path).parts
    current = Path(parts[0])
    for part in (*parts[1:], None):
        try:
            st = os.lstat(current)
        except OSError as err:
            return f"{current} cannot be inspected ({err.strerror or err})"
        reason = unsafe_reason(st, f"folder {current}", dir_ok_if_sticky=part is not None)
        if reason:
            return reason
        if part is None:
            return None
        current = current / part
    return None


# ------------------------------------------------------------------------------------------------ warnings
def warn_once(subject: str, reason: str, message: str, *args: Any) -> None:
    """``logger.warning`` once per (subject, reason) for the life of the process: a refused entry is
    looked up again on every new process and shape, and one line per entry and cause is enough."""
    logging_utils.warn_once(logger, subject, reason, message, *args)


forget_warnings = logging_utils.forget_warnings
"""Warn again about everything (tests; a long-lived service after an operator fixed the cache)."""
