"""Issue 12/13 faults that involve several processes, run with real processes: a killed writer, builds
racing on one key, another process's failure, eviction under a reader, lock files deleted under waiters,
and staging folders of other hosts on shared storage."""

from __future__ import annotations

import os
import time

from trt_runtime.cache import EngineCache

from .helpers import KEY, OTHER, fill_with, python

_WRITE_AND_HANG = """
import sys, time
from pathlib import Path
from trt_runtime.cache import EngineCache

def fill(folder):
    (Path(folder) / "engine.bin").write_bytes(b"x" * 100_000)
    print("filling", flush=True)
    time.sleep(600)

EngineCache(sys.argv[1]).write(sys.argv[2], {}, fill)
"""


def test_a_killed_writers_staging_counts_against_the_cap_and_is_swept(tmp_path):
    proc = python(_WRITE_AND_HANG, str(tmp_path), KEY, background=True)
    try:
        assert proc.stdout.readline().strip() == "filling"
    finally:
        proc.kill()
        proc.wait()
    cache = EngineCache(tmp_path, max_bytes=10**9)
    assert cache.read(KEY) is None and cache.total_bytes() == 100_000
    cache.write(OTHER, {}, fill_with(b"y"))  # any later write sweeps what dead writers left
    assert os.listdir(tmp_path / ".staging") == [] and cache.total_bytes() == 1


def test_staging_of_another_host_is_judged_by_age_not_pid(tmp_path):
    cache = EngineCache(tmp_path, stale_after_s=3600)
    cache.write(KEY, {}, fill_with(b"x"))
    young = tmp_path / ".staging" / f"{OTHER}.otherhost.{os.getpid() + 1}.0badc0de.new"
    old = tmp_path / ".staging" / f"{OTHER}.otherhost.{os.getpid() + 2}.deadbeef.new"
    for folder in (young, old):
        folder.mkdir()
        (folder / "engine.bin").write_bytes(b"z" * 10)
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    cache.clear()
    assert young.is_dir() and not old.exists()


_BUILD_ONCE = """
import os, sys, time
from trt_runtime.cache import EngineCache
root, key, log = sys.argv[1:]
cache = EngineCache(root)
with cache.lock(key, timeout=120):
    if cache.read(key) is None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1)
        cache.write(key, {"component": "unet"}, lambda d: (d / "engine.bin").write_bytes(b"built"))
entry = cache.read(key)
with cache.loading(entry) as folder:
    print((folder / "engine.bin").read_bytes().decode())
"""


def test_three_processes_on_one_key_build_once_and_all_load(tmp_path):
    log = tmp_path / "builds.log"
    procs = [python(_BUILD_ONCE, str(tmp_path / "cache"), KEY, str(log), background=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert len(log.read_text().split()) == 1
    assert [out.strip() for out, _ in outputs] == ["built"] * 3


def test_another_processes_failure_never_downgrades_a_ready_entry(tmp_path):
    cache = EngineCache(tmp_path)
    cache.write(KEY, {"component": "unet"}, fill_with(b"engine"))
    python("import sys; from trt_runtime.cache import EngineCache; "
           "print(EngineCache(sys.argv[1]).write_failure(sys.argv[2], {}, 'CUDA out of memory').status)",
           str(tmp_path), KEY)
    assert cache.read(KEY).status == "ready" and (cache.read(KEY).path / "engine.bin").read_bytes() == b"engine"


_LOAD_SLOWLY = """
import sys, time
from pathlib import Path
from trt_runtime.cache import EngineCache
cache = EngineCache(sys.argv[1])
with cache.loading(cache.read(sys.argv[2])) as folder:
    print("loading", flush=True)
    while not Path(sys.argv[3]).exists():
        time.sleep(0.05)
    print((folder / "engine.bin").read_bytes().decode(), flush=True)
"""


def test_eviction_never_deletes_an_entry_another_process_is_loading(tmp_path):
    cache = EngineCache(tmp_path, max_bytes=150)
    cache.write(KEY, {}, fill_with(b"k" * 100))
    os.utime(cache.path_for(KEY) / "meta.json", (1000, 1000))  # the oldest: first to go
    done = tmp_path / "done"
    reader = python(_LOAD_SLOWLY, str(tmp_path), KEY, str(done), background=True)
    try:
        assert reader.stdout.readline().strip() == "loading"
        cache.write(OTHER, {}, fill_with(b"o" * 100))  # over the cap: evicts, but KEY is being read
        assert cache.read(KEY) is not None
    finally:
        done.touch()
        out, err = reader.communicate(timeout=60)
    assert reader.returncode == 0 and out.splitlines()[-1] == "k" * 100, err
    assert cache.evict() == [KEY] and cache.read(KEY) is None  # reader gone: now it may go


_COUNT_UNDER_LOCK = """
import sys, time
from pathlib import Path
from trt_runtime.cache import EngineCache
cache, counter = EngineCache(sys.argv[1]), Path(sys.argv[3])
for _ in range(int(sys.argv[4])):
    with cache.lock(sys.argv[2], timeout=120):
        value = int(counter.read_text())
        time.sleep(0.002)
        counter.write_text(str(value + 1))
"""

_DELETE_LOCK_FILES = """
import sys, time
from pathlib import Path
from trt_runtime import _cache_locks as locks, _cache_fs as fs
locks_fd = fs.open_dir(Path(sys.argv[1]) / ".locks")
deleted = 0
while not Path(sys.argv[2]).exists():
    deleted += locks.remove_lock_file(locks_fd, sys.argv[3] + ".lock")
    time.sleep(0.0005)
print(deleted)
"""


def test_deleting_lock_files_under_waiters_keeps_mutual_exclusion(tmp_path):
    cache = EngineCache(tmp_path)
    with cache.lock(KEY, timeout=1):
        pass
    counter, stop = tmp_path / "counter", tmp_path / "stop"
    counter.write_text("0")
    deleter = python(_DELETE_LOCK_FILES, str(tmp_path), str(stop), KEY, background=True)
    workers = [python(_COUNT_UNDER_LOCK, str(tmp_path), KEY, str(counter), "80", background=True) for _ in range(3)]
    results = [w.communicate(timeout=300) for w in workers]
    stop.touch()
    deleted = deleter.communicate(timeout=60)[0]
    assert all(w.returncode == 0 for w in workers), results
    assert int(counter.read_text()) == 240, "two processes held the lock at once"
    assert int(deleted) > 0, "the lock file was never deleted: the test proved nothing"
