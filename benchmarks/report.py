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
    rows: dict[str, dict[str, Any]] = {}
    environments = []
    for path in paths:
        if path.name.endswith("-pytest-benchmark.json"):
            continue
        data = json.loads(path.read_text())
        environments.append(dict(data.get("environment", {}), file=path.name, settings=data.get("settings")))
        for name, figures in data.get("cases", {}).items():
            rows[name] = dict(figures, source=path.name)
    return rows, environments


def _ms(value: float | None) -> str:
    return "–" if value is None else (f"{value * 1e3:.1f}" if value < 10 else f"{value:.2f} s")


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:+.1f}%"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ("| Case | eager ms | torch.compile ms | trt_runtime ms | speedup vs eager | torch.compile speedup "
            "| wrapper overhead vs torch.compile | first call (cold) s | warm start s (of cold) "
            "| peak extra MiB eager / ours | rel. error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in sorted(rows, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        r = rows[name]
        if "eager_median_s" not in r:
            continue
        warm = r.get("warm_start_s")
        warm_text = "–" if warm is None else f"{warm:.1f} ({r['warm_start_fraction_of_cold'] * 100:.0f}%)"
        lines.append(
            f"| {r.get('title', name)} | {_ms(r['eager_median_s'])} | {_ms(r.get('torch_compile_median_s'))} "
            f"| {_ms(r.get('trt_runtime_median_s'))} | {_x(r.get('trt_runtime_speedup'))} "
            f"| {_x(r.get('torch_compile_speedup'))} | {_pct(r.get('trt_runtime_overhead_paired'))} "
            f"| {_s(r.get('trt_runtime_first_call_s'))} | {warm_text} "
            f"| {_mib(r.get('eager_peak_extra_bytes'))} / {_mib(r.get('trt_runtime_peak_extra_bytes'))} "
            f"| {r.get('trt_runtime_rel_error', float('nan')):.1e} |"
        )
    return "\n".join(lines)


def svg(rows: dict[str, dict[str, Any]]) -> str:
    """Horizontal bars: speedup over eager of torch.compile and of trt_runtime, per case."""
    names = [n for n in sorted(rows, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER))
             if "trt_runtime_speedup" in rows[n]]
    top, bar, gap, left, width = 40, 12, 10, 330, 420
    peak = max([2.0] + [max(rows[n].get("torch_compile_speedup", 0), rows[n]["trt_runtime_speedup"]) for n in names])
    scale = width / peak
    height = top + len(names) * (2 * bar + gap) + 40
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 70}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           '<text x="10" y="18" font-size="14">Speedup over eager PyTorch (cudnn.benchmark on), median step</text>',
           f'<rect x="{left}" y="24" width="10" height="10" fill="#9aa5b1"/>'
           f'<text x="{left + 14}" y="33">torch.compile</text>',
           f'<rect x="{left + 110}" y="24" width="10" height="10" fill="#2f7d32"/>'
           f'<text x="{left + 124}" y="33">trt_runtime</text>']
    y = top
    for n in names:
        r = rows[n]
        out.append(f'<text x="{left - 6}" y="{y + bar + 4}" text-anchor="end">{r.get("title", n)[:48]}</text>')
        for value, colour in ((r.get("torch_compile_speedup"), "#9aa5b1"), (r["trt_runtime_speedup"], "#2f7d32")):
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
