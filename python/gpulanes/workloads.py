"""Reproducible request workloads and a load driver.

A workload is a seeded stream of ``(time_s, model)`` arrivals (time from the start of the run):
the same seed always gives the same stream. :func:`drive` submits a workload to a runtime
open-loop at the scheduled times, measures how late each submission was, and returns a summary.
:class:`ClosedLoop` is the exception: its clients wait for each result, so it runs through
:func:`drive` too but has no precomputed stream.

Arrival processes (``shared/REFERENCES.md``, evaluation conventions):

- :class:`Poisson`: exponential gaps at a constant rate per model.
- :class:`Gamma`: gamma gaps with coefficient of variation ``cv`` (shape 1/cv^2, scale
  cv^2/rate); cv > 1 is bursty, cv = 1 is Poisson.
- :class:`Steps`: piecewise-constant rates (any of the above per segment).
- :class:`Ramp`: rates changing linearly over time (inhomogeneous Poisson, by thinning).
- :class:`AzureTrace`: the Azure Functions 2019 per-minute invocation counts
  (``invocations_per_function_md.anon.d*.csv``), Poisson within each minute at that minute's
  count times ``scale``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["Poisson", "Gamma", "Steps", "Ramp", "AzureTrace", "ClosedLoop", "drive", "Workload"]

Arrival = Tuple[float, str]
_Stream = Tuple[str, np.ndarray]  # one model's arrival times


def _rng(*key: Any) -> np.random.Generator:
    """A generator seeded by `key` (any printable values): one independent stream per key."""
    digest = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _renewal(rng: np.random.Generator, rate: float, cv: float, start: float, end: float
             ) -> np.ndarray:
    """Arrival times in [start, end) with gamma gaps of mean 1/rate and the given CV."""
    if rate <= 0 or end <= start:
        return np.empty(0)
    shape, scale = 1.0 / cv ** 2, cv ** 2 / rate
    expected = (end - start) * rate
    chunks, t = [], start
    while True:
        gaps = rng.gamma(shape, scale, size=int(expected * 1.05 + 6 * math.sqrt(expected) + 16))
        times = t + np.cumsum(gaps)
        chunks.append(times[times < end])
        if times[-1] >= end:
            return np.concatenate(chunks)
        t = times[-1]


class Workload:
    """A seeded, finite stream of arrivals sorted by time (ties: in model-name order)."""

    duration_s: float = 0.0

    def _streams(self) -> List[_Stream]:  # pragma: no cover - interface
        raise NotImplementedError

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """The stream as arrays: arrival times (float64 seconds), model index (int32) and the
        model names the indices refer to (sorted). What the simulator consumes."""
        streams = self._streams()
        names = sorted({m for m, _ in streams})
        index = {m: i for i, m in enumerate(names)}
        times = np.concatenate([t for _, t in streams]) if streams else np.empty(0)
        models = np.concatenate([np.full(len(t), index[m], dtype=np.int32) for m, t in streams]
                                ) if streams else np.empty(0, dtype=np.int32)
        order = np.lexsort((models, times))  # by time, then model index
        return times[order], models[order].astype(np.int32), names

    def arrivals(self) -> Iterator[Arrival]:
        times, models, names = self.arrays()
        return ((t, names[m]) for t, m in zip(times.tolist(), models.tolist()))

    def __iter__(self) -> Iterator[Arrival]:
        return self.arrivals()

    def as_list(self) -> List[Arrival]:
        return list(self.arrivals())


@dataclass
class Poisson(Workload):
    """Independent Poisson arrivals per model: ``rates`` in requests per second."""

    rates: Mapping[str, float]
    duration_s: float
    seed: int = 0

    def _streams(self) -> List[_Stream]:
        return Gamma(self.rates, 1.0, self.duration_s, self.seed)._streams()


@dataclass
class Gamma(Workload):
    """Gamma-distributed gaps with coefficient of variation ``cv`` (1.0 is Poisson)."""

    rates: Mapping[str, float]
    cv: float
    duration_s: float
    seed: Any = 0
    start_s: float = 0.0

    def _streams(self) -> List[_Stream]:
        if self.cv <= 0:
            raise ValueError("cv must be > 0")
        return [(model, _renewal(_rng(self.seed, model), rate, self.cv, self.start_s,
                                 self.start_s + self.duration_s))
                for model, rate in sorted(self.rates.items())]


@dataclass
class Steps(Workload):
    """Rate steps: ``segments`` is a list of ``(duration_s, rates)``; ``cv`` as in :class:`Gamma`."""

    segments: Sequence[Tuple[float, Mapping[str, float]]]
    cv: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.duration_s = float(sum(d for d, _ in self.segments))

    def _streams(self) -> List[_Stream]:
        streams, start = [], 0.0
        for i, (dur, rates) in enumerate(self.segments):
            streams += Gamma(rates, self.cv, dur, seed=f"{self.seed}/step{i}", start_s=start)._streams()
            start += dur
        return streams


@dataclass
class Ramp(Workload):
    """Poisson arrivals whose rate moves linearly from ``start_rates`` to ``end_rates``."""

    start_rates: Mapping[str, float]
    end_rates: Mapping[str, float]
    duration_s: float
    seed: int = 0

    def _streams(self) -> List[_Stream]:
        streams = []
        for model in sorted(set(self.start_rates) | set(self.end_rates)):
            r0, r1 = self.start_rates.get(model, 0.0), self.end_rates.get(model, 0.0)
            peak = max(r0, r1)
            if peak <= 0:
                continue
            # Thinning: Poisson at the peak rate, each arrival kept with probability rate(t)/peak.
            rng = _rng(self.seed, "ramp", model)
            t = _renewal(rng, peak, 1.0, 0.0, self.duration_s)
            keep = rng.random(len(t)) * peak <= r0 + (r1 - r0) * t / self.duration_s
            streams.append((model, t[keep]))
        return streams


@dataclass
class AzureTrace(Workload):
    """Replay of the Azure Functions 2019 trace's per-minute invocation counts.

    ``functions`` maps a trace row (its ``HashFunction``) to a model name; ``scale`` multiplies
    every count; ``minutes`` selects a window (first minute, number of minutes). Within a minute,
    arrivals are Poisson at that minute's count x scale per minute.
    """

    path: Union[str, Path]
    functions: Mapping[str, str]
    scale: float = 1.0
    minutes: Tuple[int, int] = (1, 60)
    seed: int = 0
    counts: Dict[str, List[float]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        first, n = self.minutes
        with open(self.path, newline="") as f:
            for row in csv.DictReader(f):
                model = self.functions.get(row.get("HashFunction", ""))
                if model is None:
                    continue
                per_minute = [float(row.get(str(m), 0) or 0) * self.scale
                              for m in range(first, first + n)]
                prev = self.counts.get(model, [0.0] * n)
                self.counts[model] = [a + b for a, b in zip(prev, per_minute)]
        missing = set(self.functions.values()) - set(self.counts)
        if missing:
            raise ValueError(f"functions for {sorted(missing)} not found in {self.path}")
        self.duration_s = 60.0 * n

    def _streams(self) -> List[_Stream]:
        streams = []
        for model, counts in sorted(self.counts.items()):
            rng = _rng(self.seed, "azure", model)
            parts = [_renewal(rng, count / 60.0, 1.0, 60.0 * minute, 60.0 * (minute + 1))
                     for minute, count in enumerate(counts)]
            streams.append((model, np.concatenate(parts) if parts else np.empty(0)))
        return streams


@dataclass
class ClosedLoop:
    """``clients`` clients, each sending a request, waiting for its result, thinking for
    ``think_s`` (exponential with that mean when ``exponential``), and repeating for
    ``duration_s``. Each client picks its model at random (seeded) per request."""

    clients: int
    models: Sequence[str]
    duration_s: float
    think_s: float = 0.0
    exponential: bool = True
    seed: int = 0


def _pct(values: List[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def drive(runtime: Any, workload: Union[Workload, ClosedLoop],
          inputs: Mapping[str, Union[Sequence[Any], Callable[[], Sequence[Any]]]],
          deadline_ms: Optional[Mapping[str, float]] = None, warmup_s: float = 0.0,
          progress: Optional[bool] = None) -> Dict[str, Any]:
    """Submits ``workload`` to ``runtime`` and waits for every result.

    ``inputs[model]`` is the tuple of input tensors of one request (or a function returning
    one). ``deadline_ms[model]`` overrides the model's SLO as relative deadline. Requests that
    arrive during the first ``warmup_s`` run but are left out of the summary. Returns per model:
    requests, met, late, dropped, rejected, failed, attainment, goodput (met per second of the
    measured window), p50/p99 latency in ms; and the submitter's lateness (how far behind the
    schedule submissions were: p50/p99/max ms).
    """
    from tqdm.auto import tqdm

    from .errors import DeadlineExceeded, GpuLanesError

    records: List[Tuple[str, float, str, float]] = []  # (model, arrival offset, outcome, latency)
    lock = threading.Lock()

    def args_for(model: str) -> Sequence[Any]:
        src = inputs[model]
        return src() if callable(src) else src

    def kwargs_for(model: str) -> Dict[str, Any]:
        return {"deadline_ms": deadline_ms[model]} if deadline_ms and model in deadline_ms else {}

    def record(model: str, offset: float, t_submit: float, fut: Any) -> None:
        def done(f: Any) -> None:
            latency = (time.perf_counter() - t_submit) * 1e3
            exc = f.exception()
            if exc is None:
                outcome = "ok"  # met or late: judged against the deadline in the summary
            elif isinstance(exc, DeadlineExceeded):
                outcome = "dropped"
            else:
                outcome = "failed"
            with lock:
                records.append((model, offset, outcome, latency))
        fut.add_done_callback(done)

    lateness_ms: List[float] = []
    futures: List[Any] = []
    t0 = time.perf_counter()
    if isinstance(workload, ClosedLoop):
        duration = workload.duration_s
        _closed_loop(runtime, workload, args_for, kwargs_for, records, lock, t0)
    else:
        duration = workload.duration_s
        stream = workload.as_list()
        with tqdm(total=len(stream), desc="load", unit="req", disable=None if progress is None
                  else not progress, mininterval=1.0) as bar:
            for i, (offset, model) in enumerate(stream):
                delay = t0 + offset - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t_submit = time.perf_counter()
                lateness_ms.append(max(0.0, -delay) * 1e3)
                try:
                    fut = runtime.submit(model, *args_for(model), **kwargs_for(model))
                except DeadlineExceeded:
                    with lock:
                        records.append((model, offset, "rejected", 0.0))
                    continue
                except GpuLanesError:
                    with lock:
                        records.append((model, offset, "rejected", 0.0))
                    continue
                record(model, offset, t_submit, fut)
                futures.append(fut)
                if i % 256 == 0:
                    bar.update(i + 1 - bar.n)
            bar.update(len(stream) - bar.n)
        for f in futures:
            try:
                f.result()
            except GpuLanesError:
                pass
    budgets = {m: s["slo_ms"] for m, s in runtime.stats().items()}
    budgets.update(deadline_ms or {})
    return _summarize(records, budgets, duration, warmup_s, lateness_ms)


def _closed_loop(runtime: Any, w: ClosedLoop, args_for, kwargs_for, records, lock, t0) -> None:
    from .errors import DeadlineExceeded, GpuLanesError

    def client(c: int) -> None:
        rng = random.Random(f"{w.seed}/client/{c}")
        while True:
            offset = time.perf_counter() - t0
            if offset >= w.duration_s:
                return
            model = w.models[rng.randrange(len(w.models))]
            t = time.perf_counter()
            try:
                runtime.infer(model, *args_for(model), **kwargs_for(model))
                outcome = "ok"
            except DeadlineExceeded:
                outcome = "dropped"
            except GpuLanesError:
                outcome = "failed"
            with lock:
                records.append((model, offset, outcome, (time.perf_counter() - t) * 1e3))
            think = rng.expovariate(1.0 / w.think_s) if w.exponential and w.think_s > 0 else w.think_s
            if think > 0:
                time.sleep(think)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(w.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _summarize(records, budgets, duration, warmup_s, lateness_ms) -> Dict[str, Any]:
    per: Dict[str, Dict[str, Any]] = {}
    window = max(1e-9, duration - warmup_s)
    for model in sorted({r[0] for r in records}):
        rows = [r for r in records if r[0] == model and r[1] >= warmup_s]
        budget = budgets.get(model)  # the relative deadline requests of this model had
        ok = [r for r in rows if r[2] == "ok"]
        lat = [r[3] for r in ok]
        late = [r for r in ok if budget is not None and r[3] > budget]
        per[model] = model_summary(
            requests=len(rows), met=len(ok) - len(late), late=len(late),
            dropped=sum(r[2] == "dropped" for r in rows),
            rejected=sum(r[2] == "rejected" for r in rows),
            failed=sum(r[2] == "failed" for r in rows),
            p50_ms=_pct(lat, 0.50), p99_ms=_pct(lat, 0.99), window_s=window)
    return {
        "models": per,
        "duration_s": duration,
        "warmup_s": warmup_s,
        "submit_lateness_ms": {"p50": _pct(lateness_ms, 0.5), "p99": _pct(lateness_ms, 0.99),
                               "max": max(lateness_ms, default=0.0)},
    }


def model_summary(*, requests: int, met: int, late: int, dropped: int, rejected: int, failed: int,
                  p50_ms: float, p99_ms: float, window_s: float) -> Dict[str, Any]:
    """One model's row of a run summary (the load driver's and the simulator's)."""
    return {"requests": requests, "met": met, "late": late, "dropped": dropped,
            "rejected": rejected, "failed": failed,
            "attainment": met / requests if requests else 1.0,
            "goodput": met / max(1e-9, window_s), "p50_ms": p50_ms, "p99_ms": p99_ms}
