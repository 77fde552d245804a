"""Which records of a ``.pt2`` archive would run code when ``torch.export.load`` reads it.

``torch.export.load`` (torch 2.11-2.14, ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``) reads a zip whose records sit under one top folder. Most are data:
raw tensor bytes (``data/weights/weight_N``, ``data/constants/tensor_N``), JSON (``models/*.json``, the
``*_weights_config.json`` / ``*_constants_config.json`` payload configs), strings (``extra/``). These run
code when read:

- a payload config entry with ``"use_pickle": true``: the weight or tensor constant is read with
  ``torch.load(weights_only=False)``, a full unpickle (torch writes these for tensor subclasses);
- ``data/constants/opaque_obj_N`` (or a config ``path_name`` with that prefix): ``pickle.loads``;
- legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` and an archive without
  ``archive_format`` = ``pt2`` (the pre-2.8 loader): ``torch.load`` with a fallback to ``weights_only=False``;
- ``data/sample_inputs/<model>.pt``: ``torch.load(weights_only=True)`` first, then, if that fails,
  ``weights_only=False`` -- so it is safe only when the restricted unpickler accepts it;
- ``data/aotinductor/``: shared libraries that AOTInductor loads (native code).

``data/constants/custom_obj_N`` (TorchScript-pickled torchbind objects such as TensorRT engines) goes
through the TorchScript unpickler, which only rebuilds registered classes; it is allowed, and an engine
deserialised by TensorRT is trusted only as far as the entry holding it (see ``trust``).

``unsafe_records`` lists every such record and anything it does not recognise. ``EngineCache.write``
stores that list per ``.pt2`` file in ``meta.json`` (what we wrote), and ``EngineCache.loading`` refuses an
archive that has records the writer did not declare.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import IO

__all__ = ["unsafe_records", "pickled_weights"]

_CONFIG_LIMIT = 64 << 20
_SAMPLE_LIMIT = 256 << 20
_SAFE_EXACT = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
               "version"}
_SAFE = [re.compile(p) for p in (
    r"models/[^/]+\.json",
    r"data/weights/weight_\d+",
    r"data/weights/[^/]+_(weights_config|model_param_config)\.json",
    r"data/constants/(tensor|custom_obj)_\d+",
    r"data/constants/[^/]+_(constants_config|model_constants_config)\.json",
    r"data/sample_inputs/[^/]+\.pt",
    r"extra/.+",
    r"data/executorch/.+",
)]
_CONFIG = re.compile(r"data/(weights|constants)/[^/]+_(weights_config|constants_config)\.json")


def unsafe_records(archive: str | os.PathLike | IO[bytes], *, check_sample_inputs: bool = True) -> list[str]:
    """Records of the ``.pt2`` ``archive`` that ``torch.export.load`` would unpickle or execute, as
    sorted human-readable strings; ``[]`` for an archive of plain data. Never unpickles anything
    itself except through ``torch.load(weights_only=True)`` (the restricted unpickler) for sample inputs."""
    found: set[str] = set()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return [f"not a zip archive ({err})"]
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            found.add("duplicate record names (readers may disagree on which one counts)")
        if not any(_strip(n) == "archive_format" for n in names):
            found.add("no archive_format record: the legacy loader would unpickle it")
        for info in infos:
            rel = _strip(info.filename)
            if rel is None or info.is_dir():
                continue
            if rel == "archive_format" and zf.read(info)[:16].strip() != b"pt2":
                found.add("archive_format is not pt2: the legacy loader would unpickle it")
            elif rel.startswith("data/aotinductor/"):
                found.add("data/aotinductor/: native AOTInductor libraries")
            elif rel.startswith("data/constants/opaque_obj_"):
                found.add(f"{rel}: pickled opaque object")
            elif _CONFIG.fullmatch(rel):
                found.update(_config_records(zf, info, rel))
            elif rel.startswith("data/sample_inputs/") and rel.endswith(".pt"):
                if check_sample_inputs and not _weights_only_loads(zf, info):
                    found.add(f"{rel}: sample inputs the restricted unpickler refuses")
            elif rel not in _SAFE_EXACT and not any(p.fullmatch(rel) for p in _SAFE):
                found.add(f"{rel}: unexpected record")
    return sorted(found)


def pickled_weights(archive: str | os.PathLike | IO[bytes]) -> list[str]:
    """Just the weights and constants stored as pickle (``use_pickle``), as ``record (name)`` strings."""
    return [r for r in unsafe_records(archive, check_sample_inputs=False) if r.endswith("is stored as pickle")]


def _strip(name: str) -> str | None:
    """The record name below the archive's top folder (torch's reader ignores that folder's name)."""
    head, sep, rest = name.partition("/")
    return rest if sep and head else None


def _config_records(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str) -> list[str]:
    if info.file_size > _CONFIG_LIMIT:
        return [f"{rel}: payload config too large to inspect"]
    try:
        config = json.loads(zf.read(info))
        entries = config["config"]
        if not isinstance(entries, dict):
            raise TypeError("config is not an object")
    except (ValueError, KeyError, TypeError, RecursionError, zipfile.BadZipFile) as err:
        return [f"{rel}: unreadable payload config ({type(err).__name__})"]
    folder = rel.rsplit("/", 1)[0]
    out = []
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            out.append(f"{rel}: malformed entry {fqn!r}")
            continue
        path_name = meta.get("path_name")
        if meta.get("use_pickle") is not False or not isinstance(path_name, str):
            if folder == "data/constants" and isinstance(path_name, str) and path_name.startswith("custom_obj_"):
                continue  # torchbind objects are always "use_pickle": TorchScript unpickler, see above
            out.append(f"{folder}/{path_name} ({fqn}) is stored as pickle")
        elif path_name.startswith("opaque_obj_"):
            out.append(f"{folder}/{path_name} ({fqn}): pickled opaque object")
    return out


def _weights_only_loads(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bool:
    if info.file_size > _SAMPLE_LIMIT:
        return False
    import torch

    try:
        torch.load(io.BytesIO(zf.read(info)), weights_only=True, map_location="cpu")
    except Exception:
        return False
    return True
