"""The state of one input signature of one component, and every transition it may make.

A call looks its signature up and does what the state says:

- ``EAGER``: run the module eagerly. Nothing is compiled for it: the backend is ``eager`` or cannot
  run here, the component has too many signatures, or the build queue was full (then ``retry_at``
  says when to ask again).
- ``COMPILING``: a build or load is under way (in a background worker, or in another thread of a
  foreground build); calls run eagerly until it is done, and the compiled callable is swapped in
  between calls, never during one.
- ``READY``: run the compiled callable (through CUDA graphs where that is safe).
- ``FAILED``: the build failed or the artifact broke at run time. Deterministic failures stay failed
  (``retry_at`` None); transient ones (out of memory, a full disk) carry a ``retry_at`` after a backoff.
- ``STALE``: the weights changed under a ready artifact; the next call refits, reloads or rebuilds.

Transitions live in ``_ALLOWED`` and happen only through ``Slot.move``, so a state that cannot be
reached from another is a bug found at once, not a silently served stale engine.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

__all__ = ["State", "Slot", "TransitionError"]


class State(str, enum.Enum):
    EAGER = "eager"
    COMPILING = "compiling"
    READY = "ready"
    FAILED = "failed"
    STALE = "stale"

    def __str__(self) -> str:
        return self.value


_ALLOWED: dict[State, frozenset[State]] = {
    State.EAGER: frozenset({State.COMPILING, State.READY, State.FAILED, State.EAGER}),
    State.COMPILING: frozenset({State.READY, State.FAILED, State.EAGER}),
    State.READY: frozenset({State.STALE, State.FAILED, State.READY}),
    State.STALE: frozenset({State.COMPILING, State.READY, State.FAILED, State.EAGER}),
    State.FAILED: frozenset({State.COMPILING, State.READY, State.FAILED, State.EAGER}),
}


class TransitionError(RuntimeError):
    """A state change that the state machine does not allow (a bug in trt_runtime, not in user code)."""


@dataclasses.dataclass(eq=False)
class Slot:
    """One signature's state in memory. The hot path reads ``state`` and ``fn`` without a lock: both are
    set together by ``move`` (``fn`` first), and a call that read the old state finishes on the old path."""

    state: State = State.COMPILING
    key: str = ""
    fn: Callable[..., Any] | None = None
    error: str | None = None
    """Why it failed or runs eagerly (shown by ``runtime.summary()``)."""
    retry_at: float | None = None
    """``time.monotonic()`` after which a FAILED or EAGER slot is resolved again; None: never."""
    stats: Any = None
    """This key's statistics row (``KeyStats``): the hot path bumps ``calls`` on it without a lock."""
    run_failures: int = 0
    transient_failures: int = 0
    """Builds that failed for a reason that may pass (memory, disk); each doubles the backoff."""
    """How often a ready artifact raised at run time while eager PyTorch did not."""
    revalidate: bool = False
    """Compare the artifact with eager on its next resolution (it raised at run time before)."""
    graphs: bool | None = None
    """Whether this signature may replay through CUDA graphs (None: not decided yet)."""
    handover: bool = False
    """A background build finished elsewhere (a child process wrote the entry) or cannot run beside the
    process's calls: the next call resolves this signature in the caller's thread, between its calls."""
    weights_version: int | None = None
    """For an artifact holding a copy of the weights: ``Component.weights_version()`` when it was made
    ready. A different value on a call means the weights were edited in place: the slot goes stale."""

    def move(self, to: State, **fields: Any) -> Slot:
        """Go to state ``to``, setting ``fields`` first (so ``fn`` is in place before ``READY``)."""
        if to not in _ALLOWED[self.state]:
            raise TransitionError(f"slot {self.key[:12] or '?'}: {self.state} -> {to} is not a valid transition")
        if to is State.FAILED or to is State.EAGER:  # a STALE slot keeps its callable for a refit
            fields.setdefault("fn", None)
        if to is not State.FAILED and to is not State.EAGER:
            fields.setdefault("retry_at", None)
        for name, value in fields.items():
            setattr(self, name, value)
        self.state = to
        return self

    def due(self, now: float | None = None) -> bool:
        """Whether a FAILED/EAGER slot with a retry time has reached it (STALE is always due)."""
        if self.state is State.STALE:
            return True
        if self.retry_at is None:
            return False
        return (time.monotonic() if now is None else now) >= self.retry_at
