"""gpulanes.sim: the discrete-event simulator. It runs the runtime's own C++ scheduling code
(event loop, policies, admission control, metrics) on virtual time, over simulated GPUs split
into lanes, so policies and layouts can be compared at cluster scale, deterministically,
without a GPU.

>>> import gpulanes as gl
>>> sim = gl.sim.Simulator(gpus=2, interference="linear", seed=0)
>>> sim.add_model("resnet50", slo_ms=108)                 # profile from the built-in zoo
>>> sim.add_model("bert", slo_ms=22)
>>> sim.set_lanes([{"gpu": 0, "sms": 66, "models": ["resnet50"]},
...                {"gpu": 0, "sms": 66, "models": ["bert"]},
...                {"gpu": 1, "sms": 132, "models": ["resnet50", "bert"]}])
>>> summary = sim.run(gl.workloads.Poisson({"resnet50": 800, "bert": 400}, 60, seed=1))

A batch's duration is its solo latency at the lane's SM share (from a profile in the
``gpulanes.profiles`` schema; the built-in ``"zoo"`` set is synthetic, see
:mod:`gpulanes.sim.zoo`) times seeded lognormal noise, stretched by the interference model
while other lanes of the same GPU run batches. Interference models: ``"none"``, ``"linear"``
(gpu-let's L2/DRAM regression with its published coefficients), ``"nonlinear"``, a dict
``{"kind": "linear", "coefficients": [c0, c1, c2, c3, c4]}`` and friends, or :func:`drift`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .. import _C
from .. import profiles as _profiles
from ..errors import InvalidInput, UnknownModel
from .._checks import _flag, _number
from ..planning import dispersions, replan_config, share_profile
from .._options import _model_stats, _policy_options, _predictor_config, _trace_frame
from ..workloads import Workload, model_summary
from . import scenarios, zoo
from .scenarios import Scenario, scenario

__all__ = ["Simulator", "drift", "GPULET_COEFFICIENTS", "scenario", "scenarios", "zoo"]

# gpu-let's interference regression on an RTX 2080 Ti (c0..c4; shared/REFERENCES.md).
GPULET_COEFFICIENTS = (0.113, 0.716, 0.355, 0.088, 0.895)

_INTERFERENCE = {
    "none": {"kind": "none"},
    "linear": {"kind": "linear", "coefficients": list(GPULET_COEFFICIENTS)},
    "nonlinear": {"kind": "nonlinear", "alpha": 0.6, "beta": 2.0, "capacity": 0.8},
}


def drift(base: Union[str, Dict[str, Any]] = "linear", *, start_s: float, ramp_s: float = 0.0,
          scale: float = 2.0) -> Dict[str, Any]:
    """Interference that changes while serving: ``base``'s extra slow-down (factor - 1) is
    multiplied by 1 until ``start_s``, then moves linearly to ``scale`` over ``ramp_s``."""
    return {"kind": "drift", "base": _interference(base), "start_s": float(start_s),
            "ramp_s": float(ramp_s), "scale": float(scale)}


def _interference(spec: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
    if isinstance(spec, str):
        if spec not in _INTERFERENCE:
            raise InvalidInput(f"interference must be one of {sorted(_INTERFERENCE)} or a dict, "
                               f"got {spec!r}")
        return dict(_INTERFERENCE[spec])
    if not isinstance(spec, dict) or "kind" not in spec:
        raise InvalidInput("an interference dict needs a 'kind'")
    return {**_INTERFERENCE.get(spec["kind"], {}), **spec}


class Simulator:
    """Simulated GPUs, the models they serve and how they are split into lanes.

    Args:
        gpus: number of GPUs.
        sm_per_gpu: SMs per GPU (H100: 132).
        memory_gb: device memory per GPU; a layout whose models do not fit is refused.
        profile: ``"zoo"`` (built-in, synthetic), a profile file path, or a profile document.
        policy, policy_options: as for :class:`gpulanes.Runtime`.
        predictor, predictor_options: as for :class:`gpulanes.Runtime` (default ``"none"``);
            ``predictor_options={"record": True}`` keeps every batch for :meth:`predictions`.
        interference: the ground truth of how co-running batches slow each other down.
        seed: seeds the batch-duration noise; the same seed and workload give the same trace.
        noise_cv: coefficient of variation of the lognormal noise on each batch's duration.
        trace: record every request (:meth:`trace_frame`).
    """

    def __init__(self, gpus: int = 1, sm_per_gpu: int = zoo.H100_SMS,
                 memory_gb: float = zoo.H100_MEMORY_GB,
                 profile: Union[str, "os.PathLike[str]", Dict[str, Any]] = "zoo",
                 policy: str = "deadline", predictor: str = "none",
                 interference: Union[str, Dict[str, Any]] = "linear", seed: int = 0, *,
                 policy_options: Optional[Dict[str, Any]] = None,
                 predictor_options: Optional[Dict[str, Any]] = None, noise_cv: float = 0.02,
                 trace: bool = False) -> None:
        if gpus < 1 or sm_per_gpu < 1 or memory_gb <= 0:
            raise InvalidInput("gpus, sm_per_gpu and memory_gb must be positive")
        self.policy = policy
        self.policy_options = _policy_options(policy, policy_options)
        self.predictor = predictor
        self.predictor_options = _predictor_config(predictor, predictor_options)
        _C.validate_options(policy, self.policy_options, self.predictor_options)
        self.interference = _interference(interference)
        if isinstance(profile, dict):
            self._profiles = _profiles.validate(profile)
        elif profile == "zoo":
            self._profiles = zoo.profiles()
        else:
            self._profiles = _profiles.load(profile)
        self.gpus = [{"sms": int(sm_per_gpu), "memory_gb": float(memory_gb)} for _ in range(gpus)]
        self.seed = int(seed)
        self.noise_cv = float(noise_cv)
        self.trace = bool(trace)
        self._models: Dict[str, Dict[str, Any]] = {}
        self._layout: Optional[List[Dict[str, Any]]] = None
        self._planned_rates: Dict[str, float] = {}
        self._core = None  # the last run's C++ simulator

    # -- setup -------------------------------------------------------------------------------

    def add_model(self, name: str, slo_ms: Optional[float] = None,
                  profile_key: Optional[str] = None, *, max_batch_size: int = 32,
                  max_queue: int = 1_000_000) -> None:
        """Adds a model served under ``name`` with the profile entries of ``profile_key``
        (default: ``name``), one per measured SM share. ``slo_ms`` defaults to the zoo's SLO
        for that key."""
        key = profile_key or name
        if name in self._models:
            raise InvalidInput(f"a model named {name!r} was already added")
        entries = _profiles.find(self._profiles, key)
        if not entries:
            known = sorted({e["model"] for e in self._profiles["profiles"]})
            raise UnknownModel(f"no profile for {key!r}; the profile set has {known}")
        if slo_ms is None:
            if key not in zoo.SLO_MS:
                raise InvalidInput(f"slo_ms is required for {name!r}")
            slo_ms = zoo.SLO_MS[key]
        if slo_ms <= 0 or max_batch_size < 1 or max_queue < 1:
            raise InvalidInput("slo_ms, max_batch_size and max_queue must be positive")
        self._models[name] = {"key": key, "slo_ms": float(slo_ms), "entries": entries,
                              "max_batch_size": int(max_batch_size), "max_queue": int(max_queue)}

    def add_scenario(self, scn: Union[str, Scenario], **kw: Any) -> Scenario:
        """Adds every model of a scenario (``"game"``, ``"traffic"``, ``"scen1"``..``"scen5"``)
        with its SLO; returns the scenario (its ``workload(load, duration_s)`` drives a run)."""
        scn = scenario(scn) if isinstance(scn, str) else scn
        for name, key in scn.models.items():
            self.add_model(name, scn.slo_ms(name), key, **kw)
        return scn

    def set_lanes(self, lanes: Sequence[Mapping[str, Any]]) -> None:
        """Splits the GPUs into lanes: each ``{"gpu": i, "sms": n, "models": [...]}`` (or
        ``"sm_share": 0.5`` instead of ``"sms"``). A model may be on several lanes (they share
        its queue). Without a layout every GPU is one whole lane serving every model."""
        layout = []
        for i, lane in enumerate(lanes):
            gpu = int(lane.get("gpu", 0))
            if not 0 <= gpu < len(self.gpus):
                raise InvalidInput(f"lane {i}: no GPU {gpu} (there are {len(self.gpus)})")
            total = self.gpus[gpu]["sms"]
            if "sms" in lane:
                sms = int(lane["sms"])
            else:
                sms = round(float(lane.get("sm_share", 1.0)) * total)
            if not 1 <= sms <= total:
                raise InvalidInput(f"lane {i}: {sms} SMs is not within 1..{total}")
            models = list(lane.get("models", self._models))
            unknown = [m for m in models if m not in self._models]
            if unknown:
                raise UnknownModel(f"lane {i} names models that were not added: {unknown}")
            layout.append({"gpu": gpu, "sms": sms, "models": models})
        self._layout = layout
        self._planned_rates = {}

    def lanes(self) -> List[Dict[str, Any]]:
        """The lane layout a run uses: gpu, sms, sm_share, models."""
        layout = self._layout if self._layout is not None else [
            {"gpu": g, "sms": spec["sms"], "models": list(self._models)}
            for g, spec in enumerate(self.gpus)]
        return [{**lane, "sm_share": lane["sms"] / self.gpus[lane["gpu"]]["sms"]} for lane in layout]

    # -- running -----------------------------------------------------------------------------

    def run(self, workload: Workload, *, warmup_s: float = 0.0,
            deadline_ms: Optional[Mapping[str, float]] = None,
            replan: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
        """Simulates ``workload`` (any open-loop workload of :mod:`gpulanes.workloads`) from a
        fresh state and returns the load driver's summary (per model: requests, met, late,
        dropped, rejected, failed, attainment, goodput, p50/p99 ms; requests arriving before
        ``warmup_s`` are left out) plus ``"simulator"``: arrivals, steps, simulated and wall
        seconds, simulated requests per wall second.

        ``replan={"every_s": 10, "variant": "spatiotemporal"}`` (optional ``alpha`` 0.5,
        ``min_rate`` 1.0, ``drift`` (e.g. 0.5: re-plan early when a model's rate moved by 50%,
        checked every ``check_s``, 1 s), ``granularity`` 8, ``gpus``, ``admission`` True):
        every ``every_s`` the planner gets the rates seen since the last re-plan
        (EWMA-smoothed) and a layout that differs is applied while serving (dispatching pauses
        until running batches end; queued requests stay queued). When the plan cannot place a
        model's whole rate, the excess is shed at submit (counted ``rejected``) unless
        ``admission`` is False. ``"replans"`` in the result lists each one: time, rates, GPUs
        used, feasible, whether the layout changed and when it took over, and what planning
        cost; ``"lanes_at_end"`` is the layout serving when the run ended (:meth:`lanes` stays
        the layout a run starts from)."""
        if not isinstance(workload, Workload):
            raise TypeError("the simulator runs open-loop workloads (gpulanes.workloads."
                            "Poisson, Gamma, Steps, Ramp, AzureTrace)")
        if not self._models:
            raise InvalidInput("add models before run()")
        times, idx, names = workload.arrays()
        order = list(self._models)
        unknown = [n for n in names if n not in self._models]
        if unknown:
            raise UnknownModel(f"the workload has models that were not added: {unknown}")
        remap = np.array([order.index(n) for n in names], dtype=np.int32)
        models = remap[idx] if len(idx) else idx
        deadline_ns = [int(deadline_ms[m] * 1e6) if deadline_ms and m in deadline_ms else 0
                       for m in order]
        config = self._config()
        if replan is not None:
            planner = self._planner_config(replan.get("variant", "spatiotemporal"),
                                           replan.get("gpus"), replan.get("granularity", 8))
            config["replan"] = replan_config(replan, planner)
            config["replan"]["initial_rates"] = [float(self._planned_rates.get(m, -1.0))
                                                 for m in self._models]
        self._core = _C.Simulator(config)
        res = self._core.run(times, models, float(warmup_s), deadline_ns)
        window = max(1e-9, workload.duration_s - warmup_s)
        per = {}
        for name, r in zip(order, res["models"]):
            per[name] = model_summary(requests=r["requests"], met=r["met"], late=r["late"],
                                      dropped=r["dropped"], rejected=r["rejected"],
                                      failed=r["failed"], p50_ms=r["p50_ms"],
                                      p99_ms=r["p99_ms"], window_s=window)
        return {
            "models": per,
            "replans": res["replans"],
            "traffic": res["traffic"],
            "lanes_at_end": [{**l, "models": [order[i] for i in l["models"]]}
                             for l in self._core.layout()],
            "duration_s": workload.duration_s,
            "warmup_s": warmup_s,
            "submit_lateness_ms": {"p50": 0.0, "p99": 0.0, "max": 0.0},  # exact on virtual time
            "simulator": {"arrivals": res["arrivals"], "steps": res["steps"],
                          "simulated_s": res["simulated_s"], "wall_s": res["wall_s"],
                          "requests_per_wall_s": res["arrivals"] / max(1e-9, res["wall_s"])},
        }

    def plan(self, rates: Mapping[str, float], variant: str = "spatiotemporal", *,
             gpus: Optional[int] = None, granularity: int = 8,
             cv: Union[None, float, Mapping[str, Optional[float]]] = None,
             traffic: Optional[Mapping[str, Mapping[str, Any]]] = None,
             check: bool = True, spread: bool = True) -> Dict[str, Any]:
        """Plans lanes for ``rates`` (mean requests/s per model) on up to ``gpus`` GPUs
        (default: the simulator's): the gpu-let algorithm on SM-count lanes (multiples of
        ``granularity``; csrc/gpulanes/plan/planner.h). ``variant``: ``"spatiotemporal"``
        (placement checked against predicted interference), ``"no_interference"``,
        ``"temporal_only"`` (whole-GPU lanes).

        Lanes are sized for each model's 99th-percentile burst within one SLO, from ``cv``:
        the coefficient of variation of its arrival gaps (1: Poisson; 0: plan for the mean
        rate), one number for all or a dict by model; None (the default) means unknown, which is
        planned as bursty (CV 2). ``traffic``: a run's ``"traffic"`` (or
        :meth:`gpulanes.Runtime.measured_traffic`): each model's measured CV and its measured
        peak rate (99th percentile per SLO window), which also covers slow bursts; ``cv``, when
        given, overrides its CVs. With ``spread``, GPUs of the budget that the plan would leave
        idle take more headroom. With ``check``, the plan is simulated first (Gamma arrivals at
        the given rates and CVs, this simulator's interference): ``gpus_needed`` is then the
        fewest GPUs whose plan held 99% of every model, and a plan that does not hold falls back
        to temporal sharing of whole GPUs when that does better (``why`` says so).

        Returns the plan: gpus_used, gpus_needed, headroom, feasible, unplaced_rate (mean
        requests/s), planned_rate (what the lanes were sized for), meets_slos, simulated
        (passed, min_attainment, attainment by model), why, rates and lanes (gpu, sms, duty_ms,
        models with batch, rate and predicted latency). :meth:`apply_plan` makes it the layout."""
        unknown = [m for m in rates if m not in self._models]
        if unknown:
            raise UnknownModel(f"rates for models that were not added: {unknown}")
        names = list(self._models)
        if traffic is not None and (not isinstance(traffic, Mapping) or not all(
                isinstance(t, Mapping) for t in traffic.values())):
            raise InvalidInput("traffic must map model names to measurements such as a run's "
                               f"'traffic' ({{'m': {{'cv': 1.2, 'peak_rate': 300.0}}}}), got {traffic!r}")
        seen = dict(traffic or {})
        if cv is None and seen:
            cv = {m: seen[m].get("cv") for m in names if m in seen}
        disp = dispersions(cv, names)
        models = [{**cfg, "rate": _number(f"rate of {cfg['name']!r}", rates.get(cfg["name"], 0.0)),
                   "dispersion": disp[cfg["name"]],
                   "peak_rate": _number(f"peak_rate of {cfg['name']!r}",
                                        (seen.get(cfg["name"]) or {}).get("peak_rate") or 0.0)}
                  for cfg in self._model_configs()]
        config = {**self._planner_config(variant, gpus, granularity), "spread": _flag("spread", spread)}
        if _flag("check", check):
            out = _C.make_plan(models, config, dict(self.interference))
        else:
            out = _C.make_plan(models, config)
        out["rates"] = {m["name"]: m["rate"] for m in models}
        return out

    def _planner_config(self, variant: str, gpus: Optional[int], granularity: int) -> Dict[str, Any]:
        cfg = {"variant": variant, "gpus": int(gpus or len(self.gpus)),
               "sms_per_gpu": self.gpus[0]["sms"], "granularity": int(granularity),
               "memory_gb": self.gpus[0]["memory_gb"]}
        if self.interference.get("kind") == "linear":
            cfg["interference"] = list(self.interference["coefficients"])
        return cfg

    def apply_plan(self, plan: Mapping[str, Any]) -> None:
        """Uses a plan's lanes as the layout (see :meth:`set_lanes`)."""
        if plan["gpus_used"] > len(self.gpus):
            raise InvalidInput(f"the plan uses {plan['gpus_used']} GPUs; there are {len(self.gpus)}")
        self.set_lanes([{"gpu": l["gpu"], "sms": l["sms"],
                         "models": [m["model"] for m in l["models"]]} for l in plan["lanes"]])
        rates: Dict[str, float] = dict(plan.get("rates") or {})
        if not rates:  # a plan made elsewhere: the rates its lanes were sized for
            for lane in plan["lanes"]:
                for m in lane["models"]:
                    rates[m["model"]] = rates.get(m["model"], 0.0) + m["rate"]
        self._planned_rates = rates  # the rates this layout serves: drift is measured from them

    def _model_configs(self) -> List[Dict[str, Any]]:
        models = []
        for name in self._models:
            m = self._models[name]
            prof = share_profile(m["entries"])
            models.append({"name": name, "slo_ns": int(m["slo_ms"] * 1e6),
                           "max_batch_size": m["max_batch_size"], "max_queue": m["max_queue"],
                           **prof})
        return models

    def _config(self) -> Dict[str, Any]:
        order = list(self._models)
        models = self._model_configs()
        lanes = [{"gpu": l["gpu"], "sms": l["sms"], "models": [order.index(x) for x in l["models"]]}
                 for l in self.lanes()]
        return {"policy": self.policy, "policy_options": self.policy_options,
                "trace": self.trace, "gpus": self.gpus, "lanes": lanes,
                "interference": self.interference, "noise_cv": self.noise_cv, "seed": self.seed,
                "predictor": self.predictor_options, "models": models}

    # -- results of the last run -------------------------------------------------------------

    def _last(self):
        if self._core is None:
            raise InvalidInput("run() first")
        return self._core

    def stats(self, per: str = "model") -> Dict[Any, Dict[str, Any]]:
        """The last run's statistics, as :meth:`gpulanes.Runtime.stats` gives them (the same
        C++ metrics), over the whole run including warm-up. ``per="lane"`` adds gpu, sms,
        sm_share and the interference slow-down each lane's batches saw (mean, max)."""
        core = self._last()
        if per == "lane":
            return {s["index"]: s for s in core.lane_stats()}
        if per != "model":
            raise ValueError(f"per must be 'model' or 'lane', not {per!r}")
        return _model_stats(core.stats(), {n: m["slo_ms"] for n, m in self._models.items()})

    def predictions(self) -> Dict[str, Any]:
        """With ``predictor_options={"record": True}``: every finished batch of the last run, as
        numpy columns: model (names), lane, batch_size, start_s/end_s (from the run's start),
        solo_ms (the profile's), predicted_ms (what the scheduler predicted), actual_ms, and
        the ``fine`` and ``coarse`` co-location features (n x 12; see gpulanes.predict.FEATURES)."""
        cols = self._last().predictions()
        names = np.array(list(self._models), dtype=object)
        cols["model"] = names[cols.pop("model_index")] if len(cols["lane"]) else names[:0]
        origin = _C.SIM_ORIGIN_NS / 1e9
        cols["start_s"] = cols["start_s"] - origin
        cols["end_s"] = cols["end_s"] - origin
        return cols

    def predictor_weights(self) -> np.ndarray:
        """The last run's predictor weights at its end (learned, for sgd and rls)."""
        return np.array(self._last().predictor_weights())

    def trace_frame(self):
        """With ``trace=True``: the last run's requests as a DataFrame (as
        :meth:`gpulanes.Runtime.trace_frame`), times in seconds from the start of the run."""
        return _trace_frame(self._last().trace(), list(self._models), _C.SIM_ORIGIN_NS)
