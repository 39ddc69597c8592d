"""Every typed error of the contract is raised where it should be, and nothing else breaks."""

import time

import pytest
import torch

import gpulanes as gl
from conftest import Affine, Picky, TwoInputsTupleOut, busy_runtime, saved, scripted


def test_error_hierarchy_matches_core_codes():
    assert issubclass(gl.InvalidInput, ValueError)
    assert issubclass(gl.UnknownModel, KeyError)
    for cls in (gl.DeadlineExceeded, gl.QueueFull, gl.InvalidInput, gl.UnknownModel,
                gl.ModelError, gl.RuntimeClosed):
        assert issubclass(cls, gl.GpuLanesError)
    for name in gl._C.error_code_names():
        if name not in ("Ok", "Internal"):
            assert isinstance(getattr(gl, name), type), name


@pytest.fixture
def two_rt():
    rt = gl.Runtime(device="cpu")
    rt.register("two", scripted(TwoInputsTupleOut()), slo_ms=1000,
                example_inputs=(torch.randn(1, 4, 6), torch.ones(1, 4, dtype=torch.int64)))
    with rt:
        yield rt


@pytest.mark.parametrize("inputs, match", [
    ((torch.randn(4, 5), torch.ones(4, dtype=torch.int64)), r"Float\[4, 6\].*got Float\[4, 5\]"),
    ((torch.randn(1, 4, 6), torch.ones(1, 4, dtype=torch.int64)), "no batch dimension"),
    ((torch.randn(4, 6), torch.ones(4, dtype=torch.int32)), r"Long\[4\].*got Int\[4\]"),
    ((torch.randn(4, 6, dtype=torch.float64), torch.ones(4, dtype=torch.int64)), "Double"),
    ((torch.randn(4, 6),), "takes 2 input"),
    ((torch.randn(4, 6), torch.ones(4, dtype=torch.int64), torch.ones(4)), "got 3"),
    ((torch.randn(4, 6), [1, 0, 1, 1]), "list, not a torch.Tensor"),
    ((torch.empty(4, 6, device="meta"), torch.ones(4, dtype=torch.int64)), "device meta"),
    ((torch.randn(4, 6).to_sparse(), torch.ones(4, dtype=torch.int64)), "layout Sparse"),
    ((torch.nested.nested_tensor([torch.randn(2, 6), torch.randn(2, 6)]),
      torch.ones(4, dtype=torch.int64)), "a nested tensor"),
])
def test_bad_inputs_are_refused_at_submit(two_rt, inputs, match):
    with pytest.raises(gl.InvalidInput, match=match):
        two_rt.submit("two", *inputs)
    assert two_rt.stats()["two"]["rejected"] == 1


def test_unknown_model(two_rt):
    with pytest.raises(gl.UnknownModel, match="no model named 'nope'"):
        two_rt.submit("nope", torch.zeros(1))
    with pytest.raises(KeyError):
        two_rt.infer("nope", torch.zeros(1))


def test_deadline_already_past(affine_rt):
    x = torch.zeros(4)
    for kwargs in ({"deadline_ms": 0}, {"deadline_ms": -5}, {"deadline": time.monotonic() - 1}):
        with pytest.raises(gl.DeadlineExceeded, match="already passed"):
            affine_rt.submit("affine", x, **kwargs)
    with pytest.raises(gl.InvalidInput, match="not both"):
        affine_rt.submit("affine", x, deadline_ms=10, deadline=time.monotonic() + 1)
    with pytest.raises(gl.InvalidInput, match="priority"):
        affine_rt.submit("affine", x, priority=7)
    # an absolute deadline in the future is honoured
    assert torch.equal(affine_rt.infer("affine", x, deadline=time.monotonic() + 5), torch.ones(4))


def test_full_queue_raises_queue_full():
    rt = busy_runtime(iters=400, max_batch_size=1, max_queue=2)
    try:
        first = rt.submit("busy", torch.zeros(4))
        time.sleep(0.02)  # the first is running now; two more fill the queue
        queued = [rt.submit("busy", torch.zeros(4)) for _ in range(2)]
        with pytest.raises(gl.QueueFull, match="max_queue=2"):
            rt.submit("busy", torch.zeros(4))
        for f in [first, *queued]:
            assert torch.equal(f.result(timeout=60), torch.ones(4))
    finally:
        rt.shutdown()


