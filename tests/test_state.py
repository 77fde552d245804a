"""The per-signature state machine: allowed transitions, what each move clears, when a retry is due."""

from __future__ import annotations

import time

import pytest

from trt_runtime.state import Slot, State, TransitionError


def test_a_build_goes_ready_and_a_weight_change_makes_it_stale_keeping_the_callable():
    fn = object()
    slot = Slot()
    assert slot.state is State.COMPILING and not slot.due()
    slot.move(State.READY, key="ab", fn=fn)
    assert slot.fn is fn
    slot.move(State.STALE)
    assert slot.fn is fn and slot.due(), "a stale slot keeps its artifact for a refit and is resolved again"


def test_failures_drop_the_callable_and_only_transient_ones_come_due():
    slot = Slot().move(State.READY, key="ab", fn=object())
    slot.move(State.FAILED, error="unsupported op")
    assert slot.fn is None and slot.retry_at is None and not slot.due()
    slot.move(State.FAILED, error="CUDA out of memory", retry_at=time.monotonic() + 60)
    assert not slot.due() and slot.due(now=time.monotonic() + 61)


@pytest.mark.parametrize(("start", "to"), [
    (State.COMPILING, State.STALE),   # nothing was ready to go stale
    (State.READY, State.COMPILING),   # a ready slot is never rebuilt without going stale or failing first
    (State.READY, State.EAGER),
])
def test_invalid_transitions_raise(start, to):
    slot = Slot()
    if start is State.READY:
        slot.move(State.READY, fn=object())
    with pytest.raises(TransitionError, match=f"{start.value} -> {to.value}"):
        slot.move(to)


def test_leaving_a_retry_state_clears_the_retry_time():
    slot = Slot().move(State.FAILED, retry_at=time.monotonic())
    slot.move(State.COMPILING)
    assert slot.retry_at is None
