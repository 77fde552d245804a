"""Background builds: the caller never waits, the artifact is swapped in between calls, failures are
remembered as in the foreground, and the queue is bounded and cancelled at exit."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from trt_runtime import TensorRTModule, TensorRTRuntime, builds
from trt_runtime.backends import register_backend, unregister_backend

from .support import backends as doubles
from .support.backends import tiny_mlp


@pytest.fixture(autouse=True)
def _doubles():
    for cls in (doubles.SlowExport, doubles.FailingBuild, doubles.TracingExport):
        register_backend(cls.name, cls)
        cls.builds = 0
    doubles.SlowExport.delay = 1.0
    with torch.no_grad():
        yield
    builds.shutdown_all(wait_s=10)
    for cls in (doubles.SlowExport, doubles.FailingBuild, doubles.TracingExport):
        unregister_backend(cls.name)


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _wait_until_ready(component) -> None:
    _wait_for(lambda: [slot.state.value for slot in component.slots.values()] == ["ready"])


def test_first_calls_run_eagerly_then_the_artifact_is_swapped_in(cache_dir):
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    doubles.SlowExport.delay = 3.0
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), module(x))
    torch.testing.assert_close(w(x), module(x))
    assert rt.stats.totals()["compiles"] == 0, "the caller waited for the build"
    assert [slot.state.value for slot in w.component.slots.values()] == ["compiling"]
    _wait_for(lambda: "compiling" in rt.summary())
    _wait_for(lambda: rt.stats.totals()["compiles"] == 1)
    calls = rt.stats.totals()["calls"]
    torch.testing.assert_close(w(x), module(x))
    assert rt.stats.totals()["calls"] == calls + 1 and rt.stats.totals()["fallbacks"] == 0  # compiled now
    assert rt.cache.entries()[0].status == "ready" and doubles.SlowExport.builds == 1


def test_a_build_uses_its_own_copy_of_the_inputs(cache_dir):
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    x = torch.randn(2, 8)
    w(x)
    x.fill_(float("nan"))  # the caller reuses its buffer while the build runs
    _wait_for(lambda: rt.stats.totals()["compiles"] == 1)
    y = torch.randn(2, 8)
    torch.testing.assert_close(w(y), module(y))


def test_background_failure_is_remembered_like_a_foreground_one(cache_dir):
    rt = TensorRTRuntime(backend="failing", cache_dir=cache_dir, background=True)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    x = torch.randn(2, 8)
    w(x)
    _wait_for(lambda: rt.stats.totals()["failed"] == 1)
    for _ in range(3):
        torch.testing.assert_close(w(x), module(x))
    assert doubles.FailingBuild.builds == 1 and rt.cache.entries()[0].status == "failed"


def test_a_model_deleted_after_its_background_build_is_freed_at_once(cache_dir):
    """The build worker waits for its next job holding nothing of the last one: a model (and its weights, on a GPU)
    deleted after its build is freed at once, not when another build runs on that device or the process ends."""
    import gc
    import weakref

    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    w(torch.randn(2, 8))
    _wait_until_ready(w.component)
    gone = weakref.ref(module)
    del module, w, rt
    _wait_for(lambda: gc.collect() >= 0 and gone() is None, timeout=10)  # the worker leaves the job in ms


def test_the_callers_error_is_raised_and_nothing_is_queued(cache_dir):
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    w = TensorRTModule(tiny_mlp(), runtime=rt, name="mlp")
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        w(torch.randn(2, 7))
    assert w.component.slots == {} and doubles.SlowExport.builds == 0


def test_a_full_queue_runs_eagerly_and_asks_again_later(cache_dir):
    doubles.SlowExport.delay = 3.0
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True, max_pending_builds=1)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    xs = [torch.randn(batch, 8) for batch in (1, 2, 3)]
    torch.testing.assert_close(w(xs[0]), module(xs[0]))
    _wait_for(lambda: doubles.SlowExport.builds == 1)  # 1 builds (the worker holds it: the queue is empty again)
    for x in xs[1:]:  # 2 waits in the queue, 3 finds it full
        torch.testing.assert_close(w(x), module(x))
    states = sorted(slot.state.value for slot in w.component.slots.values())
    assert states == ["compiling", "compiling", "eager"]
    _wait_for(lambda: rt.stats.totals()["compiles"] == 2)
    time.sleep(5.1)  # the full-queue retry delay
    w(xs[2])
    _wait_for(lambda: rt.stats.totals()["compiles"] == 3)


def test_the_eager_backend_queues_no_build(cache_dir):
    rt = TensorRTRuntime(backend="eager", cache_dir=cache_dir, background=True)
    w = TensorRTModule(tiny_mlp(), runtime=rt, name="mlp")
    x = torch.randn(2, 8)
    torch.testing.assert_close(w(x), w.module(x))
    assert [slot.state.value for slot in w.component.slots.values()] == ["eager"]
    assert not w.component.slots[next(iter(w.component.slots))].handover


def test_shutdown_drops_pending_builds(cache_dir):
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    w = TensorRTModule(tiny_mlp(), runtime=rt, name="mlp")
    doubles.SlowExport.delay = 3.0
    for batch in (1, 2, 3):
        w(torch.randn(batch, 8))
    _wait_for(lambda: doubles.SlowExport.builds == 1)  # the first build is running (on a loaded CI machine the
    builds.shutdown_all(wait_s=10)                     # worker may not even have taken it yet at this point)
    assert doubles.SlowExport.builds == 1, "queued builds must not start after shutdown"
    # the build that was running finishes (its artifact may reach the disk for the next process) but is
    # not swapped into a process that is shutting down
    assert all(slot.state.value == "compiling" for slot in w.component.slots.values())


def test_concurrent_calls_during_a_background_build_all_run_eagerly(cache_dir):
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    module = tiny_mlp()
    w = TensorRTModule(module, runtime=rt, name="mlp")
    x = torch.randn(2, 8)
    expected = module(x)
    errors = []

    def worker():
        try:
            with torch.no_grad():
                for _ in range(20):
                    torch.testing.assert_close(w(x), expected)
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    _wait_for(lambda: rt.stats.totals()["compiles"] == 1)
    assert doubles.SlowExport.builds == 1


@pytest.fixture
def child_builds(monkeypatch):
    """Build processes see the repository and register the test backends (``TRT_RUNTIME_BUILD_IMPORTS``)."""
    import os

    from trt_runtime.build_process import IMPORTS_ENV

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv(IMPORTS_ENV, "tests.support.register_doubles")
    monkeypatch.setenv("PYTHONPATH", root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    doubles.SlowExport.delay = 0.0


def _background_unet(cache_dir, backend: str):
    """A tiny SD1.5 UNet wrapped with ``background=True``, after its first call (which queued the build)."""
    from tests.support import tiny_models as tm
    from trt_runtime.modules.unet import apply_unet

    unet = tm.sd_unet().eval()
    rt = TensorRTRuntime(backend=backend, cache_dir=cache_dir, background=True)
    wrapped = apply_unet(unet, runtime=rt)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 8, 32, generator=g)
    return unet, rt, wrapped, (x, ctx), unet(x, 10, ctx).sample


def test_a_diffusers_model_builds_in_a_separate_process_and_the_caller_loads_it(cache_dir, child_builds):
    """background + build_process, under a compiler that traces: the child rebuilds the UNet from its config and
    weights, builds the same key into the shared cache, and the serving process only loads it, in its own thread
    (a load that may trace never runs beside running modules)."""
    unet, rt, wrapped, (x, ctx), expected = _background_unet(cache_dir, "tracing")
    slot = _handed_over(next(iter(wrapped.components.values())))
    assert rt.stats.totals()["loads"] == 0, "the worker thread must not load (a trace beside running modules)"
    assert threading.current_thread() is threading.main_thread()
    torch.testing.assert_close(unet(x, 10, ctx).sample, expected)  # this call loads it, in this thread
    totals = rt.stats.totals()
    assert totals["compiles"] == 0 and totals["loads"] == 1 and doubles.SlowExport.builds == 0, totals
    assert slot.state.value == "ready" and not slot.handover


def test_what_a_build_process_wrote_is_loaded_by_the_worker_where_that_traces_nothing(cache_dir, child_builds):
    """An artifact that loads without tracing (an ahead-of-time inductor function) is loaded, run and checked by
    the worker, beside the caller's calls: no call waits for the load (an SD1.5 UNet's took 11 s of one image)."""
    unet, rt, wrapped, (x, ctx), expected = _background_unet(cache_dir, "slow")
    (slot,) = next(iter(wrapped.components.values())).slots.values()
    _wait_for(lambda: slot.state.value == "ready", timeout=300)
    assert not slot.handover
    totals = rt.stats.totals()
    assert totals["compiles"] == 0 and totals["loads"] == 1 and totals["calls"] == 0, totals
    torch.testing.assert_close(unet(x, 10, ctx).sample, expected)
    assert rt.stats.totals()["calls"] == 1 and rt.stats.totals()["loads"] == 1


def test_a_build_process_lets_go_of_every_weight_it_was_given_before_it_exits(cache_dir, child_builds, caplog):
    """A GPU weight mapped into a build process goes back to its owner only when the build process frees it, and a
    process that exits does not free everything: the owner then kept the weights until it exited itself (with
    torch's "Producer process has been terminated before all shared CUDA tensors released"). The build process
    reports how many of its weights' storages it still referenced as it finished (copies here, on the CPU)."""
    with caplog.at_level("DEBUG", logger="trt_runtime"):
        _unet, _rt, wrapped, _call, _expected = _background_unet(cache_dir, "tracing")
        _handed_over(next(iter(wrapped.components.values())))
    reports = [r.getMessage() for r in caplog.records if "the build process finished holding" in r.getMessage()]
    assert len(reports) == 1 and "holding 0 of the " in reports[0], reports


def test_a_vae_decoder_builds_in_a_separate_process_from_its_vae(cache_dir, child_builds):
    from tests.support import tiny_models as tm
    from trt_runtime.build_process import can_build_in_process
    from trt_runtime.modules.vae import apply_vae

    vae = tm.vae_kl().eval()
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    wrapped = apply_vae(vae, runtime=rt, encoder=False)
    assert can_build_in_process(wrapped.components["vae.decoder"])
    z = torch.randn(1, 4, 8, 8)
    expected = vae.decode(z).sample
    _built_elsewhere(wrapped.components["vae.decoder"])
    torch.testing.assert_close(vae.decode(z).sample, expected)
    totals = rt.stats.totals()
    assert totals["compiles"] == 0 and totals["loads"] == 1 and doubles.SlowExport.builds == 0, totals


def test_a_build_process_holds_exactly_the_parents_tensors():
    """What a build process rebuilds from the config ends up holding the parent's tensors by name: parameters
    and non-persistent buffers, in the parent's dtypes and with its requires_grad, sharing their memory."""
    from tests.support import tiny_models as tm
    from trt_runtime.build_process import assign_tensors, module_tensors

    parent = tm.clip_text_encoder(seed=0).half()
    parent.final_layer_norm.float()  # a module kept in float32, as pipelines do
    parent.embeddings.position_ids += 0  # a non-persistent buffer: not in the state dict
    assert "embeddings.position_ids" not in parent.state_dict()
    parent.embeddings.token_embedding.weight.requires_grad_(False)
    tensors = module_tensors(parent)
    assert "embeddings.position_ids" in tensors
    child = tm.clip_text_encoder(seed=1)  # other weights, all float32
    assign_tensors(child, tensors, {n for n, p in parent.named_parameters() if p.requires_grad})
    for name, tensor in [*child.named_parameters(), *child.named_buffers()]:
        assert tensor.data_ptr() == tensors[name].data_ptr() and tensor.dtype == tensors[name].dtype, name
    assert not child.embeddings.token_embedding.weight.requires_grad
    assert child.final_layer_norm.weight.requires_grad
    ids = torch.randint(0, 200, (1, 7))
    torch.testing.assert_close(child(ids).last_hidden_state, parent(ids).last_hidden_state, rtol=0, atol=0)
    with pytest.raises(KeyError, match="no parameter or buffer"):
        assign_tensors(child, {"text_model.nowhere": torch.zeros(1)}, set())


def test_tied_weights_stay_tied_in_a_build_process():
    """T5 shares its embedding between ``shared`` and the encoder: the child must hold one tensor under both names,
    or its key (which counts a tied weight once) is not the parent's and its build is never used."""
    from tests.support import tiny_models as tm
    from trt_runtime.build_process import assign_tensors, module_tensors
    from trt_runtime.keys import module_fingerprint

    parent = tm.t5_encoder(seed=0)
    assert parent.shared.weight is parent.encoder.embed_tokens.weight
    child = tm.t5_encoder(seed=1)
    child.encoder.embed_tokens.weight = torch.nn.Parameter(child.shared.weight.clone())  # untied, other values
    assign_tensors(child, module_tensors(parent), {n for n, p in parent.named_parameters() if p.requires_grad})
    assert child.shared.weight is child.encoder.embed_tokens.weight
    assert module_fingerprint(child) == module_fingerprint(parent)


def test_a_build_process_rebuilds_on_the_meta_device_and_holds_the_parents_tensors():
    """No random initialisation on the host (Flux's would be 48 GB): the rebuilt module's tensors are all the
    parent's, and what it computes is the parent's output exactly."""
    from tests.support import tiny_models as tm
    from trt_runtime.build_process import _recipe, module_tensors, rebuild

    parent = tm.sd_unet(seed=0)
    tensors = module_tensors(parent)
    built = []
    original = torch.nn.init.kaiming_uniform_

    def spy(tensor, *args, **kwargs):
        built.append(tensor.device.type)
        return original(tensor, *args, **kwargs)

    torch.nn.init.kaiming_uniform_ = spy
    try:
        child = rebuild(_recipe(parent), tensors, set())
    finally:
        torch.nn.init.kaiming_uniform_ = original
    assert built and set(built) == {"meta"}, built
    for name, tensor in [*child.named_parameters(), *child.named_buffers()]:
        assert tensor.data_ptr() == tensors[name].data_ptr(), name
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 8, 32, generator=g)
    torch.testing.assert_close(child(x, 10, ctx).sample, parent(x, 10, ctx).sample, rtol=0, atol=0)