def test_deadline_an_idle_lane_cannot_meet_is_refused_at_submit():
    rt = busy_runtime(iters=400, max_batch_size=1)
    try:
        alone_ms = rt.profile("busy")[0]["p50_us"] / 1e3
        with pytest.raises(gl.DeadlineExceeded, match="even by a batch of one"):
            rt.submit("busy", torch.zeros(4), deadline_ms=alone_ms / 4)
        with pytest.raises(gl.DeadlineExceeded, match="even by a batch of one"):
            rt.infer("busy", torch.zeros(4), deadline_ms=alone_ms / 4)
        s = rt.stats()["busy"]
        assert s["rejected"] == 2 and s["batches"] == 0
    finally:
        rt.shutdown()


def test_deadline_passing_in_queue_fails_future_without_running():
    # Queue admission off: these must queue (and be dropped there), not be refused at submit.
    rt = busy_runtime(iters=400, max_batch_size=1, policy_options={"queue_admission": False})
    try:
        alone_ms = rt.profile("busy")[0]["p50_us"] / 1e3
        # ~4 x alone of work ahead: even if the machine runs batches much faster than it did
        # while profiling (a loaded CI box), the late ones below cannot make it behind them.
        first = [rt.submit("busy", torch.zeros(4)) for _ in range(4)]
        time.sleep(0.005)
        # Admitted (an idle lane could make it), but not behind the ones running/queued.
        late = [rt.submit("busy", torch.zeros(4), deadline_ms=1.2 * alone_ms) for _ in range(3)]
        with pytest.raises(gl.DeadlineExceeded, match="dropped before running"):
            rt.infer("busy", torch.zeros(4), deadline_ms=1.2 * alone_ms)
        for f in first:
            f.result(timeout=60)
        for f in late:
            with pytest.raises(gl.DeadlineExceeded):
                f.result(timeout=60)
        s = rt.stats()["busy"]
        assert s["dropped"] == 4 and s["batches"] == 4 and s["met"] == 4
    finally:
        rt.shutdown()


def test_closed_runtime():
    rt = gl.Runtime(device="cpu")
    rt.register("affine", scripted(Affine()), slo_ms=1000, example_inputs=torch.zeros(1, 4))
    with pytest.raises(gl.RuntimeClosed, match="not started"):
        rt.submit("affine", torch.zeros(4))
    rt.start()
    rt.shutdown()
    with pytest.raises(gl.RuntimeClosed, match="shut down"):
        rt.submit("affine", torch.zeros(4))
    rt.shutdown()  # idempotent


def test_shutdown_without_drain_fails_queued_with_runtime_closed():
    rt = busy_runtime(iters=200, max_batch_size=1)
    futs = [rt.submit("busy", torch.zeros(4)) for _ in range(30)]
    rt.shutdown(drain=False)
    outcomes = []
    for f in futs:
        exc = f.exception(timeout=60)
        outcomes.append(type(exc).__name__ if exc else "ok")
    assert outcomes.count("RuntimeClosed") >= 27
    assert set(outcomes) <= {"ok", "RuntimeClosed"}


def test_shutdown_with_drain_and_context_manager_finish_everything():
    rt = busy_runtime(iters=10, max_batch_size=4)
    futs = [rt.submit("busy", torch.zeros(4)) for _ in range(40)]
    with rt:  # already started: the context manager only drains at exit
        pass
    assert all(f.done() for f in futs)
    assert all(torch.equal(f.result(), torch.ones(4)) for f in futs)


def test_forward_that_raises_fails_only_its_requests():
    rt = gl.Runtime(device="cpu")
    rt.register("picky", scripted(Picky()), slo_ms=5000, example_inputs=torch.zeros(1, 3),
                max_batch_size=1)
    rt.register("affine", scripted(Affine()), slo_ms=5000, example_inputs=torch.zeros(1, 3))
    with rt:
        bad = rt.submit("picky", torch.full((3,), -1.0))
        good = [rt.submit("picky", torch.full((3,), float(i))) for i in range(5)]
        other = rt.submit("affine", torch.ones(3))
        with pytest.raises(gl.ModelError, match="negative input"):
            bad.result(timeout=60)
        for i, f in enumerate(good):
            assert torch.equal(f.result(timeout=60), torch.full((3,), i + 1.0))
        assert torch.equal(other.result(timeout=60), torch.full((3,), 3.0))
        assert rt.infer("picky", torch.zeros(3)).sum() == 3  # still serving afterwards
        with pytest.raises(gl.ModelError, match="negative input"):  # the native infer() path
            rt.infer("picky", torch.full((3,), -2.0))
        s = rt.stats()["picky"]
        assert s["failed"] == 2 and s["met"] == 6


