"""The router's routing and retries (gpulanes.ray.ClusterRuntime) against stand-in replica
handles: no Ray cluster, so every failure is exact. A retriable refusal or a dead replica moves
the request to another holder while its deadline allows; anything else, or no deadline left,
reaches the client as a typed error; a replica with more in flight gets fewer new requests."""

import asyncio
import time

import pytest
import torch

pytest.importorskip("ray")
from ray.exceptions import RayActorError  # noqa: E402

import gpulanes as gl  # noqa: E402
from gpulanes.ray import ClusterRuntime  # noqa: E402
from gpulanes.serve.config import load_config  # noqa: E402
from serve_helpers import write_config  # noqa: E402


class Response:
    """What a Ray Serve handle call returns: awaitable, cancellable."""

    def __init__(self, coro):
        self.coro, self.cancelled = coro, False

    def __await__(self):
        return self.coro.__await__()

    def cancel(self):
        self.cancelled = True


class Replica:
    """A stand-in replica whose infer() does what `behave` says."""

    def __init__(self, behave):
        self.behave, self.calls = behave, 0
        outer = self

        class Method:
            def remote(self, model, inputs, deadline_ms, priority):
                outer.calls += 1
                return Response(outer.behave(model, inputs, deadline_ms, priority))
        self.infer = Method()


async def ok(model, inputs, deadline_ms, priority):
    return "ok", inputs[0] * 2


def refuse(name):
    async def fn(*args):
        return "error", (name, "no")
    return fn


async def dead(*args):
    raise RayActorError()


async def hang(*args):
    await asyncio.sleep(3600)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return load_config(write_config(tmp_path_factory.mktemp("router"), ["affine"], slo_ms=2000))


def router(cfg, **replicas):
    return ClusterRuntime(cfg, replicas, {"affine": {name: 1.0 for name in replicas}})


def infer(rt, deadline_ms=None):
    return asyncio.run(rt.infer_async("affine", torch.ones(4), deadline_ms=deadline_ms))


@pytest.mark.parametrize("failure", [refuse("Overloaded"), refuse("QueueFull"),
                                     refuse("RuntimeClosed"), refuse("UnknownModel"), dead])
def test_a_retriable_failure_moves_the_request_to_another_holder(cfg, failure):
    for _ in range(10):  # whichever the router tries first
        bad, good = Replica(failure), Replica(ok)
        rt = router(cfg, a=bad, b=good)
        assert torch.equal(infer(rt), torch.full((4,), 2.0))
        assert good.calls == 1 and bad.calls <= 1
        assert rt.counters["retries"] == bad.calls


def test_other_errors_and_exhausted_holders_reach_the_client_typed(cfg):
    model_error = Replica(refuse("ModelError"))
    rt = router(cfg, a=model_error)
    with pytest.raises(gl.ModelError):
        infer(rt)
    rt = router(cfg, a=Replica(refuse("Overloaded")), b=Replica(refuse("Overloaded")))
    with pytest.raises(gl.Overloaded):
        infer(rt)
    rt = router(cfg, a=Replica(dead))
    with pytest.raises(gl.RuntimeClosed):
        infer(rt)
    with pytest.raises(gl.UnknownModel):
        asyncio.run(rt.infer_async("nope", torch.ones(4)))


def test_a_hanging_replica_costs_half_the_deadline_then_another_serves(cfg):
    for _ in range(4):
        stuck, good = Replica(hang), Replica(ok)
        rt = router(cfg, a=stuck, b=good)
        start = time.monotonic()
        assert torch.equal(infer(rt, deadline_ms=400), torch.full((4,), 2.0))
        assert time.monotonic() - start < 0.4 + 0.5  # within the deadline (and a margin)
    rt = router(cfg, a=Replica(hang))
    start = time.monotonic()
    with pytest.raises(gl.DeadlineExceeded):
        infer(rt, deadline_ms=200)
    assert time.monotonic() - start >= 0.2


def test_the_replica_with_more_in_flight_gets_fewer_new_requests(cfg):
    import random

    random.seed(3)
    rt = router(cfg, a=Replica(ok), b=Replica(ok))

    def share_of_a(n=4000):
        return sum(rt._pick("affine", set()) == "a" for _ in range(n)) / n
    assert share_of_a() == pytest.approx(0.5, abs=0.04)  # equal shares, nothing in flight
    rt._in_flight = {"a": 20, "b": 0}
    assert share_of_a() == pytest.approx(0.25, abs=0.04)  # only when both draws are a
    rt.set_route({"affine": {"a": 9.0, "b": 1.0}})
    rt._in_flight = {"a": 0, "b": 0}
    assert share_of_a() > 0.8  # the plan's shares still lead


def test_in_flight_counts_return_to_zero_whatever_happened(cfg):
    rt = router(cfg, a=Replica(hang), b=Replica(dead), c=Replica(refuse("Overloaded")))
    for _ in range(6):
        with pytest.raises((gl.DeadlineExceeded, gl.RuntimeClosed, gl.Overloaded)):
            infer(rt, deadline_ms=60)
    assert set(rt._in_flight.values()) == {0}


def test_routes_are_checked(cfg):
    rt = router(cfg, a=Replica(ok))
    with pytest.raises(gl.InvalidInput, match="unknown replicas"):
        rt.set_route({"affine": {"zzz": 1.0}})
    rt.set_route({"affine": {"a": 0.0}})
    assert rt.models == []  # a zero share holds nothing
