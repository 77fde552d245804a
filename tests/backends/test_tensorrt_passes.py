"""The rewrites applied to an exported program before torch-tensorrt converts it (CPU: torch.export only)."""

from __future__ import annotations

import pytest
import torch

from tests.support import tiny_models as tm
from trt_runtime.backends import _tensorrt_export as export_module
from trt_runtime.backends import _tensorrt_passes as passes
from trt_runtime.backends._tensorrt_passes import expand_copy_sources
from trt_runtime.backends.base import CompileRequest
from trt_runtime.settings import RuntimeSettings
from trt_runtime.shapes import Dim


def _export(module, args, dynamic=None, names=("x",)):
    request = CompileRequest(component="m", module=module, args=args, kwargs={}, names=names, dynamic=dynamic or {},
                             settings=RuntimeSettings(), device=None, precision="fp32")
    return export_module.InputPlan(request).export(request)


def _copies(program) -> list[tuple]:
    """(destination shape, source shape, destination dtype, source dtype) of every ``aten.copy`` that the
    converters see: torch-tensorrt decomposes (functionalizes) the program first."""
    graph = program.run_decompositions().graph
    return [(tuple(n.args[0].meta["val"].shape), tuple(n.args[1].meta["val"].shape), n.args[0].meta["val"].dtype,
             n.args[1].meta["val"].dtype) for n in graph.nodes if n.target is torch.ops.aten.copy.default]


class _FirstColumnTrue(torch.nn.Module):
    """HunyuanVideo's token refiner: a boolean attention mask whose first column is set in place."""

    def forward(self, x, keep):
        mask = keep.unsqueeze(1) & keep.unsqueeze(2)
        mask[:, :, 0] = True
        return torch.where(mask, x, torch.zeros_like(x))


class _IntoHalf(torch.nn.Module):
    def forward(self, x, index):
        out = x.clone()
        out[:, 0] = index  # an int64 value written into float16
        return out


def _keep(n: int) -> torch.Tensor:
    keep = torch.ones(2, n, dtype=torch.bool)
    keep[1, -2:] = False
    return keep


def test_a_broadcast_write_gets_a_source_of_the_destinations_shape():
    module, x, keep = _FirstColumnTrue(), torch.randn(2, 6, 6), _keep(6)
    raw = torch.export.export(module, (x, keep), strict=False)
    assert any(dst != src for dst, src, _, _ in _copies(raw)), "the pattern the copy converter mishandles"
    program = _export(module, (x, keep), names=("x", "keep"))
    copies = _copies(program)
    assert copies and all(dst == src and a == b for dst, src, a, b in copies), copies
    torch.testing.assert_close(program.module()(x, keep), module(x, keep), rtol=0, atol=0)


def test_a_write_of_another_dtype_is_cast_first():
    module, x, index = _IntoHalf(), torch.randn(3, 4).half(), torch.tensor(7)
    program = _export(module, (x, index), names=("x", "index"))
    copies = _copies(program)
    assert copies and all(dst == src and a == b for dst, src, a, b in copies), copies
    torch.testing.assert_close(program.module()(x, index), module(x, index), rtol=0, atol=0)


def test_symbolic_destinations_are_expanded_to_their_symbolic_sizes():
    module, tokens = _FirstColumnTrue(), Dim("tokens", 4, 16)
    program = _export(module, (torch.randn(2, 6, 6), _keep(6)), names=("x", "keep"),
                      dynamic={"x": {1: tokens, 2: tokens}, "keep": {1: tokens}})
    assert all(dst == src for dst, src, _, _ in _copies(program))
    for n in (5, 9):
        x, keep = torch.randn(2, n, n), _keep(n)
        torch.testing.assert_close(program.module()(x, keep), module(x, keep), rtol=0, atol=0)


def test_programs_without_the_pattern_are_left_alone():
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.ones(1, 3),), strict=False)
    before = program.graph_module.code
    assert expand_copy_sources(program) == 0
    assert program.graph_module.code == before


@torch.no_grad()
def test_hunyuan_video_transformer_exports_without_a_broadcast_copy():
    """The family whose conversion failed with TensorRT-RTX (2026-11-26: ``__len__() should return >= 0``)."""
    model = tm.hunyuan_video_transformer().eval()
    mask = torch.ones(1, 6, dtype=torch.int64)
    mask[0, -2:] = 0
    call = {"hidden_states": torch.randn(1, 4, 2, 2, 2), "timestep": torch.tensor([999]),
            "encoder_hidden_states": torch.randn(1, 6, 16), "encoder_attention_mask": mask,
            "pooled_projections": torch.randn(1, 8), "guidance": torch.tensor([1000.0])}
    request = CompileRequest(component="transformer", module=model, args=(), kwargs=call, names=(), dynamic={},
                             settings=RuntimeSettings(), device=None, precision="fp32")
    plan = export_module.InputPlan(request)
    program = plan.export(request)
    assert all(dst == src and a == b for dst, src, a, b in _copies(program))
    got = program.module()(*plan.examples)[0]
    torch.testing.assert_close(got, model(**call, return_dict=False)[0], rtol=0, atol=0)


class _FilledOutput(torch.nn.Module):
    def forward(self, x):
        return x.clone().fill_(torch.tensor(3.0))  # the write's result is the program's output