def test_model_failing_warm_up_fails_start():
    rt = gl.Runtime(device="cpu")
    # A ScriptModule object is run on its examples at register: the failure is named there.
    with pytest.raises(gl.InvalidInput, match=r"'picky' do not fit .* raised RuntimeError: "
                                               r"negative input$"):
        rt.register("picky", scripted(Picky()), slo_ms=1000, example_inputs=-torch.ones(1, 3))
    # A saved one is not (the core loads it): its warm-up fails start.
    rt.register("picky", saved(Picky()), slo_ms=1000, example_inputs=-torch.ones(1, 3))
    with pytest.raises(gl.ModelError, match="warm-up"):
        rt.start()


def test_corrupt_or_missing_model_files(tmp_path):
    rt = gl.Runtime(device="cpu")
    ex = torch.zeros(1, 4)
    with pytest.raises(gl.ModelError, match="cannot load"):
        rt.register("corrupt", b"this is not a torchscript archive", slo_ms=10, example_inputs=ex)
    bad = tmp_path / "truncated.pt"
    good = tmp_path / "good.pt"
    torch.jit.save(scripted(Affine()), str(good))
    bad.write_bytes(good.read_bytes()[:200])
    for model in (b"this is not a torchscript archive", bad, tmp_path / "nope.pt"):
        with pytest.raises(gl.ModelError) as e:
            rt.register("bad", model, slo_ms=10, example_inputs=ex)
        # One short message: no C++ frames (torch appends them to its exceptions).
        message = str(e.value)
        assert "frame #" not in message and "Exception raised from" not in message, message
        assert len(message) < 600, message
    with pytest.raises(TypeError, match="model must be a path"):
        rt.register("eager", 42, slo_ms=10, example_inputs=ex)
    # the runtime is still usable after those failures
    rt.register("ok", good, slo_ms=1000, example_inputs=ex)
    with rt:
        assert torch.equal(rt.infer("ok", torch.zeros(4)), torch.ones(4))


