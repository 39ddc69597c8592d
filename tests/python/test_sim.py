"""gpulanes.sim from Python: the load driver's summary, layouts and their errors, determinism,
measured profiles loaded unchanged, and the gpu-let scenarios end to end."""

import pytest
import torch

import gpulanes as gl
from gpulanes import workloads as wl
from conftest import Busy, scripted


def small_sim(**kw):
    sim = gl.sim.Simulator(gpus=2, seed=3, **kw)
    sim.add_model("resnet50")
    sim.add_model("bert")
    sim.set_lanes([{"gpu": 0, "sms": 66, "models": ["resnet50"]},
                   {"gpu": 0, "sm_share": 0.5, "models": ["bert"]},
                   {"gpu": 1, "sms": 132, "models": ["resnet50", "bert"]}])
    return sim


def test_run_returns_the_drivers_summary_and_accounts_for_every_arrival():
    sim = small_sim()
    work = wl.Poisson({"resnet50": 900, "bert": 500}, 10, seed=1)
    times, models, names = work.arrays()
    out = sim.run(work, warmup_s=1)
    assert set(out) >= {"models", "duration_s", "warmup_s", "submit_lateness_ms", "simulator"}
    for i, name in enumerate(names):
        s = out["models"][name]
        assert s["requests"] == int(((models == i) & (times >= 1)).sum())
        assert s["met"] + s["late"] + s["dropped"] + s["rejected"] + s["failed"] == s["requests"]
        assert 0.9 < s["attainment"] <= 1 and 0 < s["p50_ms"] <= s["p99_ms"] <= sim._models[name]["slo_ms"] * 2
        assert s["goodput"] == pytest.approx(s["met"] / 9)
    assert out["simulator"]["arrivals"] == len(times)
    stats = sim.stats()
    assert sum(v["submitted"] for v in stats.values()) == len(times)
    lanes = sim.stats(per="lane")
    assert [l["sms"] for l in lanes.values()] == [66, 66, 132]
    # Lanes 0 and 1 share GPU 0 and slow each other down; lane 2 is alone on GPU 1.
    assert lanes[0]["mean_slowdown"] > 1.01 and lanes[1]["mean_slowdown"] > 1.01
    assert lanes[2]["mean_slowdown"] == pytest.approx(1.0)
    assert lanes[0]["batches_by_model"] == {"resnet50": lanes[0]["batches"]}


def test_interference_choice_matters_and_none_means_solo_speed():
    work = wl.Poisson({"resnet50": 900, "bert": 500}, 5, seed=2)
    slow = {}
    for kind in ("none", "linear", "nonlinear"):
        sim = small_sim(interference=kind)
        sim.run(work)
        slow[kind] = sim.stats(per="lane")[0]["mean_slowdown"]
    assert slow["none"] == pytest.approx(1.0)
    assert slow["linear"] > 1.02 and slow["nonlinear"] > 1.01 and slow["linear"] != slow["nonlinear"]


def test_same_seed_same_trace_other_seed_other_trace():
    work = wl.Gamma({"resnet50": 700, "bert": 400}, 2.0, 3, seed=5)

    def frame(seed):
        sim = gl.sim.Simulator(gpus=1, seed=seed, noise_cv=0.1, trace=True)
        sim.add_model("resnet50")
        sim.add_model("bert")
        sim.run(work)
        return sim.trace_frame()

    a, b, c = frame(1), frame(1), frame(2)
    assert len(a) == len(work.as_list()) and a.equals(b)
    assert not a[["start_s", "end_s"]].equals(c[["start_s", "end_s"]])
    assert (a["arrival_s"] >= 0).all() and (a["arrival_s"] < 3).all()


def test_layout_errors_are_clear():
    sim = gl.sim.Simulator(gpus=1, memory_gb=1.0)
    sim.add_model("resnet50")
    sim.add_model("vgg16")
    with pytest.raises(gl.UnknownModel, match="not added"):
        sim.set_lanes([{"gpu": 0, "sms": 66, "models": ["nope"]}])
    with pytest.raises(gl.InvalidInput, match="no GPU 3"):
        sim.set_lanes([{"gpu": 3, "sms": 66, "models": ["vgg16"]}])
    with pytest.raises(gl.InvalidInput, match="1..132"):
        sim.set_lanes([{"gpu": 0, "sms": 200, "models": ["vgg16"]}])
    sim.set_lanes([{"gpu": 0, "sms": 100, "models": ["vgg16"]},
                   {"gpu": 0, "sms": 100, "models": ["resnet50"]}])
    work = wl.Poisson({"vgg16": 10}, 1)
    with pytest.raises(gl.InvalidInput, match="SMs"):
        sim.run(work)
    sim.set_lanes([{"gpu": 0, "sms": 66, "models": ["vgg16"]},
                   {"gpu": 0, "sms": 66, "models": ["resnet50"]}])
    with pytest.raises(gl.InvalidInput, match="GB"):  # 1.3 GB + 0.4 GB on a 1 GB GPU
        sim.run(work)
    with pytest.raises(gl.UnknownModel, match="not added"):
        small_sim().run(wl.Poisson({"lenet": 10}, 1))
    with pytest.raises(TypeError, match="open-loop"):
        small_sim().run(wl.ClosedLoop(clients=2, models=["bert"], duration_s=1))
    with pytest.raises(gl.UnknownModel, match="no profile"):
        small_sim().add_model("alexnet")


