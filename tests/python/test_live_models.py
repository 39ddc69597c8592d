"""Models registered and unregistered while serving (issue 15, item 3; issue 32): the new model is
loaded, warmed up and measured while the lanes keep serving the others (on CPU thread lanes
beside them, on the same lanes: only it is loaded; elsewhere on new lanes); other models never
stop; a model that fails its warm-up leaves no trace; a new layout loads only what moves."""

import threading

import pytest
import torch

import gpulanes as gl
from conftest import Affine, Busy, Mlp, Picky, affine_load, background_load, saved, scripted


def runtime(**options):
    return gl.Runtime(device="cpu", cpu_lanes=2, warmup_rounds=1, profile_reps=3,
                      profile_cache=False, **options)


def refusal_in_a_callback(rt, call) -> str:
    """What InvalidInput `call()` raised in a done-callback of `rt` (on one of its threads)."""
    seen = []

    def cb(_):
        try:
            call()
        except gl.InvalidInput as e:
            seen.append(str(e))
    rt.submit("affine", torch.ones(4)).add_done_callback(cb)
    rt.infer("affine", torch.ones(4))
    for _ in range(100):
        if seen:
            break
        threading.Event().wait(0.01)
    assert seen, "the call was not refused"
    return seen[0]


def test_register_inside_with_works():
    with runtime() as rt:
        rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
        assert torch.equal(rt.infer("affine", torch.ones(4)), torch.full((4,), 3.0))
        assert rt.profile_source("affine") == "measured" and rt.profile("affine")
        assert "affine" in rt.stats()


