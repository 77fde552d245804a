"""The inductor backend for real: CPU compiles, persisted artifacts, a second process that reuses them.

These run actual torch.compile builds (tens of seconds on two cores), so they carry the ``slow`` marker
and cover the representative cases only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trt_runtime import Dim, EngineBuildError, TensorRTModule, TensorRTRuntime
from trt_runtime.backends.inductor import InductorBackend

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# One script for cold and warm runs: build a conv net, call it, report timings and runtime stats.
SCRIPT = textwrap.dedent(f"""
    import json, sys, time, torch
    sys.path.insert(0, {ROOT!r})
    from trt_runtime import TensorRTModule, TensorRTRuntime
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 16, 3, padding=1), torch.nn.SiLU(),
                              torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.GroupNorm(4, 16),
                              torch.nn.Conv2d(16, 4, 3, padding=1)).eval()
    rt = TensorRTRuntime(backend="inductor")
    w = TensorRTModule(net, runtime=rt, name="convnet")
    x = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        start = time.perf_counter()
        out = w(x)
        first = time.perf_counter() - start
        err = (out - net(x)).abs().max().item()
    print("RESULT " + json.dumps({{"first_call_s": first, "max_err": err, **rt.stats.totals()}}))
""")


def run_process(cache_dir, inductor_dir) -> dict:
    env = {**os.environ, "TRT_CACHE_DIR": str(cache_dir), "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_new_process_reuses_the_artifact_and_starts_faster(tmp_path):
    # Fresh inductor cache dirs for both processes, so only our artifact can make the second one warm.
    cold = run_process(tmp_path / "engines", tmp_path / "inductor-cold")
    warm = run_process(tmp_path / "engines", tmp_path / "inductor-warm")
    assert cold["compiles"] == 1 and cold["loads"] == 0
    assert warm["compiles"] == 0 and warm["loads"] == 1
    assert cold["max_err"] < 1e-4 and warm["max_err"] < 1e-4
    assert warm["first_call_s"] < cold["first_call_s"], (cold, warm)
    print(f"cold first call {cold['first_call_s']:.2f} s, warm {warm['first_call_s']:.2f} s")


def test_same_signature_reuses_new_shape_compiles_once_and_truncation_rebuilds(cache_dir):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(net, runtime=rt, name="mlp")
    with torch.no_grad():
        for x in (torch.randn(2, 8), torch.randn(2, 8), torch.randn(3, 8), torch.randn(3, 8)):
            torch.testing.assert_close(w(x), net(x))
    assert rt.stats.totals()["compiles"] == 2 and rt.stats.totals()["calls"] == 4

    for entry in rt.cache.entries():
        (artifact,) = entry.path.glob("inductor_*.bin")
        artifact.write_bytes(artifact.read_bytes()[:100])  # a crash mid-copy, a full disk...
    rt2 = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w2 = TensorRTModule(net, runtime=rt2, name="mlp")
    with torch.no_grad():
        x = torch.randn(2, 8)
        torch.testing.assert_close(w2(x), net(x))
    assert rt2.stats.totals()["compiles"] == 1 and rt2.stats.totals()["loads"] == 0
    assert rt2.cache.read(rt2.stats.rows()[0].key) is not None  # rebuilt and rewritten


class DataDependent(torch.nn.Module):
    """Python control flow on a tensor value: fullgraph compilation must fail, eager is fine."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_real_compile_failure_falls_back_and_strict_raises(cache_dir):
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(DataDependent(), runtime=rt, name="branchy")
    x = torch.ones(4)
    assert torch.equal(w(x), x * 2) and torch.equal(w(-x), -x - 1)
    assert rt.stats.totals()["failed"] == 1 and rt.stats.totals()["compiles"] == 0
    assert "failed" in json.dumps(rt.cache.entries()[0].meta["status"])

    strict = TensorRTModule(DataDependent(), runtime=TensorRTRuntime(backend="inductor", strict=True,
                                                                     cache_dir=cache_dir / "strict"))
    with pytest.raises(EngineBuildError, match="build failed"):
        strict(x)


def test_declared_range_serves_two_batch_sizes_with_one_artifact(cache_dir):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)).eval()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(net, runtime=rt, name="ranged", shapes={"input": {0: Dim("batch", 2, 16)}})
    with torch.no_grad():
        for batch in (2, 5, 9):
            x = torch.randn(batch, 8)
            torch.testing.assert_close(w(x), net(x))
    totals = rt.stats.totals()
    assert totals["compiles"] == 1 and totals["keys"] == 1 and totals["calls"] == 3