def test_a_model_on_no_lane_is_rejected_not_lost():
    sim = gl.sim.Simulator(gpus=1)
    sim.add_model("resnet50")
    sim.add_model("bert")
    sim.set_lanes([{"gpu": 0, "sms": 132, "models": ["resnet50"]}])
    out = sim.run(wl.Poisson({"resnet50": 100, "bert": 100}, 2, seed=1))
    assert out["models"]["bert"]["rejected"] == out["models"]["bert"]["requests"] > 0
    assert out["models"]["resnet50"]["attainment"] == 1.0


def test_measured_runtime_profile_loads_into_the_simulator_unchanged(tmp_path):
    rt = gl.Runtime(device="cpu", profile_cache=False, profile_reps=3, warmup_rounds=1)
    rt.register("busy", scripted(Busy(20)), slo_ms=1_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=4)
    with rt:
        rt.save_profiles(tmp_path / "cpu.json")
        measured = {p["batch_size"]: p["p50_us"] for p in rt.profile("busy")}
    sim = gl.sim.Simulator(gpus=1, profile=tmp_path / "cpu.json", interference="none",
                           noise_cv=0.0, trace=True)
    sim.add_model("busy", slo_ms=1_000)
    sim.run(wl.Steps([(1.0, {"busy": 2})], seed=0))  # sparse: every batch runs alone
    df = sim.trace_frame()
    assert (df["batch_size"] == 1).all() and len(df) > 0
    ran = (df["end_s"] - df["start_s"]) * 1e6
    assert ran.round(0).eq(round(measured[1])).all()


@pytest.mark.parametrize("name", ["game", "traffic", "scen1", "scen2", "scen3", "scen4", "scen5"])
def test_gpulet_scenarios_run_end_to_end(name):
    sim = gl.sim.Simulator(gpus=4, seed=0)
    scn = sim.add_scenario(name)
    low = scn.loads[0]
    out = sim.run(scn.workload(low, 3, seed=1), warmup_s=0.5)
    assert set(out["models"]) == set(scn.models)
    for s in out["models"].values():
        assert s["requests"] > 0 and s["attainment"] > 0.95


def test_drift_raises_the_slowdown_after_it_starts():
    def mean_slowdown(interference):
        sim = small_sim(interference=interference)
        sim.run(wl.Poisson({"resnet50": 900, "bert": 500}, 4, seed=2))
        return sim.stats(per="lane")[0]["mean_slowdown"]

    base = mean_slowdown("linear")
    drifted = mean_slowdown(gl.sim.drift("linear", start_s=2.0, scale=3.0))
    # Tripled excess over half the run: about (0.5 x 1 + 0.5 x 3) = 2x the excess slow-down.
    assert 1.6 < (drifted - 1) / (base - 1) < 2.4
    with pytest.raises(gl.InvalidInput, match="interference"):
        gl.sim.Simulator(interference="quadratic")


def test_zoo_profiles_follow_the_schema_and_their_stated_model():
    doc = gl.sim.zoo.profiles()
    assert doc["source"] == "synthetic"
    entries = gl.profiles.find(doc, "resnet50")
    assert sorted(e["sm_share"] for e in entries) == list(gl.sim.zoo.SHARES)
    full = gl.profiles.find(doc, "resnet50", sm_share=1.0)[0]
    assert full["points"][0]["p50_us"] == pytest.approx(gl.sim.zoo.MODELS["resnet50"]["L1"] * 1e3)
    assert [p["batch_size"] for p in full["points"]] == list(range(1, 33))
    # Fewer SMs never make a batch faster.
    for b in (1, 8, 32):
        lat = [gl.sim.zoo.latency_ms("bert", b, s) for s in gl.sim.zoo.SHARES]
        assert lat == sorted(lat, reverse=True)
