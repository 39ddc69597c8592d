"""Lane layouts: lanes serving subsets of models, and replacing the layout while serving
without losing a queued request."""

import threading

import pytest
import torch

import gpulanes as gl
from conftest import Affine, Busy, scripted


def two_model_runtime(**kw):
    rt = gl.Runtime(device="cpu", trace=True, profile_cache=False, profile_reps=3,
                    warmup_rounds=1, **kw)
    rt.register("a", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4))
    rt.register("busy", scripted(Busy(60)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1, max_queue=100_000)
    return rt


def test_lanes_serve_only_their_models():
    rt = two_model_runtime()
    rt.set_lanes([{"device": "cpu", "models": ["a"]}, {"device": "cpu", "models": ["busy"]}])
    with rt:
        assert [(l["index"], l["device"], l["sms"], l["models"]) for l in rt.lanes()] == [
            (0, "cpu", 0, ["a"]), (1, "cpu", 0, ["busy"])]
        futs = [rt.submit(m, torch.zeros(4)) for m in ("a", "busy") * 20]
        for f in futs:
            f.result(timeout=60)
    df = rt.trace_frame()
    assert set(df[df["model"] == "a"]["lane"]) == {0}
    assert set(df[df["model"] == "busy"]["lane"]) == {1}
    lanes = rt.stats(per="lane")
    assert lanes[0]["batches_by_model"].keys() == {"a"}


def test_a_model_no_lane_serves_is_refused():
    rt = two_model_runtime()
    rt.set_lanes([{"device": "cpu", "models": ["a"]}])
    with rt:
        with pytest.raises(gl.InvalidInput, match="no lane serves"):
            rt.submit("busy", torch.zeros(4))
        assert torch.equal(rt.infer("a", torch.ones(4)), torch.full((4,), 3.0))
        assert rt.stats()["busy"]["rejected"] == 1


def test_relayout_while_serving_loses_nothing():
    rt = two_model_runtime()
    rt.set_lanes([{"device": "cpu", "models": ["busy"]}, {"device": "cpu", "models": ["a"]}])
    results = []
    with rt:
        backlog = [rt.submit("busy", torch.full((4,), float(i))) for i in range(60)]
        stop = threading.Event()

        def keep_submitting():
            while not stop.is_set():
                results.append(rt.submit("a", torch.ones(4)))

        t = threading.Thread(target=keep_submitting)
        t.start()
        # The backlog is still queued: swap to a layout where two lanes share "busy".
        assert rt.stats()["busy"]["in_flight"] > 10
        rt.set_lanes([{"device": "cpu", "models": ["busy", "a"]},
                      {"device": "cpu", "models": ["busy"]}])
        stop.set()
        t.join()
        assert [l["models"] for l in rt.lanes()] == [["a", "busy"], ["busy"]]
        for i, f in enumerate(backlog):
            assert torch.equal(f.result(timeout=60), torch.full((4,), i + 1.0))
        for f in results:
            assert torch.equal(f.result(timeout=60), torch.full((4,), 3.0))
    s = rt.stats()["busy"]
    assert s["met"] == 60 and s["dropped"] == s["failed"] == 0
    df = rt.trace_frame()
    late = df[(df["model"] == "busy")].sort_values("start_s").tail(20)
    assert set(late["lane"]) == {0, 1}  # after the swap both new lanes took "busy" batches


def test_layout_errors_are_clear():
    rt = two_model_runtime()
    with pytest.raises(gl.UnknownModel):
        rt.set_lanes([{"device": "cpu", "models": ["nope"]}])
    with pytest.raises(gl.InvalidInput, match="unknown lane device"):
        rt.set_lanes([{"device": "tpu", "models": ["a"]}])
    with pytest.raises(gl.InvalidInput, match="no SMs"):
        rt.set_lanes([{"device": "cpu", "sms": 10}])
    with pytest.raises(gl.InvalidInput, match="unknown key"):
        rt.set_lanes([{"device": "cpu", "gpu": 0}])
    if not gl._C.cuda_lane_support():
        with pytest.raises(gl.InvalidInput, match="not available"):
            rt.set_lanes([{"device": 0}])
    rt.shutdown()


def test_partitioning_choices_without_a_gpu():
    with pytest.raises(gl.InvalidInput, match="partitioning"):
        gl.Runtime(device="cpu", partitioning="mig")
    if gl._C.cuda_lane_support():
        pytest.skip("this machine has a GPU")
    assert gl._C.green_context_support(0)  # says why not, without crashing
    for how in ("green", "streams", "none", "mps", "auto"):
        rt = gl.Runtime(device="cpu", partitioning=how, profile_cache=False, warmup_rounds=1,
                        profile_reps=3)
        rt.register("a", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4))
        with rt:  # CPU lanes do not depend on how GPUs would be split
            assert torch.equal(rt.infer("a", torch.zeros(4)), torch.ones(4))


def test_each_lane_reports_the_profile_it_schedules_with():
    rt = two_model_runtime()
    rt.set_lanes([{"device": "cpu", "models": ["a"]}, {"device": "cpu", "models": ["a", "busy"]}])
    with rt:
        # CPU lanes are alike: one measured profile per model serves every lane.
        assert rt.profile("a", lane=0) == rt.profile("a", lane=1) == rt.profile("a")
        assert rt.profile("busy", lane=1) == rt.profile("busy")
        with pytest.raises(gl.InvalidInput, match="no lane 2"):
            rt.profile("a", lane=2)
        with pytest.raises(gl.UnknownModel):
            rt.profile("nope", lane=0)


def test_requests_queued_for_a_model_the_new_layout_drops_are_resolved():
    # Used to strand them: their futures never resolved and shutdown(drain=True) never returned.
    rt = gl.Runtime(device="cpu", cpu_lanes=2, profile_reps=3, warmup_rounds=1, spin_us=0)
    rt.register("a", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4))
    rt.register("busy", scripted(Busy(200)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=1, max_queue=10_000)
    rt.set_lanes([{"device": "cpu", "models": ["a"]}, {"device": "cpu", "models": ["busy"]}])
    with rt:
        futs = [rt.submit("busy", torch.zeros(4)) for _ in range(200)]
        rt.set_lanes([{"device": "cpu", "models": ["a"]}])
        done, shed = 0, 0
        for f in futs:
            try:
                f.result(timeout=60)
                done += 1
            except gl.Overloaded as e:
                assert "no longer served" in str(e)
                shed += 1
        assert done + shed == 200 and shed > 0
        assert rt.stats()["busy"]["in_flight"] == 0
        with pytest.raises(gl.InvalidInput, match="no lane serves"):
            rt.submit("busy", torch.zeros(4))
        assert torch.equal(rt.infer("a", torch.ones(4)), torch.full((4,), 3.0))
