"""``trt-runtime`` (or ``python -m trt_runtime``): run the demo, prebuild engines, inspect and clear the
engine cache, show the environment.

Errors are one line on stderr, never a traceback (``-vv`` adds it): exit code 2 for a usage error
(unknown choice, a malformed ``--size``, a build folder that is not a saved pipeline, a setting that
cannot work) and 1 for a failure while running. Arguments are checked before anything heavy is
imported or loaded.

Adding a command: write ``cmd_<name>(args) -> int`` and an ``_add_<name>(sub)`` that registers its parser,
and list the latter in ``COMMANDS``; ``trt-runtime cache <name>`` commands live in ``cli_cache.py`` and are
listed in its ``CACHE_COMMANDS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .cli_cache import CACHE_COMMANDS, add_cache
from .settings import BACKENDS

__all__ = ["main", "build_parser", "COMMANDS", "CACHE_COMMANDS"]

DTYPES = ("fp16", "bf16", "fp32")
TENSORRT_TARGETS = ("current", "portable")


class UsageError(Exception):
    """Raised by a command for a mistake in its arguments found after parsing (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (argparse prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ----------------------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def image_side(text: str) -> int:
    """An image side in pixels: diffusers' pipelines take multiples of 8."""
    value = positive_int(text)
    if value % 8:
        raise argparse.ArgumentTypeError(f"{value} px is not a multiple of 8 (try {max(8, value // 8 * 8)})")
    return value


def image_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH`` (or one number for a square) in pixels, multiples of 8."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH in pixels (e.g. 1024x768)")
    height = image_side(match.group(1))
    return height, image_side(match.group(2)) if match.group(2) else height


def device_name(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda or cuda:N)")
    return text


def pipeline_folder(text: str) -> Path:
    """A local folder written by ``save_pretrained`` (``build`` never downloads)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder (a pipeline saved with save_pretrained)")
    if not (path / "model_index.json").is_file():
        raise argparse.ArgumentTypeError(f"{text} has no model_index.json: not a pipeline saved with save_pretrained")
    return path


# ----------------------------------------------------------------------------------------- commands


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(backend=args.backend, device=args.device, steps=args.steps, size=args.size, prompt=args.prompt,
             cache_dir=args.cache_dir, text_encoders=args.text_encoders)
    return 0


def cmd_build(args) -> int:
    """Prebuild engines: load a pipeline from a local folder, wrap it, run one short generation per size
    and batch, so that later processes load instead of compiling."""
    import torch
    from diffusers import DiffusionPipeline

    from .pipeline import wrap_pipeline
    from .runtime import TensorRTRuntime

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.dtype or ("fp16" if device.startswith("cuda") else "fp32")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    runtime = TensorRTRuntime(backend=args.backend, cache_dir=args.cache_dir, tensorrt_target=args.tensorrt_target)
    try:
        pipe = DiffusionPipeline.from_pretrained(args.path, dtype=dtype).to(device)
    except (OSError, ValueError, TypeError, ImportError) as err:
        raise RuntimeError(f"cannot load the pipeline in {args.path}: {err}") from err
    pipe.set_progress_bar_config(disable=True)
    wrap_pipeline(pipe, runtime=runtime, unet=True, vae=True, transformer=True, controlnet=True,
                  text_encoders=args.text_encoders)
    for size in args.sizes or [None]:
        height, width = size or (None, None)
        label = f"{height}x{width}" if size else "the pipeline's default size"
        for batch in args.batch or [1]:
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(prompt=[args.prompt] * batch, height=height, width=width, num_inference_steps=args.steps,
                     output_type="latent" if args.skip_vae else "pil")
            print(f"{label}, batch {batch}: {time.perf_counter() - start:.1f} s", flush=True)
    print(runtime.summary())
    return 0


def cmd_env(args) -> int:
    import platform

    import torch

    from .backends import get_backend
    from .errors import BackendUnavailableError
    from .settings import resolve_cache_dir

    device = torch.device("cuda") if torch.cuda.is_available() else None
    print(f"trt_runtime {__version__}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"device: {torch.cuda.get_device_name(0) if device else 'cpu (no CUDA device)'}")
    print(f"engine cache: {resolve_cache_dir(args.cache_dir)}")
    note = bytecode_note(Path(torch.__file__).parent, sys.dont_write_bytecode)
    if note:
        print(note)
    for name in ("tensorrt", "inductor"):
        try:
            backend = get_backend(name)
            backend.check_available(device)
            versions = ", ".join(f"{k} {v}" for k, v in backend.versions().items())
            print(f"backend {name}: available {versions}")
            for note in backend.notes():
                print(f"  {note}")
            declined = backend.auto_declines(device)
            if declined:
                print(f"  not chosen by backend='auto' on this GPU: {declined}")
        except (BackendUnavailableError, ImportError) as err:
            print(f"backend {name}: unavailable: {getattr(err, 'message', err)}")
    return 0


def bytecode_note(package: Path, dont_write: bool) -> str | None:
    """A warning when this Python neither has nor writes bytecode for torch (``PYTHONDONTWRITEBYTECODE`` in a
    container built without it): every process then compiles the sources of torch's modules again, which was most of
    a small component's warm start on the GPU machine (CLIP-L 4.7 s instead of 2.3 s)."""
    if not dont_write or (package / "__pycache__").is_dir():
        return None
    return ("python bytecode: none for torch, and none is written (PYTHONDONTWRITEBYTECODE): every process compiles "
            "torch's sources again, seconds of each warm start. Compile it once, in the image build for a container: "
            f"python -m compileall -q {package.parent}")


def _backend_choices() -> tuple[str, ...]:
    """The built-in backends, and any registered with ``register_backend`` in this process (when
    ``main`` runs inside a program that registered one); never imports torch to find out."""
    registered = getattr(sys.modules.get("trt_runtime.backends"), "_FACTORIES", {})
    return (*BACKENDS, *sorted(set(registered) - set(BACKENDS)))


def _add_backend(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=_backend_choices(),
                        help="compiler (default: auto = tensorrt where it can run and suits the GPU, else inductor)")
    parser.add_argument("--device", type=device_name, default=None,
                        help="cpu, cuda or cuda:N (default: cuda when available)")


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="wrap a small built-in pipeline, run it twice, show what it gained")
    _add_backend(demo)
    demo.add_argument("--steps", type=positive_int, default=4, help="denoising steps (default: 4)")
    demo.add_argument("--size", type=image_side, default=64, help="image height and width in pixels (default: 64)")
    demo.add_argument("--prompt", default="a lighthouse at dawn")
    demo.add_argument("--text-encoders", action="store_true", help="also compile the text encoder")
    demo.set_defaults(func=cmd_demo, progress=True)