class _InitReadsParameters(torch.nn.Module):
    """A module whose ``__init__`` uses its parameters: a tensor derived from one (kept as a plain attribute, which
    the parent does not list), or a parameter's value read on the host."""

    def __init__(self, width: int, how: str) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)
        self.table = {"scale": [torch.ones_like(self.linear.bias) * 2]} if how == "derived" else None
        self.gain = float(self.linear.weight.abs().sum() >= 0) if how == "value" else 1.0
        self.steps = torch.linspace(0, 1, width)  # not a parameter: stays real on the meta path

    def forward(self, x):
        scale = self.table["scale"][0] if self.table else 2.0
        return self.linear(x) * scale * self.gain + self.steps


@pytest.mark.parametrize("how", ["derived", "value"])
def test_a_module_whose_init_uses_its_parameters_is_rebuilt_on_the_host(monkeypatch, caplog, how):
    from trt_runtime import build_process

    monkeypatch.setattr(build_process, "_rebuild", lambda recipe: _InitReadsParameters(recipe["width"], how))
    parent = _InitReadsParameters(4, how)
    with caplog.at_level("INFO", logger="trt_runtime"):
        child = build_process.rebuild({"class": "test", "width": 4}, build_process.module_tensors(parent), set())
    assert any("rebuilding test on the host" in r.getMessage() for r in caplog.records)
    assert build_process._left_on_meta(child) is None
    x = torch.randn(2, 4)
    torch.testing.assert_close(child(x), parent(x), rtol=0, atol=0)


