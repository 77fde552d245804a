"""Pure functions that say when two calls may share a compiled artifact.

- ``signature()``: a hashable description of one call's arguments (tensor shapes or declared ranges,
  dtypes, device types; plain values by value; containers walked). Cheap: it runs on every call.
- ``module_fingerprint()``: what the module is (class, config, parameter layout, a weights digest).
  Expensive: computed once per wrapper and remembered.
- ``cache_key()``: sha256 over the canonical JSON of everything above plus backend, options and versions.
"""

from __future__ import annotations

import enum
import hashlib
import json
import platform
from collections.abc import Mapping
from typing import Any

import torch

from .calls import arg_path
from .errors import ConfigurationError, UnkeyableInputError
from .shapes import Dim

__all__ = [
    "CACHE_FORMAT",
    "signature",
    "signature_json",
    "module_fingerprint",
    "environment",
    "canonical_json",
    "cache_key",
]

CACHE_FORMAT = 3
"""Bump when the on-disk layout or meaning of a key changes: old entries then simply never match.
3: inductor ahead-of-time functions compiled in one canonical autograd mode; TensorRT entries record their
output dtypes."""

_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "_commit_hash", "transformers_version", "_diffusers_version", "_use_default_values"}
)


# --------------------------------------------------------------------------------------------- signature
def signature(args: tuple, kwargs: Mapping[str, Any], names: tuple[str, ...] = (), spec=None) -> tuple:
    """Describe a call so that equal descriptions can share one artifact.

    ``names`` gives the parameter names of positional arguments, so that a spec can address them by
    name. A tensor dimension declared in ``spec`` and inside its range is replaced by its ``Dim``;
    outside the range the exact size is kept (that call gets its own artifact).
    Raises ``UnkeyableInputError`` for values whose identity cannot be put in a key.

    This runs on every call of a wrapped module, so without a spec it takes a path that builds no
    argument-path strings.
    """
    if not spec:
        return (tuple(_plain(a, i) for i, a in enumerate(args)),
                tuple((k, _plain(kwargs[k], k)) for k in sorted(kwargs)))
    pos = tuple(_describe(a, arg_path(i, names), spec) for i, a in enumerate(args))
    kw = tuple((k, _describe(kwargs[k], k, spec)) for k in sorted(kwargs))
    return (pos, kw)


_Tensor = torch.Tensor
_SCALARS = (int, float)


def _plain(value: Any, where: Any) -> Any:
    """``_describe`` without a shape spec (the hot path)."""
    if isinstance(value, _Tensor):
        return ("T", value.shape, value.dtype, value.device.type)
    if value is None or value is True or value is False or isinstance(value, str):
        return value
    if isinstance(value, _SCALARS):
        return (type(value).__name__, value)
    if isinstance(value, list):
        return ("L", tuple(_plain(v, where) for v in value))
    if isinstance(value, tuple):
        return ("U", tuple(_plain(v, where) for v in value))
    if isinstance(value, dict):
        return ("D", tuple((str(k), _plain(value[k], where)) for k in sorted(value, key=str)))
    return _describe(value, str(where), None)


def _describe(value: Any, path: str, spec) -> Any:
    if isinstance(value, torch.Tensor):
        shape: tuple = tuple(value.shape)
        dims = spec.get(path) if spec else None
        if dims:
            shape = tuple(
                dims[i] if i in dims and dims[i].contains(size) else size for i, size in enumerate(shape)
            )
        return ("T", shape, value.dtype, value.device.type)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float)):
        return (type(value).__name__, value)
    if isinstance(value, (list, tuple)):
        tag = "L" if isinstance(value, list) else "U"
        return (tag, tuple(_describe(v, f"{path}.{i}", spec) for i, v in enumerate(value)))
    if isinstance(value, Mapping):
        return ("D", tuple((str(k), _describe(value[k], f"{path}.{k}", spec)) for k in sorted(value, key=str)))
    if isinstance(value, (torch.dtype, torch.device)):
        return ("S", str(value))
    if isinstance(value, enum.Enum):
        return ("E", f"{type(value).__qualname__}.{value.name}")
    raise UnkeyableInputError(
        f"argument {path!r} of type {type(value).__qualname__} cannot be part of a cache key",
        hint="pass tensors, numbers, strings, None or containers of them; this call runs eagerly",
    )


