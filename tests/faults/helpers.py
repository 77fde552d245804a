"""Shared by the cache, trust and fault-injection tests: planting entries, hermetic keys, subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEY = "ab" * 20
OTHER = "cd" * 20
STRANGER = 4321
"""A uid that is not ours (tests run as root here, so chown to it works)."""


def isolate_trust(monkeypatch, tmp_path):
    """For an autouse fixture: no trust key from the user's environment or config dir, and every
    warning shown again (``yield from isolate_trust(monkeypatch, tmp_path)``)."""
    from trt_runtime import trust

    monkeypatch.delenv(trust.TRUST_KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    trust.forget_warnings()
    yield
    trust.forget_warnings()


def fill_with(data: bytes, name: str = "engine.bin"):
    def fill(folder):
        (Path(folder) / name).write_bytes(data)

    return fill


def rewrite_artifact(entry_path: Path, name: str, data: bytes) -> None:
    """What an attacker with write access does: replace the artifact and fix meta.json's size and sha256
    (keeping any signature, which then no longer matches)."""
    (entry_path / name).write_bytes(data)
    meta_file = entry_path / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["files"][name] = {**meta["files"][name], "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    meta_file.write_text(json.dumps(meta))


def chown_tree(path: Path, uid: int, gid: int | None = None) -> None:
    gid = uid if gid is None else gid
    os.chown(path, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


class Payload:
    """A pickle whose loading creates ``marker``: proof that someone unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def python(code: str, *args: str, env: dict | None = None, timeout: float = 120, check: bool = True,
           background: bool = False):
    """Run ``code`` in a fresh interpreter that imports this worktree's trt_runtime."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if background:
        return subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result = subprocess.run(cmd, env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def cli(*args: str, env: dict | None = None, timeout: float = 120):
    return python("import sys; from trt_runtime.cli import main; sys.exit(main(sys.argv[1:]))", *args,
                  env=env, timeout=timeout, check=False)