def test_build_processes_are_stopped_at_shutdown():
    """A build nobody will load must not keep the GPU busy or write to the cache after its server has gone."""
    import sys

    from trt_runtime import build_process

    result = []
    waiter = threading.Thread(target=lambda: result.append(
        build_process._wait_for_child([sys.executable, "-c", "import time; time.sleep(120)"])))
    started = time.monotonic()
    waiter.start()
    _wait_for(lambda: build_process._CHILDREN, timeout=30)
    assert build_process.stop_children(wait_s=10) == 1
    waiter.join(30)
    assert result == [None] and time.monotonic() - started < 60
    assert not build_process._CHILDREN
    done = build_process._wait_for_child([sys.executable, "-c", "print('later builds still run')"])
    assert done is not None and done.returncode == 0 and "still run" in done.stdout


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs /proc")
def test_a_build_process_stops_when_its_parent_dies_and_runs_at_a_lower_priority():
    import os
    import signal
    import subprocess
    import sys

    child = ("import os, time; from trt_runtime import _build_child as c; c.lower_priority(); "
             "from trt_runtime import build_process as b; "
             "b._exit_with_parent(); print(os.getpid(), os.nice(0), flush=True); time.sleep(120)")
    parent = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', sys.argv[1]]); "
              "time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", parent, child], stdout=subprocess.PIPE, text=True)
    try:
        pid, nice = map(int, proc.stdout.readline().split())
        assert nice == min(19, os.nice(0) + 10)
        assert _alive(pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_for(lambda: not _alive(pid), timeout=30)
    finally:
        proc.kill()


def _exit_during_a_build(tmp_path, before_exit: str = "", job_s: float = 1.0, queues: int = 1):
    """Run a process that exits while its build workers are in a job of ``job_s`` seconds; returns (exit status,
    seconds from the exit to the end of the process, which workers finished their job)."""
    import subprocess
    import sys

    code = f"""
import threading, time
from trt_runtime import builds
started = []
for index in range({queues}):
    event = threading.Event()
    def job(index=index, event=event):
        event.set()
        time.sleep({job_s})
        open({str(tmp_path)!r} + f"/left-{{index}}", "w").write("done")
    builds.queue_for(__import__("torch").device("cuda", index), 2).submit("slow job", job)
    started.append(event)
assert all(event.wait(60) for event in started), "a worker never took its job"
{before_exit}
print(time.time(), flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    ended = __import__("time").time()
    exited_at = float(done.stdout.split()[-1]) if done.stdout.split() else ended
    finished = sorted(path.name for path in tmp_path.glob("left-*"))
    return done.returncode, ended - exited_at, finished, done.stderr


def test_a_process_that_exits_during_a_build_waits_for_its_worker_to_leave_it(tmp_path):
    """A worker thread still in the middle of its job while the interpreter tears down aborted a server on a GPU
    (exit -6): at exit the cancelled job is waited for (briefly), so it finishes before the process does."""
    status, _, finished, stderr = _exit_during_a_build(tmp_path)
    assert status == 0, stderr[-2000:]
    assert finished == ["left-0"]


def test_the_exit_wait_holds_after_the_builds_were_shut_down_by_hand(tmp_path):
    """A server that calls ``shutdown_all()`` itself before exiting (as the benchmark does) dropped the queues, and
    with them what the exit handler waited for: the workers are tracked apart from the queues."""
    status, _, finished, stderr = _exit_during_a_build(tmp_path, before_exit="builds.shutdown_all()")
    assert status == 0, stderr[-2000:]
    assert finished == ["left-0"]


def test_the_exit_wait_is_one_deadline_for_every_worker(tmp_path, monkeypatch):
    """Three workers stuck in jobs longer than the wait: the process leaves them after the wait once, not once
    per worker."""
    from trt_runtime import builds as module

    status, waited, finished, stderr = _exit_during_a_build(tmp_path, job_s=30.0, queues=3)
    assert status == 0, stderr[-2000:]
    assert finished == []
    assert waited < module._EXIT_WAIT_S * 2, f"the exit took {waited:.1f} s for three stuck workers"


@pytest.mark.skipif(__import__("sys").platform == "win32", reason="process groups are POSIX")
def test_stopping_a_build_process_stops_what_it_started(tmp_path):
    """A build process's own children (inductor's compile workers) inherit its output pipes: stopped alone, they
    kept the pipes open and the worker waiting, and were left running. The whole group is stopped."""
    import os
    import sys

    from trt_runtime import build_process

    pid_file = tmp_path / "grandchild"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(120)']); open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    result: list = []
    thread = threading.Thread(target=lambda: result.append(build_process._wait_for_child([sys.executable, "-c",
                                                                                           script])))
    thread.start()
    _wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=60)
    grandchild = int(pid_file.read_text())
    assert build_process.stop_children(wait_s=10) == 1
    thread.join(30)
    assert not thread.is_alive(), "the worker still waits for the build process's pipes"
    assert result == [None]
    _wait_for(lambda: not _alive(grandchild), timeout=30)
    try:
        os.waitpid(grandchild, os.WNOHANG)
    except ChildProcessError:
        pass


@pytest.mark.skipif(not hasattr(__import__("os"), "nice"), reason="needs os.nice")
def test_a_build_process_lowers_its_priority_before_it_imports_torch():
    """Importing torch takes seconds of CPU while the parent answers its first calls eagerly: the build process's entry
    point lowers its priority first (the spy records the priority at the moment torch is imported)."""
    import subprocess
    import sys

    code = """
