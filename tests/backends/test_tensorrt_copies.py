"""Copies of a compiled program made by save and refit keep its engines (``_tensorrt_copies``)."""

from __future__ import annotations

import copy
import threading
import warnings

import pytest
import torch

from trt_runtime.backends._tensorrt_copies import engine_objects, engines_shared_in_copies


class _PythonEngine:
    """Like the Python runtime's engine: copying it would build it again."""

    copies = 0

    def update_runtime_settings(self, settings) -> None:  # pragma: no cover - the marker of an engine
        pass

    def __deepcopy__(self, memo):
        type(self).copies += 1
        return _PythonEngine()


class _EngineModule(torch.nn.Module):  # like a TorchTensorRTModule: the engine is an attribute
    def __init__(self, engine) -> None:
        super().__init__()
        self.engine = engine

    def forward(self, x):
        return x * 2


def _program(engine) -> torch.fx.GraphModule:
    root = torch.nn.Module()
    root.add_module("_run_on_acc_0", _EngineModule(engine))
    root.register_buffer("scale", torch.ones(3))
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    y = graph.call_module("_run_on_acc_0", (x,))
    scale = graph.get_attr("scale")
    graph.output(graph.call_function(torch.mul, (y, scale)))
    return torch.fx.GraphModule(root, graph)


def _script_object():
    """A real TorchScript object (what the C++ runtime's engine is), where this torch build has one."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weight = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(weight, None)
    except (RuntimeError, AttributeError) as err:  # pragma: no cover - builds without quantized kernels
        pytest.skip(f"no TorchScript object in this torch build ({err})")


def test_copies_made_inside_the_block_share_the_engines_and_nothing_else():
    engine = _PythonEngine()
    program = _program(engine)
    program.loaded_engine = _script_object()  # a loaded program holds engines as attributes
    assert {id(e) for e in engine_objects(program)} == {id(engine), id(program.loaded_engine)}
    before = _PythonEngine.copies

    with engines_shared_in_copies(program) as shared:
        copied = copy.deepcopy(program)
    assert shared == 2
    assert copied is not program and copied._run_on_acc_0 is not program._run_on_acc_0
    assert copied._run_on_acc_0.engine is engine and _PythonEngine.copies == before
    assert copied.scale is not program.scale  # weights and buffers are still copied
    torch.testing.assert_close(copied(torch.ones(3)), program(torch.ones(3)))
    assert "__deepcopy__" not in vars(program) and "__deepcopy__" not in vars(copied)

    plain = copy.deepcopy(program)  # outside the block: copy.deepcopy as before
    assert plain._run_on_acc_0.engine is not engine and _PythonEngine.copies == before + 1


def test_a_real_torchscript_engine_object_is_shared():
    obj = _script_object()
    program = _program(obj)
    with engines_shared_in_copies(program):
        assert copy.deepcopy(program)._run_on_acc_0.engine is obj
    assert copy.deepcopy(program)._run_on_acc_0.engine is not obj


def test_overlapping_blocks_on_one_program_keep_the_hook_until_the_last_ends():
    engine = _PythonEngine()
    program = _program(engine)
    entered, release = threading.Event(), threading.Event()

    def other():
        with engines_shared_in_copies(program):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    entered.wait(10)
    with engines_shared_in_copies(program):
        pass
    assert copy.deepcopy(program)._run_on_acc_0.engine is engine  # the other block is still open
    release.set()
    thread.join(10)
    assert "__deepcopy__" not in vars(program)


def test_modules_without_engines_or_not_graph_modules_are_left_alone():
    with engines_shared_in_copies(torch.nn.Linear(2, 2)) as shared:
        assert shared == 0
    module = _EngineModule(_PythonEngine())
    with engines_shared_in_copies(module) as shared:
        assert shared == 0 and "__deepcopy__" not in vars(module)
