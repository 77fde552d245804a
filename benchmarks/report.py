"""Render benchmark JSON files as the README's Markdown table and an SVG bar chart.

``python -m benchmarks.report benchmarks/results/*.json [--svg benchmarks/results/speedup.svg]``
Rows come from every file given (later files win for a case measured twice); pytest-benchmark's own
``*-pytest-benchmark.json`` files are skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ORDER = ("sd15_unet", "sdxl_unet", "vae_decoder_512", "vae_decoder_1024", "clip_l", "controlnet", "sd3_medium",
         "flux", "sd15_pipeline", "sdxl_pipeline")


def load(paths: list[Path]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Rows by case; a run with non-default settings (``--bench-settings``) gets rows of its own,
    named ``case [setting=value]``, so it never replaces the default figures."""
    rows: dict[str, dict[str, Any]] = {}
    environments = []
    for path in paths:
        if path.suffix != ".json" or path.name.endswith("-pytest-benchmark.json"):
            continue
        data = json.loads(path.read_text())
        settings = data.get("settings") or {}
        environments.append(dict(data.get("environment", {}), file=path.name, settings=settings))
        label = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
        for name, figures in data.get("cases", {}).items():
            key = f"{name} [{label}]" if label else name
            title = figures.get("title", name) + (f" [{label}]" if label else "")
            rows[key] = dict(figures, title=title, case=name, source=path.name)
    return rows, environments


def _order(rows: dict[str, dict[str, Any]]) -> list[str]:
    def rank(key: str) -> tuple[int, str]:
        case = rows[key].get("case", key)
        return (ORDER.index(case) if case in ORDER else len(ORDER), key)

    return sorted(rows, key=rank)


def _ms(value: float | None) -> str:
    return "–" if value is None else (f"{value * 1e3:.1f}" if value < 10 else f"{value:.2f} s")


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}%"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    """One row per case: medians of interleaved per-call times, ratios taken within the same run."""
    head = ("| Case | eager ms | torch.compile ms | reduce-overhead ms | trt_runtime ms | trt_runtime vs eager "
            "| trt_runtime vs reduce-overhead | graph copies + wrapper | first call (cold) s "
            "| warm start s (of cold) | rel. error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in _order(rows):
        r = rows[name]
        if "eager_median_s" not in r:
            continue
        warm = r.get("warm_start_s")
        warm_text = "–" if warm is None else f"{warm:.1f} ({r['warm_start_fraction_of_cold'] * 100:.0f}%)"
        ours, ro = r.get("trt_runtime_median_s"), r.get("torch_compile_ro_median_s")
        versus_ro = _x(ro / ours) if ours and ro else "–"
        lines.append(
            f"| {r.get('title', name)} | {_ms(r['eager_median_s'])} | {_ms(r.get('torch_compile_median_s'))} "
            f"| {_ms(ro)} | {_ms(ours)} | {_x(r.get('trt_runtime_speedup'))} | {versus_ro} "
            f"| {_pct(r.get('trt_runtime_graph_copy_overhead'))} "
            f"| {_s(r.get('trt_runtime_first_call_s'))} | {warm_text} "
            f"| {r.get('trt_runtime_rel_error', float('nan')):.1e} |"
        )
    return "\n".join(lines)


def svg(rows: dict[str, dict[str, Any]]) -> str:
    """Horizontal bars: speedup over eager of torch.compile and of trt_runtime, per case."""
    names = [n for n in _order(rows) if "trt_runtime_speedup" in rows[n]]
    labels = {n: _escape(rows[n].get("title", n)[:72]) for n in names}
    top, bar, gap, width = 40, 12, 10, 420
    left = max(330, 20 + 7 * max((len(label) for label in labels.values()), default=0))  # ~7 px a character
    bars = (("torch_compile_speedup", "#9aa5b1", "torch.compile"),
            ("torch_compile_ro_speedup", "#5c6bc0", "reduce-overhead"),
            ("trt_runtime_speedup", "#2f7d32", "trt_runtime"))
    peak = max([2.0] + [rows[n].get(key) or 0 for n in names for key, _, _ in bars])
    scale = width / peak
    height = top + len(names) * (len(bars) * bar + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           '<text x="10" y="18" font-size="14">Speedup over eager PyTorch (cudnn.benchmark on), median step</text>',
           *(f'<rect x="{left + 130 * i}" y="24" width="10" height="10" fill="{colour}"/>'
             f'<text x="{left + 130 * i + 14}" y="33">{label}</text>' for i, (_, colour, label) in enumerate(bars))]
    y = top
    for n in names:
        r = rows[n]
        out.append(f'<text x="{left - 6}" y="{y + bar + 4}" text-anchor="end">{labels[n]}</text>')
        for value, colour in ((r.get(key), colour) for key, colour, _ in bars):
            if value:
                out.append(f'<rect x="{left}" y="{y}" width="{value * scale:.1f}" height="{bar}" fill="{colour}"/>'
                           f'<text x="{left + value * scale + 4:.1f}" y="{y + bar - 2}">{value:.2f}x</text>')
            y += bar
        y += gap
    one = left + scale
    out.append(f'<line x1="{one:.1f}" y1="{top - 4}" x2="{one:.1f}" y2="{y}" stroke="#c62828" stroke-dasharray="4 3"/>'
               f'<text x="{one + 3:.1f}" y="{y + 14}" fill="#c62828">1x (eager)</text>')
    out.append("</svg>")
    return "\n".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--svg", type=Path, help="also write the bar chart here")
    args = parser.parse_args(argv)
    rows, environments = load(args.files)
    print(table(rows))
    for env in environments:
        print(f"\n{env.get('file')}: {env.get('gpu', env.get('device'))}, torch {env.get('torch')}, "
              f"diffusers {env.get('diffusers')}, {env.get('date')}, settings {env.get('settings')}")
    if args.svg:
        args.svg.write_text(svg(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
