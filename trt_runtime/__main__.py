"""``python -m trt_runtime``: the ``trt-runtime`` command line (see ``trt_runtime.cli``)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m trt_runtime"))
