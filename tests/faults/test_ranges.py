"""Issue 12, "Faults that become permanent verdicts", the declared-range rows, with real inductor compiles in
real processes: a batch-1 call under ``Dim("b", 1, 4)`` in a new process loads the range's artifact (export used
to specialise size 1, and the failure overwrote the working entry), and a widened range in a new process builds
its own entry beside the old one (it used to fail on torch's leftover FX-cache guard and be remembered)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent(f"""
    import json, sys, torch
    sys.path.insert(0, {ROOT!r})
    from trt_runtime import Dim, TensorRTModule, TensorRTRuntime
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    low, high = int(sys.argv[3]), int(sys.argv[4])
    rt = TensorRTRuntime(backend="inductor", cache_dir=sys.argv[1])
    w = TensorRTModule(net, runtime=rt, name="mlp", shapes={{"input": {{0: Dim("b", low, high)}}}})
    errors = {{}}
    with torch.no_grad():
        for batch in map(int, sys.argv[2].split(",")):
            x = torch.randn(batch, 8)
            errors[batch] = float((w(x) - net(x)).abs().max())
    print(json.dumps({{"errors": errors, "totals": rt.stats.totals(), "states": [r.state for r in rt.stats.rows()],
                      "entries": sorted(e.status for e in rt.cache.entries())}}))
""")


def _process(tmp_path, batches: str, low: int, high: int, run: int) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor{run}")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "engines"), batches, str(low), str(high)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_batch_one_loads_the_range_and_a_widened_range_builds_beside_it(tmp_path):
    first = _process(tmp_path, "2", 1, 4, 0)
    assert first["totals"]["compiles"] == 1 and first["entries"] == ["ready"]
    batch_one = _process(tmp_path, "1,3", 1, 4, 1)  # batch 1 first, in a new process
    assert batch_one["totals"]["compiles"] == 0 and batch_one["totals"]["loads"] == 1, batch_one
    assert batch_one["states"] == ["ready"] and batch_one["entries"] == ["ready"]
    widened = _process(tmp_path, "3", 2, 8, 2)  # Dim(1, 4) became Dim(2, 8)
    assert widened["totals"]["compiles"] == 1 and widened["states"] == ["ready"], widened
    assert widened["entries"] == ["ready", "ready"]
    for result in (first, batch_one, widened):
        assert max(result["errors"].values()) < 1e-5