import os, sys
base = os.nice(0)
seen = []
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.nice(0))
        return None
sys.meta_path.insert(0, Spy())
from trt_runtime import _build_child
assert "torch" not in sys.modules, "the entry point imported torch"
try:
    _build_child.run([os.path.join(sys.argv[1], "missing-build.pt")])
except FileNotFoundError:
    pass
print(base, seen[0])
"""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([sys.executable, "-c", code, folder], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    base, at_import = map(int, done.stdout.split()[-2:])
    assert at_import == min(19, base + 10)


def test_a_build_process_whose_parent_died_while_it_started_stops_at_once():
    """The parent's pid comes from the parent: a child that finds another parent (the init process, after its own
    died during the child's imports) does not build for nobody."""
    import os
    import subprocess
    import sys

    from trt_runtime.build_process import _PARENT_ENV

    code = "from trt_runtime import build_process as b; b._exit_with_parent(); print('building')"
    env = {**os.environ, _PARENT_ENV: str(os.getpid() + 1_000_000)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 70 and "building" not in done.stdout, done.stderr[-2000:]
    env[_PARENT_ENV] = str(os.getpid())
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "building" in done.stdout, done.stderr[-2000:]


def test_weights_edited_while_the_worker_loads_make_the_artifact_stale(cache_dir, child_builds, monkeypatch):
    """The worker loads beside the caller's calls: a LoRA fused by the caller meanwhile must not be masked by
    recording the edited weights as the ones the loaded artifact holds."""
    from tests.support import tiny_models as tm
    from trt_runtime.modules.vae import apply_vae
    from trt_runtime.resolver import Resolver

    original = Resolver.load_beside_calls

    def edited_meanwhile(self, comp, *args, **kwargs):
        result = original(self, comp, *args, **kwargs)
        with torch.no_grad():
            vae.decoder.conv_in.bias.add_(0.5)  # the caller's in-place edit, while the worker was loading
        return result

    monkeypatch.setattr(Resolver, "load_beside_calls", edited_meanwhile)
    vae = tm.vae_kl().eval()
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    wrapped = apply_vae(vae, runtime=rt, encoder=False)
    z = torch.randn(1, 4, 8, 8)
    vae.decode(z)
    (slot,) = wrapped.components["vae.decoder"].slots.values()
    _wait_for(lambda: slot.state.value in ("ready", "stale") or slot.handover, timeout=300)
    assert rt.stats.totals()["loads"] == 1
    assert slot.state.value == "stale"
    reference = tm.vae_kl().eval()
    with torch.no_grad():
        reference.decoder.conv_in.bias.add_(0.5)
    torch.testing.assert_close(vae.decode(z).sample, reference.decode(z).sample)


def test_weights_on_the_cpu_are_copied_not_shared():
    from trt_runtime.build_process import share_cuda

    assert share_cuda({"w": torch.zeros(2)}) is None and share_cuda({}) is None


def test_a_child_that_cannot_map_shared_weights_gets_copies(cache_dir, child_builds, monkeypatch, caplog):
    """If the child cannot open the parent's shared weights (here: handles it cannot read), the parent sends
    copies and the build still happens in the separate process."""
    from tests.support import tiny_models as tm
    from trt_runtime import build_process
    from trt_runtime.modules.vae import apply_vae

    monkeypatch.setattr(build_process, "share_cuda", lambda tensors: b"not a pickle")
    monkeypatch.setattr(build_process, "_SHARING_FAILED", False)
    vae = tm.vae_kl().eval()
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    wrapped = apply_vae(vae, runtime=rt, encoder=False)
    z = torch.randn(1, 4, 8, 8)
    expected = vae.decode(z).sample
    with caplog.at_level("INFO", logger="trt_runtime"):
        _built_elsewhere(wrapped.components["vae.decoder"])
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not map this process's weights (cannot map the parent's weights (UnpicklingError" in m
               and m.endswith("sending copies") for m in messages), messages
    assert [m for m in messages if "building in a separate process" in m][-1].endswith("(weights copied)")
    torch.testing.assert_close(vae.decode(z).sample, expected)
    totals = rt.stats.totals()
    assert totals["compiles"] == 0 and totals["loads"] == 1 and doubles.SlowExport.builds == 0, totals


@pytest.mark.gpu
def test_on_a_gpu_the_build_process_maps_the_parents_weights(cache_dir, child_builds, caplog):
    """CUDA weights go to the build process as IPC handles, not copies, and what it builds is the parent's key
    (the same weights, byte for byte): the parent loads it and compiles nothing."""
    from tests.support import tiny_models as tm
    from trt_runtime.modules.vae import apply_vae

    vae = tm.vae_kl().eval().to("cuda", torch.float16)
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    wrapped = apply_vae(vae, runtime=rt, encoder=False)
    z = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16)
    expected = vae.decode(z).sample
    with caplog.at_level("INFO", logger="trt_runtime"):
        _built_elsewhere(wrapped.components["vae.decoder"])
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "building in a separate process" in m] == [
        "[vae.decoder] building in a separate process (weights shared with it, not copied)"], messages
    torch.testing.assert_close(vae.decode(z).sample, expected)
    totals = rt.stats.totals()
    assert totals["compiles"] == 0 and totals["loads"] == 1 and doubles.SlowExport.builds == 0, totals


