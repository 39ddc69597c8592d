"""The four policies on real CPU lanes, and latency profiles (exact policy behaviour is tested on
virtual time in tests/cpp/policy_test.cpp)."""

import pytest
import torch

import gpulanes as gl
from gpulanes import workloads as wl
from conftest import Affine, Mlp, scripted


@pytest.mark.parametrize("policy, options", [
    ("deadline", {}),
    ("fifo", {}),
    ("max_delay", {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 500}),
    ("aimd", {"additive_increase": 2}),
])
def test_every_policy_serves_correct_results(policy, options):
    rt = gl.Runtime(device="cpu", policy=policy, policy_options=options, profile_reps=3)
    rt.register("affine", scripted(Affine()), slo_ms=5_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=8)
    assert rt.policy_options == {**rt.policy_options, **options}
    with rt:
        futs = [rt.submit("affine", torch.full((4,), float(i))) for i in range(300)]
        for i, f in enumerate(futs):
            assert torch.equal(f.result(timeout=60), torch.full((4,), 2.0 * i + 1.0))
        s = rt.stats()["affine"]
    assert s["met"] == 300 and s["dropped"] == 0
    sizes = s["batch_sizes"]
    assert max(sizes) <= 8
    if policy == "fifo":
        assert set(sizes) == {1}
    else:
        assert s["mean_batch_size"] > 1  # a burst of 300 gets batched


def test_start_measures_a_profile_per_batch_size():
    rt = gl.Runtime(device="cpu", profile_reps=4)
    rt.register("mlp", scripted(Mlp()), slo_ms=100, example_inputs=torch.randn(1, 16),
                max_batch_size=12)
    assert rt.profile("mlp") == []
    with rt:
        prof = rt.profile("mlp")
    assert [p["batch_size"] for p in prof] == [1, 2, 4, 8, 12]
    for p in prof:
        assert p["samples"] >= 3
        assert 0 < p["p50_us"] <= p["p99_us"]


def test_given_profile_is_used_for_admission_instead_of_measuring():
    rt = gl.Runtime(device="cpu")
    rt.register("affine", scripted(Affine()), slo_ms=5_000, example_inputs=torch.zeros(1, 4))
    rt.set_profile("affine", [{"batch_size": 1, "p50_us": 200_000},
                              {"batch_size": 32, "p50_us": 400_000}])
    with rt:
        assert [p["batch_size"] for p in rt.profile("affine")] == [1, 32]  # not re-measured
        with pytest.raises(gl.DeadlineExceeded, match="even by a batch of one"):
            rt.submit("affine", torch.zeros(4), deadline_ms=100)  # "takes" 200 ms alone
        assert torch.equal(rt.infer("affine", torch.zeros(4), deadline_ms=1_000), torch.ones(4))
    with pytest.raises(gl.InvalidInput, match="before start"):
        rt.set_profile("affine", [{"batch_size": 1, "p50_us": 1.0}])


def _lane_shares(fair: bool, factor: float):
    """bert (22 ms) and vgg16 (142 ms) on one simulated H100 lane, each offered factor x 500/s
    (about half its solo capacity each at 1x); per model its share of the lane's busy time and
    the run's summary."""
    sim = gl.sim.Simulator(gpus=1, seed=3, policy_options={"fair_share": fair}, trace=True)
    sim.add_model("bert")
    sim.add_model("vgg16")
    out = sim.run(wl.Poisson({"bert": 500 * factor, "vgg16": 470 * factor}, 4, seed=1))
    df = sim.trace_frame()
    ran = df[df.batch_id >= 0].drop_duplicates("batch_id")
    busy = (ran.end_s - ran.start_s).groupby(ran.model).sum()
    return (busy / busy.sum()).to_dict(), out["models"]


def test_fair_share_gives_the_long_slo_model_half_the_lane_under_overload():
    # EDF alone: bert always holds the earliest deadline and vgg16 starves.
    starved, edf = _lane_shares(False, 5)
    fair, models = _lane_shares(True, 5)
    assert starved["vgg16"] < 0.3
    assert 0.45 < fair["vgg16"] < 0.55 and 0.45 < fair["bert"] < 0.55
    assert models["vgg16"]["goodput"] > 2 * edf["vgg16"]["goodput"]
    for s in models.values():  # every arrival accounted for
        assert s["met"] + s["late"] + s["dropped"] + s["rejected"] + s["failed"] == s["requests"]


def test_fair_share_changes_nothing_when_the_lane_keeps_up():
    assert _lane_shares(True, 0.5) == _lane_shares(False, 0.5)
