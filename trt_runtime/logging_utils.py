"""Where trt_runtime's messages go, and how many there are (diffusers' convention).

- Warnings a user must act on (a build that failed and now runs eagerly, a module that runs eagerly
  because gradients are enabled, a cache that cannot be written) are visible without any logging setup:
  the first ``TensorRTRuntime`` of a process adds one stderr handler to the ``trt_runtime`` logger.
  Nothing happens at import time.
- An application that configured logging itself (handlers on the root logger, or on ``trt_runtime``)
  gets our records through its own handlers; the default handler then stays silent, so nothing is
  printed twice.
- At the default level a successful compile prints nothing. ``set_verbosity_info()`` (or
  ``TRT_RUNTIME_VERBOSITY=info``) shows two lines per compile (what, which shapes; how long, where it
  went), the backend ``auto`` chose, what was loaded; ``set_verbosity_debug()`` shows everything.
- The environment variable is read when the first runtime is created (or ``enable_default_handler()``
  is called), never at import, and an explicit ``set_verbosity`` call wins over it.

Records that describe a build's progress carry a structured ``trt_event`` attribute (``event()``), so a
front end such as the CLI can draw a progress display from them; the library itself draws nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

__all__ = [
    "VERBOSITY_ENV",
    "EVENT",
    "get_verbosity",
    "set_verbosity",
    "set_verbosity_debug",
    "set_verbosity_info",
    "set_verbosity_warning",
    "set_verbosity_error",
    "enable_default_handler",
    "disable_default_handler",
    "install_default_handler",
    "Heartbeat",
    "warn_once",
    "forget_warnings",
    "event",
]

VERBOSITY_ENV = "TRT_RUNTIME_VERBOSITY"
EVENT = "trt_event"
"""Name of the record attribute holding a build event (a dict with ``kind`` and ``component``)."""

_ROOT = "trt_runtime"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "warn": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"handler": None, "disabled": False, "explicit": False}


class _DefaultHandler(logging.StreamHandler):
    """stderr, looked up at each record (so redirected or captured stderr works), silent when someone
    else's handler will already show the record."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("trt_runtime %(levelname)s: %(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; stderr is always read anew
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not _shown_elsewhere(record, self):
            super().emit(record)


def _shown_elsewhere(record: logging.LogRecord, ours: logging.Handler) -> bool:
    """Whether a handler other than ours sits on the record's way up the logger tree."""
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        if any(handler is not ours for handler in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent  # type: ignore[assignment]
    return False


def _logger() -> logging.Logger:
    return logging.getLogger(_ROOT)


def _parse_level(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a logging level: {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip().lower()
    if text in _LEVELS:
        return _LEVELS[text]
    if text.isdigit():
        return int(text)
    raise ValueError(f"not a logging level: {value!r} (use debug, info, warning, error or critical)")


def install_default_handler() -> None:
    """Add the stderr handler to the ``trt_runtime`` logger (once per process, never after
    ``disable_default_handler``) and apply ``$TRT_RUNTIME_VERBOSITY`` unless ``set_verbosity`` was
    called. ``TensorRTRuntime()`` and the CLI call this; importing trt_runtime does not."""
    with _LOCK:
        if _STATE["handler"] is not None or _STATE["disabled"]:
            return
        handler = _DefaultHandler()
        handler.setLevel(_logger().level if _STATE["explicit"] else logging.WARNING)
        _logger().addHandler(handler)
        _STATE["handler"] = handler
        if _STATE["explicit"]:
            return
    raw = os.environ.get(VERBOSITY_ENV)
    if raw:
        try:
            _apply(_parse_level(raw))
        except ValueError as err:
            _logger().warning("ignoring %s=%r: %s", VERBOSITY_ENV, raw, err)


def enable_default_handler() -> None:
    """Add the stderr handler back after ``disable_default_handler`` (or before any runtime exists)."""
    with _LOCK:
        _STATE["disabled"] = False
    install_default_handler()


def disable_default_handler() -> None:
    """Remove the stderr handler (for applications that route ``trt_runtime`` records themselves);
    later runtimes do not add it back."""
    with _LOCK:
        handler = _STATE["handler"]
        _STATE["handler"] = None
        _STATE["disabled"] = True
    if handler is not None:
        _logger().removeHandler(handler)


def _apply(level: int) -> None:
    _logger().setLevel(level)
    handler = _STATE["handler"]
    if handler is not None:
        handler.setLevel(level)


def set_verbosity(level: int | str) -> None:
    """Show ``trt_runtime`` messages from ``level`` up (``logging.INFO`` or ``"info"``...): sets the
    ``trt_runtime`` logger's level and, unless disabled, adds the stderr handler at that level."""
    parsed = _parse_level(level)
    with _LOCK:
        _STATE["explicit"] = True
    _apply(parsed)
    install_default_handler()


def get_verbosity() -> int:
    """The effective level of the ``trt_runtime`` logger."""
    return _logger().getEffectiveLevel()


def set_verbosity_debug() -> None:
    set_verbosity(logging.DEBUG)


def set_verbosity_info() -> None:
    """Also show one line when a compile starts and one when it ends, and what was loaded."""
    set_verbosity(logging.INFO)


def set_verbosity_warning() -> None:
    """Only what needs attention (the default)."""
    set_verbosity(logging.WARNING)


def set_verbosity_error() -> None:
    set_verbosity(logging.ERROR)


def event(kind: str, component: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a log record that reports build progress: ``logger.info(msg, extra=event(...))``.

    Kinds: ``build_start`` (backend, shapes), ``phase`` (phase: export, engine build, first call,
    validate, save...), ``build_end`` (seconds, ok), ``load_start``, ``load_end`` (seconds)."""
    return {EVENT: {"kind": kind, "component": component, **fields}}


class Heartbeat:
    """Logs a line every ``interval`` seconds while a build runs, so nobody thinks the process hung."""

    def __init__(self, component: str, backend: str, interval: float, log: logging.Logger) -> None:
        self.component, self.backend, self.interval, self.log = component, backend, interval, log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self.interval > 0:
            self._started = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="trt_runtime-progress", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.log.info("[%s] still compiling with %s (%.0f s so far)", self.component, self.backend,
                        time.perf_counter() - self._started)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
_MAX_WARNED = 4096


def warn_once(log: logging.Logger, subject: str, reason: str, message: str, *args: Any) -> None:
    """``log.warning`` once per (subject, reason) for the life of the process: a refused cache entry is looked up
    again on every new process and shape, a declined backend on every new runtime; one line each is enough."""
    with _warned_lock:
        if (subject, reason) in _warned:
            return
        if len(_warned) >= _MAX_WARNED:
            _warned.clear()
        _warned.add((subject, reason))
    log.warning(message, *args)


def forget_warnings() -> None:
    """Warn again about everything (tests; a long-lived service after an operator fixed the cause)."""
    with _warned_lock:
        _warned.clear()