@pytest.mark.gpu
def test_on_a_gpu_the_parents_weights_are_freed_once_it_lets_go_of_them_after_a_shared_build(cache_dir,
                                                                                               child_builds, caplog):
    """After a build process that mapped the caller's weights has finished, deleting the model frees its memory: no
    block is kept in torch's IPC limbo for a build process that never let go of it (dynamo's own caches, which are
    not this test's subject, are reset first)."""
    import gc

    from tests.support import tiny_models as tm
    from trt_runtime.modules.vae import apply_vae

    vae = tm.vae_kl().eval().to("cuda", torch.float16)
    pointers = [t.data_ptr() for t in vae.state_dict().values()]
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    wrapped = apply_vae(vae, runtime=rt, encoder=False)
    with caplog.at_level("INFO", logger="trt_runtime"):
        vae.decode(torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float16))
        _built_elsewhere(wrapped.components["vae.decoder"])
    assert any(r.getMessage().endswith("(weights shared with it, not copied)") for r in caplog.records)
    del vae, wrapped, rt
    torch._dynamo.reset()

    def held() -> list[int]:
        gc.collect()
        torch.cuda.ipc_collect()
        blocks = [(b["address"], b["address"] + b["size"]) for segment in torch.cuda.memory_snapshot()
                  for b in segment["blocks"] if b["state"] == "active_allocated"]  # workspaces and caches aside
        return [p for p in pointers if any(start <= p < end for start, end in blocks)]

    _wait_for(lambda: not held(), timeout=10)  # the build worker leaves the finished job within milliseconds


