"""MPS lanes and GPU process lanes on a real GPU (skipped without CUDA, or without NVIDIA MPS):
each lane a worker process; under MPS an MPS client whose active-thread percentage is its share
of the SMs. What is checked: the results, the share each lane reports and the %smid footprint
of a client with that lane's MPS settings, two lanes running at once, a killed worker costing
only its batch, and the private daemon going away at shutdown."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gpulanes as gl
from conftest import Busy, Mlp, Spin, check_outputs_kept_for_their_reader, scripted, two_lanes_at_once

pytestmark = pytest.mark.gpu
HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def needs_mps():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    running = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control")
    if not running.exists() and shutil.which("nvidia-cuda-mps-control") is None:
        pytest.skip("NVIDIA MPS unavailable: no daemon runs and nvidia-cuda-mps-control is not on PATH")


def total_sms() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def mps_runtime(shares, models, **kw):
    """A runtime with one MPS lane per (SMs, model)."""
    rt = gl.Runtime(device="cuda", partitioning="mps", profile_cache=False, warmup_rounds=1, **kw)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=60_000, example_inputs=example, max_batch_size=8)
    rt.set_lanes([{"device": 0, "sms": s, "models": [m]} for s, m in zip(shares, models)])
    return rt


def footprint(pipe_dir: str, percentage: int) -> int:
    """SMs the %smid probe's blocks reach in a process that is an MPS client with these settings
    (what the lane's worker gets in its environment)."""
    code = ("import sys, torch; sys.path.insert(0, %r); import sm_probe; "
            "s = torch.cuda.Stream(); print(len(sm_probe.sm_ids(s.cuda_stream)))" % str(HERE))
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe_dir,
           "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percentage)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


def test_mps_lanes_serve_correct_results_with_their_share():
    torch.manual_seed(0)
    mlp = scripted(Mlp())
    third = total_sms() // 3
    rt = mps_runtime((third, 2 * third), {"a": (mlp, torch.randn(1, 16)),
                                          "b": (scripted(Mlp()), torch.randn(1, 16))})
    with rt:
        lanes = rt.lanes()
        assert [l["kind"] for l in lanes] == ["cuda-mps", "cuda-mps"]
        assert [l["sms"] for l in lanes] == [third, 2 * third]
        for lane in lanes:
            assert lane["mps_thread_percentage"] == math.ceil(100 * lane["sms"] / total_sms())
            assert lane["worker_pid"] > 0 and lane["worker_pid"] != os.getpid()
            assert Path(lane["mps_pipe_dir"], "control").exists()
        assert lanes[0]["worker_pid"] != lanes[1]["worker_pid"]
        xs = torch.randn(20, 16)
        got = torch.stack([f.result(timeout=60) for f in [rt.submit("a", x) for x in xs]])
        torch.testing.assert_close(got, mlp(xs), rtol=1e-4, atol=1e-4)
        pipe_dir = lanes[0]["mps_pipe_dir"]
    if Path(pipe_dir).parent.name.startswith("gpulanes-mps-"):  # the runtime's own daemon
        assert not Path(pipe_dir).exists(), "the private MPS daemon outlived the runtime"


def test_an_mps_lanes_footprint_stays_within_its_share():
    quarter = total_sms() // 4
    rt = mps_runtime((quarter, total_sms() - quarter),
                     {"a": (scripted(Mlp()), torch.randn(1, 16)),
                      "b": (scripted(Mlp()), torch.randn(1, 16))})
    with rt:
        lane = rt.lanes()[0]
        small = footprint(lane["mps_pipe_dir"], lane["mps_thread_percentage"])
        whole = footprint(lane["mps_pipe_dir"], 100)
    share = math.ceil(lane["mps_thread_percentage"] * total_sms() / 100)
    assert whole >= 0.9 * total_sms()  # the probe reaches every SM when allowed
    assert small <= share + 2, (small, share)  # MPS rounds to pairs of SMs (TPCs)
    assert small >= 0.5 * share, (small, share)


def test_two_mps_lanes_run_batches_at_the_same_time():
    half = total_sms() // 2
    busy = scripted(Busy(40, size=1024))
    rt = mps_runtime((half, half), {"a": (busy, torch.zeros(1, 4)), "b": (busy, torch.zeros(1, 4))})
    with rt:
        alone, both = two_lanes_at_once(rt)
    assert both < 1.5 * alone, (alone, both)


def test_a_killed_mps_worker_fails_only_its_batch():
    # The busy batch spins as many rounds as its input says: profiling and warm-up (zeros) are
    # quick, and the request below keeps its worker busy for seconds on any GPU (200,000 rounds
    # take longer than launching their kernels), so the kill lands while the batch runs.
    half = total_sms() // 2
    rt = mps_runtime((half, half), {"busy": (scripted(Spin()), torch.zeros(1, 4)),
                                    "mlp": (scripted(Mlp()), torch.randn(1, 16))})
    with rt:
        victim = rt.lanes()[0]["worker_pid"]
        running = rt.submit("busy", torch.full((4,), 200_000.0))
        time.sleep(0.5)
        assert not running.done(), "the long batch ended before the kill"
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(gl.ModelError, match="SIGKILL"):
            running.result(timeout=120)
        for f in [rt.submit("mlp", torch.randn(16)) for _ in range(50)]:
            assert f.result(timeout=60).shape == (8,)
        assert rt.infer("busy", torch.zeros(4)).tolist() == [1.0] * 4  # a new worker
        assert rt.lanes()[0]["worker_restarts"] == 1


def test_gpu_process_lanes_keep_outputs_on_the_device_when_asked():
    torch.manual_seed(0)
    mlp = scripted(Mlp())
    rt = gl.Runtime(device="cuda", isolation="process", output_device="cuda",
                    profile_cache=False, warmup_rounds=1)
    rt.register("a", mlp, slo_ms=60_000, example_inputs=torch.randn(1, 16))
    with rt:
        assert rt.lanes()[0]["kind"] == "cuda-process"
        x = torch.randn(16, device="cuda")
        y = rt.infer("a", x)
        assert y.is_cuda
        torch.testing.assert_close(y.cpu(), mlp(x.cpu().unsqueeze(0))[0], rtol=1e-4, atol=1e-4)


def test_gpu_process_lane_outputs_are_not_reused_while_the_submitter_stream_reads_them():
    check_outputs_kept_for_their_reader(isolation="process", warmup_rounds=1)


def test_green_partitions_are_refused_for_process_lanes():
    rt = gl.Runtime(device="cuda", isolation="process", partitioning="green", profile_cache=False)
    rt.register("a", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.randn(1, 16))
    with pytest.raises(gl.InvalidInput, match="MPS"):
        rt.set_lanes([{"device": 0, "sms": 16, "models": ["a"]}])
        rt.start(progress=False)
    rt.shutdown()