def test_precision_and_channels_last_take_effect_without_touching_the_module(cache_dir):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(1, 4, 8, 8)
    reference = net(x)
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, precision="bf16", channels_last=True)
    w = TensorRTModule(net, runtime=rt, name="conv")
    with torch.no_grad():
        out = w(x)
    assert out.dtype == torch.bfloat16  # autocast: the fp32 module ran in bf16
    assert net[0].weight.is_contiguous(), "the backend must not re-lay out the user's weights"
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
    plain = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    with torch.no_grad():
        TensorRTModule(net, runtime=plain, name="conv")(x)
    assert plain.stats.rows()[0].key != rt.stats.rows()[0].key  # the options are part of the key


def test_weights_are_read_at_run_time_so_values_stay_out_of_the_key(cache_dir):
    """Inductor artifacts take parameters as inputs: another checkpoint of the same architecture reuses
    the artifact and computes with its own weights; in-place changes reach it without a rebuild."""
    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8)).eval()

    first, second = net(0), net(1)
    x = torch.randn(2, 8)
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    with torch.no_grad():
        TensorRTModule(first, runtime=rt, name="net")(x)
        rt2 = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
        w2 = TensorRTModule(second, runtime=rt2, name="net")
        torch.testing.assert_close(w2(x), second(x))
        assert rt2.stats.totals()["loads"] == 1 and rt2.stats.totals()["compiles"] == 0
        second[2].weight.data += 1.0  # what a LoRA merge does
        torch.testing.assert_close(w2(x), second(x))
    # with freezing, inductor folds weights into the code: then the values are part of the key
    frozen = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, inductor_options={"freezing": True})
    assert frozen.backend_for(None).embeds_weights(frozen.settings)


@pytest.mark.slow
def test_each_entry_stores_its_own_artifacts_so_the_cache_grows_linearly(cache_dir):
    """Issue 12: an entry used to hold everything the process had compiled (quadratic growth)."""
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir)
    w = TensorRTModule(net, runtime=rt, name="mlp")
    with torch.no_grad():
        for batch in (2, 3, 4, 5):
            w(torch.randn(batch, 8))
    sizes = [entry.size for entry in sorted(rt.cache.entries(), key=lambda e: e.meta["written"])]
    assert len(sizes) == 4
    assert max(sizes) < 1.5 * min(sizes), sizes


@pytest.mark.slow
def test_precompiled_artifacts_load_in_a_new_process_without_tracing(tmp_path):
    """``inductor_precompile=True``: the entry holds the ahead-of-time compiled function (and, on a CPU,
    its C++ kernels), and a new process with an empty inductor cache loads it instead of compiling."""
    script = textwrap.dedent(f"""
        import json, sys, torch
        sys.path.insert(0, {ROOT!r})
        from trt_runtime import TensorRTModule, TensorRTRuntime
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
        rt = TensorRTRuntime(backend="inductor", cache_dir=sys.argv[1], inductor_precompile=True)
        w = TensorRTModule(net, runtime=rt, name="mlp")
        x = torch.randn(3, 8)
        with torch.no_grad():
            err = float((w(x) - net(x)).abs().max())
        files = sorted(p.name for p in rt.cache.entries()[0].path.iterdir())
        print(json.dumps({{"totals": rt.stats.totals(), "err": err, "files": files,
                          "entry": str(rt.cache.entries()[0].path)}}))
    """)
    results = []
    for run in range(2):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor{run}")}
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "engines")], capture_output=True,
                              text=True, env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = results
    assert cold["totals"]["compiles"] == 1 and "inductor_aot.bin" in cold["files"] and "kernels" in cold["files"]
    assert warm["totals"]["loads"] == 1 and warm["totals"]["compiles"] == 0
    assert cold["err"] < 1e-5 and warm["err"] < 1e-5
    # unpickled, not traced: a background build's worker may load it beside the caller's running modules
    backend = InductorBackend()
    assert backend.loads_beside_calls(Path(cold["entry"])) and not backend.loads_beside_calls(tmp_path)