def test_weights_edited_during_a_shared_build_discard_its_entry(cache_dir, child_builds, monkeypatch, caplog):
    """A build process that reads the caller's live weights (shared, not copied) while the caller edits them in
    place may build a mix under the key of what it saw first: its entry is dropped, never loaded."""
    import pickle

    from tests.support import tiny_models as tm
    from trt_runtime import build_process
    from trt_runtime.modules.vae import apply_vae

    # CPU weights pickled plainly stand in for CUDA IPC handles: the child gets them through the same file
    monkeypatch.setattr(build_process, "share_cuda", lambda tensors: pickle.dumps(tensors))
    monkeypatch.setattr(build_process, "_SHARING_FAILED", False)
    vae = tm.vae_kl().eval()
    rt = TensorRTRuntime(backend="slow", cache_dir=cache_dir, background=True)
    apply_vae(vae, runtime=rt, encoder=False)
    z = torch.randn(1, 4, 8, 8)
    with caplog.at_level("INFO", logger="trt_runtime"):
        vae.decode(z)  # queues the build
        _wait_for(lambda: any("building in a separate process" in r.getMessage() for r in caplog.records))
        vae.post_quant_conv.bias.add_(0.5)  # an in-place edit while it runs (the child takes seconds to start)
        # this test backend may build beside calls, so the worker builds it itself once the child's is dropped
        _wait_for(lambda: rt.stats.totals()["compiles"] == 1, timeout=300)
    assert any("weights changed during the build" in r.getMessage() for r in caplog.records)
    assert len(rt.cache.entries()) == 1  # the worker's, for the edited weights; the child's is gone
    reference = tm.vae_kl().eval()
    reference.post_quant_conv.bias.add_(0.5)
    torch.testing.assert_close(vae.decode(z).sample, reference.decode(z).sample)


