"""The planner: its plans fit the GPUs and meet every SLO under predicted interference, use the
fewest GPUs where exhaustive search knows the optimum, scale with load, say when load exceeds
what the GPUs can serve, round-trip through JSON, and hold their SLOs when simulated."""

import functools
import json
import random

import pytest

import gpulanes as gl
from gpulanes.sim import zoo

MODELS = ("lenet", "googlenet", "resnet50", "vgg16", "mobilenet_v2", "bert")


def simulator(gpus=8, **kw):
    sim = gl.sim.Simulator(gpus=gpus, seed=0, **kw)
    for m in MODELS:
        sim.add_model(m)
    return sim


def test_random_plans_fit_their_gpus_and_meet_every_slo():
    sim = simulator()
    rng = random.Random(3)
    for _ in range(40):
        rates = {m: rng.choice([0, 50, 200, 800, 2000]) for m in rng.sample(MODELS, 3)}
        for variant in ("spatiotemporal", "temporal_only"):
            plan = sim.plan(rates, variant)
            assert plan["meets_slos"], (variant, rates)
            assert plan["gpus_used"] <= 8
            for g in range(plan["gpus_used"]):
                assert sum(l["sms"] for l in plan["lanes"] if l["gpu"] == g) <= 132
            assert all(len(l["models"]) <= 3 for l in plan["lanes"])
            if plan["feasible"]:
                for m, r in rates.items():
                    planned = sum(pm["rate"] for l in plan["lanes"] for pm in l["models"]
                                  if pm["model"] == m)
                    assert planned == pytest.approx(plan["planned_rate"][m], rel=1e-6)
                    assert planned >= r  # sized for its burst, with headroom
            if variant == "temporal_only":
                assert all(l["sms"] == 132 for l in plan["lanes"])


def saturated_capacity(model, sms):
    share, slo = sms / 132, zoo.SLO_MS[model]
    for b in range(32, 0, -1):
        lat = zoo.latency_ms(model, b, share) * 1.1
        if 2 * lat <= slo:
            return b / (lat / 1e3)
    return 0.0


@pytest.mark.parametrize("model", ["resnet50", "vgg16", "lenet"])
def test_single_model_uses_the_fewest_gpus_exhaustive_search_finds(model):
    # Without interference, the most one GPU can serve of one model is the best split of its
    # 132 SMs into lanes of 8-SM steps (exhaustive search); n GPUs serve n times that.
    @functools.lru_cache(None)
    def best(units):
        if units == 0:
            return 0.0
        return max(saturated_capacity(model, 132 if 8 * k >= 132 else 8 * k) + best(units - k)
                   for k in range(1, units + 1))

    per_gpu = max(best(16), saturated_capacity(model, 132))
    sim = simulator()
    for gpus_needed in (1, 2, 3):
        rate = (gpus_needed - 0.5) * per_gpu
        # The planner's arithmetic alone: mean rate (cv 0), no spreading, no simulation.
        plan = sim.plan({model: rate}, "no_interference", cv=0, spread=False, check=False)
        assert plan["feasible"] and plan["gpus_used"] == gpus_needed


def test_gpus_grow_with_load_and_overload_is_reported():
    sim = simulator(gpus=4)
    used = [sim.plan({"resnet50": r, "bert": r / 2}, check=False)["gpus_needed"]
            for r in (500, 2000, 4000, 8000)]
    assert used == sorted(used) and used[0] < used[-1]
    huge = sim.plan({"resnet50": 1e6})
    assert not huge["feasible"] and huge["gpus_used"] == 4
    assert huge["unplaced_rate"]["resnet50"] > 0


def test_spatial_plans_need_fewer_gpus_than_temporal_only():
    sim = simulator()
    rates = {"lenet": 3000, "googlenet": 400, "mobilenet_v2": 600, "resnet50": 300}
    st = sim.plan(rates, "spatiotemporal", check=False)
    to = sim.plan(rates, "temporal_only", check=False)
    assert st["feasible"] and to["feasible"] and st["gpus_needed"] < to["gpus_needed"]


def test_plan_json_round_trip_and_simulated_slos():
    sim = simulator(gpus=2)
    scn_rates = {"resnet50": 800, "bert": 300, "mobilenet_v2": 1500}
    plan = json.loads(json.dumps(sim.plan(scn_rates)))
    sim.apply_plan(plan)
    assert [(l["gpu"], l["sms"]) for l in sim.lanes()] == [(l["gpu"], l["sms"]) for l in plan["lanes"]]
    out = sim.run(gl.workloads.Poisson(scn_rates, 10, seed=1), warmup_s=1)
    for m, s in out["models"].items():
        if m in scn_rates:
            assert s["attainment"] >= 0.99, (m, s)
    with pytest.raises(gl.InvalidInput, match="planner"):
        sim.plan(scn_rates, "magic")


def test_plan_picture_has_one_bar_per_lane():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    sim = simulator(gpus=4)
    plan = sim.plan({"resnet50": 2000, "bert": 800, "lenet": 5000})
    ax = gl.plot.plan(plan)
    assert len(ax.patches) == len(plan["lanes"])
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == sorted(l["sms"] for l in plan["lanes"])
    assert len(ax.get_yticks()) == plan["gpus_used"]


