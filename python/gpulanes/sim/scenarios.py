"""Workload mixes of the gpu-let evaluation, for the simulator and the planner.

``game`` and ``traffic`` are the gpu-let paper's applications (``shared/REFERENCES.md``): "game"
is 6 LeNets and a ResNet-50, "traffic" SSD-MobileNet, GoogLeNet and VGG-16, each model at the same
Poisson rate (the paper sweeps 100..2400 and 100..850 requests/s per model).

``scen1`` .. ``scen5`` are **our** mixes of the nine zoo models: the gpu-let paper evaluates five
scenarios, but their exact model sets and rates were not available to us (REFERENCES.md does not
list them), so these stand in for them with stated weights (a model's rate = load x weight):

- scen1: all nine models, equal weights
- scen2: heavy CNNs: ResNet-50, VGG-16, DenseNet-161, GoogLeNet
- scen3: light CNNs: LeNet, MobileNetV2, MNASNet, GoogLeNet (LeNet at 4x)
- scen4: language + vision: BERT at 2x, ResNet-50, MobileNetV2
- scen5: skewed: ResNet-50 at 4x, SSD-MobileNet, VGG-16, MNASNet, BERT at 1x
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

from .. import workloads
from . import zoo

__all__ = ["Scenario", "SCENARIOS", "scenario"]


@dataclass(frozen=True)
class Scenario:
    """Models (instance name -> zoo profile key) and their rate weights."""

    name: str
    models: Mapping[str, str]
    weights: Mapping[str, float]
    loads: Tuple[float, float]  # the range of load (requests/s per unit weight) worth sweeping

    def slo_ms(self, model: str) -> float:
        return float(zoo.SLO_MS[self.models[model]])

    def rates(self, load: float) -> Dict[str, float]:
        """Requests per second per model at `load` (per unit of weight)."""
        return {m: load * w for m, w in self.weights.items()}

    def workload(self, load: float, duration_s: float, seed: int = 0) -> workloads.Poisson:
        return workloads.Poisson(self.rates(load), duration_s, seed=seed)


def _mix(name: str, weights: Mapping[str, float], loads: Tuple[float, float]) -> Scenario:
    return Scenario(name, {m: m for m in weights}, dict(weights), loads)


SCENARIOS: Dict[str, Scenario] = {
    "game": Scenario("game", {**{f"lenet{i}": "lenet" for i in range(6)}, "resnet50": "resnet50"},
                     {**{f"lenet{i}": 1.0 for i in range(6)}, "resnet50": 1.0}, (100, 2400)),
    "traffic": _mix("traffic", {"ssd_mobilenet": 1, "googlenet": 1, "vgg16": 1}, (100, 850)),
    "scen1": _mix("scen1", {m: 1.0 for m in zoo.MODELS}, (50, 1500)),
    "scen2": _mix("scen2", {"resnet50": 1, "vgg16": 1, "densenet161": 1, "googlenet": 1},
                  (50, 1500)),
    "scen3": _mix("scen3", {"lenet": 4, "mobilenet_v2": 1, "mnasnet": 1, "googlenet": 1},
                  (100, 3000)),
    "scen4": _mix("scen4", {"bert": 2, "resnet50": 1, "mobilenet_v2": 1}, (50, 1500)),
    "scen5": _mix("scen5", {"resnet50": 4, "ssd_mobilenet": 1, "vgg16": 1, "mnasnet": 1,
                            "bert": 1}, (25, 800)),
}


def scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; available: {sorted(SCENARIOS)}") from None
