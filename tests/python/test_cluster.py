"""gpulanes.cluster: one plan over several machines' GPUs, split into per-machine replicas."""

import pytest

import gpulanes as gl
from gpulanes.cluster import plan_cluster


def sim_with(gpus, **models):
    sim = gl.sim.Simulator(gpus=gpus)
    for name, slo in models.items():
        sim.add_model(name, slo)
    return sim


def test_each_machine_holds_the_models_of_its_lanes_and_routes_add_up():
    sim = sim_with(8, resnet50=None, bert=None, vgg16=None)
    rates = {"resnet50": 3000, "bert": 2500, "vgg16": 800}
    cp = plan_cluster(sim, rates, [4, 4])
    assert cp["feasible"] and cp["gpus_used"] == cp["plan"]["gpus_used"]
    machines = cp["machines"]
    assert [m["gpus"] for m in machines] == [4, 4]
    # Local GPU indices, and every planned lane lands on exactly one machine.
    assert all(0 <= lane["gpu"] < 4 for m in machines for lane in m["lanes"])
    assert sum(len(m["lanes"]) for m in machines) == len(cp["plan"]["lanes"])
    for model in rates:
        shares = cp["route"][model]
        assert shares and sum(shares.values()) == pytest.approx(1.0)
        held = sum(m["models"].get(model, 0.0) for m in machines)
        assert held == pytest.approx(cp["plan"]["planned_rate"][model])
        for k, share in shares.items():
            assert share == pytest.approx(machines[k]["models"][model] / held)
    assert cp["machines_used"] == sum(1 for m in machines if m["lanes"])


def test_packing_leaves_whole_machines_free():
    sim = sim_with(16, resnet50=None, bert=None)
    cp = plan_cluster(sim, {"resnet50": 500, "bert": 400}, [8, 8])
    assert cp["machines_used"] == 1 and not cp["machines"][1]["lanes"]
    assert cp["route"] == {"resnet50": {0: 1.0}, "bert": {0: 1.0}}


def test_the_plan_applies_and_serves_across_machines():
    sim = sim_with(8, resnet50=None, bert=None)
    rates = {"resnet50": 4000, "bert": 3000}
    cp = plan_cluster(sim, rates, [4, 4], cv=3.0)
    assert cp["machines_used"] == 2  # more than one machine's GPUs are needed
    sim.apply_plan(cp["plan"])
    res = sim.run(gl.workloads.Gamma(rates, 3.0, 4.0, seed=1), warmup_s=1.0)
    assert min(m["attainment"] for m in res["models"].values()) >= 0.99


def test_machines_must_match_the_simulator():
    sim = sim_with(8, bert=None)
    with pytest.raises(gl.InvalidInput, match="8"):
        plan_cluster(sim, {"bert": 100}, [4, 2])
    for bad in ([], [4, 0, 4], [4.0, 4], [True, 7]):
        with pytest.raises(gl.InvalidInput, match="machines"):
            plan_cluster(sim, {"bert": 100}, bad)


def test_a_cluster_plan_becomes_the_ray_placement_and_routes():
    # What gpulanes.ray.Cluster.apply(plan=...) deploys: machine k is replica-k, holding the
    # models of its lanes, with the plan's routing shares (no Ray needed to check the mapping).
    from gpulanes.ray import _placement_from

    sim = sim_with(8, resnet50=None, bert=None)
    cp = plan_cluster(sim, {"resnet50": 4000, "bert": 3000}, [4, 4], cv=3.0)
    placement, route = _placement_from(cp)
    assert set(placement) == {"replica-0", "replica-1"}
    for k, machine in enumerate(cp["machines"]):
        assert placement[f"replica-{k}"] == sorted(machine["models"])
    for model, shares in cp["route"].items():
        assert route[model] == {f"replica-{k}": s for k, s in shares.items()}
        assert all(model in placement[slot] for slot in route[model])
