"""trt_runtime.loaded: which loads count as the same, and that nothing is kept alive by the map."""

from __future__ import annotations

import gc

from trt_runtime.loaded import LoadedArtifacts, identity

FILES = {"trt_program.pt2": {"size": 3, "sha256": "ab" * 32}, "trt_inputs.json": {"size": 2, "sha256": "cd" * 32}}


def test_identity_names_backend_key_file_checksums_and_device():
    base = identity("tensorrt", "k" * 40, FILES, "cuda:0")
    assert base == identity("tensorrt", "k" * 40, dict(reversed(FILES.items())), "cuda:0")  # order does not matter
    rebuilt = {**FILES, "trt_program.pt2": {"size": 3, "sha256": "ef" * 32}}
    others = [identity("tensorrt", "k" * 40, rebuilt, "cuda:0"), identity("tensorrt", "k" * 40, FILES, "cuda:1"),
              identity("tensorrt", "j" * 40, FILES, "cuda:0"), identity("inductor", "k" * 40, FILES, "cuda:0")]
    assert base is not None and all(other is not None and other != base for other in others)


def test_entries_without_checksums_are_never_shared():
    assert identity("tensorrt", "k" * 40, {}, "cuda:0") is None
    assert identity("tensorrt", "k" * 40, None, "cuda:0") is None
    assert identity("tensorrt", "k" * 40, {"a": {"size": 1}}, "cuda:0") is None
    shared = LoadedArtifacts()
    shared.put(None, lambda: 1)
    assert len(shared) == 0 and shared.get(None) is None


def test_artifacts_are_held_weakly():
    class Artifact:
        def __call__(self):
            return 1

    shared, ident = LoadedArtifacts(), identity("tensorrt", "k" * 40, FILES, "cuda:0")
    artifact = Artifact()
    shared.put(ident, artifact)
    assert shared.get(ident) is artifact
    del artifact
    gc.collect()
    assert shared.get(ident) is None and len(shared) == 0

    class Slotted:  # no weak references
        __slots__ = ()

        def __call__(self):
            return 1

    shared.put(ident, Slotted())  # not shared, no error
    assert shared.get(ident) is None
