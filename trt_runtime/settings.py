"""The one settings object passed down through every layer.

``RuntimeSettings`` is frozen so a runtime, a wrapper and a backend can share it without defensive
copies; ``replace()`` derives a variant. Environment variables are read by ``resolve_cache_dir()`` when
it is called, never at import time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

__all__ = [
    "RuntimeSettings",
    "BACKENDS",
    "PRECISIONS",
    "CACHE_DIR_ENV",
    "resolve_cache_dir",
    "default_tolerance",
]

CACHE_DIR_ENV = "TRT_CACHE_DIR"
BACKENDS = ("auto", "tensorrt", "inductor", "eager", "fastest")
PRECISIONS = ("fp32", "fp16", "bf16")
_INDUCTOR_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_DIGESTS = ("full",)
_SHARING = ("private", "group")

# Max |compiled - eager| / max|eager| accepted by validation, by the precision the artifact runs in.
_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 5e-2}


def default_tolerance(precision: str) -> float:
    """Relative tolerance that fits ``precision`` (fp32, fp16, bf16)."""
    return _TOLERANCE.get(precision, _TOLERANCE["fp16"])


@dataclasses.dataclass(frozen=True)
class RuntimeSettings:
    """Every option of trt_runtime, in one place.

    Fields group by who reads them: the runtime (cache, fallback, validation), the inductor backend and
    the tensorrt backend. Each backend declares which fields change its artifact (``artifact_fields``);
    only those enter the cache key, so turning on ``validate`` never invalidates an engine.
    """

    # --- runtime -------------------------------------------------------------------------------------
    backend: str = "auto"
    """``auto`` (tensorrt when importable and CUDA is present, except TensorRT-RTX on a GPU it is not made for;
    else inductor), ``tensorrt``,
    ``inductor``, ``eager``, or ``fastest`` (build every backend that can run, time them on the real call,
    keep the fastest and record the choice in the cache: slow first build, for ``trt-runtime build``)."""
    cache_dir: str | None = None
    """Engine cache folder; else ``$TRT_CACHE_DIR``; else the platform's user cache dir."""
    persist: bool = True
    """Write compiled artifacts to disk and read them back in later processes."""
    strict: bool = False
    """Raise our own exception on a compile/run/validation failure instead of falling back to eager."""
    validate: bool = False
    """Compare compiled and eager outputs once, on the first call of each new key."""
    tolerance: float | None = None
    """Validation tolerance (max abs error relative to max abs of eager); default by precision."""
    precision: str | None = None
    """``fp32``/``fp16``/``bf16`` to build in; None follows the module's parameter dtype."""
    weights_digest: str = "full"
    """``full`` (the only choice) digests every byte of every weight, on the weight's own device, once
    per weight version (see ``trt_runtime.digest``). The former ``sample`` digest was removed: an edit
    between its sample points (a LoRA, one embedding row) left the key unchanged and loaded a stale
    engine."""
    verify_checksum: bool = True
    """Check each artifact's sha256 against meta.json when loading it (catches truncation and rot)."""
    max_cache_bytes: int | None = 64 * 1024**3
    """Size cap of the disk cache; least recently used entries are evicted above it. None: no cap."""
    lock_timeout_s: float = 3600.0
    """How long to wait for another process that is compiling the same key."""
    retry_failed: bool = False
    """Ignore failures remembered on disk and try compiling those keys again."""
    retry_backoff_s: float = 30.0
    """After a transient failure (out of memory, full disk) or an artifact that raised at run time, wait
    this long before trying that signature again; each further failure waits 4x longer (at most 1 h)."""
    max_shapes_per_component: int = 32
    """Past this many compiled signatures a component runs new shapes eagerly (bounds memory)."""
    progress_interval_s: float = 30.0
    """While a compile runs, log a progress line this often."""
    background: bool = False
    """Build on a miss in a background worker (one per device) while calls run eagerly; the artifact is
    swapped in between calls once ready. Time to first image is then eager's. For servers."""
    build_process: bool = True
    """Run background builds in a separate process (where the module can be rebuilt there: diffusers and
    transformers models of trt_runtime's wrappers), so the serving process keeps eager speed meanwhile."""
    max_pending_builds: int = 8
    """Background builds queued per device beyond the one running; past it a miss retries later."""

    # --- inductor (torch.compile) ----------------------------------------------------------------------
    inductor_mode: str | None = None
    fullgraph: bool = True
    inductor_precompile: bool = True
    """Store inductor artifacts compiled ahead of time (``torch.compile(...).aot_compile``), so that a new
    process loads them without dynamo re-tracing the module; where that cannot be done (dynamic dims,
    ``inductor_mode``, autocast, channels-last, an older torch) torch's cache artifacts are stored instead.
    On by default since 2026-11-26: the SD1.5 UNet's warm start on an H100 fell from 21% of the cold first
    call to 8% (4.5 of 59 s, ``benchmarks/results/2026-11-26c``). A call whose global state the
    function was not compiled for (deterministic algorithms, for example) runs eagerly, with a warning."""
    inductor_options: Mapping[str, Any] | None = None
    """Extra ``torch._inductor.config`` options passed as ``torch.compile(options=...)``."""

    # --- shared by compilers ----------------------------------------------------------------------------
    channels_last: bool = False
    """Inductor only: run 4-D inputs and weights in channels-last memory format. Measured on an H100 with the
    SD1.5 UNet: no effect (inductor picks convolution layouts itself). TensorRT picks its own layouts."""
    cuda_graphs: bool | str = "auto"
    """Replay compiled calls as CUDA graphs, one per exact input shape, outputs copied out so a later call
    never overwrites one a caller kept. ``auto``: where it is safe (CUDA inputs, no offload hooks, eval
    mode), silently off elsewhere; ``True``: the same, warning where it cannot; ``False``: never."""
    max_graphs_per_component: int = 8
    """CUDA graphs kept per component (each holds its activations' memory); least recently used dropped."""
    share_loaded: bool = True
    """Reuse an engine that another wrapper of this process loaded from the same cache entry instead of loading
    it again (TensorRT-RTX compiles an engine's kernels at every load). The wrappers then share one execution
    context, which runs on the caller's CUDA stream: turn this off when two wrappers of the same model are called
    at once from threads on different CUDA streams."""

    # --- tensorrt (torch_tensorrt.dynamo) ---------------------------------------------------------------
    optimization_level: int | None = None
    """TensorRT builder optimization level 0-5; higher builds longer and may run faster."""
    workspace_size: int | None = None
    """Bytes of GPU memory TensorRT may use as scratch while building; None: TensorRT's default."""
    min_block_size: int | None = None
    """Fewest ops in a TensorRT subgraph; smaller subgraphs stay in PyTorch."""
    truncate_double: bool = True
    """Run float64 inputs/ops in float32 inside the engine (diffusers schedulers hand out float64)."""
    refittable: bool = False
    """Build engines whose weights can be refit later (``immutable_weights=False``), e.g. for LoRA."""
    offload_module_to_cpu: bool = False
    """Keep the PyTorch copy of the module on CPU while building, to fit large transformers."""
    tensorrt_target: str = "current"
    """TensorRT-RTX build target: ``current`` (the GPU in this machine: engines that run here, and only on
    GPUs of its compute capability) or ``portable`` (TensorRT-RTX's own list of compute capabilities; on
    RTX 1.4 an H100 cannot run such engines). Part of the key. Datacenter TensorRT ignores it."""
    tensorrt_options: Mapping[str, Any] | None = None
    """Extra keyword arguments for ``torch_tensorrt.dynamo.compile`` (checked against its signature)."""

    # --- cache trust and sharing (read by trt_runtime.cache / trt_runtime.trust; issues 12 and 13) --------
    cache_sharing: str = "private"
    """``private``: cache folders 0700 and files 0600 whatever the umask; entries load when this user
    wrote them into folders only this user (or root) can write, or when signed with the trust key.
    ``group``: folders 2770 (setgid) and files 0640 so a team can share one cache; entries written there
    load only with a valid signature, so every member needs the same trust key."""
    cache_read_only: bool = False
    """Never write to the cache: no entries, no failure records, no lock files, no eviction. Misses build
    in memory. Also switched on by itself when the cache folder is on a read-only mount."""
    trust_key_file: str | None = None
    """File holding the HMAC key (hex) that signs entries written here and admits entries signed
    elsewhere. None: ``$TRT_RUNTIME_TRUST_KEY`` (a path), else ``trust.key`` in the user's config dir
    if it exists. ``""``: no key at all."""

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigurationError(f"backend must be a name, not {self.backend!r}",
                                     hint=f"use one of {', '.join(BACKENDS)} or a registered backend")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigurationError(
                f"unknown precision {self.precision!r}", hint=f"use one of {', '.join(PRECISIONS)} or None"
            )
        if self.inductor_mode not in _INDUCTOR_MODES:
            raise ConfigurationError(f"unknown inductor_mode {self.inductor_mode!r}")
        if self.tensorrt_target not in ("current", "portable"):
            raise ConfigurationError(f"tensorrt_target must be 'current' or 'portable', not {self.tensorrt_target!r}")
        if self.weights_digest not in _DIGESTS:
            hint = ("'sample' was removed: edits between its sample points went unnoticed"
                    if self.weights_digest == "sample" else None)
            raise ConfigurationError(f"weights_digest must be 'full', not {self.weights_digest!r}", hint=hint)
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ConfigurationError(f"optimization_level must be in 0..5, not {self.optimization_level}")
        if self.max_cache_bytes is not None and self.max_cache_bytes <= 0:
            raise ConfigurationError("max_cache_bytes must be positive or None")
        if self.inductor_mode not in (None, "default") and self.inductor_options:
            raise ConfigurationError("torch.compile takes either inductor_mode or inductor_options, not both")
        if not self.retry_backoff_s >= 0:
            raise ConfigurationError("retry_backoff_s must be zero or positive")
        if self.tolerance is not None and not self.tolerance > 0:
            raise ConfigurationError("tolerance must be positive")
        if self.max_shapes_per_component < 1:
            raise ConfigurationError("max_shapes_per_component must be at least 1")
        if self.cuda_graphs not in (True, False, "auto"):
            raise ConfigurationError(f"cuda_graphs must be True, False or 'auto', not {self.cuda_graphs!r}")
        if self.max_graphs_per_component < 1 or self.max_pending_builds < 1:
            raise ConfigurationError("max_graphs_per_component and max_pending_builds must be at least 1")
        if self.cache_sharing not in _SHARING:
            raise ConfigurationError(f"cache_sharing must be 'private' or 'group', not {self.cache_sharing!r}")
        if self.trust_key_file is not None and not isinstance(self.trust_key_file, str):
            raise ConfigurationError("trust_key_file must be a path string, '' (no key) or None")
        # Freeze mappings so the settings stay hashable and canonical.
        for name in ("inductor_options", "tensorrt_options"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, _FrozenMap):
                object.__setattr__(self, name, _FrozenMap(value))

    def replace(self, **changes: Any) -> RuntimeSettings:
        """A copy with ``changes`` applied; unknown names raise ``ConfigurationError``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigurationError(
                f"unknown setting(s): {', '.join(sorted(unknown))}",
                hint="see trt_runtime.RuntimeSettings for the valid names",
            )
        return dataclasses.replace(self, **changes) if changes else self

    def describe(self, fields: tuple[str, ...] | frozenset[str]) -> dict[str, Any]:
        """The named fields as plain JSON-able values (for cache keys and meta.json)."""
        out = {}
        for name in sorted(fields):
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Mapping) else value
        return out


class _FrozenMap(Mapping):
    """A read-only, hashable mapping (settings are frozen all the way down)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(sorted((k, repr(v)) for k, v in self._data.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return repr(self._data)


def resolve_cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``explicit``, else ``$TRT_CACHE_DIR``, else platformdirs' user cache dir."""
    if explicit:
        return Path(explicit).expanduser()
    from_env = os.environ.get(CACHE_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("trt_runtime", appauthor=False)) / "engines"
