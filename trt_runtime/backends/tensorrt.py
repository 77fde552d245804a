"""TensorRT backend: ``torch.export`` -> ``torch_tensorrt.dynamo.compile`` -> ``torch_tensorrt.save``.

The module is exported with its tensors as flat positional inputs (non-tensor arguments such as
``return_dict=False`` are constants of the graph; they are part of the cache key, so a key always sees
the same values). That keeps ``arg_inputs`` a flat list of ``torch_tensorrt.Input`` and the dynamic
dims a flat tuple, the one form every supported release handles alike. Dims declared with the same
name become one ``torch.export.Dim``, so exporters know that ``batch`` of ``sample`` equals ``batch``
of ``encoder_hidden_states``.

Which keywords each torch_tensorrt release takes lives in ``_tensorrt_api`` (one table, checked by the
contract tests against the published wheels). Nothing here imports torch_tensorrt at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..calls import iter_tensors, precision_of
from ..errors import BackendUnavailableError, EngineBuildError
from ..logging_utils import event
from . import _tensorrt_api as api_table
from . import _tensorrt_rtcache as rtcache
from ._tensorrt_build import attention_retry_reason, build_target, engine_error_hint, short_of_memory
from ._tensorrt_copies import engines_shared_in_copies
from ._tensorrt_export import InputPlan
from ._tensorrt_passes import FUSED_ATTENTION, fx_graphs, uneven_attention
from .base import Backend, CompileRequest

__all__ = ["TensorRTBackend", "cuda_unavailable_reason"]

logger = logging.getLogger(__name__)

ARTIFACT = "trt_program.pt2"
_ENGINE_NAME = {api_table.TENSORRT: "TensorRT", api_table.TENSORRT_RTX: "TensorRT-RTX"}
INPUTS_FILE = "trt_inputs.json"

_EXPORT_LOAD_LOCK = threading.Lock()
"""torch's ``torch.export.load`` sets a module-global ``_CURRENT_DESERIALIZER`` and raises
``AssertionError("_CURRENT_DESERIALIZER is already set")`` when two threads load at once: the second
load then failed and its entry was built again. Loads of this process take turns."""
_PLUGINS_LOCK = threading.Lock()
_PLUGINS_READY = False


def cuda_unavailable_reason(device: torch.device | None) -> str | None:
    """Why TensorRT engines cannot run for a module on ``device``; None when they can.

    The one CUDA probe of this backend, kept small and module-level so tests substitute it.
    """
    if not torch.cuda.is_available():
        return "no CUDA device is available to torch"
    if device is not None and device.type != "cuda":
        return f"the module is on {device.type}; TensorRT engines run on CUDA (move it with .to('cuda'))"
    return None


class TensorRTBackend(Backend):
    name = "tensorrt"
    shares_loaded = True
    """An engine holds its weights, refits make a copy (``in_place=False``), and TensorRT-RTX compiles an
    engine's kernels again on every load: one load per entry and process (``trt_runtime.loaded``)."""
    optional_files = frozenset({rtcache.RUNTIME_CACHE_FILE})
    """TensorRT-RTX's runtime cache (``_tensorrt_rtcache``): without it a load JIT-compiles again."""
    artifact_fields = frozenset(
        {
            "precision",
            "optimization_level",
            "workspace_size",
            "min_block_size",
            "truncate_double",
            "refittable",
            "tensorrt_options",
            "tensorrt_target",
        }
    )
    """Settings that change the engine. ``offload_module_to_cpu`` only changes where weights wait
    during the build, and CUDA graphs are captured by the runtime around the engine: neither enters the key."""

    def check_available(self, device):
        if importlib.util.find_spec("torch_tensorrt") is None:
            raise BackendUnavailableError(f"torch_tensorrt is not installed; {api_table.INSTALL_HINT}")
        reason = cuda_unavailable_reason(device)
        if reason:
            raise BackendUnavailableError(reason)
        flavour, version = api_table.installed_distribution()
        if flavour is not None:  # refuse an unsupported release before paying for its import
            api_table.api_for(version, flavour)
        _import_torch_tensorrt()

    def auto_declines(self, device):
        index = device.index if device is not None and device.type == "cuda" else None
        try:
            capability = torch.cuda.get_device_capability(index)
        except Exception:  # noqa: BLE001 - no GPU to ask: nothing to decline on
            return None
        return api_table.auto_declines(_flavour(), capability)

    def embeds_weights(self, settings) -> bool:
        # A refittable engine is keyed without its weights: its entry records which weights it holds, and a
        # process with other weights loads it and refits (resolver), instead of building anew.
        return not settings.refittable

    def can_refit(self, settings) -> bool:
        return settings.refittable

    def notes(self):
        _, version = _import_torch_tensorrt()
        return [api_table.warm_start_note(api_table.api_for(version, _flavour()), version)]

    def versions(self):
        _, version = _import_torch_tensorrt()
        flavour = _flavour()
        return {"torch_tensorrt": version, "torch_tensorrt_flavour": flavour, "tensorrt": _tensorrt_version()}

    # ------------------------------------------------------------------------------------------------
    def compile(self, request: CompileRequest):
        torch_tensorrt, version = _import_torch_tensorrt()
        flavour = _flavour()
        api = api_table.api_for(version, flavour)
        plan = InputPlan(request)
        module_dtype = _module_dtype(request.module)
        kwargs = api_table.compile_kwargs(api, request.settings, request.precision, module_dtype, request.device,
                                          request.traits)
        lowered = bool(kwargs.keys() & {"enabled_precisions", "enable_autocast"})
        if not lowered and precision_of(module_dtype, request.precision) != request.precision:
            logger.warning("[%s] precision %s cannot be reached from %s weights; the engine runs in %s",
                           request.component, request.precision, module_dtype, module_dtype)
        kwargs.update(
            api_table.check_extra_options(
                api, request.settings.tensorrt_options, _compile_keywords(torch_tensorrt), kwargs, version
            )
        )
        logger.debug("[%s] exporting with torch.export", request.component,
                     extra=event("phase", request.component, phase="torch.export"))
        started = time.perf_counter()
        program = plan.export(request)
        exported = time.perf_counter()
        arg_inputs = [torch_tensorrt.Input(**spec) for spec in plan.input_specs()]
        logger.debug("[%s] %s compile keywords: %s", request.component, api.name, kwargs,
                     extra=event("phase", request.component, phase=f"{_ENGINE_NAME.get(flavour, flavour)} engine build"))
        device_before = _first_device(request.module)
        try:
            with build_target(flavour, request.settings.tensorrt_target):
                can_decompose = not kwargs.get("decompose_attention") and "decompose_attention" in _compile_keywords(
                    torch_tensorrt)
                chosen = "decompose_attention" in (request.settings.tensorrt_options or {})  # the user's word stands
                uneven = uneven_attention(program) if can_decompose and api.attention_same_shapes and not chosen else []
                if uneven:
                    logger.info("[%s] %d attention op(s) take a query, key and value of different shapes (%s), which "
                                "%s converts only decomposed; building with decompose_attention=True",
                                request.component, len(uneven), ", ".join(uneven[:3]), api.name)
                    kwargs["decompose_attention"], can_decompose = True, False
                try:
                    graph_module = torch_tensorrt.dynamo.compile(program, arg_inputs=arg_inputs, **kwargs)
                except (TypeError, RuntimeError) as err:
                    why = attention_retry_reason(err)
                    if not (can_decompose and why) or short_of_memory(err, request.device):
                        raise  # a full GPU is not cured by another build
                    logger.info("[%s] %s; building again with decompose_attention=True", request.component, why)
                    kwargs["decompose_attention"], can_decompose = True, False
                    graph_module = torch_tensorrt.dynamo.compile(program, arg_inputs=arg_inputs, **kwargs)
                left = attention_outside_engine(graph_module)
                if left and can_decompose:
                    # Seen with TensorRT-RTX 1.4 on a UNet with 4-wide heads: the fused attention op stays in
                    # PyTorch, and torch.export cannot serialise it, so the engine could never be cached.
                    logger.info("[%s] %d attention op(s) were left outside the engine (%s); building again with "
                                "decompose_attention=True so that the engine holds them and can be saved",
                                request.component, len(left), ", ".join(left[:3]))
                    kwargs["decompose_attention"] = True
                    graph_module = torch_tensorrt.dynamo.compile(program, arg_inputs=arg_inputs, **kwargs)
        except Exception as err:
            failure = EngineBuildError(
                f"{api.name} could not build an engine: {type(err).__name__}: {err}",
                component=request.component, shapes=plan.shapes,
                hint=engine_error_hint(err, flavour, request.settings.tensorrt_target)
                or "the call runs eagerly; min_block_size or tensorrt_options {'torch_executed_ops': ...} can keep "
                "unsupported ops in PyTorch",
            )
            oom = short_of_memory(err, request.device)
            if oom is not None:  # transient: retried after a backoff, never written to disk as a verdict
                oom.__cause__ = err
                raise failure from oom
            raise failure from err
        finally:
            _restore_device(request, device_before)
        # the first call, run before the entry is saved, fills the runtime cache with its JIT kernels
        cache = _runtime_cache(torch_tensorrt, api, version, graph_module, None, request.component)
        call = _EngineCall(graph_module, plan.paths, request.names, cache, output_dtypes(program))
        call.build_phases = {"export": exported - started, "engine build": time.perf_counter() - exported}
        return call

    def refit(self, compiled, request: CompileRequest):
        """The engine with the module's current weights: ``refit_module_weights`` re-exports the module and
        copies its weights into a copy of the engine (no new build). Works on loaded programs too."""
        if not isinstance(compiled, _EngineCall):
            raise TypeError(f"expected a callable made by the tensorrt backend, got {type(compiled).__name__}")
        torch_tensorrt, _ = _import_torch_tensorrt()
        plan = InputPlan(request)
        program = plan.export(request)
        with engines_shared_in_copies(compiled.graph_module):  # the copy refit makes need not rebuild engines
            graph_module = torch_tensorrt.dynamo.refit_module_weights(compiled.graph_module, program, in_place=False)
        if compiled.runtime_cache is not None:
            rtcache.attach(torch_tensorrt, graph_module, compiled.runtime_cache)
        return _EngineCall(graph_module, compiled.paths, request.names, compiled.runtime_cache, compiled.out_dtypes)

    def save(self, compiled, request: CompileRequest, directory: Path) -> None:
        if not isinstance(compiled, _EngineCall):
            raise TypeError(f"expected a callable made by the tensorrt backend, got {type(compiled).__name__}")
        torch_tensorrt, version = _import_torch_tensorrt()
        with engines_shared_in_copies(compiled.graph_module):  # save copies the program: keep its engines
            torch_tensorrt.save(compiled.graph_module, str(directory / ARTIFACT), **api_table.SAVE_KWARGS)
        meta: dict[str, Any] = {"paths": list(compiled.paths), "torch_tensorrt": version,
                                "output_dtypes": compiled.out_dtypes}
        if compiled.runtime_cache is not None:
            data = rtcache.serialize(compiled.runtime_cache)
            if data:
                (directory / rtcache.RUNTIME_CACHE_FILE).write_bytes(data)
                meta["runtime_cache"] = rtcache.record(data)
            logger.debug("[%s] TensorRT-RTX runtime cache: %d bytes saved with the entry", request.component,
                         len(data))
        (directory / INPUTS_FILE).write_text(json.dumps(meta, indent=1))
        logger.debug("[%s] saved TensorRT program to %s", request.component, directory / ARTIFACT)

    def load(self, request: CompileRequest, directory: Path):
        torch_tensorrt, version = _import_torch_tensorrt()  # registers the engine class and ops of the program
        _init_plugins()
        saved = json.loads((directory / INPUTS_FILE).read_text())
        paths = [path for path, _ in iter_tensors(request.args, request.kwargs, request.names)]
        if saved.get("paths") != paths:
            raise ValueError(f"artifact inputs {saved.get('paths')} do not match this call's {paths}")
        with _EXPORT_LOAD_LOCK:  # torch.export.load keeps its deserializer in a module global: one at a time
            graph_module = torch.export.load(str(directory / ARTIFACT)).module()
        api = api_table.api_for(version, _flavour())
        data = None
        if api.runtime_cache == api_table.RUNTIME_SETTINGS:  # read now: the folder may go when load returns
            data = rtcache.read_verified(directory, saved.get("runtime_cache"), request.component)
        cache = _runtime_cache(torch_tensorrt, api, version, graph_module, data, request.component)
        return _EngineCall(graph_module, paths, request.names, cache, saved.get("output_dtypes"))


