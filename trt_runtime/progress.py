"""A progress display for long builds, drawn from the build events on trt_runtime's log records.

The library only emits records (``logging_utils.event``); a front end decides what to draw. The CLI
installs ``BuildProgress`` on the ``trt_runtime`` logger: on a terminal one live status line per build
(tqdm: which component, which input shapes, which phase, elapsed time), elsewhere (CI logs, pipes) one
plain line when a build or load starts, changes phase and ends. A library user who wants the same
attaches it themselves (``logging.getLogger("trt_runtime").addHandler(BuildProgress())`` and a level of
DEBUG on that logger); nothing draws unless asked.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, TextIO

from .logging_utils import EVENT

__all__ = ["BuildProgress"]

_VERB = {"build_start": "compiling", "load_start": "loading"}
_DONE = {"build_end": "compiled", "load_end": "loaded"}


class _Line:
    """One build or load in progress."""

    def __init__(self, verb: str, component: str, backend: str, shapes: str) -> None:
        self.verb, self.component, self.backend, self.shapes = verb, component, backend, shapes
        self.phase = ""
        self.started = time.monotonic()
        self.bar: Any = None

    def describe(self) -> str:
        where = f" with {self.backend}" if self.backend else ""
        phase = f": {self.phase}" if self.phase else ""
        return f"{self.verb} {self.component} ({self.shapes}){where}{phase}"


class BuildProgress(logging.Handler):
    """Turns build events into a progress display on ``stream`` (default: stderr at each write)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        super().__init__(logging.DEBUG)
        self._stream = stream
        self._live = live
        self._lines: dict[str, _Line] = {}
        self._guard = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def stream(self) -> TextIO:
        return self._stream or sys.stderr

    def live(self) -> bool:
        """A live status line needs a terminal and tqdm (a dependency of huggingface-hub)."""
        if self._live is None:
            try:
                import tqdm  # noqa: F401
            except ImportError:
                self._live = False
            else:
                self._live = bool(getattr(self.stream, "isatty", lambda: False)())
        return self._live

    # ------------------------------------------------------------------------------------------ events
    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, EVENT, None)
        if not isinstance(info, dict):
            return
        try:
            self._handle(info)
        except Exception:  # noqa: BLE001 - a display must never break a build
            self.handleError(record)

    def _handle(self, info: dict[str, Any]) -> None:
        kind, component = info.get("kind"), str(info.get("component", "?"))
        with self._guard:
            if kind in _VERB:
                self._start(component, _Line(_VERB[kind], component, str(info.get("backend", "")),
                                             str(info.get("shapes", ""))))
            elif kind == "phase" and component in self._lines:
                line = self._lines[component]
                line.phase = str(info.get("phase", ""))
                self._show(line)
            elif kind in _DONE and component in self._lines:
                self._end(component, info, _DONE[kind])

    def _start(self, component: str, line: _Line) -> None:
        self._close(component)
        self._lines[component] = line
        if self.live():
            from tqdm import tqdm

            line.bar = tqdm(total=None, desc=line.describe(), file=self.stream, leave=False,
                            bar_format="{desc} [{elapsed}]", dynamic_ncols=True)
            self._tick()
        else:
            self._write(line.describe())

    def _show(self, line: _Line) -> None:
        if line.bar is not None:
            line.bar.set_description_str(line.describe(), refresh=True)
        else:
            self._write(line.describe())

    def _end(self, component: str, info: dict[str, Any], done: str) -> None:
        line = self._lines.pop(component)
        seconds = info.get("seconds", time.monotonic() - line.started)
        if line.bar is not None:
            line.bar.close()
        if info.get("ok", True):
            self._write(f"{done} {component} ({line.shapes}) in {seconds:.1f} s")
        else:
            self._write(f"{line.verb} {component} ({line.shapes}) failed after {seconds:.1f} s; it runs eagerly")

    def _close(self, component: str) -> None:
        line = self._lines.pop(component, None)
        if line is not None and line.bar is not None:
            line.bar.close()

    def _write(self, text: str) -> None:
        if any(line.bar is not None for line in self._lines.values()):
            from tqdm import tqdm

            tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    # ------------------------------------------------------------------------------------------ ticking
    def _tick(self) -> None:
        """Refresh the live lines every half second so the elapsed time moves during a long phase."""
        if self._ticker is not None and self._ticker.is_alive():
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(0.5):
                with self._guard:
                    bars = [line.bar for line in self._lines.values() if line.bar is not None]
                    if not bars:
                        return
                    for bar in bars:
                        bar.refresh()

        self._ticker = threading.Thread(target=run, name="trt_runtime-progress-display", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        """Close open lines (a build interrupted by an exception) and stop refreshing."""
        self._stop.set()
        with self._guard:
            for component in list(self._lines):
                self._close(component)
        super().close()
