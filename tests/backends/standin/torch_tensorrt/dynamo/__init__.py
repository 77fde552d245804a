"""STAND-IN for ``torch_tensorrt.dynamo`` (tests only; NOT TensorRT): ``compile`` builds no engine."""

from __future__ import annotations

import copy
import inspect

import torch

import torch_tensorrt as _root
from torch_tensorrt import _signatures

UNSUPPORTED_OPS = ("cumsum",)
"""Graphs calling an aten op whose name contains one of these fail to "convert"."""


def compile(exported_program, inputs=None, **kwargs):  # noqa: A001 - the published name
    """Check the call like torch_tensorrt.dynamo.compile of the imitated release, then return the
    exported program's module (plain PyTorch) with the program attached for ``save``."""
    _root._reject_unknown("compile", kwargs, _signatures.COMPILE_KEYWORDS[_root._TABLE_SERIES])
    _root.CALLS.append(("compile", dict(kwargs)))
    if not isinstance(exported_program, torch.export.ExportedProgram):
        raise TypeError(f"expected an ExportedProgram, got {type(exported_program).__name__}")
    if _root.SERIES < (2, 13):
        # The rule of 2.11/2.12 (dynamo/_compiler.py): explicit typing is on by default and then
        # enabled_precisions must stay {float32}.
        explicit = kwargs.get("use_explicit_typing", True) or kwargs.get("enable_autocast", False)
        precisions = set(kwargs.get("enabled_precisions", {torch.float32}))
        if explicit and (len(precisions) != 1 or torch.float32 not in precisions):
            raise AssertionError(
                "use_explicit_typing was set to True, however found that enabled_precisions was also "
                f"specified (saw: {precisions}, expected: dtype.f32, dtype.f4). enabled_precisions should "
                "not be used when use_explicit_typing=True"
            )
    arg_inputs = kwargs.get("arg_inputs") if inputs is None else inputs
    _check_inputs(exported_program, list(arg_inputs or []), kwargs.get("kwarg_inputs") or {})
    for node in exported_program.graph.nodes:
        if node.op == "call_function" and any(op in str(node.target) for op in UNSUPPORTED_OPS):
            raise RuntimeError(f"stand-in: no TensorRT converter for {node.target} and "
                               "require_full_compilation-like failure")
    from .conversion._TRTInterpreter import TRTInterpreter

    TRTInterpreter().run()  # the builder config, as the real interpreter makes it
    from ..runtime._engines import add_engine

    module = add_engine(exported_program.module())
    module._standin_program = exported_program
    if kwargs.get("offload_module_to_cpu"):
        module.to("cpu")
    return module


def refit_module_weights(compiled_module, new_weight_module, arg_inputs=None, kwarg_inputs=None,
                         verify_output=False, in_place=False, **kwargs):
    """Imitates the published refit: a new module computing with ``new_weight_module``'s weights (the
    stand-in's "engine" is the program's own module), never in place for a loaded program."""
    _root.CALLS.append(("refit", {"in_place": in_place}))
    if not isinstance(new_weight_module, torch.export.ExportedProgram):
        raise TypeError("new_weight_module must be an ExportedProgram")
    if in_place:
        raise AssertionError("in_place=True is not supported for a program loaded from disk")
    copy.deepcopy(compiled_module)  # the published refit works on a deep copy (dynamo/_refit.py)
    from ..runtime._engines import add_engine

    module = add_engine(new_weight_module.module())
    module._standin_program = new_weight_module
    return module


def _check_inputs(program, arg_inputs, kwarg_inputs) -> None:
    """Every user input needs an ``Input`` whose static dims match the traced example."""
    specs = program.graph_signature.user_inputs
    given = arg_inputs + list(kwarg_inputs.values())
    if len(given) != len(specs):
        raise ValueError(f"stand-in: {len(specs)} user inputs but {len(given)} Input specs")
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name, spec in zip(specs, given, strict=True):
        if not isinstance(spec, _root.Input):
            raise TypeError(f"stand-in: expected torch_tensorrt.Input, got {type(spec).__name__}")
        value = placeholders[name].meta.get("val")
        if value is None:
            continue
        if value.dtype != spec.dtype:
            raise ValueError(f"stand-in: input {name} is {value.dtype} but Input says {spec.dtype}")
        for i, size in enumerate(value.shape):
            if isinstance(size, int) and not spec.min_shape[i] == spec.max_shape[i] == size:
                raise ValueError(f"stand-in: input {name} dim {i} is static {size} but Input allows "
                                 f"{spec.min_shape[i]}..{spec.max_shape[i]}")


def _published_signature() -> inspect.Signature:
    """What ``inspect.signature`` shows for the real ``compile`` of the imitated release: the named
    keywords, plus the ``**kwargs`` every release has (which the stand-in nevertheless rejects)."""
    p = inspect.Parameter
    params = [p("exported_program", p.POSITIONAL_OR_KEYWORD), p("inputs", p.POSITIONAL_OR_KEYWORD, default=None)]
    params += [p(name, p.KEYWORD_ONLY, default=None)
               for name in sorted(_signatures.COMPILE_KEYWORDS[_root._TABLE_SERIES])]
    return inspect.Signature([*params, p("kwargs", p.VAR_KEYWORD)])


compile.__signature__ = _published_signature()