class _EngineCall:
    """Calls a compiled (or loaded) program with one call's tensors, in the order they were exported.

    The hot path is one walk over the arguments; the program itself checks shapes against its guards.
    Outputs come back in the dtypes the module returns: a strongly typed engine may infer another type for
    an output than the exported program (TensorRT-RTX returned a float32 hidden state of an fp16 T5), and
    pipelines must see eager's types. Where the first call shows no difference, later calls skip the check.
    """

    def __init__(self, graph_module: torch.nn.Module, paths, names: tuple[str, ...], runtime_cache: Any = None,
                 out_dtypes: list[str | None] | None = None) -> None:
        self.graph_module = graph_module
        self.paths = tuple(paths)
        self.names = names
        self.runtime_cache = runtime_cache
        """TensorRT-RTX's ``RuntimeCache`` attached to the engines (None where the release has none)."""
        self.out_dtypes = out_dtypes
        """The exported program's output dtypes, flattened (None: not a tensor); saved with the entry."""
        self._cast: list[torch.dtype | None] | None = None if out_dtypes is None else [
            _dtype(name) for name in out_dtypes]
        self._checked = False
        self.build_phases: dict[str, float] = {}
        """Seconds of the build's parts (``export``, ``engine build``), for ``runtime.summary()``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = [tensor for _, tensor in iter_tensors(args, kwargs, self.names)]
        if len(tensors) != len(self.paths):
            raise TypeError(f"expected {len(self.paths)} tensors ({', '.join(self.paths)}), got {len(tensors)}")
        out = self.graph_module(*tensors)
        return out if self._cast is None else self._restore_dtypes(out)

    def _restore_dtypes(self, out: Any) -> Any:
        cast = self._cast  # read once: a concurrent first call may clear it
        leaves, spec = torch.utils._pytree.tree_flatten(out)
        if cast is None or len(leaves) != len(cast):
            return out
        wrong = [i for i, (leaf, want) in enumerate(zip(leaves, cast, strict=True))
                 if want is not None and isinstance(leaf, torch.Tensor) and leaf.dtype != want]
        if not self._checked:
            self._checked = True
            if not wrong:
                self._cast = None  # the engine returns the module's types: nothing to do from now on
                return out
            logger.debug("engine outputs %s come back as %s; cast to the module's %s", wrong,
                         [leaves[i].dtype for i in wrong], [cast[i] for i in wrong])
        for i in wrong:
            leaves[i] = leaves[i].to(cast[i])
        return torch.utils._pytree.tree_unflatten(leaves, spec)


def _dtype(name: str | None) -> torch.dtype | None:
    """A dtype named in the entry's ``trt_inputs.json``; anything that names no dtype is left alone."""
    value = getattr(torch, name.removeprefix("torch."), None) if isinstance(name, str) else None
    return value if isinstance(value, torch.dtype) else None