def test_replanning_follows_a_rate_step_without_losing_requests():
    def run(replan):
        sim = gl.sim.Simulator(gpus=4, seed=0)
        scn = sim.add_scenario("scen4")
        # Planned for the low rate, held to what it needs (spread would give it headroom).
        sim.apply_plan(sim.plan(scn.rates(300), spread=False))
        work = gl.workloads.Steps([(10, scn.rates(300)), (30, scn.rates(2000))], seed=1)
        out = sim.run(work, warmup_s=1, replan=replan)
        times, _, _ = work.arrays()
        requests = sum(s["requests"] for s in out["models"].values())
        accounted = sum(s["met"] + s["late"] + s["dropped"] + s["rejected"] + s["failed"]
                        for s in out["models"].values())
        assert requests == accounted == int((times >= 1).sum())  # every request has an outcome
        met = sum(s["met"] for s in out["models"].values())
        return met / requests, out["replans"], sim.stats(per="lane")

    static, none, _ = run(None)
    adaptive, replans, lanes = run({"every_s": 5, "alpha": 1.0})
    assert none == []
    assert adaptive > static + 0.3  # the static plan collapses after the step; re-planning scales out
    changed = [e for e in replans if e["changed"]]
    assert changed and all(e["applied_t_s"] >= e["t_s"] for e in changed)
    assert max(e["gpus_used"] for e in replans) > replans[0]["gpus_used"]
    assert len(lanes) == replans[-1]["lanes"] or not replans[-1]["changed"]
    sim = simulator(gpus=1)
    with pytest.raises(gl.InvalidInput, match="every_s"):
        sim.run(gl.workloads.Poisson({"bert": 1}, 1), replan={"every": 5})


def test_rate_drift_replans_before_the_timer():
    def run(replan):
        sim = gl.sim.Simulator(gpus=4, seed=0)
        scn = sim.add_scenario("scen4")
        sim.apply_plan(sim.plan(scn.rates(300), spread=False))
        work = gl.workloads.Steps([(10, scn.rates(300)), (30, scn.rates(2000))], seed=1)
        out = sim.run(work, warmup_s=1, replan=replan)
        requests = sum(s["requests"] for s in out["models"].values())
        return sum(s["met"] for s in out["models"].values()) / requests, out["replans"]

    timer_only, timer_events = run({"every_s": 30, "alpha": 1.0})
    with_drift, drift_events = run({"every_s": 30, "alpha": 1.0, "drift": 0.5})
    assert [e["drift"] for e in timer_events] == [False]  # nothing before the timer at 30 s
    first = drift_events[0]
    assert first["drift"] and first["changed"] and 10 < first["t_s"] <= 12  # within ~1 s of it
    assert with_drift > timer_only + 0.2


def test_load_beyond_every_gpu_is_shed_rather_than_missed():
    def run(admission, queue_admission=False):
        sim = gl.sim.Simulator(gpus=1, seed=0, policy_options={"queue_admission": queue_admission})
        scn = sim.add_scenario("scen4")
        work = gl.workloads.Poisson(scn.rates(2000), 12, seed=2)  # about two GPUs' worth
        out = sim.run(work, warmup_s=4, replan={"every_s": 2, "alpha": 1.0, "admission": admission})
        m = out["models"].values()
        requests = sum(s["requests"] for s in m)
        rejected = sum(s["rejected"] for s in m)
        met = sum(s["met"] for s in m)
        return requests, rejected, met, out["replans"]

    requests, rejected, met, replans = run(True)
    assert not any(e["feasible"] for e in replans)
    assert rejected > 0.3 * requests  # the excess is refused at submit...
    assert met >= 0.99 * (requests - rejected)  # ...and what is admitted meets its deadline
    requests_off, rejected_off, met_off, _ = run(False)
    assert requests_off == requests and rejected_off == 0
    assert met > 1.05 * met_off  # queueing everything also costs requests that could have made it
    # The deadline policy's own admission by queued work, without any plan, holds too.
    requests_q, rejected_q, met_q, _ = run(False, queue_admission=True)
    assert rejected_q > 0.3 * requests_q and met_q >= 0.97 * (requests_q - rejected_q)
    assert met_q > 1.05 * met_off
    print("plan admission", met, "queue admission", met_q, "none", met_off)


def test_self_tuning_grows_an_undersized_layout_until_it_holds():
    sim = gl.sim.Simulator(gpus=2, seed=0)
    scn = sim.add_scenario("scen4")
    start = sim.plan(scn.rates(100), "self_tuning")  # sized for a third of the load
    assert start["variant"] == "self_tuning"
    assert all(len(l["models"]) == 1 for l in start["lanes"])
    sim.apply_plan(start)
    work = gl.workloads.Poisson(scn.rates(300), 30, seed=4)
    out = sim.run(work, warmup_s=20, replan={"every_s": 1, "variant": "self_tuning"})
    changed = [e for e in out["replans"] if e["changed"]]
    assert len(changed) >= 3  # feedback steps, one granule at a time
    lanes = sim.stats(per="lane")
    assert sum(l["sms"] for l in lanes.values()) > sum(l["sms"] for l in start["lanes"])
    assert sorted(l["sms"] for l in out["lanes_at_end"]) == sorted(l["sms"] for l in lanes.values())
    assert [(l["gpu"], l["sms"]) for l in sim.lanes()] == [(l["gpu"], l["sms"]) for l in start["lanes"]]
    assert min(s["attainment"] for s in out["models"].values()) >= 0.99  # the last 10 s
