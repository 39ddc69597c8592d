"""End-to-end checks on CUDA lanes (skipped without a CUDA GPU)."""

import asyncio
import threading

import pytest
import torch

import gpulanes as gl
from conftest import Mlp, TwoInputsTupleOut, check_outputs_kept_for_their_reader, scripted

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_rt():
    torch.manual_seed(0)
    mlp = scripted(Mlp())
    rt = gl.Runtime(device="cuda")
    rt.register("mlp", mlp, slo_ms=10_000, example_inputs=torch.randn(1, 16))
    rt.register("two", scripted(TwoInputsTupleOut()), slo_ms=10_000,
                example_inputs=(torch.randn(1, 4, 6), torch.ones(1, 4, dtype=torch.int64)))
    with rt:
        yield rt, mlp


def test_cuda_lanes_exist(cuda_rt):
    rt, _ = cuda_rt
    lanes = rt.lanes()
    assert lanes and all(l["device"].startswith("cuda:") for l in lanes)
    assert len(lanes) == torch.cuda.device_count()


def test_cuda_outputs_match_direct_call_and_come_back_on_cpu(cuda_rt):
    rt, mlp = cuda_rt
    xs = [torch.randn(16) for _ in range(300)]
    futs = [rt.submit("mlp", x) for x in xs]
    with torch.inference_mode():
        want = mlp(torch.stack(xs))
    for i, f in enumerate(futs):
        y = f.result(timeout=60)
        assert y.device.type == "cpu"
        torch.testing.assert_close(y, want[i], rtol=1e-4, atol=1e-4)
    y, s = rt.infer("two", torch.randn(4, 6), torch.tensor([1, 0, 1, 1]))
    assert y.shape == (4, 3) and torch.all(y[1] == 0)


def test_cuda_threads_resolve_exactly_once(cuda_rt):
    rt, mlp = cuda_rt
    results, lock = {}, threading.Lock()

    def worker(t):
        futs = [(t * 500 + i, rt.submit("mlp", torch.full((16,), float(t * 500 + i) / 1000)))
                for i in range(500)]
        for k, f in futs:
            y = f.result(timeout=120)
            with lock:
                results[k] = y

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert len(results) == 4000
    with torch.inference_mode():
        for k in (0, 1234, 3999):
            torch.testing.assert_close(results[k], mlp(torch.full((1, 16), k / 1000))[0],
                                       rtol=1e-4, atol=1e-4)


def test_cuda_asyncio(cuda_rt):
    rt, _ = cuda_rt

    async def main():
        return await asyncio.gather(*(rt.infer_async("mlp", torch.randn(16)) for _ in range(1000)))
    assert len(asyncio.run(main())) == 1000


def test_cuda_output_device_keeps_outputs_on_gpu():
    rt = gl.Runtime(device="cuda", output_device="cuda")
    rt.register("mlp", scripted(Mlp()), slo_ms=10_000, example_inputs=torch.randn(1, 16))
    with rt:
        y = rt.infer("mlp", torch.randn(16))
        assert y.is_cuda
        y2 = rt.infer("mlp", torch.randn(16, device="cuda"))  # CUDA inputs are accepted too
        assert y2.is_cuda


def test_gpu_inputs_are_read_after_the_submitter_stream_made_them(cuda_rt):
    # The input is written on a side stream behind ~50 ms of spinning; a lane that did not wait
    # for that stream would stack whatever the memory held before.
    rt, mlp = cuda_rt
    side = torch.cuda.Stream()
    value = float(torch.randint(1, 1000, ()).item())
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)
        x = torch.empty(16, device="cuda").fill_(value)
        fut = rt.submit("mlp", x)
    y = fut.result(timeout=60)
    with torch.inference_mode():
        torch.testing.assert_close(y, mlp(torch.full((1, 16), value))[0], rtol=1e-4, atol=1e-4)


def test_gpu_outputs_are_not_reused_while_the_submitter_stream_reads_them():
    check_outputs_kept_for_their_reader()


def test_inputs_that_cannot_be_stacked_are_refused_at_submit(cuda_rt):
    rt, _ = cuda_rt
    with pytest.raises(gl.InvalidInput, match="device meta"):
        rt.submit("mlp", torch.empty(16, device="meta"))


def test_cuda_model_error_and_bad_input(cuda_rt):
    rt, _ = cuda_rt
    with pytest.raises(gl.InvalidInput):
        rt.submit("mlp", torch.randn(15))
    with pytest.raises(gl.DeadlineExceeded):
        rt.submit("mlp", torch.randn(16), deadline_ms=-1)


def test_cuda_profiles_carry_event_timed_device_time(cuda_rt):
    rt, _ = cuda_rt
    for point in rt.profile("mlp"):
        # CUDA events bracket copies and forward on the lane's stream: positive, and no longer
        # than the lane's wall time for the same runs (which adds stacking and launches).
        assert 0 < point["device_p50_us"] <= point["p50_us"] * 1.05
    assert rt.stats()["mlp"]["exec_ms"]["count"] > 0
