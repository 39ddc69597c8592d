"""A request's result depends on its own input only: a bad input fails only its own request
(the rest of its batch is re-run), the input is the runtime's own copy once submit returns, and
each output is memory of its own rather than a view that keeps the whole batch alive."""

import pytest
import torch

import gpulanes as gl
from conftest import Affine, Busy, Picky, scripted


def runtime(**models):
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("busy", scripted(Busy(300)), slo_ms=60_000, example_inputs=torch.zeros(1, 3),
                max_batch_size=1)
    for name, (module, batch) in models.items():
        rt.register(name, scripted(module), slo_ms=60_000, example_inputs=torch.zeros(1, 3),
                    max_batch_size=batch, max_queue=100_000)
    return rt.start()


def test_one_bad_input_fails_only_its_own_request():
    # Used to fail every request of its batch (2,693 of 2,700 good requests in a 1-in-10 mix).
    rt = runtime(picky=(Picky(), 16))
    with rt:
        rt.submit("busy", torch.zeros(3))  # the lane is busy: the next 160 queue into batches
        xs = [torch.full((3,), -1.0 if i % 10 == 3 else float(i)) for i in range(160)]
        futs = [rt.submit("picky", x) for x in xs]
        for i, (x, f) in enumerate(zip(xs, futs)):
            if x[0] < 0:
                with pytest.raises(gl.ModelError, match="negative input"):
                    f.result(timeout=120)
            else:
                assert torch.equal(f.result(timeout=120), x + 1.0), i
        s = rt.stats()["picky"]
    assert s["failed"] == 16 and s["met"] == 144 and s["in_flight"] == 0
    assert max(s["batch_sizes"]) > 1  # batches did form
    assert s["reruns"] > 0


def test_a_batch_that_fails_for_everyone_fails_everyone():
    rt = runtime(picky=(Picky(), 8))
    with rt:
        rt.submit("busy", torch.zeros(3))
        futs = [rt.submit("picky", torch.full((3,), -1.0)) for _ in range(24)]
        for f in futs:
            with pytest.raises(gl.ModelError, match="negative input"):
                f.result(timeout=120)
        assert rt.stats()["picky"]["failed"] == 24


def test_changing_an_input_after_submit_does_not_change_its_result():
    rt = runtime(affine=(Affine(), 8))
    with rt:
        rt.submit("busy", torch.zeros(3))  # keeps the request queued while we change its input
        x = torch.ones(3)
        fut = rt.submit("affine", x)
        x.fill_(100.0)
        assert torch.equal(fut.result(timeout=60), torch.full((3,), 3.0))


def test_each_output_is_memory_of_its_own():
    rt = runtime(affine=(Affine(), 16))
    with rt:
        rt.submit("busy", torch.zeros(3))
        futs = [rt.submit("affine", torch.full((3,), float(i))) for i in range(16)]
        ys = [f.result(timeout=60) for f in futs]
        assert max(rt.stats()["affine"]["batch_sizes"]) > 1
    for i, y in enumerate(ys):
        assert torch.equal(y, torch.full((3,), 2.0 * i + 1.0))
        assert y.untyped_storage().nbytes() == y.numel() * y.element_size()  # not the batch's


def test_a_refused_nested_input_leaves_nothing_in_flight():
    rt = runtime(affine=(Affine(), 8))
    with rt:
        nested = torch.nested.nested_tensor([torch.ones(3), torch.ones(3)])
        with pytest.raises(gl.InvalidInput, match="nested"):
            rt.submit("affine", nested)
        s = rt.stats()["affine"]
        assert s["in_flight"] == 0 and s["rejected"] == 1
