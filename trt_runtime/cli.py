"""``trt-runtime``: run the demo, inspect and clear the engine cache, show the environment."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _cache(args):
    from .cache import EngineCache
    from .settings import resolve_cache_dir

    return EngineCache(resolve_cache_dir(args.cache_dir))


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(backend=args.backend, device=args.device, steps=args.steps, size=args.size, prompt=args.prompt,
             cache_dir=args.cache_dir, text_encoders=args.text_encoders)
    return 0


def cmd_build(args) -> int:
    """Prebuild engines: load a pipeline from a local folder, wrap it, run one short generation per size."""
    import torch
    from diffusers import DiffusionPipeline

    from .pipeline import wrap_pipeline
    from .runtime import TensorRTRuntime

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    pipe = DiffusionPipeline.from_pretrained(args.path, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    runtime = TensorRTRuntime(backend=args.backend, cache_dir=args.cache_dir)
    wrap_pipeline(pipe, runtime=runtime, unet=True, vae=True, transformer=True, controlnet=True,
                  text_encoders=args.text_encoders)
    for size in args.sizes:
        height, width = _parse_size(size)
        for batch in args.batch:
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=[args.prompt] * batch, height=height, width=width, num_inference_steps=args.steps,
                     output_type="latent" if args.skip_vae else "pil")
            print(f"{height}x{width} batch {batch}: {time.perf_counter() - start:.1f} s")
    print(runtime.summary())
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, _, width = text.lower().partition("x")
        return int(height), int(width or height)
    except ValueError:
        raise SystemExit(f"trt-runtime build: size {text!r} is not HEIGHTxWIDTH (e.g. 1024x768)") from None


def cmd_cache_ls(args) -> int:
    cache = _cache(args)
    entries = cache.entries()
    if args.json:
        print(json.dumps([{"key": e.key, "path": str(e.path), "size": e.size, **e.meta} for e in entries],
                         indent=2, default=str))
        return 0
    print(f"engine cache: {cache.root} ({len(entries)} entries, {_size(sum(e.size for e in entries))})")
    for e in entries:
        m = e.meta
        shapes = " ".join("x".join(map(str, s)) for s in m.get("shapes", [])[:4])
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        line = (f"{e.key[:12]}  {m.get('component', '?'):<16} {m.get('backend', '?'):<9} {e.status:<6} "
                f"{_size(e.size):>9}  {used}  {shapes}")
        if e.status == "failed":
            line += f"\n              error: {m.get('error', '')[:150]}"
        print(line)
    return 0


def cmd_cache_info(args) -> int:
    cache = _cache(args)
    matches = [e for e in cache.entries() if e.key.startswith(args.key)]
    if len(matches) != 1:
        print(f"{len(matches)} entries match {args.key!r}", file=sys.stderr)
        return 1
    print(json.dumps(matches[0].meta, indent=2, default=str))
    return 0


def cmd_cache_clear(args) -> int:
    cache = _cache(args)
    status = "failed" if args.failed else None
    removed = cache.clear(status=status)
    print(f"removed {removed} {'failed ' if status else ''}entries from {cache.root}")
    return 0


def cmd_cache_path(args) -> int:
    print(_cache(args).root)
    return 0


def cmd_env(args) -> int:
    import platform

    import torch

    from . import __version__
    from .backends import get_backend
    from .errors import BackendUnavailableError
    from .settings import resolve_cache_dir

    device = torch.device("cuda") if torch.cuda.is_available() else None
    print(f"trt_runtime {__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"device: {torch.cuda.get_device_name(0) if device else 'cpu (no CUDA device)'}")
    print(f"engine cache: {resolve_cache_dir(args.cache_dir)}")
    for name in ("tensorrt", "inductor"):
        try:
            backend = get_backend(name)
            backend.check_available(device)
            versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
            print(f"backend {name}: available {versions}")
        except (BackendUnavailableError, ImportError) as err:
            print(f"backend {name}: unavailable: {getattr(err, 'message', err)}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trt-runtime", description=__doc__)
    parser.add_argument("--cache-dir", help="engine cache folder (default: $TRT_CACHE_DIR, else the user cache)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: INFO logs, -vv: DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="wrap a small built-in pipeline, run it twice, show what it gained")
    demo.add_argument("--backend", default="auto", help="auto, tensorrt, inductor or eager")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--steps", type=int, default=4)
    demo.add_argument("--size", type=int, default=64, help="image height and width in pixels")
    demo.add_argument("--prompt", default="a lighthouse at dawn")
    demo.add_argument("--text-encoders", action="store_true", help="also compile the text encoder")
    demo.set_defaults(func=cmd_demo)

    build = sub.add_parser("build", help="prebuild engines for a local pipeline folder at given sizes")
    build.add_argument("path", help="a folder saved with save_pretrained (no downloads)")
    build.add_argument("--size", dest="sizes", action="append", default=None,
                       help="HEIGHTxWIDTH in pixels; repeat for several (default: the pipeline's default)")
    build.add_argument("--batch", type=int, action="append", default=None, help="prompts per call; repeatable")
    build.add_argument("--steps", type=int, default=2)
    build.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), default="fp16")
    build.add_argument("--backend", default="auto")
    build.add_argument("--device", default=None)
    build.add_argument("--prompt", default="a photo")
    build.add_argument("--text-encoders", action="store_true")
    build.add_argument("--skip-vae", action="store_true", help="stop at latents (VAE not built)")
    build.set_defaults(func=cmd_build)

    cache = sub.add_parser("cache", help="inspect or clear the engine cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True)
    ls = cache_sub.add_parser("ls", help="list entries")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_cache_ls)
    info = cache_sub.add_parser("info", help="show one entry's meta.json")
    info.add_argument("key", help="key or a unique prefix of it")
    info.set_defaults(func=cmd_cache_info)
    clear = cache_sub.add_parser("clear", help="remove entries")
    clear.add_argument("--failed", action="store_true", help="only remembered failures (to retry them)")
    clear.set_defaults(func=cmd_cache_clear)
    cache_sub.add_parser("path", help="print the cache folder").set_defaults(func=cmd_cache_path)

    sub.add_parser("env", help="versions, device, cache folder, available backends").set_defaults(func=cmd_env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "build":
        args.sizes = args.sizes or ["512x512"]
        args.batch = args.batch or [1]
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("demo", "build") and args.verbose == 0:
        logging.getLogger("trt_runtime").setLevel(logging.INFO)  # compile progress is the point of the demo
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
