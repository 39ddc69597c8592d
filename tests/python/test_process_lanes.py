"""Process lanes (isolation="process"): each CPU lane runs its batches in a worker process, so a
model that crashes or hangs takes down only that process and the batch it ran."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import gpulanes as gl
from conftest import Affine, Busy, ListOut, Mlp, TwoInputsTupleOut, affine_load, scripted

FAST = {"warmup_rounds": 1, "profile_reps": 3, "profile_cache": False}


class Hang(nn.Module):
    """Loops forever on a sample whose first value is above 1e6; x + 1 otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 1e6).any()):
            y = x
            while bool((y > -1.0).all()):
                y = y + 1.0
            return y
        return x + 1.0


def _children() -> list:
    """(pid, state) of this process's children, from /proc."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                out.append((int(d.name), fields[0]))
    return out


def _worker_pids(rt) -> list:
    return [lane["worker_pid"] for lane in rt.lanes()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _kill_mid_batch(pid: int, sig: int, before: int) -> None:
    """Sends `sig` to worker `pid` once it has used CPU since `before` (its batch is running):
    no guess at how fast this machine is."""
    deadline = time.monotonic() + 60
    while _cpu_ticks(pid) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(pid, sig)


def _runtime(cpu_lanes=1, **kwargs):
    rt = gl.Runtime(device="cpu", isolation="process", cpu_lanes=cpu_lanes, **FAST, **kwargs)
    return rt


def test_process_lanes_serve_what_thread_lanes_serve():
    torch.manual_seed(0)
    models = {
        "affine": (scripted(Affine()), (torch.zeros(1, 4),), lambda: (torch.randn(4),)),
        "mlp": (scripted(Mlp()), (torch.zeros(1, 16),), lambda: (torch.randn(16),)),
        "two": (scripted(TwoInputsTupleOut()), (torch.zeros(1, 6), torch.ones(1, dtype=torch.int64)),
                lambda: (torch.randn(6), torch.randint(0, 2, ()))),
        "list": (scripted(ListOut()), (torch.zeros(1, 3),), lambda: (torch.randn(3),)),
    }
    runtimes = [gl.Runtime(device="cpu", **FAST), _runtime()]
    for rt in runtimes:
        for name, (model, example, _) in models.items():
            rt.register(name, model, slo_ms=60_000, example_inputs=example, max_batch_size=8)
        rt.start(progress=False)
    try:
        assert runtimes[1].lanes()[0]["kind"] == "cpu-process"
        assert runtimes[1].lanes()[0]["worker_pid"] > 0
        for name, (_, _, sample) in models.items():
            inputs = [sample() for _ in range(24)]
            got = [[f.result(timeout=60) for f in [rt.submit(name, *x) for x in inputs]]
                   for rt in runtimes]
            for a, b in zip(*got):
                if isinstance(a, (tuple, list)):
                    assert type(a) is type(b) and len(a) == len(b)
                    for u, v in zip(a, b):
                        torch.testing.assert_close(u, v)
                else:
                    torch.testing.assert_close(a, b)
    finally:
        for rt in runtimes:
            rt.shutdown()


def _kill_busy_batch_on_lane_0(rt, sig: int = signal.SIGKILL):
    """Lays the runtime out as lane 0 (busy, affine) and lane 1 (affine), starts a busy batch on
    lane 0 and sends `sig` to its worker while the batch runs; returns (pid, the batch's future)."""
    rt.set_lanes([{"device": "cpu", "models": ["busy", "affine"]},
                  {"device": "cpu", "models": ["affine"]}])
    pid = _worker_pids(rt)[0]
    ticks = _cpu_ticks(pid)
    running = rt.submit("busy", torch.zeros(4))
    _kill_mid_batch(pid, sig, ticks)
    return pid, running


def test_a_killed_worker_fails_only_its_batch_and_the_lane_comes_back():
    with _busy_and_affine(cpu_lanes=2) as rt:
        # Lane 0 runs the long batch; lane 1 serves the other model throughout.
        victim, running = _kill_busy_batch_on_lane_0(rt)
        with pytest.raises(gl.ModelError, match=r"pid %d\) was killed by SIGKILL" % victim):
            running.result(timeout=120)
        others = [rt.submit("affine", torch.full((4,), float(i))) for i in range(200)]
        for i, f in enumerate(others):
            assert torch.equal(f.result(timeout=60), torch.full((4,), 2.0 * i + 1))
        # Only lane 0 serves "busy": its next batch runs on a new worker (the affine requests
        # above may all have gone to lane 1 on a busy machine).
        assert torch.equal(rt.infer("busy", torch.zeros(4), deadline_ms=600_000), torch.ones(4))
        lanes = rt.lanes()
        assert [l["worker_restarts"] for l in lanes] == [1, 0]  # lane 0 took batches again
        assert lanes[0]["worker_pid"] not in (0, victim) and not lanes[0]["broken"]
        assert rt.stats()["busy"]["failed"] == 1 and rt.stats()["affine"]["failed"] == 0


def _busy_and_affine(**kwargs):
    """A model whose batch runs for a while (about a second on an idle 2-core VM), and Affine."""
    rt = _runtime(**kwargs)
    rt.register("busy", scripted(Busy(6000)), slo_ms=600_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1)
    rt.set_profile("busy", [{"batch_size": 1, "p50_us": 1e6}])  # no profiling runs
    rt.register("affine", scripted(Affine()), slo_ms=600_000, example_inputs=torch.zeros(1, 4))
    return rt


def _test_ops() -> str:
    """The custom operator library tests/ops/crash_ops.cpp, built with the C++ tests."""
    path = os.environ.get("GPULANES_TEST_OPS") or str(
        Path(__file__).resolve().parents[2] / "build" / "dev" / "libgpulanes_test_ops.so")
    if not os.path.isfile(path):
        pytest.fail(f"the test operator library {path} was not built (scripts/bootstrap.sh "
                    "builds it)")
    return path


class AbortOnNegative(nn.Module):
    """2x, through a custom op that aborts the process on a negative input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.gpulanes_test.abort_if_negative(x) * 2.0


def test_a_custom_op_that_aborts_takes_down_only_its_worker_and_batch():
    lib = _test_ops()
    torch.ops.load_library(lib)  # to script the model here; it only ever runs in the workers
    rt = _runtime(cpu_lanes=2, worker_options={"libraries": [lib]})
    rt.register("crashy", scripted(AbortOnNegative()), slo_ms=120_000,
                example_inputs=torch.ones(1, 4), max_batch_size=1)
    rt.register("affine", scripted(Affine()), slo_ms=120_000, example_inputs=torch.zeros(1, 4))
    with rt:
        with affine_load(rt) as futures:
            with pytest.raises(gl.ModelError, match="SIGABRT"):
                rt.infer("crashy", -torch.ones(4), timeout=120)
            assert torch.equal(rt.infer("crashy", torch.ones(4), timeout=120), torch.full((4,), 2.0))
        for i, f in futures:  # the other lane, and this one once its worker came back
            assert torch.equal(f.result(timeout=120), torch.full((4,), 2.0 * i + 1.0))
        # The lane that lost its worker starts a new one with its next batch: bursts reach both.
        deadline = time.monotonic() + 60
        while sum(lane["worker_restarts"] for lane in rt.lanes()) == 0:
            assert time.monotonic() < deadline, rt.lanes()
            burst = [rt.submit("affine", torch.ones(4)) for _ in range(64)]
            assert all(torch.equal(f.result(timeout=60), torch.full((4,), 3.0)) for f in burst)
        assert sum(lane["worker_restarts"] for lane in rt.lanes()) == 1
        assert all(lane["worker_pid"] > 0 and not lane["broken"] for lane in rt.lanes())


def test_a_library_the_worker_cannot_load_fails_start_with_its_reason(tmp_path):
    bogus = tmp_path / "libnot_a_library.so"
    bogus.write_text("not an ELF file")
    rt = _runtime(worker_options={"libraries": [str(bogus)]})
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    with pytest.raises(gl.ModelError, match="cannot load the library .*libnot_a_library.so"):
        rt.start()
    assert all(state != "Z" for _, state in _children())  # the failed worker was reaped


def test_a_hanging_worker_is_killed_by_the_watchdog():
    rt = _runtime(worker_options={"watchdog_s": 1.0})
    rt.register("hang", scripted(Hang()), slo_ms=120_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1)
    with rt:
        stuck = torch.tensor([1e7, 0.0, 0.0, 0.0])
        t0 = time.monotonic()
        with pytest.raises(gl.ModelError, match="stuck for more than 1.0"):
            rt.infer("hang", stuck)
        assert time.monotonic() - t0 < 30
        assert torch.equal(rt.infer("hang", torch.zeros(4)), torch.ones(4))


def test_a_worker_that_never_gets_ready_is_killed_after_the_start_timeout(tmp_path, monkeypatch):
    # As an MPS client does that cannot reach its daemon: it never says hello. The lane stops
    # waiting after start_timeout_s (not the 60 s watchdog), kills it, and says so.
    stuck = tmp_path / "stuck_worker"
    stuck.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pid'}\nexec sleep 600\n")
    stuck.chmod(0o755)
    monkeypatch.setenv("GPULANES_WORKER", str(stuck))
    rt = _runtime(worker_options={"start_timeout_s": 1.0, "max_restarts": 0})
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    t0 = time.monotonic()
    with pytest.raises(gl.GpuLanesError, match=r"not ready within 1\.0+ s .*start_timeout_s"):
        rt.start()
    assert time.monotonic() - t0 < 20
    rt.shutdown()
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed and collected


def test_a_worker_the_loader_refuses_is_reported_as_such(tmp_path, monkeypatch):
    # What the loader does when a library the worker links is missing: a message, status 127.
    broken = tmp_path / "gpulanes_worker"
    broken.write_text("#!/bin/sh\necho 'error while loading shared libraries: libcudart.so.13' >&2\n"
                      "exit 127\n")
    broken.chmod(0o755)
    monkeypatch.setenv("GPULANES_WORKER", str(broken))
    rt = _runtime(worker_options={"max_restarts": 0})
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    with pytest.raises(gl.GpuLanesError, match="status 127 .*dynamic loader could not load"):
        rt.start()
    rt.shutdown()


def _kill_the_busy_batch(rt) -> None:
    """Kills lane 0's worker (SIGKILL) while it runs a busy batch; the batch fails naming it."""
    pid = _worker_pids(rt)[0]
    ticks = _cpu_ticks(pid)
    f = rt.submit("busy", torch.zeros(4))
    _kill_mid_batch(pid, signal.SIGKILL, ticks)
    with pytest.raises(gl.ModelError, match="SIGKILL"):
        f.result(timeout=120)


def test_a_lane_that_keeps_dying_gives_up_and_says_so():
    with _busy_and_affine(worker_options={"max_restarts": 0}) as rt:
        _kill_the_busy_batch(rt)
        with pytest.raises(gl.ModelError, match="runs nothing more"):
            rt.infer("affine", torch.zeros(4))
        assert rt.lanes()[0]["broken"] and rt.lanes()[0]["worker_pid"] == 0
        # No lane left for its models: their requests fail at once, typed, never stranded.
        for f in [rt.submit("affine", torch.zeros(4)) for _ in range(5)]:
            with pytest.raises(gl.ModelError, match="every lane that serves model 'affine' gave up"):
                f.result(timeout=30)


def test_a_lane_that_gave_up_tries_again_after_its_cool_down():
    with _busy_and_affine(worker_options={"max_restarts": 0, "retry_after_s": 1.0}) as rt:
        _kill_the_busy_batch(rt)
        gave_up = time.monotonic()
        with pytest.raises(gl.ModelError):
            rt.infer("affine", torch.zeros(4))  # failed at once: no lane for it now
        assert rt.lanes()[0]["broken"] or time.monotonic() - gave_up >= 1.0
        while time.monotonic() - gave_up < 1.2:
            time.sleep(0.05)
        assert not rt.lanes()[0]["broken"]
        assert torch.equal(rt.infer("affine", torch.zeros(4), timeout=120), torch.ones(4))
        assert rt.lanes()[0]["worker_pid"] > 0 and rt.lanes()[0]["worker_restarts"] == 1


def test_a_broken_lanes_models_are_served_by_their_other_lanes():
    with _busy_and_affine(cpu_lanes=2, worker_options={"max_restarts": 0}) as rt:
        _, running = _kill_busy_batch_on_lane_0(rt)
        with pytest.raises(gl.ModelError, match="SIGKILL"):
            running.result(timeout=120)
        results = [rt.submit("affine", torch.full((4,), float(i))) for i in range(300)]
        outcomes = [r.exception(timeout=60) for r in results]
        # At most the one batch that found lane 0 giving up failed; the rest went to lane 1.
        failed = [e for e in outcomes if e is not None]
        assert all("runs nothing more" in str(e) for e in failed) and len(failed) <= 8
        assert rt.lanes()[0]["broken"] and not rt.lanes()[1]["broken"]
        later = [rt.submit("affine", torch.full((4,), float(i))) for i in range(100)]
        for i, r in enumerate(later):
            assert torch.equal(r.result(timeout=60), torch.full((4,), 2.0 * i + 1))


def test_nothing_is_left_behind():
    shm_before = sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else []
    children_before = _children()
    rt = _runtime(cpu_lanes=2)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    with rt:
        assert len(_children()) == len(children_before) + 2
        os.kill(_worker_pids(rt)[0], signal.SIGKILL)
        for f in [rt.submit("affine", torch.zeros(4)) for _ in range(20)]:
            f.exception(timeout=60)  # one may have run on the killed worker
    assert _children() == children_before  # no worker, no zombie
    if os.path.isdir("/dev/shm"):
        assert sorted(os.listdir("/dev/shm")) == shm_before


def test_workers_die_with_the_runtimes_process():
    code = ("import os, sys, torch, gpulanes as gl\n"
            "sys.path.insert(0, %r)\n"
            "from conftest import Affine, scripted\n"
            "rt = gl.Runtime(device='cpu', isolation='process', cpu_lanes=2, profile_cache=False)\n"
            "rt.register('a', scripted(Affine()), slo_ms=1000, example_inputs=torch.zeros(1, 4))\n"
            "rt.start(progress=False)\n"
            "print(' '.join(str(l['worker_pid']) for l in rt.lanes()), flush=True)\n"
            "os.kill(os.getpid(), 9)\n") % str(Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2, out.stderr[-2000:]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)


def test_set_lanes_with_process_lanes_loses_nothing():
    rt = _runtime(cpu_lanes=2)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=8)
    with rt:
        with affine_load(rt, gap_s=0.002) as futures:
            old = set(_worker_pids(rt))
            rt.set_lanes([{"device": "cpu", "models": ["affine"]}])
            rt.set_lanes([{"device": "cpu", "models": ["affine"]}] * 2)
        for i, f in futures:
            assert torch.equal(f.result(timeout=60), torch.full((4,), 2.0 * i + 1))
        assert not old & set(_worker_pids(rt))  # the old lanes' workers were stopped
        assert len(futures) > 10


