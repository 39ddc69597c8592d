"""The planner driving a serving runtime (CPU lanes here): plans for measured or given rates,
applied while serving, overload shed with a typed error, and periodic re-planning that loses no
request."""

import threading
import time

import pytest
import torch

import gpulanes as gl
from conftest import Affine, Busy, scripted


def two_model_runtime(**kw):
    rt = gl.Runtime(device="cpu", profile_cache=False, profile_reps=3, warmup_rounds=1, **kw)
    rt.register("a", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4))
    rt.register("busy", scripted(Busy(60)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1, max_queue=100_000)
    return rt


def planned_models(plan):
    return [sorted(m["model"] for m in lane["models"]) for lane in plan["lanes"]]


def test_a_plan_for_given_rates_becomes_the_layout():
    rt = two_model_runtime(cpu_lanes=2)
    with rt:
        with pytest.raises(gl.UnknownModel):
            rt.plan({"nope": 1.0})
        plan = rt.plan({"a": 100.0, "busy": 5.0})
        assert plan["feasible"] and plan["meets_slos"] and 1 <= plan["gpus_used"] <= 2
        assert plan["predicted_attainment"] == 1.0
        assert plan["rates"] == {"a": 100.0, "busy": 5.0}
        assert set(sum(planned_models(plan), [])) == {"a", "busy"}  # maybe spread over both lanes
        assert rt.apply_plan(plan)
        assert [sorted(l["models"]) for l in rt.lanes()] == planned_models(plan)
        assert not rt.apply_plan(plan)  # the same layout: nothing to swap
        assert torch.equal(rt.infer("a", torch.ones(4)), torch.full((4,), 3.0))
        assert rt.admission_limits() == {}


def test_overload_is_shed_at_submit_with_a_typed_error():
    rt = two_model_runtime(cpu_lanes=2)
    with rt:
        plan = rt.plan({"a": 10.0, "busy": 1e6})  # far beyond a CPU lane
        assert not plan["feasible"] and plan["unplaced_rate"]["busy"] > 0
        assert plan["meets_slos"] and plan["predicted_attainment"] < 0.01
        rt.apply_plan(plan)
        limit = rt.admission_limits()["busy"]
        assert 0 < limit < 1e6
        futs, shed = [], []
        for i in range(400):
            try:
                futs.append(rt.submit("busy", torch.full((4,), float(i))))
            except gl.Overloaded as e:
                assert isinstance(e, gl.QueueFull) and "shed" in str(e)
                shed.append(i)
        assert shed and futs
        for f in futs:  # what was admitted is served
            assert f.result(timeout=120).shape == (4,)
        assert rt.stats()["busy"]["rejected"] == len(shed)
        assert torch.equal(rt.infer("a", torch.ones(4)), torch.full((4,), 3.0))  # others unharmed
        rt.apply_plan(rt.plan({"a": 10.0, "busy": 1.0}))
        assert rt.admission_limits() == {}
        rt.infer("busy", torch.zeros(4))


def test_replanning_while_serving_follows_the_rates_and_loses_nothing():
    rt = two_model_runtime(cpu_lanes=2, replan={"every_s": 0.4, "alpha": 1.0})
    futs = []
    with rt:
        stop = threading.Event()

        def busy_trickle():
            while not stop.is_set():
                futs.append(rt.submit("busy", torch.zeros(4)))
                time.sleep(0.1)

        t = threading.Thread(target=busy_trickle)
        t.start()
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            futs.append(rt.submit("a", torch.ones(4)))
            time.sleep(0.004)
        stop.set()
        t.join()
        events = rt.replans()
        lanes = rt.lanes()
        measured = rt.measured_rates()
        same_window = len(rt.replans()) == len(events)  # no re-plan in between
    for f in futs:  # every request resolved; none lost in a layout swap
        f.result(timeout=60)
    assert len(events) >= 4
    assert events[0]["changed"]  # from the default layout to the plan
    assert all(e["feasible"] and e["apply_wall_ms"] >= 0 for e in events)
    # The rates it planned for are the ones offered: up to ~250/s of "a", ~10/s of "busy" (the
    # busiest window; the last one may have caught the load stopping).
    a_rate = max(e["rates"][0] for e in events)
    busy_rate = max(e["rates"][1] for e in events)
    assert 40 < a_rate < 400 and 3 < busy_rate < 20
    if same_window:  # measured_rates() is what the last re-plan planned for
        assert measured["a"] == pytest.approx(events[-1]["rates"][0])
    assert {m for l in lanes for m in l["models"]} == {"a", "busy"}
    with pytest.raises(gl.InvalidInput, match="every_s"):
        gl.Runtime(device="cpu", replan={"every": 1})


def test_self_tuning_replans_a_serving_runtime_without_losing_requests():
    rt = two_model_runtime(cpu_lanes=2, replan={"every_s": 0.3, "variant": "self_tuning"})
    futs = []
    with rt:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            futs.append(rt.submit("a", torch.ones(4)))
            if len(futs) % 20 == 0:
                futs.append(rt.submit("busy", torch.zeros(4)))
            time.sleep(0.004)
        events = rt.replans()
        lanes = rt.lanes()
    for f in futs:
        f.result(timeout=60)
    assert len(events) >= 3 and events[0]["changed"]  # its starting plan: a lane per model
    assert sorted(sorted(l["models"]) for l in lanes) == [["a"], ["busy"]]


def test_a_plan_that_leaves_a_model_out_still_serves_it():
    # A model planned at rate 0 gets no lane of its own; the applied layout still serves it (it
    # used to be refused with InvalidInput: "no lane serves model ...").
    rt = two_model_runtime(cpu_lanes=2)
    with rt:
        plan = rt.plan({"a": 0.0, "busy": 5.0})
        # "busy" may get both lanes (idle lanes of the budget are spread into): "a" gets none.
        assert set(sum(planned_models(plan), [])) == {"busy"}
        rt.apply_plan(plan)
        assert any("a" in l["models"] for l in rt.lanes())
        assert torch.equal(rt.infer("a", torch.ones(4)), torch.full((4,), 3.0))


def test_a_model_the_plan_cannot_place_is_shed_never_refused_as_unserved():
    rt = two_model_runtime(cpu_lanes=1)
    with rt:
        plan = rt.plan({"a": 10.0, "busy": 1e9})
        plan["lanes"] = [l for l in plan["lanes"]
                         if all(m["model"] != "busy" for m in l["models"])] or plan["lanes"][:1]
        plan["unplaced_rate"]["busy"] = 1e9  # nothing of it placed
        rt.apply_plan(plan)
        with pytest.raises(gl.Overloaded):
            for _ in range(50):
                rt.submit("busy", torch.zeros(4))