def test_a_rewritten_write_keeps_its_place_in_the_programs_signature(tmp_path):
    program = torch.export.export(_FilledOutput(), (torch.ones(3, 4),), strict=False)
    names = [spec.arg.name for spec in program.graph_signature.output_specs]
    assert expand_copy_sources(program) == 1
    assert [spec.arg.name for spec in program.graph_signature.output_specs] == names
    output = next(n for n in program.graph.nodes if n.op == "output")
    assert [a.name for a in output.args[0]] == names
    torch.export.save(program, tmp_path / "p.pt2")
    loaded = torch.export.load(tmp_path / "p.pt2")
    torch.testing.assert_close(loaded.module()(torch.ones(3, 4)), torch.full((3, 4), 3.0))


class _IntoDataDependentRows(torch.nn.Module):
    """A destination whose size is known only at run time: comparing it with the source's would need a guard."""

    def forward(self, x, row):
        rows = x[x[:, 0] > 0]
        out = rows.new_zeros(rows.shape[0], 4)
        out.copy_(row)  # (1, 4) broadcast over the rows
        return out


def test_a_destination_of_data_dependent_size_is_expanded_without_a_guard():
    module, row = _IntoDataDependentRows(), torch.arange(4.0).reshape(1, 4)
    x = torch.tensor([[1.0, 0], [-1, 0], [2, 0]])
    try:
        torch.export.export(module, (x, row), strict=False)
    except Exception as err:  # noqa: BLE001 - torch 2.11's meta of copy_ guards on the size itself
        pytest.skip(f"torch {torch.__version__} cannot export this module ({type(err).__name__})")
    program = _export(module, (x, row), names=("x", "row"))
    assert all(dst == src for dst, src, _, _ in _copies(program))
    torch.testing.assert_close(program.module()(x, row), module(x, row), rtol=0, atol=0)


class _WriteInABranch(torch.nn.Module):
    def forward(self, x, keep):
        def masked(x, keep):
            mask = keep.unsqueeze(1) & keep.unsqueeze(2)
            mask[:, :, 0] = True
            return torch.where(mask, x, torch.zeros_like(x))

        return torch.cond(x.sum() > 0, masked, lambda x, keep: x.clone(), (x, keep))


def test_writes_inside_the_branches_of_cond_are_rewritten_too():
    module, x, keep = _WriteInABranch(), torch.ones(2, 6, 6), _keep(6)
    program = _export(module, (x, keep), names=("x", "keep"))
    writes = [n for gm in program.graph_module.modules() if isinstance(gm, torch.fx.GraphModule)
              for n in gm.graph.nodes if n.target in (torch.ops.aten.fill_.Tensor, torch.ops.aten.copy_.default)]
    assert writes and all(n.target is torch.ops.aten.copy_.default
                          and tuple(n.args[1].meta["val"].shape) == tuple(n.args[0].meta["val"].shape) for n in writes)
    torch.testing.assert_close(program.module()(x, keep), module(x, keep), rtol=0, atol=0)


def test_a_program_that_cannot_be_checked_is_converted_as_exported(monkeypatch, caplog):
    program = torch.export.export(_FilledOutput(), (torch.ones(3, 4),), strict=False)
    before = program.graph_module.code

    def broken(dst, src):
        raise RuntimeError("no fake mode")

    monkeypatch.setattr(passes, "_needs_expansion", broken)
    assert expand_copy_sources(program, "m") == 0
    assert program.graph_module.code == before
    assert "could not check the program's in-place writes" in caplog.text


class _CrossAttention(torch.nn.Module):
    """A UNet's attention in small: self-attention over the image tokens, cross-attention to the text tokens."""

    def forward(self, x, context):
        q = x.unflatten(-1, (2, 4)).transpose(1, 2)
        kv = context.unflatten(-1, (2, 4)).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return torch.nn.functional.scaled_dot_product_attention(out, kv, kv).transpose(1, 2).flatten(-2)


def test_uneven_attention_finds_cross_attention_only():
    args = (torch.randn(2, 16, 8), torch.randn(2, 7, 8))
    program = _export(_CrossAttention(), args, names=("x", "context"))
    (name,) = passes.uneven_attention(program)  # the self-attention is even
    node = next(n for n in program.graph.nodes if n.name == name)
    assert node.args[0].meta["val"].shape[2] == 16 and node.args[1].meta["val"].shape[2] == 7
    # the same module attending to as many text tokens as image tokens has none
    assert passes.uneven_attention(_export(_CrossAttention(), (args[0], torch.randn(2, 16, 8)),
                                           names=("x", "context"))) == []


def test_uneven_attention_over_declared_ranges_compares_symbols():
    """Lengths that are one declared dim are even at every size; two dims are not known to be equal."""
    same = {"x": {1: Dim("tokens", 4, 32)}, "context": {1: Dim("tokens", 4, 32)}}
    apart = {"x": {1: Dim("tokens", 4, 32)}, "context": {1: Dim("text", 4, 32)}}
    args = (torch.randn(2, 16, 8), torch.randn(2, 16, 8))
    assert passes.uneven_attention(_export(_CrossAttention(), args, same, names=("x", "context"))) == []
    assert len(passes.uneven_attention(_export(_CrossAttention(), args, apart, names=("x", "context")))) == 1


def test_tiny_unet_cross_attention_is_found():
    unet = tm.sd_unet().eval()
    args = (torch.randn(2, 4, 16, 16), torch.tensor(10), torch.randn(2, 8, 32))
    program = _export(unet, args, names=("sample", "timestep", "encoder_hidden_states"))
    found = passes.uneven_attention(program)
    assert found and len(found) == sum(1 for n in program.graph.nodes
                                       if "scaled_dot_product_attention" in str(n.target)) // 2
