"""Every option of Runtime(...) is validated at construction: a wrong type, NaN, an infinity or
a value out of range gets an InvalidInput naming the option, never a crash later."""

import math
import time

import pytest
import torch

import gpulanes as gl
from conftest import Affine, scripted


@pytest.mark.parametrize("kwargs, match", [
    # Crashed (SIGSEGV at the first finished batch) or stalled serving before they were checked.
    ({"policy_options": {"margin_window": 0}}, r"margin_window must be an integer in \[1,"),
    ({"policy_options": {"margin_window": -1}}, "margin_window"),
    ({"policy": "aimd", "policy_options": {"additive_increase": -1}}, "additive_increase"),
    ({"policy": "aimd", "policy_options": {"multiplicative_decrease": 0}}, "multiplicative_decrease"),
    ({"spin_us": 1e15}, r"spin_us must be a finite number in \[0, 1e\+06\]"),
    ({"spin_us": -1}, "spin_us"),
    ({"spin_us": math.nan}, "spin_us must be finite"),
    ({"policy_options": {"margin_quantile": math.nan}}, "margin_quantile must be finite"),
    ({"policy_options": {"margin_quantile": 1.5}}, "margin_quantile"),
    ({"policy_options": {"min_margin_us": -5}}, "min_margin_us"),
    ({"policy_options": {"min_margin_us": math.inf}}, "min_margin_us must be finite"),
    ({"policy_options": {"margin_window": "10"}}, "margin_window must be an integer, got str"),
    ({"policy_options": {"margin_window": 2.5}}, "margin_window must be an integer"),
    ({"policy_options": {"wait_for_batch": "yes"}}, "wait_for_batch must be True or False"),
    ({"policy_options": [("margin_window", 3)]}, "policy_options must be a dict"),
    ({"policy": "max_delay", "policy_options": {"preferred_batch_size": 4}},
     "preferred_batch_size must be a list of integers"),
    ({"policy": "max_delay", "policy_options": {"preferred_batch_size": [4, 0]}},
     "preferred_batch_size entries"),
    ({"policy": "max_delay", "policy_options": {"max_queue_delay_microseconds": -1}},
     "max_queue_delay_microseconds"),
    ({"predictor_options": {"alpha": 2}}, "predictor option alpha"),
    ({"predictor_options": {"forgetting": 0}}, "predictor option forgetting"),
    ({"predictor_options": {"lr": math.inf}}, "lr must be finite"),
    ({"predictor_options": {"weights": [1.0, 2.0]}}, "weights needs 12 values"),
    ({"predictor_options": {"weights": "abc"}}, "weights must be a list of numbers"),
    ({"predictor_options": {"warmup_batches": -3}}, "warmup_batches"),
    ({"cpu_lanes": 0}, r"cpu_lanes must be an integer in \[1, 1024\]"),
    ({"cpu_lanes": "2"}, "cpu_lanes must be an integer, got str"),
    ({"cpu_lanes": 2**40}, "cpu_lanes is out of range"),
    ({"warmup_rounds": -1}, "warmup_rounds"),
    ({"profile_reps": 0}, "profile_reps"),
    ({"trace": "no"}, "trace must be True or False"),
    ({"device": 0}, "device must be a string"),
    ({"device": "cuda:x"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ({"device": "gpu"}, "device must be"),
    ({"partitioning": "magic"}, "partitioning must be one of"),
    ({"replan": {"every_s": "often"}}, "replan every_s must be a number"),
    ({"replan": {"every_s": 0}}, "replan every_s must be > 0"),
    ({"replan": {"every_s": 1, "alpha": 0}}, "replan alpha"),
    ({"replan": {"every_s": 1, "admit_fraction": math.nan}}, "admit_fraction must be finite"),
    ({"replan": {"every_s": 1, "granularity": 0}}, "planner granularity"),
    ({"replan": {"every_s": 1, "variant": "magic"}}, "unknown planner 'magic'"),
    ({"replan": {"every_s": 1, "gpus": -2}}, "planner gpus"),
    ({"replan": 10}, "replan must be a dict"),
])
def test_bad_options_are_refused_at_construction(kwargs, match):
    with pytest.raises(gl.InvalidInput, match=match):
        gl.Runtime(**kwargs)


def test_the_simulator_refuses_the_same_options():
    with pytest.raises(gl.InvalidInput, match="margin_window"):
        gl.sim.Simulator(gpus=1, policy_options={"margin_window": 0})


def test_a_runtime_at_the_edges_of_every_range_serves():
    rt = gl.Runtime(device="cpu", policy_options={"margin_window": 1, "margin_quantile": 1.0,
                                                  "min_margin_us": 0}, spin_us=0, warmup_rounds=0,
                    profile_reps=1, predictor="rls",
                    predictor_options={"alpha": 1.0, "forgetting": 1.0, "warmup_batches": 0})
    rt.register("affine", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4))
    with rt:
        for _ in range(20):
            assert torch.equal(rt.infer("affine", torch.ones(4)), torch.full((4,), 3.0))


def test_idle_polling_stops_at_shutdown():
    # Lanes poll for up to spin_us (here a second) before sleeping; shutdown must not wait it out.
    rt = gl.Runtime(device="cpu", spin_us=1e6, warmup_rounds=1, profile_reps=3)
    rt.register("affine", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4))
    rt.start()
    rt.infer("affine", torch.ones(4))  # the lane now polls for its next batch
    t0 = time.monotonic()
    rt.shutdown()
    assert time.monotonic() - t0 < 0.8