def _add_build(sub) -> None:
    build = sub.add_parser("build", help="prebuild engines for a local pipeline folder at given sizes",
                           description="Load a pipeline saved with save_pretrained, wrap it and run one short "
                           "generation per size and batch, so later processes load the engines from the cache.")
    build.add_argument("path", type=pipeline_folder, help="a folder saved with save_pretrained (never downloads)")
    build.add_argument("--size", dest="sizes", type=image_size, action="append", default=None, metavar="HxW",
                       help="HEIGHTxWIDTH in pixels, multiples of 8; repeat for several "
                       "(default: the pipeline's own default size)")
    build.add_argument("--batch", type=positive_int, action="append", default=None,
                       help="prompts per call; repeat for several (default: 1)")
    build.add_argument("--steps", type=positive_int, default=2, help="denoising steps per generation (default: 2)")
    build.add_argument("--dtype", choices=DTYPES, default=None,
                       help="load the pipeline in (default: fp16 on CUDA, fp32 on a CPU)")
    _add_backend(build)
    build.add_argument("--tensorrt-target", choices=TENSORRT_TARGETS, default="current",
                       help="TensorRT-RTX build target (default: current = this GPU)")
    build.add_argument("--prompt", default="a photo")
    build.add_argument("--text-encoders", action="store_true", help="also build the text encoders")
    build.add_argument("--skip-vae", action="store_true", help="stop at latents (VAE not built)")
    build.set_defaults(func=cmd_build, progress=True)