def output_dtypes(program: Any) -> list[str | None] | None:
    """The dtypes of an exported program's outputs, in flattened order (None where not a tensor), or None
    where the program does not say."""
    try:
        (node,) = [n for n in program.graph.nodes if n.op == "output"]
        values = [getattr(arg, "meta", {}).get("val") for arg in node.args[0]]
    except (AttributeError, TypeError, ValueError):
        return None
    return [str(v.dtype) if isinstance(v, torch.Tensor) else None for v in values]


def _runtime_cache(torch_tensorrt, api, version: str, graph_module, data: bytes | None, component: str):
    """A ``RuntimeCache`` primed with ``data`` and attached to ``graph_module``'s engines, where the release
    has one (None elsewhere, or when no engine takes it: the engines then JIT-compile, as without it)."""
    if api.runtime_cache != api_table.RUNTIME_SETTINGS:
        if api.flavour == api_table.TENSORRT_RTX:
            logger.debug("[%s] %s", component, api_table.warm_start_note(api, version))
        return None
    try:
        cache = rtcache.new_cache(torch_tensorrt, data)
        attached = rtcache.attach(torch_tensorrt, graph_module, cache)
    except Exception as err:  # noqa: BLE001 - a runtime cache only saves time
        logger.debug("[%s] no TensorRT-RTX runtime cache (%s: %s); kernels compile just in time", component,
                     type(err).__name__, err)
        return None
    logger.debug("[%s] TensorRT-RTX runtime cache (%s) attached to %d engine(s)", component,
                 f"{len(data)} bytes from the entry" if data else "empty", attached)
    return cache if attached else None


