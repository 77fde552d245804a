"""``trt-runtime``: run the demo, inspect and clear the engine cache, show the environment."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def _cache(args):
    from .cache import EngineCache
    from .settings import RuntimeSettings

    return EngineCache.from_settings(RuntimeSettings(cache_dir=args.cache_dir,
                                                     cache_sharing=getattr(args, "sharing", None) or "private"))


def _cache_command(func):
    """Cache commands end with one line on stderr and exit status 1 on a cache or settings error."""
    @functools.wraps(func)
    def run(args) -> int:
        from .errors import CacheError, ConfigurationError

        try:
            return func(args)
        except (CacheError, ConfigurationError) as err:
            print(f"trt-runtime cache {args.cache_command}: error: {err}", file=sys.stderr)
            return 1

    return run


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


@_cache_command
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


@_cache_command
def cmd_cache_info(args) -> int:
    cache = _cache(args)
    matches = [e for e in cache.entries() if e.key.startswith(args.key)]
    if len(matches) != 1:
        print(f"{len(matches)} entries match {args.key!r}", file=sys.stderr)
        return 1
    print(json.dumps(matches[0].meta, indent=2, default=str))
    return 0


@_cache_command
def cmd_cache_clear(args) -> int:
    cache = _cache(args)
    status = "failed" if args.failed else None
    removed = cache.clear(status=status)
    print(f"removed {removed} {'failed ' if status else ''}entries from {cache.root}")
    return 0


@_cache_command
def cmd_cache_verify(args) -> int:
    cache = _cache(args)
    findings = cache.verify()
    if args.json:
        print(json.dumps([f._asdict() for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{f.key[:12]}  {f.state:<9} {f.trust or '-':<9} {f.reason}")
        counts = {s: sum(f.state == s for f in findings) for s in ("ok", "damaged", "untrusted")}
        print(f"{len(findings)} entries in {cache.root}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0 if all(f.state == "ok" for f in findings) else 1


@_cache_command
def cmd_cache_prune(args) -> int:
    cache = _cache(args)
    criteria = {"failed": args.failed, "component": args.component, "dry_run": args.dry_run}
    if args.older_than:
        criteria["older_than_s"] = _parse_quantity(args.older_than, _AGES, "age")
    if args.max_bytes:
        criteria["max_bytes"] = int(_parse_quantity(args.max_bytes, _SIZES, "size"))
    removed = cache.prune(**criteria)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} entries from {cache.root}" + "".join(f"\n  {k}" for k in removed))
    return 0


@_cache_command
def cmd_cache_export(args) -> int:
    cache = _cache(args)
    keys = None
    if args.keys:
        known = [e.key for e in cache.entries()]
        keys = [k for prefix in args.keys for k in known if k.startswith(prefix)]
    report = cache.export(args.dest, keys, component=args.component)
    print(f"exported {len(report.done)} entries to {args.dest}")
    for key, why in report.skipped:
        print(f"  skipped {key[:12]}: {why}")
    return 0 if report.done else 1


@_cache_command
def cmd_cache_import(args) -> int:
    cache = _cache(args)
    report = cache.import_(args.source, environment=None if args.no_env_check else _local_environment,
                           allow_unsigned=args.trust_unsigned, replace=args.replace)
    print(f"imported {len(report.done)} entries into {cache.root}")
    for key, why in report.skipped:
        print(f"  skipped {key[:12]}: {why}")
    return 0 if not report.skipped else 1


@_cache_command
def cmd_cache_keygen(args) -> int:
    from .trust import TRUST_KEY_ENV, generate_key

    try:
        path = generate_key(args.path, overwrite=args.force)
    except FileExistsError:
        print(f"trt-runtime cache keygen: a key exists already at {args.path or 'the default path'}; "
              "--force replaces it (entries signed with it then stop loading)", file=sys.stderr)
        return 1
    print(f"wrote a new trust key to {path}")
    if args.path:
        print(f"point every process that shares the cache at it: export {TRUST_KEY_ENV}={path}")
    return 0


_ENVIRONMENTS: dict[str, dict] = {}


def _local_environment(meta: dict) -> dict:
    """What this machine would put in a key's environment for the entry's backend (cached per backend)."""
    backend = str(meta.get("backend"))
    if backend not in _ENVIRONMENTS:
        import torch

        from .backends import get_backend
        from .keys import environment

        env = environment(torch.device("cuda") if torch.cuda.is_available() else None)
        try:
            env.update(get_backend(backend).versions())
        except Exception as err:  # noqa: BLE001 - an unknown or unavailable backend: compare the rest
            logging.getLogger(__name__).info("backend %s versions unknown here: %s", backend, err)
        _ENVIRONMENTS[backend] = env
    return _ENVIRONMENTS[backend]


_SIZES = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_AGES = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _parse_quantity(text: str, units: dict[str, int], what: str) -> float:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in units:
        raise SystemExit(f"trt-runtime cache: {what} {text!r} is not understood (e.g. "
                         f"{'10G, 500M' if what == 'size' else '7d, 12h, 30m'})")
    return float(match.group(1)) * units[match.group(2).lower()]


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
    verify = cache_sub.add_parser("verify", help="check checksums, keys and signatures of every entry "
                                  "(exit status 1 when any is damaged or untrusted)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_cache_verify)
    prune = cache_sub.add_parser("prune", help="remove entries by size cap, age, component or failure; "
                                 "safe while other processes use the cache")
    prune.add_argument("--max-bytes", help="shrink to this size (e.g. 20G); default: the size cap, "
                       "when no other criterion is given")
    prune.add_argument("--older-than", help="entries not used for this long (e.g. 7d, 12h)")
    prune.add_argument("--component", help="only entries of this component (unet, vae.decoder, ...)")
    prune.add_argument("--failed", action="store_true", help="remembered failures")
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed")
    prune.set_defaults(func=cmd_cache_prune)
    export = cache_sub.add_parser("export", help="write ready entries to one archive (.tar or .tar.gz, a "
                                  "path or an fsspec URL)")
    export.add_argument("dest")
    export.add_argument("--key", dest="keys", action="append", help="a key or unique prefix; repeatable")
    export.add_argument("--component", help="only entries of this component")
    export.set_defaults(func=cmd_cache_export)
    imp = cache_sub.add_parser("import", help="add the entries of an archive (signed ones only, built for "
                               "this machine's GPU and library versions)")
    imp.add_argument("source")
    imp.add_argument("--trust-unsigned", action="store_true",
                     help="accept entries without a valid signature (you vouch for the archive)")
    imp.add_argument("--no-env-check", action="store_true", help="accept entries built for other environments")
    imp.add_argument("--replace", action="store_true", help="overwrite ready entries with the same key")
    imp.set_defaults(func=cmd_cache_import)
    keygen = cache_sub.add_parser("keygen", help="write a new trust key (entries written with it are signed)")
    keygen.add_argument("--path", help="where (default: trust.key in the user config dir)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=cmd_cache_keygen)
    cache.add_argument("--sharing", choices=("private", "group"), default=None,
                       help="permissions of what the cache creates (default private: 0700/0600)")

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
