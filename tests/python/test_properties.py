"""Property-based tests (hypothesis): input validation never lets a bad request in nor a good
one out, and over random arrival streams every policy accounts for every request while the
deadline policy never starts a request after its deadline."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpulanes as gl
from conftest import TwoInputsTupleOut, scripted

_rt = None


def runtime():
    """One runtime for every example (hypothesis runs the test body many times)."""
    global _rt
    if _rt is None:
        _rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
        _rt.register("two", scripted(TwoInputsTupleOut()), slo_ms=60_000,
                     example_inputs=(torch.randn(1, 4, 6), torch.ones(1, 4, dtype=torch.int64)))
        _rt.start(progress=False)
    return _rt


DTYPES = [torch.float32, torch.float64, torch.int64, torch.int32, torch.bool, torch.float16]
shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)
tensors = st.builds(lambda s, d: torch.zeros(s, dtype=d), shapes, st.sampled_from(DTYPES))
junk = st.one_of(st.none(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3),
                 st.lists(st.integers(), max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(tensors, junk), min_size=0, max_size=3),
       st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=2)))
def test_submit_accepts_exactly_the_valid_requests(inputs, deadline_ms):
    rt = runtime()
    valid_inputs = (len(inputs) == 2 and all(isinstance(t, torch.Tensor) for t in inputs)
                    and inputs[0].shape == (4, 6) and inputs[0].dtype == torch.float32
                    and inputs[1].shape == (4,) and inputs[1].dtype == torch.int64)
    valid_deadline = deadline_ms is None or (
        isinstance(deadline_ms, float) and math.isfinite(deadline_ms) and 0 < deadline_ms < 1e9)
    try:
        fut = rt.submit("two", *inputs, deadline_ms=deadline_ms)
    except (gl.InvalidInput, gl.DeadlineExceeded) as e:
        assert not (valid_inputs and valid_deadline), e
        return
    assert valid_inputs and valid_deadline
    try:
        y, s = fut.result(timeout=60)
        assert y.shape == (4, 3) and s.shape == (4,)
    except gl.DeadlineExceeded:
        assert deadline_ms is not None and deadline_ms < 100  # too tight to make


@settings(max_examples=25, deadline=None)
@given(policy=st.sampled_from(["deadline", "fifo", "max_delay", "aimd"]),
       rates=st.tuples(st.floats(10, 3000), st.floats(10, 3000)),
       cv=st.sampled_from([1.0, 2.0, 4.0]), seed=st.integers(0, 10_000),
       queue=st.sampled_from([4, 64, 100_000]))
def test_every_policy_accounts_for_every_request(policy, rates, cv, seed, queue):
    sim = gl.sim.Simulator(gpus=1, seed=seed, policy=policy, noise_cv=0.0, trace=True)
    sim.add_model("resnet50", max_queue=queue)
    sim.add_model("bert", max_queue=queue)
    sim.set_lanes([{"gpu": 0, "sms": 132, "models": ["resnet50", "bert"]}])
    work = gl.workloads.Gamma({"resnet50": rates[0], "bert": rates[1]}, cv, 2.0, seed=seed)
    out = sim.run(work)
    times, _, _ = work.arrays()
    total = 0
    for s in out["models"].values():
        assert s["met"] + s["late"] + s["dropped"] + s["rejected"] + s["failed"] == s["requests"]
        total += s["requests"]
    assert total == len(times)
    for s in sim.stats().values():
        assert s["in_flight"] == 0
        assert s["submitted"] == s["met"] + s["missed"] + s["dropped"] + s["rejected"] + s["failed"]
    if policy == "deadline":
        df = sim.trace_frame()
        ran = df[df["start_s"].notna()]
        assert (ran["start_s"] <= ran["deadline_s"]).all()  # it never starts what already missed
