"""Diagnostic (GPU): torch's CUDA IPC reference counting with a child that maps a parent's tensor, in isolation.

The parent pickles one CUDA tensor as an IPC handle (as ``trt_runtime.build_process`` does with a model's weights),
a child process maps it, then (``--child`` mode) either frees it before exiting or exits holding it. The parent then
deletes its tensor, calls ``torch.cuda.ipc_collect()`` and reports whether the block is still allocated (kept in
torch's limbo because the child never gave it back).

``python -m benchmarks.diag.ipc_minimal`` prints one JSON line per child behaviour.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def _allocated(pointer: int) -> bool:
    return any(b["address"] <= pointer < b["address"] + b["size"] for s in torch.cuda.memory_snapshot()
               for b in s["blocks"] if b["state"] == "active_allocated")


def _parent(how: str, size: int) -> dict:
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401 - registers the CUDA reductions

    tensor = torch.randn(size, device="cuda")
    pointer = tensor.data_ptr()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.ipc"
        path.write_bytes(bytes(ForkingPickler.dumps({"w": tensor})))
        done = subprocess.run([sys.executable, "-m", "benchmarks.diag.ipc_minimal", "--child", how, str(path)],
                              capture_output=True, text=True, timeout=120)
    torch.cuda.ipc_collect()
    still_shared_alive = _allocated(pointer)
    del tensor
    gc.collect()
    torch.cuda.ipc_collect()
    return {"child": how, "size": size, "child_exit": done.returncode, "child_out": done.stdout.strip()[-200:],
            "child_err": done.stderr.strip()[-300:], "allocated_while_parent_holds": still_shared_alive,
            "allocated_after_parent_deleted": _allocated(pointer)}


def _child(how: str, path: str) -> int:
    import pickle

    mapped = pickle.loads(Path(path).read_bytes())  # noqa: S301 - our parent's
    total = float(mapped["w"].sum())
    if how == "frees":
        del mapped
        gc.collect()
    print(json.dumps({"sum": total}))
    if how == "os_exit":
        sys.stdout.flush()
        import os

        os._exit(0)
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return _child(argv[1], argv[2])
    for how in ("frees", "holds", "os_exit"):
        for size in (1 << 10, 1 << 22):
            print(json.dumps(_parent(how, size)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
