"""GPU lanes on a real GPU (skipped without CUDA): green-context lanes own disjoint SM groups of
the size rt.lanes() reports, plain stream lanes reach every SM, and two lanes run at once."""


import pytest
import torch

import gpulanes as gl
import sm_probe
from conftest import Busy, Mlp, halves, scripted, two_lanes_at_once

pytestmark = pytest.mark.gpu


def green_runtime(sms, **kw):
    why = gl._C.green_context_support(0)
    if why:
        pytest.skip(f"green contexts unavailable: {why}")
    torch.manual_seed(0)
    rt = gl.Runtime(device="cuda", partitioning="green", profile_cache=False, **kw)
    for name in ("a", "b"):
        rt.register(name, scripted(Mlp()), slo_ms=10_000, example_inputs=torch.randn(1, 16))
    rt.set_lanes([{"device": 0, "sms": s, "models": [m]} for s, m in zip(sms, ("a", "b"))])
    return rt


def test_green_lanes_own_disjoint_sms_of_the_reported_size():
    rt = green_runtime((32, 64))
    total = torch.cuda.get_device_properties(0).multi_processor_count
    with rt:
        lanes = rt.lanes()
        assert [l["kind"] for l in lanes] == ["cuda-green", "cuda-green"]
        assert lanes[0]["sms"] >= 32 and lanes[1]["sms"] >= 64
        assert lanes[0]["sms"] + lanes[1]["sms"] <= total
        ids = [sm_probe.sm_ids(rt._core.lane_stream(i)) for i in range(2)]
        assert ids[0].isdisjoint(ids[1])
        for lane, seen in zip(lanes, ids):
            assert len(seen) <= lane["sms"]
            assert len(seen) >= 0.9 * lane["sms"]  # the probe's blocks reach the whole group
        x = torch.randn(16)
        assert rt.infer("a", x).shape == (8,) and rt.infer("b", x).shape == (8,)


def test_a_plain_stream_lane_reaches_every_sm():
    rt = gl.Runtime(device="cuda", partitioning="streams", profile_cache=False)
    rt.register("a", scripted(Mlp()), slo_ms=10_000, example_inputs=torch.randn(1, 16))
    total = torch.cuda.get_device_properties(0).multi_processor_count
    with rt:
        assert rt.lanes()[0]["sms"] == total
        assert len(sm_probe.sm_ids(rt._core.lane_stream(0))) >= 0.9 * total


def test_the_split_is_read_from_the_device():
    why = gl._C.green_context_support(0)
    if why:
        pytest.skip(f"green contexts unavailable: {why}")
    split = gl._C.green_sm_split(0)
    total = torch.cuda.get_device_properties(0).multi_processor_count
    assert split["device_sms"] == total
    assert split["group_sms"] >= max(1, split["min_partition"])
    assert split["alignment"] == 0 or split["group_sms"] % split["alignment"] == 0
    assert 2 <= split["groups"] and split["usable_sms"] == split["groups"] * split["group_sms"] <= total


def test_a_layout_that_does_not_fit_is_refused_saying_what_fits():
    why = gl._C.green_context_support(0)
    if why:
        pytest.skip(f"green contexts unavailable: {why}")
    split = gl._C.green_sm_split(0)
    half = split["device_sms"] // 2 + 1  # two lanes over half the device each
    rt = green_runtime((8, 8))
    with pytest.raises(gl.InvalidInput, match="this fits"):
        rt.set_lanes([{"device": 0, "sms": half, "models": ["a"]},
                      {"device": 0, "sms": half, "models": ["b"]}])
    with rt:  # the refused layout left the valid one in place
        g = split["group_sms"]
        assert [l["sms"] for l in rt.lanes()] == [-(-8 // g) * g] * 2


def test_two_green_lanes_run_batches_at_the_same_time():
    # Each batch is compute-bound work on its lane's SMs. On disjoint SMs two lanes do twice
    # the work in about the time one lane takes alone; run one after the other, twice as long.
    why = gl._C.green_context_support(0)
    if why:
        pytest.skip(f"green contexts unavailable: {why}")
    half = halves(gl._C.green_sm_split(0))
    rt = gl.Runtime(device="cuda", partitioning="green", profile_cache=False, warmup_rounds=1)
    for name in ("a", "b"):
        rt.register(name, scripted(Busy(40, size=1024)), slo_ms=60_000,
                    example_inputs=torch.zeros(1, 4), max_batch_size=1)
    rt.set_lanes([{"device": 0, "sms": half, "models": ["a"]},
                  {"device": 0, "sms": half, "models": ["b"]}])

    with rt:
        alone, both = two_lanes_at_once(rt)
    assert both < 1.5 * alone, (alone, both)


def test_partition_lanes_are_profiled_at_their_own_sm_count():
    why = gl._C.green_context_support(0)
    if why:
        pytest.skip(f"green contexts unavailable: {why}")
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval().cuda().half()
    x = torch.randn(1, 3, 224, 224, device="cuda").half()
    with torch.no_grad():
        module = torch.jit.trace(net, x, check_trace=False)
    rt = gl.Runtime(device="cuda", partitioning="green", profile_cache=False)
    rt.register("r", module, slo_ms=10_000, example_inputs=x.cpu(), max_batch_size=32)
    rt.set_lanes([{"device": 0, "sms": 16, "models": ["r"]}, {"device": 0, "sms": 96, "models": ["r"]}])
    with rt:
        small, large = (rt.profile("r", lane=i) for i in range(2))
        batch32 = [next(p["p50_us"] for p in prof if p["batch_size"] == 32) for prof in (small, large)]
        assert batch32[0] > 1.5 * batch32[1]  # compute-bound: 6x the SMs is much faster
        assert rt.infer("r", torch.randn(3, 224, 224).half()).shape == (1000,)


def test_lanes_of_one_gpu_hold_a_models_weights_once_and_unregister_frees_them():
    from torch import nn

    weights = 4096 * 4096 * 4 + 4096 * 4  # one Linear(4096, 4096) in float32: 64 MiB
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(0)
    rt = gl.Runtime(device="cuda", partitioning="streams", profile_cache=False, warmup_rounds=1,
                    profile_reps=3)
    torch.manual_seed(0)
    model = nn.Linear(4096, 4096).eval()
    rt.register("big", scripted(model), slo_ms=10_000, example_inputs=torch.randn(1, 4096))
    rt.register("small", scripted(Mlp()), slo_ms=10_000, example_inputs=torch.randn(1, 16))
    rt.set_lanes([{"device": 0, "models": ["big", "small"]}] * 4)
    with rt:
        assert [lane["kind"] for lane in rt.lanes()] == ["cuda-stream"] * 4
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated(0) - before
        # four lanes, one copy (activations and workspaces of batches are small next to it)
        assert weights <= held < 1.5 * weights, held / weights
        x = torch.randn(4096)
        with torch.no_grad():
            want = model(x)
        outs = [rt.submit("big", x) for _ in range(64)]  # spread over the four lanes
        for f in outs:
            torch.testing.assert_close(f.result(timeout=60), want, rtol=1e-4, atol=1e-4)
        rt.unregister("big")
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated(0) - before < 0.5 * weights  # its copy is gone
        assert rt.infer("small", torch.randn(16)).shape == (8,)
