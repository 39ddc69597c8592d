"""Evaluating a serving setup with pytest (gpulanes' pytest plugin, installed with gpulanes).

Two models on CPU lanes in real time, then the same kind of mix (an image model and a
Transformer) on four simulated H100s in virtual time: the same fixture, the same call, the same
assertions. Run it with

    pytest examples/test_serving_slos.py --gpulanes-json=slos.json

(the project's own tests run it: tests/python/test_pytest_plugin.py).
"""

import pytest
import torch
from torch import nn


class Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MODELS = {
    "scale": dict(model=torch.jit.script(Scale().eval()), slo_ms=100,
                  example_inputs=torch.zeros(1, 16), max_batch_size=16),
    "mlp": dict(model=torch.jit.script(Mlp().eval()), slo_ms=200,
                example_inputs=torch.zeros(1, 64), max_batch_size=16),
}


@pytest.mark.gpulanes(device="cpu", cpu_lanes=2, models=MODELS, profile_cache=False)
def test_two_models_on_cpu_lanes_hold_their_slos(gpulanes, gpulanes_runtime):
    # Bursty arrivals (Gamma, CV 2), far below what two lanes serve: every deadline holds.
    ev = gpulanes.evaluate(gpulanes_runtime, gpulanes.gamma({"scale": 60, "mlp": 30}, cv=2,
                                                            duration_s=3), name="cpu mix")
    ev.assert_slo(attainment=0.99, p99_ms={"scale": 100, "mlp": 200})
    ev.assert_goodput(at_least=60)


def test_the_same_mix_on_four_simulated_h100s(gpulanes):
    rates = {"resnet50": 1500, "bert": 900}
    sim = gpulanes.simulator(gpus=4, models={"resnet50": None, "bert": None})
    # Lanes sized for Gamma CV 3 bursts, packed onto as few GPUs as hold them.
    plan = sim.plan(rates, cv=3, spread=False)
    sim.apply_plan(plan)
    ev = gpulanes.evaluate(sim, gpulanes.gamma(rates, cv=3, duration_s=20), warmup_s=2,
                           name="h100 mix, planned")
    ev.assert_slo(attainment=0.99).assert_goodput(at_least=0.98 * sum(rates.values()))
    ev.assert_gpus_at_most(2)


def test_peak_rate_of_bert_on_one_simulated_h100(gpulanes):
    sim = gpulanes.simulator(gpus=1, models={"bert": None})
    peak = gpulanes.peak_rate(sim, lambda rate: gpulanes.poisson({"bert": rate}, 10),
                              start=500, attainment=0.99, name="bert peak")
    assert peak["rate"] >= 1000, peak["tried"]
    peak["at_peak"].assert_slo(attainment=0.99)
