"""Benchmark options and fixtures.

Quick mode (the default): tiny models on the CPU (or the GPU when there is one), a handful of rounds:
``pytest benchmarks/ --benchmark-only``. Full mode, on a GPU: ``--bench-size full --bench-json out.json``.
Every run gets an empty inductor cache (set below, before torch compiles anything) and an empty engine
cache, so first-call figures are cold compiles.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

_SCRATCH = Path(tempfile.mkdtemp(prefix="trt_runtime_bench_"))
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(_SCRATCH / "inductor")


def pytest_addoption(parser):
    group = parser.getgroup("trt_runtime benchmarks")
    group.addoption("--bench-size", default="tiny", choices=("tiny", "full"),
                    help="tiny models (quick, any machine) or full-size architectures (a GPU)")
    group.addoption("--bench-device", default=None, help="cuda or cpu (default: cuda when available)")
    group.addoption("--bench-cases", default="default",
                    help="comma-separated case names, 'all', or 'default' (all at full size; a representative "
                    "quick set of tiny cases otherwise)")
    group.addoption("--bench-rounds", type=int, default=None,
                    help="interleaved timing rounds per case (default: 100 full, 5 tiny)")
    group.addoption("--bench-warm-start", default="default",
                    help="cases whose warm start in a fresh process is measured: names, 'all', 'none' or "
                    "'default' (sd15_unet on a GPU; none on a CPU, for time: each warm start first compiles its "
                    "case cold in a fresh process; 'all' measures them there too)")
    group.addoption("--bench-warm-profile", type=int, default=0,
                    help="report the N costliest functions of each warm start's first call (cProfile)")
    group.addoption("--bench-settings", default="{}",
                    help='RuntimeSettings overrides for the trt_runtime variant, JSON: \'{"cuda_graphs": true}\'')
    group.addoption("--bench-json", default=None, help="write every figure to this JSON file (updated per case)")
    group.addoption("--bench-variants", default="eager,torch_compile,torch_compile_ro,trt_runtime",
                    help="comma-separated variants to run beside eager (eager always runs: it is the reference)")


def pytest_unconfigure(config):
    shutil.rmtree(_SCRATCH, ignore_errors=True)


QUICK_CASES = ("sd15_unet", "vae_decoder_512", "clip_l", "sd15_pipeline")
"""What the quick tiny mode runs by default: one case of each kind (a UNet with its warm start, a VAE, a
text encoder, a whole pipeline), about a minute on two CPU cores. ``--bench-cases all`` runs every case."""


def _selected(config, names) -> list[str]:
    wanted = config.getoption("--bench-cases")
    if wanted == "default":
        wanted = "all" if config.getoption("--bench-size") == "full" else ",".join(QUICK_CASES)
    if wanted == "all":
        return list(names)
    from .cases import CASES
    from .pipelines import PIPELINES

    known = [*CASES, *PIPELINES]
    unknown = [n for n in wanted.split(",") if n not in known]
    if unknown:
        raise pytest.UsageError(f"--bench-cases: unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [n for n in wanted.split(",") if n in names]


def pytest_generate_tests(metafunc):
    from .cases import CASES
    from .pipelines import PIPELINES

    if "case_name" in metafunc.fixturenames:
        metafunc.parametrize("case_name", _selected(metafunc.config, CASES), scope="session")
    if "pipeline_name" in metafunc.fixturenames:
        metafunc.parametrize("pipeline_name", _selected(metafunc.config, PIPELINES), scope="session")


class Options:
    """The run's options, resolved."""

    def __init__(self, config) -> None:
        import torch

        self.size = config.getoption("--bench-size")
        device = config.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        # per-call times on the GPU machine spread by a quarter: a 2% difference needs many rounds
        self.rounds = config.getoption("--bench-rounds") or (100 if self.size == "full" else 5)
        self.warm_start = config.getoption("--bench-warm-start")
        if self.warm_start == "default":
            self.warm_start = "sd15_unet" if self.device.type == "cuda" else "none"
        self.warm_profile = config.getoption("--bench-warm-profile")
        self.settings: dict[str, Any] = json.loads(config.getoption("--bench-settings"))
        self.scratch = _SCRATCH
        chosen = set(config.getoption("--bench-variants").split(","))
        from .harness import VARIANTS

        self.variants = tuple(v for v in VARIANTS if v == "eager" or v in chosen)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the honest eager baseline

    def dtype(self, preferred):
        import torch

        return preferred if self.device.type == "cuda" else torch.float32

    def measures_warm_start(self, name: str) -> bool:
        return self.warm_start == "all" or name in self.warm_start.split(",")


class Recorder:
    """Collects each case's figures; rewrites the JSON after every case, so a cut-off run keeps its rows."""

    def __init__(self, path: str | None, options: Options) -> None:
        from .harness import environment

        self.path = Path(path) if path else None
        self.data: dict[str, Any] = {"environment": environment(options.device), "size": options.size,
                                     "settings": options.settings, "rounds": options.rounds, "cases": {}}

    def record(self, name: str, figures: dict[str, Any]) -> None:
        self.data["cases"].setdefault(name, {}).update(figures)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            tmp.replace(self.path)


@pytest.fixture(scope="session")
def options(pytestconfig) -> Options:
    logging.getLogger("trt_runtime").setLevel(logging.INFO)
    return Options(pytestconfig)


@pytest.fixture(scope="session")
def recorder(pytestconfig, options) -> Recorder:
    return Recorder(pytestconfig.getoption("--bench-json"), options)


def time_with(benchmark, fn, device, rounds: int, warmup_rounds: int = 1) -> None:
    """pytest-benchmark's own timing of one variant (its table), the device synchronised per call."""
    from .harness import sync

    def step():
        fn()
        sync(device)

    import torch

    with torch.inference_mode():
        benchmark.pedantic(step, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