def _module_dtype(module: torch.nn.Module) -> torch.dtype | None:
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return None


def _first_device(module: torch.nn.Module) -> torch.device | None:
    param = next(iter(module.parameters()), None)
    return None if param is None else param.device


def _restore_device(request: CompileRequest, before: torch.device | None) -> None:
    """``offload_module_to_cpu`` makes torch_tensorrt call ``.to("cpu")`` on the exported program's
    module (``deallocate_module`` in dynamo/utils.py), whose parameters are the module's own: measured
    with torch 2.11 on CUDA, ``ep.module().to("cpu")`` moves the original module too, also after
    ``run_decompositions``. Eager fallback, validation and PyTorch subgraphs need them where they were."""
    after = _first_device(request.module)
    if before is not None and after is not None and after != before:
        logger.info("[%s] moving the module back to %s after the build (offload_module_to_cpu)",
                    request.component, before)
        request.module.to(before)


def _import_torch_tensorrt():
    """``(torch_tensorrt, version)``, or BackendUnavailableError saying why not."""
    try:
        module = importlib.import_module("torch_tensorrt")
    except Exception as err:  # missing TensorRT libraries surface as ImportError, OSError, RuntimeError
        if isinstance(err, ModuleNotFoundError) and err.name == "torch_tensorrt":
            raise BackendUnavailableError(f"torch_tensorrt is not installed; {api_table.INSTALL_HINT}") from err
        raise BackendUnavailableError(
            f"torch_tensorrt is installed but cannot be imported ({type(err).__name__}: {err})",
            hint="it needs the TensorRT libraries of its release; " + api_table.INSTALL_HINT,
        ) from err
    version = str(getattr(module, "__version__", "unknown"))
    api_table.api_for(version, _flavour())
    return module, version


