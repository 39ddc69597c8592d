"""Lane planning for a serving :class:`gpulanes.Runtime` (the same core planner and re-planning
trigger the simulator uses; ``csrc/gpulanes/plan/``).

>>> rt = gl.Runtime(device="cuda", replan={"every_s": 10, "drift": 0.5})
>>> plan = rt.plan()                      # for the rates measured so far
>>> rt.apply_plan(plan)                   # lanes follow the plan; what it cannot place is shed

Plans are JSON-able dicts: ``variant``, ``gpus_used``, ``feasible``, ``unplaced_rate`` (by
model, requests/s no device was left for), ``predicted_attainment`` (the share of the offered
requests it places), ``meets_slos`` (every lane within its SLOs under predicted interference)
and ``lanes`` (``gpu``, ``sms``, ``duty_ms``, ``models`` with ``batch``, ``rate`` and predicted
``latency_ms``).
:func:`gpulanes.plot.plan` draws one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from . import profiles as _profiles
from ._checks import _flag, _number
from .errors import InvalidInput, UnknownModel

__all__ = ["REPLAN_KEYS", "dispersions", "replan_config", "share_profile"]

# Re-planning options and their defaults (ReplanOptions in csrc/gpulanes/plan/replanner.h).
REPLAN_KEYS: Dict[str, Any] = {"every_s": None, "variant": "spatiotemporal", "alpha": 0.5,
                               "min_rate": 1.0, "drift": 0.0, "check_s": 1.0, "granularity": 8,
                               "gpus": None, "admission": True,
                               "admit_fraction": 0.9}


def replan_config(replan: Mapping[str, Any], planner: Dict[str, Any]) -> Dict[str, Any]:
    """Validated re-planning options for the core; ``planner``: the planner config to start
    from (the variant and granularity of ``replan`` override its own)."""
    if not isinstance(replan, Mapping):
        raise InvalidInput(f"replan must be a dict such as {{'every_s': 10}}, got {replan!r}")
    unknown = set(replan) - set(REPLAN_KEYS)
    if unknown or replan.get("every_s") is None:
        raise InvalidInput(f"replan takes every_s > 0 and {sorted(set(REPLAN_KEYS) - {'every_s'})}"
                           f"; got {dict(replan)}")
    opt = {k: replan.get(k, v) for k, v in REPLAN_KEYS.items()}
    every_s = _number("replan every_s", opt["every_s"])
    if every_s <= 0:
        raise InvalidInput(f"replan every_s must be > 0, got {every_s}")
    if opt["gpus"] is not None:
        planner = {**planner, "gpus": _number("replan gpus", opt["gpus"], integer=True)}
    if not isinstance(opt["variant"], str):
        raise InvalidInput(f"replan variant must be a string, got {opt['variant']!r}")
    return {"every_s": every_s, "alpha": _number("replan alpha", opt["alpha"]),
            "min_rate": _number("replan min_rate", opt["min_rate"]),
            "drift": _number("replan drift", opt["drift"]),
            "check_s": _number("replan check_s", opt["check_s"]),
            "admission": _flag("replan admission", opt["admission"]),
            "admit_fraction": _number("replan admit_fraction", opt["admit_fraction"]),
            "planner": {**planner, "variant": opt["variant"],
                        "granularity": _number("replan granularity", opt["granularity"], integer=True)}}


def dispersions(cv: Union[None, float, Mapping[str, Optional[float]]],
                 names: Sequence[str]) -> Dict[str, float]:
    """Per model, the planner's dispersion (CV squared; -1: unknown) from ``cv``."""
    def one(label: str, v: Optional[float]) -> float:
        if v is None:
            return -1.0
        x = _number(label, v)
        if x < 0 or x > 1000:
            raise InvalidInput(f"{label} must be a coefficient of variation in [0, 1000], got {v!r}")
        return x * x
    if cv is None or not isinstance(cv, Mapping):
        d = one("cv", cv)
        return {n: d for n in names}
    unknown = [m for m in cv if m not in names]
    if unknown:
        raise UnknownModel(f"cv for models that are not known: {unknown}")
    return {n: one(f"cv of {n!r}", cv.get(n)) for n in names}


