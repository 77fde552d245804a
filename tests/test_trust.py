"""The trust model: who may put code in this process through the cache (see trt_runtime/trust.py).

Tests run as root here, so "written by someone else" is made real with ``os.chown`` to another uid, and
"this user is not root" with a patched ``trusted_uids``. Each refusal test has a twin that loads, so a
test that passes because nothing ever loads would fail its twin."""

from __future__ import annotations

import json
import logging
import os
import pickle
import stat

import pytest

from trt_runtime import trust
from trt_runtime.cache import EngineCache
from trt_runtime.errors import ConfigurationError, UntrustedEntryError

from .faults.helpers import KEY, STRANGER, Payload, chown_tree, fill_with, isolate_trust, rewrite_artifact


@pytest.fixture(autouse=True)
def _hermetic_trust(monkeypatch, tmp_path):
    yield from isolate_trust(monkeypatch, tmp_path)

SECRET = trust.TrustKey(bytes(range(32)))
OTHER_SECRET = trust.TrustKey(bytes(range(1, 33)))


def _planted(tmp_path, payload_marker, *, owner: int, key=None, mode=None):
    """A cache holding entry KEY whose artifact is a hostile pickle with fixed-up checksums."""
    cache = EngineCache(tmp_path / "cache", trust_key=key)
    cache.write(KEY, {"component": "unet"}, fill_with(pickle.dumps("benign"), "inductor_cache.bin"))
    rewrite_artifact(cache.path_for(KEY), "inductor_cache.bin", pickle.dumps(Payload(payload_marker)))
    chown_tree(cache.path_for(KEY), owner)
    if mode is not None:
        os.chmod(cache.path_for(KEY), mode)
    return cache


def _load_like_inductor(cache: EngineCache):
    """What the runtime does with an entry: read, then hand the files to a backend that unpickles."""
    entry = cache.read(KEY)
    if entry is None:
        return None
    with cache.loading(entry) as folder:
        return pickle.loads((folder / "inductor_cache.bin").read_bytes())


def test_planted_entry_of_another_user_is_refused_before_any_unpickling(tmp_path, caplog):
    marker = tmp_path / "pwned"
    cache = _planted(tmp_path, marker, owner=STRANGER)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        assert _load_like_inductor(cache) is None
    assert not marker.exists()
    (record,) = [r for r in caplog.records if "ignoring cache entry" in r.getMessage()]
    assert f"uid {STRANGER}" in record.getMessage() and "TRT_RUNTIME_TRUST_KEY" in record.getMessage()


def test_the_same_planted_entry_owned_by_us_does_run_its_payload(tmp_path):
    """The twin of the test above: proves the payload is live, so the refusal is what saved us."""
    marker = tmp_path / "pwned"
    cache = _planted(tmp_path, marker, owner=os.getuid())
    _load_like_inductor(cache)
    assert marker.exists()


@pytest.mark.parametrize("where", ["entry", "file", "root"])
def test_group_or_world_writable_folders_or_files_are_refused(tmp_path, where):
    marker = tmp_path / "pwned"
    cache = _planted(tmp_path, marker, owner=os.getuid())
    target = {"entry": cache.path_for(KEY), "file": cache.path_for(KEY) / "inductor_cache.bin",
              "root": cache.root}[where]
    os.chmod(target, stat.S_IMODE(os.stat(target).st_mode) | stat.S_IWOTH)
    assert _load_like_inductor(cache) is None and not marker.exists()


def test_a_writable_folder_above_the_cache_is_refused_unless_sticky(tmp_path):
    parent = tmp_path / "shared"
    parent.mkdir()
    cache = EngineCache(parent / "cache")
    cache.write(KEY, {}, fill_with(b"x"))
    os.chmod(parent, 0o777)
    assert cache.read(KEY) is None
    os.chmod(parent, 0o1777)  # like /tmp: others cannot rename what they do not own
    assert cache.read(KEY) is not None


def test_root_owned_entries_are_trusted_by_a_normal_user(tmp_path, monkeypatch):
    cache = EngineCache(tmp_path / "cache")
    cache.write(KEY, {}, fill_with(b"x"))
    monkeypatch.setattr(trust, "trusted_uids", lambda: frozenset({1000, 0}))  # we are uid 1000
    assert cache.read(KEY).trust == "owner"  # everything here is root's: a baked image
    chown_tree(cache.path_for(KEY), 1001)
    assert cache.read(KEY) is None