def _add_env(sub) -> None:
    sub.add_parser("env", help="versions, device, cache folder, available backends").set_defaults(func=cmd_env)

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_demo, _add_build, add_cache, _add_env]
"""Registrars of the top-level commands, in help order."""


def build_parser(prog: str = "trt-runtime") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description="Run the demo, prebuild engines, inspect and clear the engine "
                     "cache, show the environment. Errors exit with 2 (usage) or 1 (failure).")
    parser.add_argument("--version", action="version", version=f"trt-runtime {__version__}")
    parser.add_argument("--cache-dir", help="engine cache folder (default: $TRT_CACHE_DIR, else the user cache)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: INFO logs, -vv: DEBUG and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


# ----------------------------------------------------------------------------------------- running


def _configure_logging(args) -> Callable[[], None]:
    """Console logging for the CLI, and the build progress display for commands that build; returns
    what undoes it (``main`` may run inside another program, or a test).

    Levels: warnings by default, ``-v`` INFO, ``-vv`` DEBUG (``$TRT_RUNTIME_VERBOSITY`` counts too);
    other libraries stay at WARNING. While a progress display listens, the ``trt_runtime`` logger passes
    DEBUG records, whose build events it draws; the console still shows only the chosen level."""
    from .logging_utils import install_default_handler

    install_default_handler()  # reads $TRT_RUNTIME_VERBOSITY, once
    ours, root = logging.getLogger("trt_runtime"), logging.getLogger()
    before = (ours.level, root.level)
    level = (logging.WARNING, logging.INFO)[args.verbose] if args.verbose < 2 else logging.DEBUG
    if ours.level:
        level = min(level, ours.level)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    progress = None
    if getattr(args, "progress", False) and level > logging.INFO:
        from .progress import BuildProgress

        progress = BuildProgress()
        ours.addHandler(progress)
        ours.setLevel(logging.DEBUG)
    else:
        ours.setLevel(level)

    def undo() -> None:
        root.removeHandler(console)
        if progress is not None:
            ours.removeHandler(progress)
            progress.close()
        ours.setLevel(before[0])
        root.setLevel(before[1])

    return undo


def _fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None, prog: str = "trt-runtime") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)  # usage errors exit with 2 here, before anything is loaded
    undo_logging = _configure_logging(args)
    from .errors import ConfigurationError

    try:
        return args.func(args) or 0
    except (UsageError, ConfigurationError) as err:
        return _fail(prog, _describe(err, args), 2)
    except BrokenPipeError:
        _silence_stdout()  # the reader (`| head`) has gone; Python would otherwise complain at exit
        return 0  # the reader chose to stop: not a failure (`set -o pipefail` scripts would stop here otherwise)
    except KeyboardInterrupt:
        return _fail(prog, "interrupted", 130)
    except Exception as err:  # noqa: BLE001 - one line for the user, the traceback with -vv
        return _fail(prog, _describe(err, args), 1)
    finally:
        undo_logging()


def _describe(err: BaseException, args) -> str:
    """The first line of the error; our own errors and the CLI's plain RuntimeErrors speak for
    themselves, anything else is prefixed with its type."""
    if args.verbose >= 2:
        traceback.print_exception(err)
    lines = str(err).strip().splitlines()
    message = lines[0] if lines else ""
    if not (_ours(err) or type(err) is RuntimeError):
        message = f"{type(err).__name__}: {message}" if message else type(err).__name__
    if len(lines) > 1 and args.verbose < 2:
        message += " (-vv shows the rest)"
    return message


def _ours(err: BaseException) -> bool:
    from .errors import TrtRuntimeError

    return isinstance(err, (TrtRuntimeError, UsageError))


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