def share_profile(entries: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """A model's profile entries (one per measured SM share, :mod:`gpulanes.profiles` schema) as
    the core's planner and simulator take them."""
    shares = []
    for e in sorted(entries, key=lambda e: e["sm_share"]):
        default = e.get("intensity") or {}
        pts = e["points"]
        shares.append({"share": e["sm_share"],
                       "batch_sizes": [p["batch_size"] for p in pts],
                       "p50_us": [float(p["p50_us"]) for p in pts],
                       "l2": [float(p.get("l2", default.get("l2", 0.0))) for p in pts],
                       "dram": [float(p.get("dram", default.get("dram", 0.0))) for p in pts]})
    memory = max((e.get("memory_mb", 0.0) for e in entries), default=0.0)
    return {"shares": shares, "memory_mb": float(memory)}


class Planning:
    """The planning methods of :class:`gpulanes.Runtime` (it mixes them in)."""

    _core: Any
    _slo_ms: Dict[str, float]

    def measured_rates(self) -> Dict[str, float]:
        """Requests/s per model: the re-planner's EWMA of offered requests (shed ones
        included) when ``replan`` is on, else an estimate from the gaps between recently
        admitted requests (which under admission limits understates demand)."""
        return self._core.planning().measured_rates()

    def measured_traffic(self) -> Dict[str, Dict[str, Any]]:
        """Per model, its offered traffic since start, counted in windows one SLO long:
        ``rate`` (requests/s), ``dispersion`` (variance / mean of the count per window; 1 for
        Poisson), ``cv`` (its square root: about the CV of the arrival gaps), ``peak_rate`` (99th
        percentile of the count per window, per second), ``window_ms`` and ``windows``. ``cv``
        and ``dispersion`` are None until 20 windows were seen (the planner then assumes
        bursty traffic). Refused requests count: this is demand."""
        return self._core.planning().traffic()

    def plan(self, rates: Optional[Mapping[str, float]] = None,
             variant: Optional[str] = None, *, gpus: Optional[int] = None,
             granularity: Optional[int] = None,
             cv: Union[None, float, Mapping[str, Optional[float]]] = None,
             check: bool = True) -> Dict[str, Any]:
        """Plans lanes for ``rates`` (requests/s by model; default :meth:`measured_rates`) on this
        runtime's devices: on GPUs, SM-count lanes (multiples of ``granularity``) on up to
        ``gpus`` GPUs; on the CPU, at most ``cpu_lanes`` lanes. Profiles by SM share come from
        :meth:`load_planner_profiles`; a model without one is planned with its measured profile
        as the whole device's. ``variant``: ``"spatiotemporal"`` (default), ``"no_interference"``,
        ``"temporal_only"``. Lanes are sized for each model's burst: ``cv`` as in
        :meth:`gpulanes.sim.Simulator.plan`, by default the burstiness :meth:`measured_traffic`
        saw (unknown: planned as bursty). With ``check`` the plan is proven by simulation first
        and falls back when it does not hold (``simulated``, ``why``, ``gpus_needed``). Needs a
        started runtime."""
        names = self._core.model_names(False)  # by the core's model index; "" unregistered
        given = dict(rates) if rates is not None else self.measured_rates()
        unknown = [m for m in given if m not in self._slo_ms]
        if unknown:
            raise UnknownModel(f"rates for models that are not registered: {unknown}")
        config = self._core.planning().planner_config()
        if variant is not None:
            config["variant"] = variant
        if gpus is not None:
            config["gpus"] = int(gpus)
        if granularity is not None:
            config["granularity"] = int(granularity)
        vector = [float(given.get(m, 0.0)) if m else 0.0 for m in names]
        by_model = None if cv is None else dispersions(cv, list(self._slo_ms))
        disp = [] if by_model is None else [by_model[m] if m else 1.0 for m in names]
        plan = self._core.planning().plan(vector, config, disp, _flag("check", check))
        plan["rates"] = {m: r for m, r in zip(names, vector) if m}
        return plan

    def apply_plan(self, plan: Mapping[str, Any], *, admission: bool = True,
                   admit_fraction: float = 0.9) -> bool:
        """Makes ``plan`` the lane layout while serving (as :meth:`set_lanes`: nothing queued is
        lost) and, with ``admission``, sheds each model's requests above ``admit_fraction`` of
        the rate the plan placed (:class:`gpulanes.Overloaded` at submit) when it could not
        place them all (a lane planned at its saturated throughput has no slack for bursts).
        Returns whether the layout changed."""
        rates = dict(plan.get("rates") or {})
        if not rates:  # a plan made elsewhere: what it placed plus what it could not
            for lane in plan["lanes"]:
                for m in lane["models"]:
                    rates[m["model"]] = rates.get(m["model"], 0.0) + m["rate"]
            for m, r in plan.get("unplaced_rate", {}).items():
                rates[m] = rates.get(m, 0.0) + r
        vector = [float(rates.get(m, 0.0)) if m else 0.0 for m in self._core.model_names(False)]
        if not 0 < admit_fraction <= 1:
            raise InvalidInput(f"admit_fraction must be in (0, 1], got {admit_fraction}")
        return self._core.planning().apply_plan(dict(plan), vector, bool(admission),
                                                float(admit_fraction))

    def replans(self) -> List[Dict[str, Any]]:
        """With ``replan``: each re-plan so far (t_s, drift, rates, dispersion (measured burstiness
        per model, -1: unknown), gpus_used, gpus_needed (fewest GPUs a plan held 99% on in
        simulation), simulated_attainment, why (a fallback, or why no plan held), feasible,
        lanes, changed, applied_t_s, plan_wall_us, apply_wall_ms)."""
        return self._core.planning().replans()

    def admission_limits(self) -> Dict[str, float]:
        """Models being shed, with the requests/s still admitted."""
        return self._core.planning().admission_limits()

    def load_planner_profiles(self, source: Any, models: Optional[Mapping[str, str]] = None) -> None:
        """Per-SM-share profiles for the planner: a profile file or document in the
        :mod:`gpulanes.profiles` schema with one entry per measured share (e.g. what
        ``benchmarks/gpu_partitions.py`` writes). ``models`` maps a registered model to its key
        in the file (default: the same name); models the file lacks keep their measured
        profile."""
        doc = _profiles.validate(source) if isinstance(source, dict) else _profiles.load(source)
        keys = dict(models or {m: m for m in self._slo_ms})
        for name, key in keys.items():
            if name not in self._slo_ms:
                raise UnknownModel(f"no model named {name!r} is registered")
            entries = _profiles.find(doc, key)
            if entries:
                self._core.planning().set_planner_profile(name, share_profile(entries))