def test_signed_entry_of_another_user_loads_through_a_verified_private_copy(tmp_path):
    cache = EngineCache(tmp_path / "cache", trust_key=SECRET)
    cache.write(KEY, {"component": "vae"}, fill_with(pickle.dumps("signed payload"), "inductor_cache.bin"))
    chown_tree(cache.path_for(KEY), STRANGER)
    entry = cache.read(KEY)
    assert entry.trust == "signature" and not entry.in_place and entry.meta["hmac"]["key_id"] == SECRET.key_id
    with cache.loading(entry) as folder:
        assert folder != entry.path and stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        assert pickle.loads((folder / "inductor_cache.bin").read_bytes()) == "signed payload"
    assert not folder.exists()


def test_a_signed_entry_rewritten_after_signing_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    cache = _planted(tmp_path, marker, owner=STRANGER, key=SECRET)  # meta fixed up, signature stale
    assert cache.read(KEY) is None and not marker.exists()


def test_a_signed_entry_swapped_between_check_and_load_is_caught_by_the_copy(tmp_path):
    cache = EngineCache(tmp_path / "cache", trust_key=SECRET)
    cache.write(KEY, {}, fill_with(pickle.dumps("ok"), "inductor_cache.bin"))
    chown_tree(cache.path_for(KEY), STRANGER)
    entry = cache.read(KEY)
    (entry.path / "inductor_cache.bin").write_bytes(pickle.dumps("swapped!"))  # same size? no matter
    with pytest.raises(UntrustedEntryError):
        with cache.loading(entry):
            pass


def test_entries_signed_with_another_key_or_without_a_key_here_are_refused(tmp_path, caplog):
    writer = EngineCache(tmp_path / "cache", trust_key=OTHER_SECRET)
    writer.write(KEY, {}, fill_with(b"x"))
    chown_tree(writer.path_for(KEY), STRANGER)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        assert EngineCache(tmp_path / "cache", trust_key=SECRET).read(KEY) is None
        assert EngineCache(tmp_path / "cache", trust_key=None).read(KEY) is None
    text = caplog.text
    assert "signed with another key" in text and "no trust key is configured" in text


def test_a_symlink_anywhere_in_an_entry_is_refused_even_when_signed(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"x")
    cache = EngineCache(tmp_path / "cache", trust_key=SECRET)
    cache.write(KEY, {}, fill_with(b"x"))
    artifact = cache.path_for(KEY) / "engine.bin"
    artifact.unlink()
    artifact.symlink_to(secret)
    assert cache.read(KEY) is None
    assert cache.check(KEY)[1].reason == "it contains a symbolic link (engine.bin)"