@pytest.mark.slow
def test_a_cpu_entry_carries_every_file_its_function_needs_so_a_new_machine_compiles_nothing(tmp_path):
    """An entry compiled after another stored only what its compile added to inductor's cache: not inductor's ISA
    probes (compiled once per cache folder), nor the kernels it shared with the earlier compile (ControlNet after the
    UNet). A new machine's first load compiled them again (tiny CLIP 12.7 s instead of 1.6 s, ControlNet 13.6 s
    instead of 2.3 s, two cores). Here the third net has the first one's architecture: every C++ library the new
    process's inductor cache holds after loading it comes from its entry."""
    script = textwrap.dedent(f"""
        import json, sys, torch
        sys.path.insert(0, {ROOT!r})
        from trt_runtime import TensorRTModule, TensorRTRuntime
        torch.manual_seed(0)
        rt = TensorRTRuntime(backend="inductor", cache_dir=sys.argv[1], inductor_precompile=True)
        nets = [torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU()).eval(),
                torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).eval(),
                torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU()).eval()]
        names = sys.argv[2].split(",")
        with torch.no_grad():
            for name in names:
                TensorRTModule(nets[int(name)], runtime=rt, name=f"net{{name}}")(torch.randn(3, 8))
        print(json.dumps({{"totals": rt.stats.totals(),
                          "entries": {{e.meta["component"]: str(e.path) for e in rt.cache.entries()}}}}))
    """)
    engines = tmp_path / "engines"
    runs = []
    for run, nets in enumerate(("0,1,2", "2")):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor{run}")}
        done = subprocess.run([sys.executable, "-c", script, str(engines), nets], capture_output=True, text=True,
                              env=env, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["totals"]["compiles"] == 3 and warm["totals"]["loads"] == 1 and warm["totals"]["compiles"] == 0
    kernels = Path(cold["entries"]["net2"]) / "kernels"
    stored = {p.relative_to(kernels).as_posix() for p in kernels.rglob("*") if p.is_file()}
    assert any(name.endswith(".load_ok") for name in stored), "the entry stored no ISA probe"
    warm_cache = tmp_path / "inductor1"
    libraries = {p.relative_to(warm_cache).as_posix() for p in warm_cache.rglob("*.so")}
    assert libraries and libraries <= stored, f"compiled again on load: {sorted(libraries - stored)}"


def test_precompiled_function_serves_inference_and_normal_tensors(caplog, tmp_path, monkeypatch):
    """An ahead-of-time function's guards check dispatch keys, which differ between tensors made inside
    ``torch.inference_mode`` and normal ones, and between the two modes: compiled with one kind and called with
    the other, it refused the call (on the GPU every CUDA graph capture under inference_mode failed that way).
    Calls of either kind, in either mode, now run the compiled function itself, not an eager fallback; and
    gradients wanted through the inputs are eager's."""
    from trt_runtime.backends import _inductor_aot as aot

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval().requires_grad_(False)
    with torch.inference_mode():
        made_inside = torch.randn(2, 8)
        call = aot.compile_aot(module, (made_inside,), {}, None, cpu=True)
    ran = []
    compiled = call.compiled
    call.compiled = lambda *a, **k: ran.append(1) or compiled(*a, **k)
    normal = torch.randn(2, 8)
    with caplog.at_level("WARNING", logger="trt_runtime"):
        with torch.inference_mode():
            torch.testing.assert_close(call(made_inside), module(made_inside))
            torch.testing.assert_close(call(normal), module(normal))
        with torch.no_grad():
            torch.testing.assert_close(call(normal), module(normal))
            out = call(made_inside)
    assert len(ran) == 4 and not out.is_inference()
    assert not [r for r in caplog.records if "does not accept" in r.getMessage()]
    wants_grad = torch.randn(2, 8, requires_grad=True)
    out = call(wants_grad)
    assert out.requires_grad and len(ran) == 4
    out.sum().backward()
    assert wants_grad.grad is not None

    # Loaded inside inference_mode (a pipeline's call, a server): torch 2.11 rebuilt the guards with the dispatch
    # keys of the thread's mode at load time, and every later call (canonical mode) was refused. Loading happens
    # in the canonical mode too, and the loaded function serves both kinds of call.
    call.compiled = compiled
    aot.save_aot(call, tmp_path)
    modes = []
    real_load = torch.compiler.load_compiled_function
    monkeypatch.setattr(torch.compiler, "load_compiled_function", lambda f: modes.append(
        (torch.is_inference_mode_enabled(), torch.is_grad_enabled())) or real_load(f))
    with torch.inference_mode():
        loaded = aot.load_aot(module, tmp_path)
        torch.testing.assert_close(loaded(made_inside), module(made_inside))
    with torch.no_grad():
        torch.testing.assert_close(loaded(normal), module(normal))
    assert modes == [(False, False)] and loaded._accepted


def test_a_call_the_precompiled_guards_refuse_runs_eagerly_and_the_entry_stays_ready(cache_dir, caplog):
    """Global state outside the key (here deterministic algorithms) fails the ahead-of-time function's guards:
    that call runs eagerly with one warning, and calls in the compiled-for state use the function again
    (before, the entry was marked failed and every later call ran eagerly)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, inductor_precompile=True)
    wrapped = TensorRTModule(module, runtime=rt, name="mlp")
    x = torch.randn(2, 8)
    with torch.no_grad():
        wrapped(x)
        (slot,) = wrapped.component.slots.values()
        assert type(slot.fn).__name__ == "AotCall"
        calls = []
        original = slot.fn.compiled
        slot.fn.compiled = lambda *a, **k: calls.append(1) or original(*a, **k)
        torch.use_deterministic_algorithms(True)
        try:
            with caplog.at_level("WARNING", logger="trt_runtime"):
                torch.testing.assert_close(wrapped(x), module(x))
                torch.testing.assert_close(wrapped(x), module(x))
        finally:
            torch.use_deterministic_algorithms(False)
        torch.testing.assert_close(wrapped(x), module(x))
    assert sum("does not accept this call" in r.getMessage() for r in caplog.records) == 1
    assert len(calls) == 3 and rt.stats.rows()[0].state == "ready" and rt.stats.totals()["fallbacks"] == 0


def test_a_loaded_function_that_refuses_its_first_call_is_built_again(cache_dir, caplog):
    """A guard failure on the first call of a loaded function says the artifact does not fit this process: it is
    built again (never validated as an eager result against eager and then served eagerly for good)."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 8)
    torch.use_deterministic_algorithms(True)  # global state the key does not hold
    try:
        with torch.no_grad():
            first = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, inductor_precompile=True)
            TensorRTModule(module, runtime=first, name="mlp")(x)
    finally:
        torch.use_deterministic_algorithms(False)
    second = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, inductor_precompile=True)
    with torch.no_grad(), caplog.at_level("WARNING", logger="trt_runtime"):
        torch.testing.assert_close(TensorRTModule(module, runtime=second, name="mlp")(x), module(x))
    totals = second.stats.totals()
    assert totals["compiles"] == 1 and totals["fallbacks"] == 0, totals
    assert any("could not be loaded" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "does not accept" in r.getMessage()]


