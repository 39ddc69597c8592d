"""Evaluating a serving setup against its SLOs, in code: what the pytest plugin
(:mod:`gpulanes.pytest_plugin`) is made of, usable without pytest too.

>>> ev = evaluate(rt, workloads.Poisson({"a": 200, "b": 100}, duration_s=10), inputs=...)
>>> ev.assert_slo(attainment=0.99, p99_ms={"a": 50})
>>> peak = peak_rate(lambda rate: evaluate(sim, workloads.Gamma({"a": rate}, 3, 30)),
...                  attainment=0.99, start=100)

:func:`evaluate` drives a workload of :mod:`gpulanes.workloads` against a started
:class:`gpulanes.Runtime` in real time, or against a :class:`gpulanes.sim.Simulator` in virtual
time: the same call, the same :class:`Evaluation`. Its ``assert_*`` methods fail with an
:class:`SloViolation` (an ``AssertionError``) that carries a table of what was measured against
what was asked, per model.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .errors import InvalidInput

__all__ = ["Evaluation", "SloViolation", "evaluate", "peak_rate", "peak_search",
           "check_counters"]

Inputs = Mapping[str, Union[Sequence[Any], Callable[[], Sequence[Any]]]]


class SloViolation(AssertionError):
    """An evaluation did not hold what was asked; ``str()`` is the table, ``rows`` the data."""

    def __init__(self, message: str, rows: List[Dict[str, Any]]) -> None:
        super().__init__(message)
        self.rows = rows


class Evaluation:
    """What one run measured: per model requests, met, late, dropped, rejected, failed,
    attainment, goodput (met per second of the measured window), p50/p99 latency (ms) and
    mean batch size; the GPUs its lanes used. ``checks`` records every assertion made on it
    (what was asked, whether it held), for reports."""

    def __init__(self, name: str, kind: str, summary: Dict[str, Any], *, workload: str,
                 gpus_used: int, batch_sizes: Mapping[str, float]) -> None:
        self.name = name
        self.kind = kind              # "runtime" (real time) or "simulator" (virtual time)
        self.workload = workload      # how the load was made, for reports
        self.duration_s = float(summary.get("duration_s", 0.0))
        self.warmup_s = float(summary.get("warmup_s", 0.0))
        self.models: Dict[str, Dict[str, Any]] = {
            m: {**row, "mean_batch": float(batch_sizes.get(m, 0.0))}
            for m, row in summary["models"].items()}
        self.gpus_used = int(gpus_used)
        self.checks: List[Dict[str, Any]] = []

    # -- what was measured -------------------------------------------------------------------

    @property
    def requests(self) -> int:
        return sum(r["requests"] for r in self.models.values())

    @property
    def attainment(self) -> float:
        """Met over requests, all models together (1.0 for no requests)."""
        n = self.requests
        return sum(r["met"] for r in self.models.values()) / n if n else 1.0

    @property
    def goodput(self) -> float:
        return sum(r["goodput"] for r in self.models.values())

    def worst_attainment(self) -> float:
        return min((r["attainment"] for r in self.models.values()), default=1.0)

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "workload": self.workload,
                "duration_s": self.duration_s, "warmup_s": self.warmup_s,
                "gpus_used": self.gpus_used, "attainment": self.attainment,
                "goodput": self.goodput, "models": self.models, "checks": self.checks}

    def table(self, asked: Optional[Mapping[str, Mapping[str, Any]]] = None) -> str:
        """Per model: what was measured, with what was asked beside it ("0.97 < 0.99")."""
        asked = asked or {}
        head = ["model", "requests", "attainment", "p50 ms", "p99 ms", "goodput/s", "dropped",
                "rejected", "failed", "mean batch"]
        lines = [head]
        for m, r in sorted(self.models.items()):
            want = asked.get(m, {})
            lines.append([m, str(r["requests"]),
                          _vs(r["attainment"], want.get("attainment"), ">=", "{:.4f}"),
                          _vs(r["p50_ms"], want.get("p50_ms"), "<=", "{:.2f}"),
                          _vs(r["p99_ms"], want.get("p99_ms"), "<=", "{:.2f}"),
                          _vs(r["goodput"], want.get("goodput"), ">=", "{:.1f}"),
                          str(r["dropped"]), str(r["rejected"]), str(r["failed"]),
                          f"{r['mean_batch']:.1f}"])
        widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                         for row in lines)

    # -- assertions --------------------------------------------------------------------------

    def assert_slo(self, attainment: Optional[Union[float, Mapping[str, float]]] = None, *,
                   p50_ms: Optional[Mapping[str, float]] = None,
                   p99_ms: Optional[Mapping[str, float]] = None,
                   max_failed: int = 0) -> "Evaluation":
        """Every model (or those named) met at least ``attainment`` of its requests, kept p50
        and p99 latency within the bounds given, and failed at most ``max_failed`` requests
        (ModelError and the like; drops and refusals count against attainment)."""
        __tracebackhide__ = True  # pytest shows the caller's line, not these frames
        if isinstance(max_failed, bool) or not isinstance(max_failed, int) or max_failed < 0:
            raise InvalidInput(f"max_failed must be an integer >= 0, got {max_failed!r}")
        asked: Dict[str, Dict[str, Any]] = {m: {} for m in self.models}
        if attainment is not None:
            for m, v in _per_model("attainment", attainment, self.models).items():
                asked[m]["attainment"] = _fraction("attainment", v)
        for key, bounds in (("p50_ms", p50_ms), ("p99_ms", p99_ms)):
            if bounds is not None:
                for m, v in _per_model(key, bounds, self.models, mapping_only=True).items():
                    asked[m][key] = _positive(key, v)
        bad = []
        for m, want in asked.items():
            r = self.models[m]
            if "attainment" in want and r["attainment"] < want["attainment"]:
                bad.append(f"{m}: attainment {r['attainment']:.4f} < {want['attainment']}")
            for key in ("p50_ms", "p99_ms"):
                if key in want and r[key] > want[key]:
                    bad.append(f"{m}: {key[:3]} {r[key]:.2f} ms > {want[key]} ms")
            if r["failed"] > max_failed:
                bad.append(f"{m}: {r['failed']} requests failed (at most {max_failed} allowed)")
        return self._verdict("assert_slo", asked, bad)

    def assert_goodput(self, at_least: Optional[float] = None, *,
                       per_model: Optional[Mapping[str, float]] = None) -> "Evaluation":
        """Requests per second that met their deadline: in all (``at_least``) and per model."""
        __tracebackhide__ = True  # pytest shows the caller's line, not these frames
        asked: Dict[str, Dict[str, Any]] = {m: {} for m in self.models}
        bad = []
        if at_least is not None:
            at_least = _positive("at_least", at_least, zero=True)
            if self.goodput < at_least:
                bad.append(f"goodput {self.goodput:.1f}/s < {at_least}/s in all")
        for m, v in _per_model("per_model", per_model or {}, self.models, mapping_only=True).items():
            asked[m]["goodput"] = _positive("per_model", v, zero=True)
            if self.models[m]["goodput"] < asked[m]["goodput"]:
                bad.append(f"{m}: goodput {self.models[m]['goodput']:.1f}/s < {v}/s")
        return self._verdict("assert_goodput", asked, bad, extra={"at_least": at_least})

    def assert_gpus_at_most(self, n: int) -> "Evaluation":
        """The lanes that served (every layout a re-planning run used) took at most ``n`` GPUs."""
        __tracebackhide__ = True  # pytest shows the caller's line, not these frames
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInput(f"n must be an integer >= 0, got {n!r}")
        bad = [] if self.gpus_used <= n else [f"used {self.gpus_used} GPUs > {n}"]
        return self._verdict("assert_gpus_at_most", {}, bad, extra={"gpus": n})

    def _verdict(self, check: str, asked, bad: List[str], extra=None) -> "Evaluation":
        __tracebackhide__ = True
        self.checks.append({"check": check, "asked": {m: a for m, a in asked.items() if a},
                            **(extra or {}), "passed": not bad, "violations": bad})
        if bad:
            rows = [{"model": m, **r} for m, r in sorted(self.models.items())]
            raise SloViolation(
                f"{self.name} ({self.kind}, {self.workload}): {check} failed\n  "
                + "\n  ".join(bad) + f"\n\n{self.table(asked)}\n"
                f"(GPUs used: {self.gpus_used}; all models: attainment {self.attainment:.4f}, "
                f"goodput {self.goodput:.1f}/s)", rows)
        return self


def _vs(value: float, want: Optional[float], op: str, fmt: str) -> str:
    text = fmt.format(value)
    if want is None:
        return text
    held = value >= want if op == ">=" else value <= want
    return f"{text} {'ok' if held else '<' if op == '>=' else '>'} {want}"


def _per_model(key: str, value: Any, models: Mapping[str, Any],
               mapping_only: bool = False) -> Dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(models))
        if unknown:
            raise InvalidInput(f"{key} names models the evaluation did not serve: {unknown} "
                               f"(it served {sorted(models)})")
        return dict(value)
    if mapping_only:
        raise InvalidInput(f"{key} must map model names to bounds, got {value!r}")
    return {m: value for m in models}


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidInput(f"{key} must be a finite number, got {v!r}")
    return float(v)


def _fraction(key: str, v: Any) -> float:
    v = _number(key, v)
    if not 0.0 <= v <= 1.0:
        raise InvalidInput(f"{key} must be within [0, 1], got {v}")
    return v


def _positive(key: str, v: Any, zero: bool = False) -> float:
    v = _number(key, v)
    if v < 0 or (v == 0 and not zero):
        raise InvalidInput(f"{key} must be {'>= 0' if zero else '> 0'}, got {v}")
    return v


def _describe(workload: Any) -> str:
    from . import workloads as w

    kind = type(workload).__name__
    if isinstance(workload, (w.Poisson, w.Gamma)):
        rates = ", ".join(f"{m} {r:g}/s" for m, r in sorted(workload.rates.items()))
        cv = f" CV {workload.cv:g}" if isinstance(workload, w.Gamma) else ""
        return f"{kind}{cv} ({rates}) for {workload.duration_s:g} s, seed {workload.seed}"
    if isinstance(workload, w.ClosedLoop):
        return f"ClosedLoop ({workload.clients} clients) for {workload.duration_s:g} s"
    return f"{kind} for {getattr(workload, 'duration_s', 0):g} s"


def evaluate(target: Any, workload: Any, inputs: Optional[Inputs] = None, *,
             name: Optional[str] = None, warmup_s: float = 0.0,
             deadline_ms: Optional[Mapping[str, float]] = None,
             progress: bool = False) -> Evaluation:
    """Runs ``workload`` against ``target`` and returns what it measured.

    ``target``: a started :class:`gpulanes.Runtime` (real time; ``inputs[model]`` is one
    request's tensors, or a function making them) or a :class:`gpulanes.sim.Simulator`
    (virtual time; no inputs). Requests arriving in the first ``warmup_s`` run but are not
    counted. ``deadline_ms`` overrides models' SLOs as their requests' deadlines."""
    from . import workloads as w
    from .runtime import Runtime
    from .sim import Simulator

    warmup_s = _positive("warmup_s", warmup_s, zero=True)
    label = name or "evaluation"
    if isinstance(target, Simulator):
        summary = target.run(workload, warmup_s=warmup_s, deadline_ms=deadline_ms)
        stats = target.stats()
        # The layout it started with, and every one a re-plan applied while it ran.
        gpus = max([len({l["gpu"] for l in target.lanes() if l["models"]})]
                   + [r["gpus_used"] for r in summary.get("replans", []) if r["changed"]])
        return Evaluation(label, "simulator", summary, workload=_describe(workload),
                          gpus_used=gpus,
                          batch_sizes={m: s["mean_batch_size"] for m, s in stats.items()})
    if isinstance(target, Runtime):
        if inputs is None:
            raise InvalidInput("inputs is required for a Runtime: per model, one request's "
                               "tensors (or a function making them)")
        sent = workload.arrays()[2] if isinstance(workload, w.Workload) else workload.models
        missing = sorted(set(sent) - set(inputs))
        if missing:
            raise InvalidInput(f"inputs has nothing for models the workload sends: {missing}")
        def ran(stats):  # (batches, requests that ran in them) per model
            return {m: (x["batches"], x["completed"] + x["failed"]) for m, x in stats.items()}

        before = ran(target.stats())
        summary = w.drive(target, workload, inputs, deadline_ms=deadline_ms, warmup_s=warmup_s,
                          progress=progress)
        batch = {}
        for m, (batches, requests) in ran(target.stats()).items():  # this run's batches only
            b0, r0 = before.get(m, (0, 0))
            batch[m] = (requests - r0) / (batches - b0) if batches > b0 else 0.0
        gpus = len({l["device"] for l in target.lanes() if str(l["device"]).startswith("cuda")})
        return Evaluation(label, "runtime", summary, workload=_describe(workload),
                          gpus_used=gpus, batch_sizes=batch)
    raise InvalidInput(f"target must be a gpulanes.Runtime or a gpulanes.sim.Simulator, "
                       f"got {type(target).__name__}")


def peak_search(run: Callable[[float], Any], ok: Callable[[Any], bool], start: float,
                steps: int, grow_limit: float = 64.0) -> Dict[str, Any]:
    """The highest load x with ok(run(x)): from ``start``, doubling while it holds (up to
    ``grow_limit`` x start), then ``steps`` bisection steps. Returns max_load (0: not even the
    smallest tried), at_max (that load's result) and tried (every result, in order)."""
    lo, hi, tried, best = 0.0, start, [], None
    row = run(hi)
    tried.append(row)
    while ok(row) and hi < grow_limit * start:
        lo, best, hi = hi, row, hi * 2
        row = run(hi)
        tried.append(row)
    for _ in range(steps):
        mid = (lo + hi) / 2
        row = run(mid)
        tried.append(row)
        if ok(row):
            lo, best = mid, row
        else:
            hi = mid
    return {"max_load": lo, "at_max": best, "tried": tried}


def peak_rate(evaluate_at: Callable[[float], Evaluation], *, attainment: float = 0.99,
              start: float, steps: int = 6, grow_limit: float = 64.0) -> Dict[str, Any]:
    """The highest rate at which every model meets ``attainment`` of its deadlines (the number
    people compare): ``evaluate_at(rate)`` runs one evaluation at that rate. Doubling from
    ``start`` while it holds, then ``steps`` bisection steps. Returns ``rate`` (0.0 when not even
    ``start`` held), ``at_peak`` (the Evaluation there, or None) and ``tried`` [(rate, worst
    attainment)]."""
    attainment = _fraction("attainment", attainment)
    start = _positive("start", start)
    rates: List[float] = []

    def run(rate: float) -> Evaluation:
        rates.append(rate)
        return evaluate_at(rate)

    res = peak_search(run, lambda ev: ev.worst_attainment() >= attainment, start, steps,
                      grow_limit)
    return {"rate": res["max_load"], "at_peak": res["at_max"],
            "tried": [(r, ev.worst_attainment()) for r, ev in zip(rates, res["tried"])]}


def check_counters(stats: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """What does not add up in a shut-down runtime's per-model counters (empty when all do):
    every submitted request was refused, completed (met or missed), dropped or failed, and
    none is still in flight."""
    problems = []
    for m, s in stats.items():
        ended = s["rejected"] + s["completed"] + s["dropped"] + s["failed"]
        if s["in_flight"] != 0:
            problems.append(f"{m}: {s['in_flight']} requests still in flight after shutdown")
        if s["submitted"] != ended + s["in_flight"]:
            problems.append(f"{m}: submitted {s['submitted']} != rejected {s['rejected']} + "
                            f"completed {s['completed']} + dropped {s['dropped']} + failed "
                            f"{s['failed']} + in flight {s['in_flight']}")
        if s["completed"] != s["met"] + s["missed"]:
            problems.append(f"{m}: completed {s['completed']} != met {s['met']} + missed "
                            f"{s['missed']}")
    return problems