def signature_json(sig: tuple) -> Any:
    """The signature as readable JSON (for meta.json and `trt-runtime cache ls`)."""
    return _jsonable(sig)


# --------------------------------------------------------------------------------------------- module
def module_fingerprint(module: torch.nn.Module, digest: str | None = "full") -> dict[str, Any]:
    """What makes this module's compiled artifact valid: class, config, tensor layout, weight values.

    ``digest="full"`` digests every byte of every parameter and buffer (``trt_runtime.digest``: on the
    tensor's own device, once per weight version); None leaves the values out (for artifacts that read
    weights at run time). The former ``"sample"`` digest is gone: an edit between its sample points kept
    the key and loaded a stale engine.
    """
    if digest not in ("full", None):
        raise ConfigurationError(f"weights digest must be 'full' or None, not {digest!r}")
    cls = type(module)
    layout = hashlib.sha256()
    named = list(_named_state(module))
    for name, tensor in named:
        layout.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    weights = "not embedded"
    if digest is not None:
        from . import digest as digests

        weights = f"{digests.ALGORITHM}:{digests.weights_digest(named)[:32]}"
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "config": _module_config(module),
        "layout": layout.hexdigest()[:24],
        "tensors": len(named),
        "weights": weights,
    }


def _named_state(module: torch.nn.Module):
    yield from module.named_parameters(remove_duplicate=True)
    yield from module.named_buffers(remove_duplicate=True)


def _module_config(module: torch.nn.Module) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        config = config.to_dict()
    if not isinstance(config, Mapping):
        return repr(config)
    return {k: _jsonable(v) for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}


# --------------------------------------------------------------------------------------------- environment
def environment(device: torch.device | None) -> dict[str, Any]:
    """Versions and hardware an artifact was built for. Backends add their own library versions."""
    import trt_runtime

    env: dict[str, Any] = {
        "cache_format": CACHE_FORMAT,
        "trt_runtime": trt_runtime.__version__,
        "torch": torch.__version__,
        "python": platform.python_version_tuple()[:2],
    }
    if device is not None and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        env["gpu"] = torch.cuda.get_device_name(index)
        env["compute_capability"] = f"{major}.{minor}"
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.machine()
        env["cpu_features"] = cpu_features()
    return env


_VECTOR_FEATURES = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                    "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
"""The CPU features inductor's C++ kernels are compiled for (``-mavx512f``...) and its ISA probes test."""


def cpu_features(cpuinfo: str | None = None) -> str:
    """The vector features of this CPU that change what inductor compiles for it, from ``/proc/cpuinfo`` (Linux; or
    from ``cpuinfo``, that file's text); without a flags line its model name, elsewhere the processor's name. Part of
    a CPU artifact's key: its kernels, and the ISA probes stored with it, are only valid on a CPU with the same
    features."""
    from pathlib import Path

    given = cpuinfo is not None
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="ignore")
        except OSError:
            return platform.processor() or "unknown"
    model = ""
    for line in cpuinfo.splitlines():
        field, _, value = line.partition(":")
        if field.strip().lower() in ("flags", "features"):
            present = set(value.split())
            return " ".join(name for name in _VECTOR_FEATURES if name in present) or "none"
        if field.strip() == "model name" and not model:
            model = value.strip()
    return model or ("unknown" if given else platform.processor() or "unknown")


# --------------------------------------------------------------------------------------------- key
def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, non-JSON values turned into tagged strings."""
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def cache_key(parts: Mapping[str, Any]) -> str:
    """The hex digest naming one artifact folder."""
    return hashlib.sha256(canonical_json(parts).encode()).hexdigest()[:40]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, Dim):
        return {"dim": value.as_json()}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__qualname__}.{value.name}"
    return f"<{type(value).__qualname__}>{value!r}"
