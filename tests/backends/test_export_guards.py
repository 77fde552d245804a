"""Declared ranges whose guards torch.export cannot prove: checked at every size, used only when all hold."""

from __future__ import annotations

import logging

import pytest
import torch

from trt_runtime.backends import _export_guards as guards
from trt_runtime.backends import _tensorrt_export as export_module
from trt_runtime.backends.base import CompileRequest
from trt_runtime.errors import EngineBuildError
from trt_runtime.settings import RuntimeSettings
from trt_runtime.shapes import Dim


class _SquaresModThree(torch.nn.Module):
    """Branches on ``n * n % 3 != 2``: true for every integer n, but no solver of torch.export proves it."""

    def forward(self, x):
        n = x.shape[1]
        return x * 2 if (n * n) % 3 != 2 else x


class _EvenOnly(torch.nn.Module):
    """Branches on the parity of a dim: a range with odd and even sizes really needs two programs."""

    def forward(self, x):
        return x * 2 if x.shape[1] % 2 == 0 else x


def _request(module, low=4, high=16, multiple_of=1):
    tokens = Dim("tokens", low * multiple_of, high * multiple_of, multiple_of=multiple_of)
    return CompileRequest(component="m", module=module, args=(torch.ones(2, 6 * multiple_of),), kwargs={},
                          names=("x",), dynamic={"x": {1: tokens}}, settings=RuntimeSettings(), device=None,
                          precision="fp32")


def _deferred(module, low=4, high=16):
    """The program exported with the guards as runtime assertions, and the sizes it must serve."""
    request = _request(module, low, high)
    plan = export_module.InputPlan(request)
    flat = export_module.FlatCall(module, export_module.template(request.args, {}, ("x",)), plan.paths)
    program = torch.export.export(flat, tuple(plan.examples), dynamic_shapes=plan.dynamic_shapes(), strict=False,
                                  prefer_deferred_runtime_asserts_over_guards=True)
    return program, plan._space()


def test_a_guard_that_holds_at_every_size_is_checked_and_the_program_serves_the_range(caplog):
    module = _SquaresModThree()
    with pytest.raises(Exception) as refused:  # what torch.export alone does with this range
        torch.export.export(module, (torch.ones(2, 6),), dynamic_shapes=({1: torch.export.Dim("n", min=4, max=16)},),
                            strict=False)
    assert guards.is_constraint_violation(refused.value)
    request = _request(module)
    with caplog.at_level(logging.INFO, logger="trt_runtime"):
        program = export_module.InputPlan(request).export(request)
    assert "each holds at every size of the ranges" in caplog.text
    for n in (4, 5, 11, 16):
        x = torch.randn(2, n)
        torch.testing.assert_close(program.module()(x), module(x), rtol=0, atol=0)


def test_a_guard_that_fails_at_some_size_keeps_the_refusal_and_says_where():
    request = _request(_EvenOnly())
    with pytest.raises(EngineBuildError) as err:
        export_module.InputPlan(request).export(request)
    message = str(err.value)
    assert "Eq(Mod(tokens, 2), 0) fails at tokens = 5" in message
    assert "multiple_of=2" in message  # the hint on what to declare instead


def test_a_range_that_keeps_the_guard_true_exports_directly():
    """Declared as the module needs it (even sizes only), the guard is proven and nothing is enumerated."""
    request = _request(_EvenOnly(), low=2, high=8, multiple_of=2)
    program = export_module.InputPlan(request).export(request)
    x = torch.randn(2, 10)
    torch.testing.assert_close(program.module()(x), x * 2, rtol=0, atol=0)


def test_sizes_span_the_declared_ranges_by_name():
    program, space = _deferred(_SquaresModThree(), 4, 16)
    assert space.ranges == {"tokens": range(4, 17)}
    assert space.shapes({"tokens": 9}) == [[2, 9]]
    assert space.describe({"tokens": 9}) == "tokens = 9"
    assert guards.failing_condition(program, space) is None