def test_a_first_call_wanting_input_gradients_builds_a_function_later_calls_use(cache_dir):
    """Frozen weights, and a first call with grad on through an input that requires grad (guidance by
    gradients): that call is eager's, with its gradient; the function built for it does not guard on
    ``requires_grad``, so the later no_grad calls run it."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval().requires_grad_(False)
    rt = TensorRTRuntime(backend="inductor", cache_dir=cache_dir, inductor_precompile=True, strict=True)
    wrapped = TensorRTModule(module, runtime=rt, name="mlp")
    x = torch.randn(2, 8, requires_grad=True)
    out = wrapped(x)
    out.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(wrapped(x), module(x))
    totals = rt.stats.totals()
    assert (totals["compiles"], totals["fallbacks"], rt.stats.rows()[0].state) == (1, 0, "ready"), totals


def test_the_kernel_recorder_leaves_inductor_as_it_found_it(tmp_path, monkeypatch):
    """What a CPU compile used is recorded by wrapping inductor's ``codecache.write`` for the compile's duration:
    nested (or concurrent) recordings each see the files, and inductor gets its own function back afterwards."""
    from torch._inductor import codecache

    from trt_runtime.backends import _inductor_aot as aot

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    original = codecache.write
    with aot._sources_used() as outer:
        with aot._sources_used() as inner:
            path = codecache.write("int trt_runtime_probe = 1;", "cpp")[1]
        assert codecache.write is not original
        later = codecache.write("int trt_runtime_probe = 2;", "cpp")[1]
    assert codecache.write is original
    assert inner == [path] and outer == [path, later]
    assert aot._with_their_files(outer) == {str(Path(p).relative_to(tmp_path)) for p in (path, later)}


def test_the_kernel_recorder_leaves_a_wrapper_installed_after_it_in_place(tmp_path, monkeypatch):
    """Someone else (a profiler, another library) wraps ``codecache.write`` while a compile records: when the
    recording ends their wrapper stays (it still calls ours, which still calls inductor's); ours is not put back
    over theirs, and the next recording records through both."""
    from torch._inductor import codecache

    from trt_runtime.backends import _inductor_aot as aot

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(codecache, "write", codecache.write)  # put inductor's back whatever this test does
    seen: list[str] = []
    with aot._sources_used() as used:
        inside = codecache.write

        def theirs(*args, **kwargs):
            seen.append(args[0])
            return inside(*args, **kwargs)

        codecache.write = theirs
        path = codecache.write("int trt_runtime_probe = 3;", "cpp")[1]
    assert codecache.write is theirs and used == [path] and seen == ["int trt_runtime_probe = 3;"]
    with aot._sources_used() as again:
        second = codecache.write("int trt_runtime_probe = 4;", "cpp")[1]
    assert again == [second] and codecache.write is theirs
