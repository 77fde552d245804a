"""STAND-IN for torch_tensorrt, used only by trt_runtime's tests. It is NOT TensorRT.

TensorRT cannot be installed on the machines this project is tested on, so this package imitates the
published Python surface of one torch_tensorrt release (picked by ``$TRT_RUNTIME_STANDIN_VERSION``,
default 2.14.0) closely enough to run trt_runtime's tensorrt backend end to end on a CPU:

- ``Input``, ``dynamo.compile`` and ``save`` accept exactly the keywords that release publishes
  (``_signatures.py``, checked against the real wheels by the contract tests) and REJECT any other
  keyword with ``TypeError``. The real 2.13+ ``compile`` silently ignores unknown keywords through its
  ``**kwargs``; the stand-in is stricter on purpose.
- 2.11/2.12's precision rule is imitated: ``enabled_precisions`` other than {float32} with explicit
  typing on (the default) raises the same ``AssertionError`` the real ``compile`` raises.
- ``dynamo.compile`` builds no engine: it returns the exported program's module, running in PyTorch.
  Graphs containing an op listed in ``UNSUPPORTED_OPS`` fail as an unconvertible graph would.
- ``save(..., retrace=False)`` writes the exported program with ``torch.export.save``.

Calls are recorded in ``CALLS`` so tests can assert what trt_runtime passed.
"""

from __future__ import annotations

import copy
import os
import re

import torch

from . import _signatures

__version__ = os.environ.get("TRT_RUNTIME_STANDIN_VERSION", "2.14.0")
STANDIN = True
FLAVOUR = os.environ.get("TRT_RUNTIME_STANDIN_FLAVOUR", "tensorrt")
"""``tensorrt`` or ``tensorrt-rtx``: which distribution the stand-in imitates (the Python sources of
both are the same per release; the real package tells them apart with ``ENABLED_FEATURES.tensorrt_rtx``)."""


class _Features:
    tensorrt_rtx = FLAVOUR == "tensorrt-rtx"


ENABLED_FEATURES = _Features()

_match = re.match(r"(\d+)\.(\d+)", __version__)
SERIES = (int(_match.group(1)), int(_match.group(2))) if _match else (2, 14)
_TABLE_SERIES = SERIES if SERIES in _signatures.COMPILE_KEYWORDS else (2, 14)

CALLS: list[tuple[str, dict]] = []

import tensorrt as _tensorrt  # noqa: E402,F401  (the real package imports TensorRT too)

from . import dynamo, runtime  # noqa: E402,F401


def _reject_unknown(function: str, given, accepted) -> None:
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r} "
                        f"(stand-in for torch_tensorrt {__version__})")


class Input:
    """Shape/dtype spec of one input: ``shape=`` or ``min_shape=/opt_shape=/max_shape=``, ``dtype=``."""

    def __init__(self, *args, **kwargs) -> None:
        _reject_unknown("Input", kwargs, _signatures.INPUT_KEYWORDS[_TABLE_SERIES])
        if args:
            kwargs["shape"] = args[0]
        self.dtype = kwargs.get("dtype", torch.float32)
        if "shape" in kwargs:
            self.shape_mode = "static"
            self.min_shape = self.opt_shape = self.max_shape = tuple(kwargs["shape"])
        elif all(k in kwargs for k in ("min_shape", "opt_shape", "max_shape")):
            self.shape_mode = "dynamic"
            self.min_shape, self.opt_shape, self.max_shape = (
                tuple(kwargs[k]) for k in ("min_shape", "opt_shape", "max_shape")
            )
            if not all(lo <= o <= hi for lo, o, hi in zip(self.min_shape, self.opt_shape, self.max_shape, strict=True)):
                raise ValueError(f"min/opt/max shapes out of order: {kwargs}")
        else:
            raise ValueError("Input needs shape= or min_shape=, opt_shape=, max_shape=")

    def __repr__(self) -> str:
        return f"Input(min={self.min_shape}, opt={self.opt_shape}, max={self.max_shape}, dtype={self.dtype})"


def save(module, file_path="", *, extra_files=None, output_format="exported_program", inputs=None,
         arg_inputs=None, kwarg_inputs=None, retrace=True, use_legacy_exporter=None, pickle_protocol=2,
         dynamic_shapes=None, **kwargs):
    """Writes the program ``dynamo.compile`` returned; only the path trt_runtime uses is imitated."""
    CALLS.append(("save", {"output_format": output_format, "retrace": retrace, "arg_inputs": arg_inputs,
                           "dynamic_shapes": dynamic_shapes, **kwargs}))
    _reject_unknown("save", kwargs, ())  # the real one forwards these to torch.export.save
    if output_format != "exported_program":
        raise NotImplementedError("stand-in save() imitates output_format='exported_program' only")
    if retrace:
        raise NotImplementedError("stand-in save() imitates retrace=False only (graph surgery, no re-export)")
    if not file_path:
        raise ValueError("File path cannot be empty. Please provide a valid file path")
    program = getattr(module, "_standin_program", None)
    if program is None:
        raise ValueError("stand-in save() expects a module returned by stand-in dynamo.compile")
    copy.deepcopy(module)  # the published exporter works on a deep copy (dynamo/_exporter.py transform)
    torch.export.save(program, file_path, pickle_protocol=pickle_protocol)
