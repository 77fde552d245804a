"""The entry point of a build process (``python -m trt_runtime._build_child BUILD_FILE``).

It lowers the process's CPU priority before anything heavy is imported: importing torch, inductor and triton takes
seconds of CPU, and a build process starts while its parent answers its first calls eagerly; at the parent's priority
those imports competed with the parent's kernel launches. ``build_process.py`` (which imports torch) does the rest.
This module imports nothing but the standard library until the priority is lowered.
"""

from __future__ import annotations

import os
import sys

NICE = 10
"""How much lower the build process's CPU priority is than its parent's: the caller's launches come first."""


def lower_priority() -> None:
    """Lower this process's priority by ``NICE`` (inherited by inductor's compile workers); where the platform cannot
    or may not, build at the same priority."""
    try:
        os.nice(NICE)
    except (AttributeError, OSError):
        pass


def run(argv: list[str]) -> int:
    lower_priority()
    from .build_process import main

    return main(argv)


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
