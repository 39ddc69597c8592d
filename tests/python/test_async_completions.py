"""infer_async's outcomes reach the event loop through a native queue and an eventfd, not the
delivery thread: every awaited request resolves once with its own result or typed error,
cancelled waiters and closed loops leave nothing behind, and a loop that cannot watch a file
descriptor falls back to the delivery thread."""

import asyncio

import pytest
import torch

import gpulanes as gl
from conftest import Picky, busy_runtime, scripted


@pytest.fixture(scope="module")
def picky_rt():
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_cache=False)
    rt.register("picky", scripted(Picky()), slo_ms=60_000, example_inputs=torch.ones(2, 4),
                max_batch_size=8)
    rt.start()
    yield rt
    rt.shutdown()


def test_results_and_model_errors_each_reach_their_own_awaiter(picky_rt):
    async def one(i):
        x = torch.full((4,), float(i if i % 7 else -i - 1))  # every 7th input makes it raise
        try:
            return i, await picky_rt.infer_async("picky", x)
        except gl.ModelError as e:
            return i, e

    async def main():
        return await asyncio.gather(*(one(i) for i in range(300)))

    for i, out in asyncio.run(main()):
        if i % 7:
            assert torch.equal(out, torch.full((4,), i + 1.0))
        else:
            assert isinstance(out, gl.ModelError)
    assert picky_rt.stats()["picky"]["in_flight"] == 0


def test_refusals_raise_at_once_and_queue_nothing(picky_rt):
    async def main():
        with pytest.raises(gl.InvalidInput):
            await picky_rt.infer_async("picky", torch.zeros(5))
        with pytest.raises(gl.UnknownModel):
            await picky_rt.infer_async("nope", torch.zeros(4))
        with pytest.raises(gl.DeadlineExceeded):
            await picky_rt.infer_async("picky", torch.ones(4), deadline_ms=-1)
        from gpulanes._futures import _loop_completions
        return len(_loop_completions[asyncio.get_running_loop()].pending)
    assert asyncio.run(main()) == 0


def test_a_cancelled_waiter_and_a_closed_loop_leave_the_runtime_serving():
    rt = busy_runtime(iters=300)
    try:
        async def cancel_some():
            tasks = [asyncio.ensure_future(rt.infer_async("busy", torch.zeros(4)))
                     for _ in range(6)]
            await asyncio.sleep(0)
            for t in tasks[::2]:
                t.cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            return sum(isinstance(d, asyncio.CancelledError) for d in done)
        assert asyncio.run(cancel_some()) == 3

        async def leave_running():  # the loop ends with requests in flight
            for _ in range(4):
                asyncio.ensure_future(rt.infer_async("busy", torch.zeros(4)))
            await asyncio.sleep(0)
        asyncio.run(leave_running())

        async def again():
            return await rt.infer_async("busy", torch.zeros(4))
        assert torch.equal(asyncio.run(again()), torch.ones(4))
        assert rt.stats()["busy"]["in_flight"] == 0
    finally:
        rt.shutdown()


def test_shutdown_without_drain_fails_every_awaiter_once():
    rt = busy_runtime(iters=400)

    async def main():
        tasks = [asyncio.ensure_future(rt.infer_async("busy", torch.zeros(4))) for _ in range(8)]
        await asyncio.sleep(0.05)
        await asyncio.to_thread(rt.shutdown, False)
        return await asyncio.gather(*tasks, return_exceptions=True)
    out = asyncio.run(main())
    assert len(out) == 8
    assert all(isinstance(o, torch.Tensor) or isinstance(o, gl.RuntimeClosed) for o in out)
    assert any(isinstance(o, gl.RuntimeClosed) for o in out)


class NoReaderLoop(asyncio.SelectorEventLoop):
    def add_reader(self, *args):
        raise NotImplementedError("this loop cannot watch file descriptors")


def test_a_loop_without_add_reader_falls_back_to_the_delivery_thread(picky_rt):
    loop = NoReaderLoop()
    try:
        y = loop.run_until_complete(picky_rt.infer_async("picky", torch.full((4,), 2.0)))
        assert torch.equal(y, torch.full((4,), 3.0))
        from gpulanes._futures import _loop_completions
        assert _loop_completions[loop] is None
    finally:
        loop.close()