def test_registration_and_construction_errors():
    rt = gl.Runtime(device="cpu")
    rt.register("a", scripted(Affine()), slo_ms=100, example_inputs=torch.zeros(1, 4))
    with pytest.raises(gl.InvalidInput, match="already registered"):
        rt.register("a", scripted(Affine()), slo_ms=100, example_inputs=torch.zeros(1, 4))
    with pytest.raises(gl.InvalidInput, match="batch dimension"):
        rt.register("b", scripted(Affine()), slo_ms=100, example_inputs=torch.tensor(1.0))
    with pytest.raises(gl.InvalidInput, match="slo_ms"):
        rt.register("c", scripted(Affine()), slo_ms=0, example_inputs=torch.zeros(1, 4))
    with rt:  # while serving it is allowed (tests/python/test_live_models.py) ...
        rt.register("d", scripted(Affine()), slo_ms=100, example_inputs=torch.zeros(1, 4))
        assert "d" in rt.models
    with pytest.raises(gl.RuntimeClosed, match="shut down"):  # ... after shutdown not
        rt.register("e", scripted(Affine()), slo_ms=100, example_inputs=torch.zeros(1, 4))
    with pytest.raises(gl.InvalidInput, match="policy"):
        gl.Runtime(policy="no-such-policy")
    with pytest.raises(gl.InvalidInput, match="max_queue_delay_microseconds"):
        gl.Runtime(policy="max_delay", policy_options={"max_queue_delay_us": 10})
    with pytest.raises(gl.InvalidInput, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        gl.Runtime(device="tpu")


@pytest.mark.parametrize("call, match", [
    (lambda rt: rt.submit(123, torch.zeros(4)), "model must be a registered model's name"),
    (lambda rt: rt.submit(["affine"], torch.zeros(4)), "model must be"),
    (lambda rt: rt.submit("affine", torch.zeros(4), deadline_ms=float("nan")),
     "deadline_ms must be finite"),
    (lambda rt: rt.submit("affine", torch.zeros(4), deadline_ms=float("inf")),
     "deadline_ms must be finite"),
    (lambda rt: rt.submit("affine", torch.zeros(4), deadline_ms=1e300), "at most"),
    (lambda rt: rt.submit("affine", torch.zeros(4), deadline_ms="10"), "deadline_ms must be a number"),
    (lambda rt: rt.submit("affine", torch.zeros(4), deadline=time.time() + 1),
     "not time.time"),
    (lambda rt: rt.submit("affine", torch.zeros(4), deadline=float("nan")), "deadline must be finite"),
    (lambda rt: rt.submit("affine", torch.zeros(4), priority=2), "priority must be 0"),
    (lambda rt: rt.submit("affine", torch.zeros(4), priority="1"), "priority must be 0"),
    (lambda rt: rt.submit("affine", torch.zeros(4), priority=True), "priority must be 0"),
    (lambda rt: rt.infer("affine", torch.zeros(4), timeout=float("nan")), "timeout must be finite"),
    (lambda rt: rt.infer("affine", torch.zeros(4), timeout=-1), "timeout must be >= 0"),
    (lambda rt: rt.submit("affine", "zeros"), "input 0 takes a tensor, Float.4. .one sample"),
    (lambda rt: rt.submit("affine", 4), "not a torch.Tensor"),
    (lambda rt: rt.set_lanes("cpu"), "layout must be a list"),
    (lambda rt: rt.set_lanes([("cpu", 0)]), "lane 0 must be a dict"),
    (lambda rt: rt.set_lanes([{"device": "cpu", "models": "affine"}]), "models must be a list"),
    (lambda rt: rt.set_lanes([{"device": "cpu", "sms": float("nan")}]), "sms must be finite"),
    (lambda rt: rt.set_lanes([{"device": "cpu", "sms": -8}]), "sms must be >= 0"),
    (lambda rt: rt.set_lanes([{"device": 1.5}]), "device must be"),
])
def test_bad_request_arguments_get_typed_errors_naming_them(affine_rt, call, match):
    before = affine_rt.stats()["affine"]["in_flight"]
    with pytest.raises(gl.InvalidInput, match=match):
        call(affine_rt)
    assert affine_rt.stats()["affine"]["in_flight"] == before
    assert torch.equal(affine_rt.infer("affine", torch.zeros(4), timeout=float("inf")),
                       torch.ones(4))  # still serving; an infinite timeout means none


@pytest.mark.parametrize("kwargs, match", [
    ({"slo_ms": float("nan")}, "slo_ms must be finite"),
    ({"slo_ms": float("inf")}, "slo_ms must be finite"),
    ({"slo_ms": -1}, "slo_ms must be > 0"),
    ({"slo_ms": "100"}, "slo_ms must be a number"),
    ({"max_batch_size": -1}, "max_batch_size must be in"),
    ({"max_batch_size": 10**6}, "max_batch_size must be in"),
    ({"max_batch_size": 2.5}, "max_batch_size must be an integer"),
    ({"max_queue": 0}, "max_queue must be in"),
    ({"max_queue": None}, "max_queue must be an integer"),
    ({"example_inputs": [1, 2]}, "example_inputs .* must be a tensor"),
    ({"example_inputs": torch.zeros(1, 4, device="meta")}, r"example_inputs\[0\] .* is a meta tensor"),
    ({"example_inputs": torch.zeros(1, 4).to_sparse()}, r"example_inputs\[0\] .* is a sparse_coo"),
    ({"example_inputs": torch.zeros(1, 3, 1024, 1024), "max_batch_size": 65536},
     "warm-up would exhaust memory"),
])
def test_bad_registration_arguments_get_typed_errors_naming_them(kwargs, match):
    rt = gl.Runtime(device="cpu")
    args = {"slo_ms": 100, "example_inputs": torch.zeros(1, 4), **kwargs}
    with pytest.raises(gl.InvalidInput, match=match):
        rt.register("a", scripted(Affine()), **args)
    with pytest.raises(gl.InvalidInput, match="name must be a non-empty str"):
        rt.register(7, scripted(Affine()), slo_ms=100, example_inputs=torch.zeros(1, 4))


def test_a_huge_timeout_means_none_not_an_overflow(affine_rt):
    # timeout=1e300 overflowed the wait's nanoseconds and timed out after 4 ms.
    for timeout in (1e300, 1e18, 1e9):
        assert torch.equal(affine_rt.infer("affine", torch.zeros(4), timeout=timeout), torch.ones(4))


def test_numpy_and_0d_torch_scalars_are_numbers(affine_rt):
    import numpy as np

    for value in (np.float32(500), np.float64(500), np.int64(500), np.array(500.0),
                  torch.tensor(500.0), torch.tensor(500)):
        assert torch.equal(affine_rt.infer("affine", torch.zeros(4), deadline_ms=value,
                                           timeout=value), torch.ones(4))
    for bad, match in ((torch.tensor([500.0, 1.0]), "deadline_ms must be a number"),
                       (np.array([1.0]), "deadline_ms must be a number"),
                       (torch.tensor(True), "deadline_ms must be a number"),
                       (np.float64("nan"), "deadline_ms must be finite"),
                       (torch.tensor(float("inf")), "deadline_ms must be finite"),
                       (torch.zeros((), device="meta"), "deadline_ms must be a number")):
        with pytest.raises(gl.InvalidInput, match=match):
            affine_rt.submit("affine", torch.zeros(4), deadline_ms=bad)


def test_a_long_past_deadline_is_past_not_an_overflow(affine_rt):
    # Found by hypothesis: deadline_ms=-1e10 overflowed the nanosecond deadline (a TypeError).
    for kwargs in ({"deadline_ms": -1e300}, {"deadline": -1e300}, {"deadline": -5.0}):
        with pytest.raises(gl.DeadlineExceeded):
            affine_rt.submit("affine", torch.zeros(4), **kwargs)


def test_a_refusal_leaves_no_garbage_cycle(affine_rt):
    """A refused request's exception is freed when the caller drops it: a cycle through the
    raising frame would leave every refusal to the garbage collector, whose collections under
    overload stall every thread."""
    import asyncio
    import gc

    async def refused_async():
        with pytest.raises(gl.DeadlineExceeded):
            await affine_rt.infer_async("affine", torch.zeros(4), deadline_ms=-1)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            with pytest.raises(gl.DeadlineExceeded):
                affine_rt.submit("affine", torch.zeros(4), deadline_ms=-1)
            with pytest.raises(gl.UnknownModel):
                affine_rt.submit("nope", torch.zeros(4))
        asyncio.run(refused_async())
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, gl.GpuLanesError)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []


def test_an_slo_below_the_batch_1_latency_everywhere_is_warned_at_start():
    rt = gl.Runtime(device="cpu", cpu_lanes=1, profile_cache=False)
    rt.register("tight", scripted(Affine()), slo_ms=0.001, example_inputs=torch.zeros(1, 4))
    rt.register("fine", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4))
    # A given profile, so the numbers do not depend on this machine's speed.
    rt.set_profile("tight", [{"batch_size": 1, "p50_us": 50.0}, {"batch_size": 2, "p50_us": 60.0}])
    with pytest.warns(gl.UnmeetableSlo) as warned:
        rt.start(progress=False)
    rt.shutdown()
    messages = [str(w.message) for w in warned if issubclass(w.category, gl.UnmeetableSlo)]
    assert messages == ["model 'tight': slo_ms=0.001 is below its batch-1 latency (0.05 ms at the "
                        "median) on every lane that serves it: requests with that deadline will "
                        "be refused"]


def test_the_build_is_checked_against_the_installed_torch_at_import():
    import subprocess
    import sys

    from gpulanes import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__
    code = "import torch; torch.__version__ = '2.4.0'; import gpulanes"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"ImportError: gpulanes was built against torch {torch.__version__}, but torch "
                    "2.4.0 is installed: rebuild gpulanes against this torch (from its source: "
                    "pip install --no-build-isolation --no-deps --force-reinstall .)")


def test_example_inputs_that_do_not_fit_the_model_are_one_line_at_register():
    from torch import nn

    rt = gl.Runtime(device="cpu")
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    for model in (torch.jit.script(net), net):
        with pytest.raises(gl.InvalidInput) as e:
            rt.register("mlp", model, slo_ms=100, example_inputs=torch.zeros(1, 5))  # 5 != 4
        message = str(e.value)
        assert message.startswith("example_inputs of 'mlp' do not fit the model: forward() on a "
                                  "batch of them ((2, 5) float32) raised RuntimeError: mat1 and "
                                  "mat2 shapes cannot be multiplied (2x5 and 4x8)"), message
        assert "\n" not in message
    with pytest.raises(gl.InvalidInput, match=r"\(2, 4\) float32, \(2, 4\) float32\) raised"):
        rt.register("two", torch.jit.script(net), slo_ms=100,
                    example_inputs=(torch.zeros(1, 4), torch.zeros(1, 4)))  # one input too many