def test_bad_isolation_options_are_refused_naming_them():
    with pytest.raises(gl.InvalidInput, match="isolation"):
        gl.Runtime(device="cpu", isolation="processes")
    with pytest.raises(gl.InvalidInput, match="watchdog_s"):
        gl.Runtime(device="cpu", isolation="process", worker_options={"watchdog_s": 0})
    with pytest.raises(gl.InvalidInput, match="max_restarts"):
        gl.Runtime(device="cpu", isolation="process", worker_options={"max_restarts": -1})
    with pytest.raises(gl.InvalidInput, match="unknown worker_options"):
        gl.Runtime(device="cpu", isolation="process", worker_options={"watchdog": 1})
    with pytest.raises(gl.InvalidInput, match="libraries.*list"):
        gl.Runtime(device="cpu", isolation="process", worker_options={"libraries": "ops.so"})
    with pytest.raises(gl.InvalidInput, match="retry_after_s"):
        gl.Runtime(device="cpu", isolation="process", worker_options={"retry_after_s": 0})
    for bad in (0, -1, float("nan"), 1e9, "20"):
        with pytest.raises(gl.InvalidInput, match="start_timeout_s"):
            gl.Runtime(device="cpu", isolation="process", worker_options={"start_timeout_s": bad})
    with pytest.raises(gl.InvalidInput, match="is not a file"):
        gl.Runtime(device="cpu", isolation="process",
                   worker_options={"libraries": ["/nonexistent/ops.so"]})


def test_a_compiled_package_runs_in_the_worker():
    torch.manual_seed(0)
    eager = Mlp().eval()
    # The package test_formats.py compiles (the same module and max batch): cached in this run.
    package = gl.formats.compile_package(eager, torch.zeros(1, 16), max_batch_size=8, name="mlp",
                                         progress=False)
    rt = _runtime()
    rt.register("mlp", package, slo_ms=60_000, example_inputs=torch.zeros(1, 16), max_batch_size=8)
    with rt:
        assert rt.formats() == {"mlp": "aoti"}
        x = torch.randn(16)
        with torch.no_grad():
            torch.testing.assert_close(rt.infer("mlp", x), eager(x[None])[0], rtol=1e-5, atol=1e-5)


def test_a_worker_killed_while_idle_costs_no_request():
    rt = _runtime()
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    with rt:
        victim = _worker_pids(rt)[0]
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.2)
        assert torch.equal(rt.infer("affine", torch.zeros(4)), torch.ones(4))
        lane = rt.lanes()[0]
        assert lane["worker_restarts"] == 1 and lane["worker_pid"] not in (0, victim)