def test_conditions_on_undeclared_sizes_or_too_many_sizes_are_not_trusted(monkeypatch):
    program, space = _deferred(_SquaresModThree(), 4, 16)
    assert "not declared" in guards.failing_condition(program, guards.SizeSpace([torch.ones(2, 6)], [{}]))
    monkeypatch.setattr(guards, "MAX_EVALUATIONS", 3)
    assert "not checked" in guards.failing_condition(program, space)


class _ProductEven(torch.nn.Module):
    """A relation across two inputs that torch.export accepts without proving: it stays a guard of
    ``program.module()``, which an engine does not check."""

    def forward(self, x, y):
        return x.sum() * 2 if (x.shape[1] * y.shape[1]) % 2 == 0 else x.sum()


def test_a_guard_export_accepts_is_checked_too():
    a, b = Dim("a", 64, 100), Dim("b", 64, 100)
    request = CompileRequest(component="m", module=_ProductEven(), args=(torch.ones(2, 70), torch.ones(2, 71)),
                             kwargs={}, names=("x", "y"), dynamic={"x": {1: a}, "y": {1: b}},
                             settings=RuntimeSettings(), device=None, precision="fp32")
    with pytest.raises(EngineBuildError, match="does not serve every size of the declared ranges") as err:
        export_module.InputPlan(request).export(request)
    assert "fails at a = 65, b = 65" in str(err.value)


class _CheckedItem(torch.nn.Module):
    """A check on a data value beside a size guard torch cannot prove: the value's check is torch's business,
    as in a direct export."""

    def forward(self, x, k):
        value = k.item()
        torch._check(value >= 0)
        n = x.shape[1]
        return x * 2 if (n * n) % 3 != 2 else x


def test_assertions_on_data_values_are_left_to_torch():
    request = CompileRequest(component="m", module=_CheckedItem(), args=(torch.ones(2, 6), torch.tensor(3)),
                             kwargs={}, names=("x", "k"), dynamic={"x": {1: Dim("tokens", 4, 16)}},
                             settings=RuntimeSettings(), device=None, precision="fp32")
    program = export_module.InputPlan(request).export(request)
    torch.testing.assert_close(program.module()(torch.ones(2, 7), torch.tensor(1)), torch.full((2, 7), 2.0))


def test_a_second_refusal_is_reported_as_such():
    """A range the module cannot take at all (a size it specializes) is refused by both exports: the message
    says so instead of claiming a check."""

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.reshape(2, 2, 3)

    request = _request(Fixed())
    with pytest.raises(EngineBuildError) as err:
        export_module.InputPlan(request).export(request)
    assert "exported with those guards as runtime assertions, it was refused too" in str(err.value)
    assert "checked at every size" not in str(err.value)


@torch.no_grad()
def test_llama_encoder_exports_over_a_declared_range_of_tokens():
    """FramePack's text encoder over a range of prompt lengths: torch 2.11 cannot prove the guard of
    transformers' ``repeat_kv`` (``Min(4*tokens, 8*tokens) == 4*tokens``); it is checked instead (later torch
    proves it). The program serves every length of the range, as eager."""
    from tests.support import tiny_models as tm

    model = tm.llama_encoder()
    tokens = Dim("tokens", 4, 16)
    ids, mask = torch.randint(2, 60, (2, 6)), torch.ones(2, 6, dtype=torch.int64)
    request = CompileRequest(component="llama", module=model, args=(),
                             kwargs={"input_ids": ids, "attention_mask": mask, "use_cache": False},
                             names=(), dynamic={"input_ids": {1: tokens}, "attention_mask": {1: tokens}},
                             settings=RuntimeSettings(), device=None, precision="fp32")
    plan = export_module.InputPlan(request)
    program = plan.export(request).module()
    for n in (5, 13):
        ids, mask = torch.randint(2, 60, (2, n)), torch.ones(2, n, dtype=torch.int64)
        mask[1, -2:] = 0
        got = program(*({"input_ids": ids, "attention_mask": mask}[path] for path in plan.paths))
        want = model(input_ids=ids, attention_mask=mask, use_cache=False)
        torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, rtol=1e-5, atol=1e-5)  # fp32
