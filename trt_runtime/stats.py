"""Counters a user can print: what was compiled, loaded, reused and how long each took."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

__all__ = ["KeyStats", "RuntimeStats", "short_shapes"]


def short_shapes(shapes, limit: int = 6) -> str:
    """``2x4x64x64, 2, 2x77x768``: shapes as a person reads them in a log line, a summary or ``cache ls``."""
    text = ", ".join("x".join(map(str, s)) or "scalar" for s in list(shapes)[:limit])
    return text + (f", ... ({len(shapes)} tensors)" if len(shapes) > limit else "")


@dataclasses.dataclass
class KeyStats:
    """What happened to one (component, cache key)."""

    component: str
    key: str
    shapes: str
    backend: str = ""
    state: str = "miss"
    calls: int = 0
    compiles: int = 0
    loads: int = 0
    reuses: int = 0
    """Artifacts another wrapper of this process had loaded from the same entry (``trt_runtime.loaded``)."""
    refits: int = 0
    compile_seconds: float = 0.0
    load_seconds: float = 0.0
    fallbacks: int = 0
    graphs: int = 0
    """CUDA graphs captured for this key (one per exact input shape)."""
    error: str | None = None
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds spent per phase of getting the artifact ready: fingerprint, export, compile, save, load,
    checksum, validate... (summed over builds and loads of this key)."""


class RuntimeStats:
    """Thread-safe statistics of one runtime, by component and key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], KeyStats] = {}

    def record(self, component: str, key: str, shapes: str = "", **changes: Any) -> KeyStats:
        """Add numeric ``changes`` (calls=1, compile_seconds=...) and set the others (state=...)."""
        with self._lock:
            stats = self._by_key.get((component, key))
            if stats is None:
                stats = self._by_key[(component, key)] = KeyStats(component, key, shapes)
            for name, value in changes.items():
                current = getattr(stats, name)
                if name == "phases":
                    for phase, seconds in value.items():
                        current[phase] = current.get(phase, 0.0) + seconds
                elif isinstance(current, (int, float)) and not isinstance(current, bool) and name != "state":
                    setattr(stats, name, current + value)
                else:
                    setattr(stats, name, value)
            return stats

    def discard(self, component: str, key: str) -> None:
        """Forget a row that never served anything (a call that was the caller's own error)."""
        with self._lock:
            row = self._by_key.get((component, key))
            if row is not None and not (row.calls or row.compiles or row.loads or row.refits):
                del self._by_key[(component, key)]

    def rows(self) -> list[KeyStats]:
        """Copies of the rows (``calls`` on a live row is bumped without the lock, by the hot path)."""
        with self._lock:
            return [dataclasses.replace(s, phases=dict(s.phases)) for s in self._by_key.values()]

    def totals(self) -> dict[str, Any]:
        rows = self.rows()
        return {
            "keys": len(rows),
            "calls": sum(r.calls for r in rows),
            "compiles": sum(r.compiles for r in rows),
            "loads": sum(r.loads for r in rows),
            "reuses": sum(r.reuses for r in rows),
            "fallbacks": sum(r.fallbacks for r in rows),
            "failed": sum(r.state == "failed" for r in rows),
            "compiling": sum(r.state == "compiling" for r in rows),
            "graphs": sum(r.graphs for r in rows),
            "compile_seconds": round(sum(r.compile_seconds for r in rows), 3),
            "load_seconds": round(sum(r.load_seconds for r in rows), 3),
        }

    def as_dict(self) -> dict[str, Any]:
        return {"totals": self.totals(), "keys": [dataclasses.asdict(r) for r in self.rows()]}

    def reset(self) -> None:
        with self._lock:
            self._by_key.clear()

    def summary(self) -> str:
        """A table, one line per component and key."""
        rows = self.rows()
        if not rows:
            return "trt_runtime: nothing compiled or loaded yet"
        header = ("component", "key", "backend", "state", "calls", "compiled", "loaded", "build s", "load s",
                  "fallbacks", "shapes")
        lines = [header]
        for r in rows:
            lines.append((r.component, r.key[:10], r.backend, r.state, str(r.calls), str(r.compiles),
                          str(r.loads), f"{r.compile_seconds:.2f}", f"{r.load_seconds:.2f}", str(r.fallbacks),
                          r.shapes[:60]))
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        out = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
        t = self.totals()
        out.append(
            f"total: {t['calls']} calls, {t['compiles']} compiled ({t['compile_seconds']:.2f} s), "
            f"{t['loads']} loaded from disk ({t['load_seconds']:.2f} s), {t['fallbacks']} eager fallbacks"
            + (f", {t['reuses']} reused from another wrapper of this process" if t["reuses"] else "")
        )
        timed = [(r, phases_line(r.phases)) for r in rows if r.phases]
        if timed:
            out.append("where the first calls' time went:")
            out.extend(f"  {r.component} {r.key[:10]}: {line}" for r, line in timed)
        return "\n".join(out)


def phases_line(phases: dict[str, float]) -> str:
    """``fingerprint 0.10 s, compile 107.7 s (export 12.3 s, engine build 80.1 s), save 20.5 s``: the parts a
    backend timed inside a phase (``"compile: export"``) are shown inside it."""
    parts = []
    for name, seconds in phases.items():
        if ": " in name:
            continue
        inner = [f"{sub.split(': ', 1)[1]} {value:.2f} s" for sub, value in phases.items()
                 if sub.startswith(name + ": ")]
        parts.append(f"{name} {seconds:.2f} s" + (f" ({', '.join(inner)})" if inner else ""))
    return ", ".join(parts)
