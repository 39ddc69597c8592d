"""Workloads are reproducible and have the statistics they claim; the driver accounts for all."""

import statistics

import pytest
import torch

import gpulanes as gl
from gpulanes import workloads as wl
from conftest import Affine, scripted


def _gaps(stream, model):
    times = [t for t, m in stream if m == model]
    return [b - a for a, b in zip(times, times[1:])]


def test_same_seed_same_stream_other_seed_other_stream():
    a = wl.Poisson({"x": 50, "y": 20}, 10, seed=3).as_list()
    assert a == wl.Poisson({"x": 50, "y": 20}, 10, seed=3).as_list()
    assert a != wl.Poisson({"x": 50, "y": 20}, 10, seed=4).as_list()
    assert all(t0 <= t1 for (t0, _), (t1, _) in zip(a, a[1:]))
    assert {m for _, m in a} == {"x", "y"}


def test_poisson_rate_and_gap_cv():
    s = wl.Poisson({"x": 200.0}, 100.0, seed=1).as_list()
    n = len(s)
    assert abs(n - 20_000) < 5 * 20_000 ** 0.5  # within 5 sigma
    g = _gaps(s, "x")
    assert abs(statistics.pstdev(g) / statistics.mean(g) - 1.0) < 0.05


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_rate_and_cv(cv):
    s = wl.Gamma({"x": 500.0}, cv, 60.0, seed=2).as_list()
    g = _gaps(s, "x")
    assert abs(len(s) / 60.0 - 500.0) / 500.0 < 0.1
    assert abs(statistics.pstdev(g) / statistics.mean(g) - cv) / cv < 0.1


def test_steps_and_ramp_follow_their_rates():
    s = wl.Steps([(10.0, {"x": 100.0}), (10.0, {"x": 400.0})], seed=5).as_list()
    first = sum(t < 10 for t, _ in s)
    second = len(s) - first
    assert abs(first - 1000) < 5 * 1000 ** 0.5 and abs(second - 4000) < 5 * 4000 ** 0.5
    r = wl.Ramp({"x": 0.0}, {"x": 400.0}, 20.0, seed=5).as_list()
    halves = [sum(t < 10 for t, _ in r), sum(t >= 10 for t, _ in r)]
    # expected 1000 and 3000 (a linear rate from 0 to 400/s over 20 s)
    assert abs(halves[0] - 1000) < 5 * 1000 ** 0.5 and abs(halves[1] - 3000) < 5 * 3000 ** 0.5


def test_azure_trace_replay(tmp_path):
    csv = tmp_path / "invocations_per_function_md.anon.d01.csv"
    header = "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 1441))
    counts_a = [600, 0, 1200] + [0] * 1437
    counts_b = [60] * 1440
    csv.write_text("\n".join([
        header,
        "o,a,fnA,http," + ",".join(map(str, counts_a)),
        "o,a,fnB,timer," + ",".join(map(str, counts_b)),
        "o,a,fnC,http," + ",".join(["7"] * 1440),  # not mapped: ignored
    ]) + "\n")
    t = wl.AzureTrace(csv, {"fnA": "resnet", "fnB": "bert"}, scale=2.0, minutes=(1, 3), seed=9)
    s = t.as_list()
    assert t.duration_s == 180.0 and s == t.as_list()
    per_minute = [sum(1 for tt, m in s if m == "resnet" and 60 * k <= tt < 60 * (k + 1))
                  for k in range(3)]
    assert per_minute[1] == 0
    assert abs(per_minute[0] - 1200) < 5 * 1200 ** 0.5 and abs(per_minute[2] - 2400) < 5 * 2400 ** 0.5
    assert abs(sum(m == "bert" for _, m in s) - 360) < 5 * 360 ** 0.5
    with pytest.raises(ValueError, match="not found"):
        wl.AzureTrace(csv, {"nope": "x"})


@pytest.fixture
def small_rt():
    rt = gl.Runtime(device="cpu", profile_reps=3)
    rt.register("a", scripted(Affine()), slo_ms=500, example_inputs=torch.zeros(1, 4))
    rt.register("b", scripted(Affine()), slo_ms=500, example_inputs=torch.zeros(1, 4))
    with rt:
        yield rt


def test_drive_open_loop_accounts_for_every_arrival(small_rt):
    work = wl.Poisson({"a": 150.0, "b": 50.0}, 1.5, seed=7)
    expected = {m: sum(1 for _, mm in work.as_list() if mm == m) for m in ("a", "b")}
    out = wl.drive(small_rt, work, {"a": (torch.zeros(4),), "b": lambda: (torch.ones(4),)})
    stats = small_rt.stats()
    for m in ("a", "b"):
        s = out["models"][m]
        assert s["requests"] == expected[m] == stats[m]["submitted"]
        assert s["met"] + s["late"] + s["dropped"] + s["rejected"] + s["failed"] == s["requests"]
        assert s["attainment"] == 1.0 and s["p50_ms"] <= s["p99_ms"] < 500
    assert out["submit_lateness_ms"]["p50"] < 5


def test_drive_closed_loop_and_deadline_override(small_rt):
    out = wl.drive(small_rt, wl.ClosedLoop(clients=3, models=["a", "b"], duration_s=0.5,
                                           think_s=0.002, seed=1),
                   {"a": (torch.zeros(4),), "b": (torch.zeros(4),)}, deadline_ms={"a": 250})
    total = sum(s["requests"] for s in out["models"].values())
    assert total > 20
    assert all(s["failed"] == 0 for s in out["models"].values())
    assert sum(s["submitted"] for s in small_rt.stats().values()) == total