def _flavour() -> str:
    """``tensorrt-rtx`` when the imported torch_tensorrt runs on TensorRT-RTX, else ``tensorrt``."""
    features = getattr(sys.modules.get("torch_tensorrt"), "ENABLED_FEATURES", None)
    if getattr(features, "tensorrt_rtx", False):
        return api_table.TENSORRT_RTX
    flavour, _ = api_table.installed_distribution()
    return flavour or api_table.TENSORRT


def _tensorrt_version() -> str:
    trt = sys.modules.get("tensorrt")
    if trt is None:
        try:
            import tensorrt as trt
        except Exception:  # noqa: BLE001 - a version string is all we want
            return "unknown"
    return str(getattr(trt, "__version__", "unknown"))


def attention_outside_engine(graph_module: torch.nn.Module) -> list[str]:
    """Names of the fused CUDA attention nodes that a compiled program runs in PyTorch (outside every
    engine). ``torch.export`` cannot serialise them, so such a program can never be cached."""
    return [node.name for graph in fx_graphs(graph_module) for node in graph.nodes
            if node.op == "call_function" and any(name in str(node.target) for name in FUSED_ATTENTION)]


def _compile_keywords(torch_tensorrt) -> frozenset[str]:
    """Named keyword parameters of the installed ``torch_tensorrt.dynamo.compile`` (not ``**kwargs``)."""
    params = inspect.signature(torch_tensorrt.dynamo.compile).parameters.values()
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _init_plugins() -> None:
    """Register TensorRT's standard plugins once per process before deserializing engines.

    torch_tensorrt's dynamo runtime does not do this itself (only its legacy fx frontend calls
    ``tensorrt.init_libnvinfer_plugins``), and an engine that contains a standard plugin layer fails to
    deserialize without it. Harmless when no engine needs it; skipped where TensorRT lacks the call.
    """
    global _PLUGINS_READY
    with _PLUGINS_LOCK:
        if _PLUGINS_READY:
            return
        _PLUGINS_READY = True
        try:
            import tensorrt as trt

            init = getattr(trt, "init_libnvinfer_plugins", None)
            if init is None:
                logger.debug("tensorrt %s has no init_libnvinfer_plugins", getattr(trt, "__version__", "?"))
                return
            init(trt.Logger(trt.Logger.WARNING), "")
            logger.debug("initialized the TensorRT plugin registry")
        except Exception as err:  # noqa: BLE001 - engines without plugins still load
            logger.warning("could not initialize the TensorRT plugin registry (%s: %s); engines that use "
                           "standard plugins will fail to load", type(err).__name__, err)
