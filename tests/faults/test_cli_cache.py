"""`trt-runtime cache ...` as a user runs it (subprocesses): exit status, one-line errors, what is left."""

from __future__ import annotations

import json
import os

from trt_runtime.cache import EngineCache

from .helpers import KEY, OTHER, cli, fill_with


def _cache(tmp_path) -> EngineCache:
    cache = EngineCache(tmp_path / "cache")
    cache.write(KEY, {"component": "unet", "shapes": [[2, 4, 8, 8]]}, fill_with(b"x" * 100))
    cache.write(OTHER, {"component": "vae.decoder"}, fill_with(b"y" * 100))
    cache.write_failure("ef" * 20, {"component": "unet"}, "unsupported op")
    return cache


def test_verify_exits_zero_when_sound_and_one_on_damage(tmp_path):
    cache = _cache(tmp_path)
    ok = cli("--cache-dir", str(cache.root), "cache", "verify")
    assert ok.returncode == 0 and "3 ok, 0 damaged, 0 untrusted" in ok.stdout
    (cache.path_for(OTHER) / "engine.bin").write_bytes(b"z" * 100)  # same size, other bytes
    bad = cli("--cache-dir", str(cache.root), "cache", "verify", "--json")
    assert bad.returncode == 1
    states = {f["key"]: f["state"] for f in json.loads(bad.stdout)}
    assert states[OTHER] == "damaged" and states[KEY] == "ok"


def test_verify_checksums_even_when_reads_skip_them(tmp_path):
    cache = _cache(tmp_path)
    (cache.path_for(OTHER) / "engine.bin").write_bytes(b"z" * 100)
    assert EngineCache(cache.root, verify_checksum=False).read(OTHER) is not None
    assert {f.key: f.state for f in EngineCache(cache.root, verify_checksum=False).verify()}[OTHER] == "damaged"


def test_prune_by_failure_component_age_and_size(tmp_path):
    cache = _cache(tmp_path)
    run = lambda *a: cli("--cache-dir", str(cache.root), "cache", "prune", *a)  # noqa: E731
    dry = run("--failed", "--dry-run")
    assert dry.returncode == 0 and "would remove 1" in dry.stdout and len(cache.entries()) == 3
    assert run("--failed").returncode == 0 and {e.key for e in cache.entries()} == {KEY, OTHER}
    os.utime(cache.path_for(KEY) / "meta.json", (1000, 1000))
    assert run("--older-than", "7d", "--component", "vae.decoder").returncode == 0
    assert {e.key for e in cache.entries()} == {KEY, OTHER}  # the old one is a unet
    assert run("--older-than", "7d").returncode == 0 and {e.key for e in cache.entries()} == {OTHER}
    assert run("--max-bytes", "10").returncode == 0 and cache.entries() == []
    assert run("--max-bytes", "ten").returncode != 0


def test_export_then_import_through_the_cli(tmp_path):
    cache = _cache(tmp_path)
    archive = tmp_path / "unet.tar.gz"
    out = cli("--cache-dir", str(cache.root), "cache", "export", str(archive), "--component", "unet")
    assert out.returncode == 0 and "exported 1 entries" in out.stdout
    replica = tmp_path / "replica"
    refused = cli("--cache-dir", str(replica), "cache", "import", str(archive))
    assert refused.returncode == 1 and "no trust key is configured" in refused.stdout
    vouched = cli("--cache-dir", str(replica), "cache", "import", str(archive), "--trust-unsigned")
    assert vouched.returncode == 0, vouched.stdout + vouched.stderr
    assert [e.key for e in EngineCache(replica).entries()] == [KEY]


def test_keygen_then_signed_entries(tmp_path):
    key = tmp_path / "team.key"
    assert cli("cache", "keygen", "--path", str(key)).returncode == 0
    assert cli("cache", "keygen", "--path", str(key)).returncode == 1  # never silently replaced
    env = {"TRT_RUNTIME_TRUST_KEY": str(key)}
    cache_dir = tmp_path / "cache"
    code = ("import sys; from trt_runtime.cache import EngineCache; c = EngineCache(sys.argv[1]); "
            "c.write('ab' * 20, {}, lambda d: (d / 'engine.bin').write_bytes(b'x'))")
    from .helpers import python

    python(code, str(cache_dir), env=env)
    meta = json.loads((cache_dir / KEY / "meta.json").read_text())
    assert meta["hmac"]["alg"] == "hmac-sha256"
    result = cli("--cache-dir", str(cache_dir), "cache", "verify", env=env)
    assert result.returncode == 0 and "owner" in result.stdout


def test_clear_reports_errors_in_one_line(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    result = cli("--cache-dir", str(plain), "cache", "clear")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert cli("--cache-dir", str(tmp_path / "missing"), "cache", "clear").returncode == 0
    cache = _cache(tmp_path)
    assert cli("--cache-dir", str(cache.root), "cache", "clear", "--failed").returncode == 0
    assert len(cache.entries()) == 2
