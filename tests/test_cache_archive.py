"""Export / import of cache entries as one archive (trt_runtime/cache_archive.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from trt_runtime import trust
from trt_runtime.cache import EngineCache
from trt_runtime.errors import CacheError, ReadOnlyCacheError, UntrustedEntryError

from .faults.helpers import KEY, OTHER, STRANGER, chown_tree, fill_with, isolate_trust

SECRET = trust.TrustKey(bytes(range(32)))
ENV = {"torch": "2.14.1", "compute_capability": "9.0", "gpu": "NVIDIA H100 80GB HBM3"}


@pytest.fixture(autouse=True)
def _hermetic_trust(monkeypatch, tmp_path):
    yield from isolate_trust(monkeypatch, tmp_path)


def _source(tmp_path, key=SECRET, env=ENV) -> EngineCache:
    cache = EngineCache(tmp_path / "built", trust_key=key)
    cache.write(KEY, {"component": "unet", "environment": env}, fill_with(b"unet engine"))
    cache.write(OTHER, {"component": "vae.decoder", "environment": env}, fill_with(b"vae engine", "program.pt2"))
    cache.write_failure("ef" * 20, {"component": "unet"}, "unsupported op")
    return cache


@pytest.mark.parametrize("name", ["entries.tar", "entries.tar.gz"])
def test_round_trip_keeps_signatures_so_entries_load_in_the_trust_model(tmp_path, name):
    report = _source(tmp_path).export(tmp_path / name)
    assert sorted(report.done) == sorted([KEY, OTHER]) and report.skipped[0][1].startswith("not ready")
    assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600
    replica = EngineCache(tmp_path / "replica", trust_key=SECRET)
    imported = replica.import_(tmp_path / name, environment=ENV)
    assert sorted(imported.done) == sorted([KEY, OTHER]) and imported.skipped == []
    chown_tree(replica.path_for(KEY), STRANGER)  # as if a team volume: still loads, by signature
    entry = replica.read(KEY)
    assert entry.trust == "signature"
    with replica.loading(entry) as folder:
        assert (folder / "engine.bin").read_bytes() == b"unet engine"


def test_unsigned_or_foreign_entries_are_refused_unless_vouched_for(tmp_path):
    _source(tmp_path, key=None).export(tmp_path / "a.tar")
    replica = EngineCache(tmp_path / "replica", trust_key=SECRET)
    report = replica.import_(tmp_path / "a.tar")
    assert report.done == [] and all("carries no signature" in why for _, why in report.skipped)
    assert EngineCache(tmp_path / "nokey", trust_key=None).import_(tmp_path / "a.tar").done == []
    vouched = replica.import_(tmp_path / "a.tar", allow_unsigned=True)
    assert sorted(vouched.done) == sorted([KEY, OTHER])
    assert SECRET.check(replica.read(KEY).meta) is None  # signed here on import


def test_an_archive_signed_with_another_key_is_refused_whole(tmp_path):
    _source(tmp_path, key=trust.TrustKey(b"\x01" * 32)).export(tmp_path / "a.tar")
    with pytest.raises(UntrustedEntryError, match="signed with another key"):
        EngineCache(tmp_path / "replica", trust_key=SECRET).import_(tmp_path / "a.tar")
    assert not (tmp_path / "replica" / KEY).exists()


def test_entries_for_another_gpu_or_library_version_are_refused_with_the_reason(tmp_path):
    _source(tmp_path).export(tmp_path / "a.tar")
    replica = EngineCache(tmp_path / "replica", trust_key=SECRET)
    report = replica.import_(tmp_path / "a.tar", environment={**ENV, "compute_capability": "8.9"})
    assert report.done == [] and "built for compute_capability 9.0, this environment has 8.9" in report.skipped[0][1]
    report = replica.import_(tmp_path / "a.tar", environment={"torch": "2.13.0", "cpu": "x86_64"})
    assert "has no GPU" in report.skipped[0][1]
    assert sorted(replica.import_(tmp_path / "a.tar", environment=lambda meta: ENV).done) == sorted([KEY, OTHER])


def _rewrite(archive, out, change):
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isreg() else None
            for new_member, new_data in change(member, data):
                dst.addfile(new_member, io.BytesIO(new_data) if new_data is not None else None)


def test_tampered_artifacts_and_metas_are_refused(tmp_path):
    _source(tmp_path).export(tmp_path / "a.tar")

    def tamper(member, data):
        if member.name == f"entries/{KEY}/engine.bin":
            data = b"evil engine"[: member.size].ljust(member.size, b"!")
        if member.name == f"entries/{OTHER}/meta.json":
            meta = json.loads(data)
            meta["component"] = "unet"
            data = json.dumps(meta).encode()
            member.size = len(data)
        yield member, data

    _rewrite(tmp_path / "a.tar", tmp_path / "b.tar", tamper)
    report = EngineCache(tmp_path / "replica", trust_key=SECRET).import_(tmp_path / "b.tar")
    reasons = dict(report.skipped)
    assert report.done == [] and "checksum" in reasons[KEY] and "does not match the manifest" in reasons[OTHER]
    assert not (tmp_path / "replica" / KEY).exists()


def test_hostile_members_are_never_extracted(tmp_path):
    _source(tmp_path).export(tmp_path / "a.tar")

    def add_hostile(member, data):
        yield member, data
        if member.name == "MANIFEST.json":
            for name in ("../escape.txt", "/tmp/abs-escape.txt", f"entries/{KEY}/../../escape2.txt"):
                info = tarfile.TarInfo(name)
                info.size = 4
                yield info, b"evil"
            link = tarfile.TarInfo(f"entries/{KEY}/engine.bin.link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            yield link, None

    _rewrite(tmp_path / "a.tar", tmp_path / "b.tar", add_hostile)
    replica = EngineCache(tmp_path / "replica" / "cache", trust_key=SECRET)
    assert sorted(replica.import_(tmp_path / "b.tar").done) == sorted([KEY, OTHER])
    assert not any(p.name.startswith(("escape", "abs-escape")) for p in tmp_path.rglob("*"))
    assert not os.path.exists("/tmp/abs-escape.txt")
    assert sorted(os.listdir(replica.path_for(KEY))) == ["engine.bin", "meta.json"]


def test_existing_ready_entries_are_kept_unless_replace(tmp_path):
    _source(tmp_path).export(tmp_path / "a.tar")
    replica = EngineCache(tmp_path / "replica", trust_key=SECRET)
    replica.write(KEY, {"component": "unet", "mine": True}, fill_with(b"local"))
    report = replica.import_(tmp_path / "a.tar", environment=ENV)
    assert dict(report.skipped)[KEY].startswith("a ready entry") and replica.read(KEY).meta.get("mine")
    replica.import_(tmp_path / "a.tar", replace=True)
    assert not replica.read(KEY).meta.get("mine")


def test_read_only_cache_and_non_archives(tmp_path):
    _source(tmp_path).export(tmp_path / "a.tar")
    with pytest.raises(ReadOnlyCacheError):
        EngineCache(tmp_path / "r", read_only=True).import_(tmp_path / "a.tar")
    (tmp_path / "x.tar").write_bytes(b"garbage")
    with pytest.raises(CacheError, match="cannot read the archive"):
        EngineCache(tmp_path / "r", trust_key=SECRET).import_(tmp_path / "x.tar")


def test_fsspec_urls(tmp_path):
    pytest.importorskip("fsspec")
    _source(tmp_path).export("memory://bucket/entries.tar.gz")
    replica = EngineCache(tmp_path / "replica", trust_key=SECRET)
    assert sorted(replica.import_("memory://bucket/entries.tar.gz").done) == sorted([KEY, OTHER])