def test_one_warning_per_entry_and_reason(tmp_path, caplog):
    cache = _planted(tmp_path, tmp_path / "m", owner=STRANGER)
    with caplog.at_level(logging.WARNING, logger="trt_runtime"):
        for _ in range(5):
            cache.read(KEY)
    assert sum("ignoring cache entry" in r.getMessage() for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------------ keys
def test_key_from_env_path_settings_and_config_dir(tmp_path, monkeypatch):
    path = trust.generate_key(tmp_path / "k" / "trust.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    monkeypatch.setenv(trust.TRUST_KEY_ENV, str(path))
    from_env = trust.load_trust_key()
    assert from_env and len(from_env.secret) == 32
    assert trust.load_trust_key("") is None  # settings: explicitly no key
    assert trust.load_trust_key(str(path)).key_id == from_env.key_id
    monkeypatch.delenv(trust.TRUST_KEY_ENV)
    assert trust.load_trust_key() is None
    default = trust.generate_key()
    assert default == trust.default_key_path() and trust.load_trust_key().source == str(default)
    with pytest.raises(FileExistsError):
        trust.generate_key()


@pytest.mark.parametrize("problem", ["missing", "short", "not hex", "group-writable", "fifo"])
def test_a_configured_but_unusable_key_is_a_configuration_error(tmp_path, monkeypatch, problem):
    path = tmp_path / "trust.key"
    if problem == "fifo":
        os.mkfifo(path)
    elif problem != "missing":
        path.write_text({"short": "abcd", "not hex": "z" * 64, "group-writable": "ab" * 32}[problem])
        os.chmod(path, 0o660 if problem == "group-writable" else 0o600)
    monkeypatch.setenv(trust.TRUST_KEY_ENV, str(path))
    with pytest.raises(ConfigurationError):
        trust.load_trust_key()


def test_signature_covers_every_field_but_not_formatting():
    meta = {"key": KEY, "status": "ready", "files": {"a": {"size": 1, "sha256": "0" * 64}}, "shapes": [[1, 2]]}
    signed = {**meta, "hmac": SECRET.sign(meta)}
    assert SECRET.check(signed) is None
    assert SECRET.check(dict(reversed(list(signed.items())))) is None
    for field, value in [("status", "failed"), ("shapes", [[1, 3]]), ("key", "cd" * 20)]:
        assert "does not match" in SECRET.check({**signed, field: value})
    assert SECRET.check(signed, "archive") is not None  # domains are separate


def test_group_sharing_needs_signatures_unless_the_group_is_private(tmp_path):
    team = 4321  # a team group: other users may be in it
    signed = EngineCache(tmp_path / "cache", sharing="group", trust_key=SECRET)
    signed.write(KEY, {}, fill_with(b"x"))
    for path in (signed.root, signed.path_for(KEY), signed.path_for(KEY) / "engine.bin"):
        os.chown(path, -1, team)
    assert stat.S_IMODE(os.stat(signed.root).st_mode) == 0o2770
    unsigned_reader = EngineCache(tmp_path / "cache", sharing="group", trust_key=None)
    assert unsigned_reader.read(KEY) is None
    assert "writable by group" in unsigned_reader.check(KEY)[1].reason
    entry = signed.read(KEY)
    assert entry.trust == "signature" and not entry.in_place
    # root's own group is private (named like the user, no members): group write is harmless there
    for path in (signed.root, signed.path_for(KEY), signed.path_for(KEY) / "engine.bin"):
        os.chown(path, -1, 0)
    assert unsigned_reader.read(KEY).trust == "owner"


def test_a_cache_reached_through_a_symlink_is_checked_and_loaded_where_it_really_is(tmp_path):
    real = tmp_path / "real"
    cache = EngineCache(real / "cache")
    cache.write(KEY, {}, fill_with(b"x"))
    link = tmp_path / "link"
    link.symlink_to(real)
    entry = EngineCache(link / "cache").read(KEY)
    assert entry.trust == "owner" and entry.path == real / "cache" / KEY  # not through the link


def test_a_swapped_optional_file_of_a_signed_entry_is_left_out_of_the_private_copy(tmp_path):
    """TensorRT-RTX reads its runtime cache: bytes the signature does not cover never reach a backend, and
    losing them costs only the speedup, not the entry."""
    cache = EngineCache(tmp_path / "cache", trust_key=SECRET)

    def fill(folder):
        (folder / "trt_program.pt2").write_bytes(b"program")
        (folder / "trt_runtime_cache.bin").write_bytes(b"kernels")

    cache.write(KEY, {}, fill, optional=frozenset({"trt_runtime_cache.bin"}))
    chown_tree(cache.path_for(KEY), STRANGER)
    entry = cache.read(KEY)
    assert entry.trust == "signature" and entry.meta["files"]["trt_runtime_cache.bin"]["optional"] is True
    (entry.path / "trt_runtime_cache.bin").write_bytes(b"hostile")  # same size, after the check
    with cache.loading(entry) as folder:
        assert (folder / "trt_program.pt2").read_bytes() == b"program"
        assert not (folder / "trt_runtime_cache.bin").exists()


def test_the_optional_mark_is_covered_by_the_signature(tmp_path):
    cache = EngineCache(tmp_path / "cache", trust_key=SECRET)
    cache.write(KEY, {}, fill_with(b"program", "trt_program.pt2"))
    meta_file = cache.path_for(KEY) / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["files"]["trt_program.pt2"]["optional"] = True  # would let a damaged program pass the check
    os.chmod(meta_file, 0o600)
    meta_file.write_text(json.dumps(meta))
    chown_tree(cache.path_for(KEY), STRANGER)
    assert cache.read(KEY) is None