def _built_elsewhere(comp):
    """The one slot of ``comp``, once a build process built it and the worker loaded it or handed it over."""
    slots = lambda: list(comp.slots.values())  # noqa: E731
    _wait_for(lambda: any(slot.handover or slot.state.value == "ready" for slot in slots()), timeout=300)
    (slot,) = slots()
    return slot


def _handed_over(comp):
    """The one slot of ``comp``, once its background build handed the rest to the next call."""
    slots = lambda: list(comp.slots.values())  # noqa: E731
    _wait_for(lambda: any(slot.handover for slot in slots()), timeout=300)
    (slot,) = slots()
    assert slot.state.value == "eager" and "next call" in slot.error
    return slot


class _Tracing(doubles.SlowExport):
    """A compiler that traces (like inductor or torch_tensorrt): it must never build in a worker thread."""

    name = "slow_tracing"
    builds_beside_calls = False
    threads: list[str] = []

    def compile(self, request):
        type(self).threads.append(threading.current_thread().name)
        return super().compile(request)


def test_a_tracing_backend_never_builds_in_the_worker_thread(cache_dir, caplog):
    """A module that cannot be rebuilt in a child process, under a backend that traces: the first call runs
    eagerly, the worker hands over at once, and the next call builds in the caller's own thread, with one
    warning that says why."""
    register_backend(_Tracing.name, _Tracing)
    try:
        _Tracing.threads = []
        rt = TensorRTRuntime(backend=_Tracing.name, cache_dir=cache_dir, background=True)
        module = tiny_mlp()
        w = TensorRTModule(module, runtime=rt, name="mlp")
        x = torch.randn(2, 8)
        with caplog.at_level("WARNING", logger="trt_runtime"):
            torch.testing.assert_close(w(x), module(x))
            _handed_over(w.component)
        assert _Tracing.threads == [] and rt.stats.totals()["compiles"] == 0
        assert sum("built in the calling thread" in r.getMessage() for r in caplog.records) == 1
        torch.testing.assert_close(w(x), module(x))  # builds here
        assert _Tracing.threads == [threading.current_thread().name]
        assert rt.stats.totals()["compiles"] == 1
        torch.testing.assert_close(w(x), module(x))
        assert [slot.state.value for slot in w.component.slots.values()] == ["ready"]
    finally:
        unregister_backend(_Tracing.name)