def test_other_models_keep_serving_while_one_is_added():
    rt = runtime()
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.start()
    with affine_load(rt) as futures:
        # Requests queued and running when the registration starts (how many more arrive while
        # it runs depends on this machine's speed, so that is not asserted).
        for _ in range(1000):
            if len(futures) >= 10:
                break
            threading.Event().wait(0.01)
        rt.register("mlp", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
    assert len(futures) >= 10
    for i, f in futures:  # none lost, none failed, each its own result
        assert torch.equal(f.result(timeout=60), torch.full((4,), 2.0 * i + 1.0))
    assert rt.infer("mlp", torch.zeros(16)).shape == (8,)
    assert all(set(lane["models"]) == {"affine", "mlp"} for lane in rt.lanes())
    rt.shutdown()


def test_a_model_that_fails_warm_up_leaves_no_trace():
    with runtime() as rt:
        rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
        with pytest.raises(gl.ModelError):
            rt.register("picky", saved(Picky()), slo_ms=60_000,
                        example_inputs=torch.full((2, 4), -1.0))  # raises on its warm-up
        assert rt.models == ["affine"] and "picky" not in rt.stats()
        with pytest.raises(gl.UnknownModel):
            rt.submit("picky", torch.ones(4))
        rt.register("picky", scripted(Picky()), slo_ms=60_000, example_inputs=torch.ones(2, 4))
        assert torch.equal(rt.infer("picky", torch.ones(4)), torch.full((4,), 2.0))
        assert torch.equal(rt.infer("affine", torch.ones(4)), torch.full((4,), 3.0))
        with pytest.raises(gl.InvalidInput):
            rt.register("affine", scripted(Affine()), slo_ms=10, example_inputs=torch.zeros(2, 4))


def test_an_explicit_layout_gets_the_new_model_on_every_lane():
    rt = runtime()
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("mlp", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
    rt.set_lanes([{"device": "cpu", "models": ["affine"]}, {"device": "cpu", "models": ["mlp"]}])
    rt.start()
    try:
        rt.register("affine2", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
        assert [sorted(lane["models"]) for lane in rt.lanes()] == [["affine", "affine2"],
                                                                  ["affine2", "mlp"]]
        assert torch.equal(rt.infer("affine2", torch.ones(4)), torch.full((4,), 3.0))
    finally:
        rt.shutdown()


def test_the_planner_sees_the_new_model():
    rt = runtime(replan={"every_s": 3600})
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.start()
    try:
        rt.register("mlp", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
        for _ in range(20):
            rt.infer("mlp", torch.zeros(16))
        assert set(rt.measured_rates()) == {"affine", "mlp"}
        plan = rt.plan({"affine": 10.0, "mlp": 10.0})
        assert {m["model"] for lane in plan["lanes"] for m in lane["models"]} == {"affine", "mlp"}
    finally:
        rt.shutdown()


def test_registering_from_a_done_callback_is_refused():
    with runtime() as rt:
        rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
        assert "done-callback" in refusal_in_a_callback(
            rt, lambda: rt.register("late", scripted(Affine()), slo_ms=1000,
                                    example_inputs=torch.zeros(2, 4)))


# -- unregister (Triton's model unload) ------------------------------------------------------


def test_unregister_drains_its_queue_while_the_others_keep_serving():
    rt = runtime(trace=True)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("busy", scripted(Busy(40)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1)
    rt.start()
    try:
        with affine_load(rt) as futures:
            queued = [rt.submit("busy", torch.full((4,), float(i))) for i in range(20)]
            rt.unregister("busy")
            # It returned only once none of busy's requests was in flight: all ran (drain).
            assert all(f.done() for f in queued)
            for i, f in enumerate(queued):
                assert torch.equal(f.result(), torch.full((4,), i + 1.0))
            with pytest.raises(gl.UnknownModel):
                rt.submit("busy", torch.ones(4))
        assert len(futures) > 10
        for i, f in futures:  # none lost, none failed
            assert torch.equal(f.result(timeout=60), torch.full((4,), 2.0 * i + 1.0))
        assert rt.models == ["affine"] and set(rt.stats()) == {"affine"}
        assert all(lane["models"] == ["affine"] for lane in rt.lanes())
        s = rt.stats()["affine"]
        assert s["submitted"] == s["met"] + s["missed"] and s["in_flight"] == 0
        assert set(rt.trace_frame()["model"]) == {"affine", "busy"}  # its records keep its name
        # The name is free again, here for another model.
        rt.register("busy", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
        assert rt.infer("busy", torch.zeros(16)).shape == (8,)
        assert rt.stats()["busy"]["submitted"] == 1  # statistics of the new model only
    finally:
        rt.shutdown()


def test_unregister_without_drain_fails_what_is_queued():
    rt = runtime()
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("busy", scripted(Busy(200)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1)
    rt.start()
    try:
        queued = [rt.submit("busy", torch.ones(4)) for _ in range(30)]
        rt.unregister("busy", drain=False)
        outcomes = [f.exception(timeout=0) for f in queued]  # every one resolved by now
        closed = [e for e in outcomes if isinstance(e, gl.RuntimeClosed)]
        # Two lanes were running one each at most; the rest never ran.
        assert len(closed) >= 26 and all(e is None or e in closed for e in outcomes)
        assert "unregistered" in str(closed[0])
        assert torch.equal(rt.infer("affine", torch.ones(4)), torch.full((4,), 3.0))
    finally:
        rt.shutdown()


def test_unregister_drops_a_lane_that_served_only_it_and_leaves_the_plan():
    rt = runtime(replan={"every_s": 3600})
    for name in ("affine", "affine2"):
        rt.register(name, scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("mlp", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
    rt.set_lanes([{"device": "cpu", "models": ["affine", "affine2"]},
                  {"device": "cpu", "models": ["mlp"]}])
    rt.start()
    try:
        rt.infer("mlp", torch.zeros(16))
        rt.unregister("mlp")
        assert [lane["models"] for lane in rt.lanes()] == [["affine", "affine2"]]
        rt.unregister("affine2")
        assert [lane["models"] for lane in rt.lanes()] == [["affine"]]
        assert set(rt.measured_rates()) == {"affine"}
        plan = rt.plan({"affine": 10.0})
        assert {m["model"] for lane in plan["lanes"] for m in lane["models"]} == {"affine"}
        assert rt.apply_plan(plan) in (True, False)
        assert [lane["models"] for lane in rt.lanes()] == [["affine"]]
        assert torch.equal(rt.infer("affine", torch.ones(4)), torch.full((4,), 3.0))
        with pytest.raises(gl.UnknownModel):
            rt.plan({"mlp": 1.0})
    finally:
        rt.shutdown()


def test_unregister_before_start_and_its_refusals():
    rt = runtime()
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("mlp", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
    rt.unregister("mlp")
    with pytest.raises(gl.UnknownModel):
        rt.unregister("mlp")
    with pytest.raises(gl.UnknownModel):
        rt.unregister(3)
    with pytest.raises(gl.InvalidInput):
        rt.unregister("affine", drain="yes")
    with rt:
        assert [lane["models"] for lane in rt.lanes()] == [["affine"], ["affine"]]
        assert set(rt.stats()) == {"affine"}
        assert "done-callback" in refusal_in_a_callback(rt, lambda: rt.unregister("affine"))
        assert rt.models == ["affine"]
    with pytest.raises(gl.RuntimeClosed):
        rt.unregister("affine")  # the runtime is shut down


# -- changes that touch only the model that changed (issue 32) -----------------------------------

def mlp_set(rt, n: int) -> None:
    for i in range(n):
        torch.manual_seed(i)
        rt.register(f"m{i}", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))


def model_load(rt, models):
    """Submits each of `models` in turn from a thread while the body runs; yields (model,
    future) pairs."""
    return background_load(lambda i: (models[i % len(models)],
                                      rt.submit(models[i % len(models)], torch.ones(16))), 0.0005)


@pytest.mark.parametrize("mode, loads", [("incremental", 2), ("rebuild", 22)])
def test_registering_an_eleventh_model_loads_only_it(mode, loads):
    rt = runtime(layout_changes=mode)
    mlp_set(rt, 10)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.unregister("affine")  # registered before start: nothing loaded, nothing unloaded
    rt.start()
    assert rt.model_loads == 20  # ten models on two lanes
    expected = {f"m{i}": rt.infer(f"m{i}", torch.ones(16)) for i in range(10)}
    with model_load(rt, list(expected)) as futures:  # the ten keep being asked for
        rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    assert rt.model_loads == 20 + loads  # one per lane; a rebuild loads all eleven on each
    for name, f in futures:  # none failed, none late, each its own model's answer
        assert torch.equal(f.result(timeout=60), expected[name])
    stats = rt.stats()
    assert all(stats[name]["missed"] == 0 and stats[name]["failed"] == 0 for name in expected)
    assert torch.equal(rt.infer("affine", torch.ones(4)), torch.full((4,), 3.0))
    assert all("affine" in lane["models"] for lane in rt.lanes())
    rt.shutdown()


def test_unregistering_loads_nothing_and_the_rest_keep_their_lanes():
    rt = runtime()
    mlp_set(rt, 4)
    rt.start()
    before = [(lane["index"], lane["loads"]) for lane in rt.lanes()]
    rt.unregister("m2")
    assert rt.model_loads == 8 and [(lane["index"], lane["loads"]) for lane in rt.lanes()] == before
    assert all(lane["models"] == ["m0", "m1", "m3"] for lane in rt.lanes())
    with pytest.raises(gl.UnknownModel):
        rt.submit("m2", torch.ones(16))
    rt.register("m2", scripted(Mlp()), slo_ms=60_000, example_inputs=torch.zeros(2, 16))
    assert rt.model_loads == 10 and rt.infer("m2", torch.ones(16)).shape == (8,)
    rt.shutdown()


def test_set_lanes_loads_only_what_moves_and_keeps_serving():
    rt = runtime()
    mlp_set(rt, 6)
    rt.start()
    expected = {f"m{i}": rt.infer(f"m{i}", torch.ones(16)) for i in range(6)}
    rt.set_lanes([{"device": "cpu", "models": ["m0", "m1", "m2"]},
                  {"device": "cpu", "models": ["m3", "m4", "m5"]}])
    assert rt.model_loads == 12  # each lane already held its three
    rt.set_lanes([{"device": "cpu", "models": ["m0", "m1", "m2", "m3"]},
                  {"device": "cpu", "models": ["m4", "m5"]}])
    assert rt.model_loads == 13  # m3 moved: loaded once, on its new lane
    with model_load(rt, list(expected)) as futures:
        rt.set_lanes([{"device": "cpu", "models": ["m4", "m5"]},
                      {"device": "cpu", "models": ["m0", "m1", "m2", "m3"]},
                      {"device": "cpu", "models": ["m0"]}])
    assert rt.model_loads == 14  # a third lane, for m0 alone; the others kept, in a new order
    assert [(lane["models"], lane["loads"]) for lane in rt.lanes()] == [
        (["m4", "m5"], 6), (["m0", "m1", "m2", "m3"], 7), (["m0"], 1)]
    for name, f in futures:
        assert torch.equal(f.result(timeout=60), expected[name])
    rt.shutdown()


def test_layout_changes_is_checked():
    with pytest.raises(gl.InvalidInput, match="layout_changes must be 'incremental' or 'rebuild'"):
        gl.Runtime(device="cpu", layout_changes="lazy")
