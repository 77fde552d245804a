"""``trt-runtime cache ...``: inspect, check, prune, move and clear the engine cache.

Each command is a ``cmd_cache_<name>(args) -> int`` and an ``_add_cache_<name>(cache_sub)`` that registers
its parser; ``CACHE_COMMANDS`` lists the registrars in help order (``trt_runtime.cli`` builds the parser from
it). A cache or settings error ends a command with one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable

__all__ = ["CACHE_COMMANDS", "add_cache"]


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

_LS_COLUMNS = ("KEY", "COMPONENT", "BACKEND", "STATUS", "SIZE", "LAST USED", "SHAPES")


@_cache_command
def cmd_cache_ls(args) -> int:
    from .stats import short_shapes

    cache = _cache(args)
    entries = cache.entries()
    if args.json:
        print(json.dumps([{"key": e.key, "path": str(e.path), "size": e.size, **e.meta} for e in entries],
                         indent=2, default=str))
        return 0
    print(f"engine cache: {cache.root} ({len(entries)} entries, {_size(sum(e.size for e in entries))})")
    if not entries:
        return 0
    rows = []
    for e in entries:
        m = e.meta
        shapes = short_shapes(m.get("shapes", []), limit=4)
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        rows.append((e.key[:12], str(m.get("component", "?")), str(m.get("backend", "?")), e.status,
                     _size(e.size), used, shapes, str(m.get("error", "")) if e.status == "failed" else ""))
    widths = [max(len(col), *(len(row[i]) for row in rows)) for i, col in enumerate(_LS_COLUMNS[:-1])]

    def line(cells) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)) + "  " + cells[-1]

    print(line(_LS_COLUMNS))
    for row in rows:
        print(line(row[:-1]))
        if row[-1]:
            print(" " * (widths[0] + 2) + f"error: {row[-1][:150]}")
    return 0


@_cache_command
def cmd_cache_info(args) -> int:
    cache = _cache(args)
    matches = [e for e in cache.entries() if e.key.startswith(args.key)]
    if len(matches) != 1:
        raise RuntimeError(f"{len(matches)} entries match {args.key!r} in {cache.root}"
                           + ("; give more of the key" if matches else ""))
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
def cmd_cache_path(args) -> int:
    print(_cache(args).root)
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
        criteria["older_than_s"] = args.older_than
    if args.max_bytes:
        criteria["max_bytes"] = args.max_bytes
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
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not understood (e.g. "
                                         f"{'10G, 500M' if what == 'size' else '7d, 12h, 30m'})")
    return float(match.group(1)) * units[match.group(2).lower()]


def byte_size(text: str) -> int:
    """``20G``, ``500M``, ``1024``: an argparse type (a malformed size is a usage error, exit status 2)."""
    return int(_parse_quantity(text, _SIZES, "size"))


def age_seconds(text: str) -> float:
    """``7d``, ``12h``, ``30m``: an argparse type."""
    return _parse_quantity(text, _AGES, "age")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ----------------------------------------------------------------------------------------- parsers


def _add_cache_ls(cache_sub) -> None:
    ls = cache_sub.add_parser("ls", help="list entries (component, backend, status, size, last use, shapes)")
    ls.add_argument("--json", action="store_true", help="every entry's meta.json, as a JSON list")
    ls.set_defaults(func=cmd_cache_ls)


def _add_cache_info(cache_sub) -> None:
    info = cache_sub.add_parser("info", help="show one entry's meta.json")
    info.add_argument("key", help="key or a unique prefix of it")
    info.set_defaults(func=cmd_cache_info)


def _add_cache_clear(cache_sub) -> None:
    clear = cache_sub.add_parser("clear", help="remove entries")
    clear.add_argument("--failed", action="store_true", help="only remembered failures (to retry them)")
    clear.set_defaults(func=cmd_cache_clear)


def _add_cache_path(cache_sub) -> None:
    cache_sub.add_parser("path", help="print the cache folder").set_defaults(func=cmd_cache_path)


def _add_cache_verify(cache_sub) -> None:
    verify = cache_sub.add_parser("verify", help="check checksums, keys and signatures of every entry "
                                  "(exit status 1 when any is damaged or untrusted)")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=cmd_cache_verify)


def _add_cache_prune(cache_sub) -> None:
    prune = cache_sub.add_parser("prune", help="remove entries by size cap, age, component or failure; "
                                 "safe while other processes use the cache")
    prune.add_argument("--max-bytes", type=byte_size, help="shrink to this size (e.g. 20G); default: the size cap, "
                       "when no other criterion is given")
    prune.add_argument("--older-than", type=age_seconds, help="entries not used for this long (e.g. 7d, 12h)")
    prune.add_argument("--component", help="only entries of this component (unet, vae.decoder, ...)")
    prune.add_argument("--failed", action="store_true", help="remembered failures")
    prune.add_argument("--dry-run", action="store_true", help="list what would be removed")
    prune.set_defaults(func=cmd_cache_prune)


def _add_cache_export(cache_sub) -> None:
    export = cache_sub.add_parser("export", help="write ready entries to one archive (.tar or .tar.gz, a "
                                  "path or an fsspec URL)")
    export.add_argument("dest")
    export.add_argument("--key", dest="keys", action="append", help="a key or unique prefix; repeatable")
    export.add_argument("--component", help="only entries of this component")
    export.set_defaults(func=cmd_cache_export)


def _add_cache_import(cache_sub) -> None:
    imp = cache_sub.add_parser("import", help="add the entries of an archive (signed ones only, built for "
                               "this machine's GPU and library versions)")
    imp.add_argument("source")
    imp.add_argument("--trust-unsigned", action="store_true",
                     help="accept entries without a valid signature (you vouch for the archive)")
    imp.add_argument("--no-env-check", action="store_true", help="accept entries built for other environments")
    imp.add_argument("--replace", action="store_true", help="overwrite ready entries with the same key")
    imp.set_defaults(func=cmd_cache_import)


def _add_cache_keygen(cache_sub) -> None:
    keygen = cache_sub.add_parser("keygen", help="write a new trust key (entries written with it are signed)")
    keygen.add_argument("--path", help="where (default: trust.key in the user config dir)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(func=cmd_cache_keygen)

CACHE_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_cache_ls, _add_cache_info, _add_cache_clear, _add_cache_path, _add_cache_verify, _add_cache_prune,
    _add_cache_export, _add_cache_import, _add_cache_keygen,
]
"""Registrars of ``trt-runtime cache <command>``, in help order."""


def add_cache(sub) -> None:
    cache = sub.add_parser("cache", help="inspect, check, prune, move or clear the engine cache")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    for add in CACHE_COMMANDS:
        add(cache_sub)
    cache.add_argument("--sharing", choices=("private", "group"), default=None,
                       help="permissions of what the cache creates (default private: 0700/0600)")
