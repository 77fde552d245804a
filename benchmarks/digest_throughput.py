"""Throughput of the weights digest (``trt_runtime.digest``) on a model-sized set of tensors; writes JSON.

    python benchmarks/digest_throughput.py --device cpu --gb 1 --json digest_cpu.json
    python benchmarks/digest_throughput.py --device cuda --gb 24 --json digest_h100.json   # Flux-sized

The tensors mimic a transformer's: bf16 matrices of 3072x3072 and 3072x12288 plus small vectors, random
values (the digest's cost does not depend on them). Reports the first digest (digest tables built),
a repeat after ``forget()`` (the steady cost of a new weight version), a repeat without it (memo hits),
sha256 of the same bytes on the host for scale (CPU only), and, on a GPU, whether GPU and CPU digests of
a few tensors agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trt_runtime import digest  # noqa: E402


def _tensors(gb: float, device: str) -> list[tuple[str, torch.Tensor]]:
    shapes = [(3072, 3072)] * 4 + [(3072, 12288), (12288, 3072), (3072,), (12288,)]
    out, total, i = [], 0, 0
    while total < gb * 1e9:
        shape = shapes[i % len(shapes)]
        t = torch.empty(shape, dtype=torch.bfloat16, device=device).normal_()
        out.append((f"blocks.{i // len(shapes)}.w{i % len(shapes)}", t))
        total += t.numel() * t.element_size()
        i += 1
    return out


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    named = _tensors(args.gb, args.device)
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    first = _timed(lambda: digest.weights_digest(named))
    digest.forget()
    steady = _timed(lambda: digest.weights_digest(named))
    memo = _timed(lambda: digest.weights_digest(named))
    result = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "tensors": len(named), "bytes": nbytes,
        "first_s": first, "steady_s": steady, "memo_s": memo, "steady_gb_per_s": nbytes / 1e9 / steady,
    }
    if args.device == "cpu":
        sample = named[: max(1, len(named) // 4)]
        sample_bytes = sum(t.numel() * t.element_size() for _, t in sample)
        seconds = _timed(lambda: [hashlib.sha256(t.view(torch.uint8).numpy()).digest() for _, t in sample])
        result["host_sha256_gb_per_s"] = sample_bytes / 1e9 / seconds
    else:
        digest.forget()
        checks = [named[0][1], named[-1][1], named[0][1][:, 1:7], named[-1][1][:1001]]
        result["gpu_equals_cpu"] = all(digest.tensor_digest(t) == digest.tensor_digest(t.cpu()) for t in checks)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
