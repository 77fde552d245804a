"""Background builds: one worker per device, a bounded queue, cancelled cleanly at exit.

With ``RuntimeSettings.background`` a miss does not make its caller wait: the call runs eagerly, the
build is queued here, and every call of that signature runs eagerly until the worker hands over. The
worker only waits for a build process (``build_process.py``) for compilers that trace; it then loads, runs and
checks the entry itself where that traces nothing (an ahead-of-time inductor function: ``Backend.loads_beside_calls``),
so that no call waits for the load; otherwise the next call loads it in the caller's thread
(``Backend.builds_beside_calls`` says why never in this thread).
One build at a time per device by default, since two builds on one GPU compete for its memory and
gain little; a full queue turns the request away and the signature asks again later.

The worker runs its GPU work on a stream of its own, so the eager calls of the caller are not ordered
behind it; its example inputs are private copies, taken when the build was queued.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["BuildQueue", "queue_for", "shutdown_all", "clone_call", "grad_modes", "entered"]

logger = logging.getLogger(__name__)


class BuildQueue:
    """A worker thread that runs submitted build jobs one after another."""

    def __init__(self, name: str, max_pending: int) -> None:
        self.name = name
        self._queue: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue(maxsize=max_pending)
        self._cancelled = threading.Event()
        self._running: str | None = None
        self._thread = threading.Thread(target=self._work, name=f"trt_runtime-build-{name}", daemon=True)
        self._thread.start()
        with _WORKERS_LOCK:
            _WORKERS[:] = [worker for worker in _WORKERS if worker.is_alive()]
            _WORKERS.append(self._thread)

    @property
    def running(self) -> str | None:
        """Description of the build in progress, if any."""
        return self._running

    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, description: str, job: Callable[[], None]) -> bool:
        """Queue ``job``; False when the queue is full or shut down (the caller asks again later)."""
        if self._cancelled.is_set():
            return False
        try:
            self._queue.put_nowait((description, job))
        except queue.Full:
            return False
        return True

    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def shutdown(self, wait_s: float = 0.0) -> list[str]:
        """Drop pending jobs and stop the worker; returns the descriptions of the jobs dropped. The build
        in progress cannot be interrupted inside a compiler: it is waited for up to ``wait_s`` seconds,
        and its result is not published if it finishes later (jobs check ``cancelled()``)."""
        self._cancelled.set()
        dropped = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                dropped.append(item[0])
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # pragma: no cover - emptied just above
            pass
        self.wait(wait_s)
        return dropped

    def wait(self, seconds: float) -> None:
        """Wait up to ``seconds`` for the worker to end (after ``shutdown``)."""
        if seconds > 0:
            self._thread.join(seconds)

    def _work(self) -> None:
        stream = None
        while True:
            item = self._queue.get()
            if item is None or self._cancelled.is_set():
                return
            description, job = item
            self._running = description
            try:
                if stream is None and torch.cuda.is_available() and self.name.startswith("cuda"):
                    stream = torch.cuda.Stream(device=torch.device(self.name))
                if stream is not None:
                    with torch.cuda.stream(stream):
                        job()
                    stream.synchronize()
                else:
                    job()
            except Exception:  # noqa: BLE001 - a job reports its own failures; this keeps the worker alive
                logger.exception("background build %s raised", description)
            finally:
                self._running = None
                # a finished job must not outlive itself in this frame while the worker waits for the next one: its
                # closure holds the component and through it the model, whose memory would stay allocated after the
                # caller deleted the model, until another build ran on this device
                del item, job


_QUEUES: dict[str, BuildQueue] = {}
_LOCK = threading.Lock()
_REGISTERED = False
_EXIT_WAIT_S = 5.0
"""How long, in all, a process that exits waits for its workers to leave the builds it cancelled (a worker waiting for
a build process it stopped leaves at once; a compile inside a worker thread cannot be interrupted and is left after
this). Python up to 3.13 ends a daemon thread that comes back from C++ code during interpreter shutdown by unwinding
its stack, which aborts the process: two of three server processes stopped during their first builds aborted so on an
H200 ("terminate called without an active exception", exit -6)."""
_WORKERS: list[threading.Thread] = []
"""Every worker thread started, until it has ended: the exit handler waits for them even after ``shutdown_all``
dropped their queues (a server that shut its builds down itself, then exits)."""
_WORKERS_LOCK = threading.Lock()


def queue_for(device: torch.device | None, max_pending: int) -> BuildQueue:
    """The build queue of ``device`` (one worker per device, created on first use)."""
    global _REGISTERED
    name = "cpu" if device is None or device.type != "cuda" else f"cuda:{device.index or 0}"
    with _LOCK:
        build_queue = _QUEUES.get(name)
        if build_queue is None or build_queue.cancelled():
            build_queue = _QUEUES[name] = BuildQueue(name, max_pending)
        if not _REGISTERED:
            atexit.register(_shutdown_at_exit)
            _REGISTERED = True
        return build_queue


def shutdown_all(wait_s: float = 0.0) -> None:
    """Cancel every queue's pending builds and stop the build processes, then wait up to ``wait_s`` seconds in all
    for the workers to leave their jobs (at exit: ``_EXIT_WAIT_S``)."""
    from . import build_process

    with _LOCK:
        queues = list(_QUEUES.values())
        _QUEUES.clear()
    running = [build_queue.running for build_queue in queues]
    # cancelled first, so that a stopped build process hands nothing over; then the processes are stopped
    dropped_by_queue = [build_queue.shutdown(0.0) for build_queue in queues]
    stopped = build_process.stop_children()
    for current, dropped in zip(running, dropped_by_queue, strict=True):
        if dropped or current:
            logger.info("cancelled %d queued background build(s)%s", len(dropped),
                        f"; stopped the one in progress ({current})" if current else "")
    if stopped:
        logger.debug("stopped %d build process(es)", stopped)
    if wait_s > 0:
        _join_workers(wait_s)


def _join_workers(wait_s: float) -> None:
    """Wait for every worker thread of this process (cancelled ones included) until one deadline."""
    deadline = time.monotonic() + wait_s
    with _WORKERS_LOCK:
        workers = [worker for worker in _WORKERS if worker.is_alive() and worker is not threading.current_thread()]
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    left = [worker.name for worker in workers if worker.is_alive()]
    if left:
        logger.info("%d build worker(s) still inside a build after %.0f s: %s", len(left), wait_s, ", ".join(left))


def _shutdown_at_exit() -> None:
    shutdown_all(wait_s=_EXIT_WAIT_S)


def grad_modes() -> tuple[bool, bool]:
    """The calling thread's ``(grad enabled, inference mode)``: thread-local in torch, so a build on a worker
    thread must enter them again (``entered``) to trace what the caller runs."""
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


def entered(modes: tuple[bool, bool]):
    """A context with the grad and inference modes ``grad_modes()`` returned."""
    import contextlib

    grad, inference = modes
    stack = contextlib.ExitStack()
    if inference:
        stack.enter_context(torch.inference_mode())
    stack.enter_context(torch.set_grad_enabled(grad))
    return stack


def clone_call(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Private copies of a call's tensors for a build that runs later on another thread."""
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), (args, kwargs))
