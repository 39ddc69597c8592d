"""gpulanes' pytest plugin: evaluate a serving setup in a test, as you test code.

Installed with gpulanes (the ``pytest11`` entry point ``gpulanes``; ``-p no:gpulanes`` turns it
off). Loading it imports gpulanes, hence torch.

.. code-block:: python

    @pytest.mark.gpulanes(config="serve.toml")                 # or Runtime options + models=
    def test_two_models_hold_their_slos(gpulanes, gpulanes_runtime):
        ev = gpulanes.evaluate(gpulanes_runtime, gpulanes.poisson({"a": 200, "b": 50}, 10))
        ev.assert_slo(attainment=0.99, p99_ms={"a": 50})

    def test_the_mix_fits_two_gpus(gpulanes):
        sim = gpulanes.simulator(gpus=4, scenario="scen1")
        ev = gpulanes.evaluate(sim, gpulanes.gamma(sim_rates, cv=3, duration_s=30))
        ev.assert_goodput(at_least=900).assert_gpus_at_most(2)

Fixtures: ``gpulanes`` (builds runtimes and simulators, seeded workloads, evaluations and peak
searches; shuts every runtime it built down after the test and fails the test when a
runtime's counters do not add up) and ``gpulanes_runtime`` (a started runtime from the test's
``gpulanes`` marker). Marker: ``@pytest.mark.gpulanes(device=..., config=..., models=...,
lanes=..., **Runtime options)``; a test whose device this machine lacks is skipped. Option:
``--gpulanes-json=PATH`` writes every evaluation of the run. The terminal summary lists them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pytest

_REPORT = pytest.StashKey["_Report"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpulanes", "gpulanes serving evaluations")
    group.addoption("--gpulanes-json", metavar="PATH", default=None,
                    help="write every gpulanes evaluation of this run (measurements, what was "
                         "asked, verdicts) to PATH as JSON, for trend tracking in CI")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpulanes(device=None, config=None, models=None, lanes=None, **options): "
                   "the gpulanes_runtime fixture's runtime: from a `gpulanes serve` TOML config "
                   "(relative to the test file) or Runtime options and models={name: register "
                   "kwargs}; skipped where `device` (or the config's) is missing")
    config.stash[_REPORT] = _Report(config.getoption("gpulanes_json"))


def _missing_device(device: Any) -> Optional[str]:
    """Why this machine cannot run lanes on ``device``, or None."""
    if not isinstance(device, str) or not device.startswith("cuda"):
        return None
    import torch

    from . import _C

    if not torch.cuda.is_available() or not _C.cuda_lane_support():
        return f"needs {device}: no CUDA GPU here (or gpulanes was built without CUDA)"
    if ":" in device:
        index = device.split(":", 1)[1]
        if index.isdigit() and int(index) >= torch.cuda.device_count():
            return f"needs {device}: this machine has {torch.cuda.device_count()} GPU(s)"
    return None


def _marker_device(item: pytest.Item, marker: pytest.Mark) -> Any:
    if "device" in marker.kwargs:
        return marker.kwargs["device"]
    config = marker.kwargs.get("config")
    if config is None:
        return None
    from .serve import load_config

    try:
        return load_config(Path(item.path).parent / config).runtime.get("device")
    except Exception:  # a bad config fails in the fixture, with its own error
        return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("gpulanes")
    if marker is not None:
        why = _missing_device(_marker_device(item, marker))
        if why:
            pytest.skip(why)


class _Report:
    """Every evaluation of the session, with the test it ran in."""

    def __init__(self, json_path: Optional[str]) -> None:
        self.json_path = json_path
        self.rows: List[Tuple[str, Any]] = []  # (test node id, Evaluation)

    def write(self) -> None:
        if not self.json_path:
            return
        import platform

        import torch

        from . import __version__

        doc = {"gpulanes": __version__, "torch": torch.__version__,
               "python": platform.python_version(),
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "evaluations": [{"test": test, **ev.as_dict()} for test, ev in self.rows]}
        path = Path(self.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1))


def pytest_sessionfinish(session: pytest.Session) -> None:
    report = session.config.stash.get(_REPORT, None)
    if report is not None:
        report.write()


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None or not report.rows:
        return
    tr = terminalreporter
    tr.write_sep("=", f"gpulanes: {len(report.rows)} evaluation(s)")
    for test, ev in report.rows:
        held = "no checks" if not ev.checks else (
            "held" if all(c["passed"] for c in ev.checks) else "FAILED")
        tr.write_line(f"{test} [{ev.name}] {ev.kind}, {ev.workload}: attainment "
                      f"{ev.attainment:.4f}, goodput {ev.goodput:.1f}/s, GPUs {ev.gpus_used}: "
                      f"{held}")
        for line in ev.table().splitlines():
            tr.write_line("    " + line)
    if report.json_path:
        tr.write_line(f"gpulanes: evaluations written to {report.json_path}")


class GpuLanes:
    """The ``gpulanes`` fixture: what a test builds, drives and checks. Everything it starts
    is shut down after the test, and a runtime whose counters do not add up then (a request
    neither answered nor refused, one still in flight) fails the test."""

    def __init__(self, request: pytest.FixtureRequest, report: _Report) -> None:
        self._request = request
        self._report = report
        self._runtimes: List[Any] = []
        self._samples: Dict[int, Dict[str, Tuple[Any, ...]]] = {}  # id(runtime) -> model -> sample
        # One seed per test, the same in every run: workloads repeat exactly.
        self.seed = int(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8], 16)

    # -- what a test serves ------------------------------------------------------------------

    def runtime(self, config: Optional[str] = None, *, models: Optional[Mapping[str, Any]] = None,
                lanes: Optional[Sequence[Mapping[str, Any]]] = None, start: bool = True,
                device: Optional[str] = None, **options: Any):
        """A runtime for this test: from a `gpulanes serve` TOML ``config`` (its models and
        lanes; a relative path is the test file's neighbour; ``options`` override its
        [runtime]), or ``Runtime(device=..., **options)`` with ``models`` = {name: the keyword
        arguments of :meth:`gpulanes.Runtime.register`}. Started unless ``start=False``; skips
        the test where ``device`` is missing."""
        from .runtime import Runtime

        if config is None and not models:
            raise pytest.UsageError("gpulanes.runtime() needs a config file or models=")
        if config is not None and models:
            raise pytest.UsageError("gpulanes.runtime(): give a config file or models=, not both")
        if device is not None:
            options["device"] = device
        samples: Dict[str, Tuple[Any, ...]] = {}
        if config is not None:
            from .serve import load_config

            cfg = load_config(Path(self._request.path).parent / config)
            cfg.runtime.update(options)
            why = _missing_device(cfg.runtime.get("device", "auto"))
            if why:
                pytest.skip(why)
            rt = cfg.build_runtime()
            for m in cfg.models:
                if m.load:
                    samples[m.name] = tuple(t[0] for t in m.example_inputs())
            layout = lanes if lanes is not None else cfg.lanes
        else:
            why = _missing_device(options.get("device", "auto"))
            if why:
                pytest.skip(why)
            rt = Runtime(**options)
            for name, spec in models.items():
                spec = dict(spec)
                rt.register(name, spec.pop("model"), **spec)
                example = spec["example_inputs"]
                example = example if isinstance(example, (tuple, list)) else (example,)
                samples[name] = tuple(t[0] for t in example)
            layout = lanes
        self._runtimes.append(rt)
        self._samples[id(rt)] = samples
        if layout is not None:
            rt.set_lanes(layout)
        if start:
            rt.start(progress=False)
        return rt

    def simulator(self, *, scenario: Optional[str] = None,
                  models: Optional[Mapping[str, Optional[float]]] = None,
                  lanes: Optional[Sequence[Mapping[str, Any]]] = None, **options: Any):
        """A :class:`gpulanes.sim.Simulator` (``options`` as its constructor's) with the models
        of a scenario ("game", "traffic", "scen1".."scen5") or ``models`` = {zoo model: SLO ms
        or None for the zoo's}, and a lane layout if given. The test's seed unless given."""
        from .sim import Simulator

        options.setdefault("seed", self.seed)
        sim = Simulator(**options)
        if scenario is not None:
            sim.add_scenario(scenario)
        for name, slo in (models or {}).items():
            sim.add_model(name, slo)
        if lanes is not None:
            sim.set_lanes(lanes)
        return sim

    # -- seeded workloads --------------------------------------------------------------------

    def poisson(self, rates: Mapping[str, float], duration_s: float):
        from . import workloads

        return workloads.Poisson(dict(rates), duration_s, seed=self.seed)

    def gamma(self, rates: Mapping[str, float], cv: float, duration_s: float):
        from . import workloads

        return workloads.Gamma(dict(rates), cv, duration_s, seed=self.seed)

    def steps(self, segments: Sequence[Tuple[float, Mapping[str, float]]], cv: float = 1.0):
        from . import workloads

        return workloads.Steps(list(segments), cv=cv, seed=self.seed)

    def azure_trace(self, path: str, functions: Mapping[str, str], scale: float = 1.0,
                    minutes: Tuple[int, int] = (1, 60)):
        from . import workloads

        return workloads.AzureTrace(Path(self._request.path).parent / path, dict(functions),
                                    scale=scale, minutes=minutes, seed=self.seed)

    # -- evaluations -------------------------------------------------------------------------

    def evaluate(self, target: Any, workload: Any, inputs: Optional[Mapping[str, Any]] = None,
                 *, name: Optional[str] = None, warmup_s: float = 0.0,
                 deadline_ms: Optional[Mapping[str, float]] = None):
        """:func:`gpulanes.evaluation.evaluate`, recorded for the summary and the JSON report.
        A runtime this fixture built gets each model's example sample as inputs by default."""
        from .evaluation import evaluate

        if inputs is None and id(target) in self._samples:
            inputs = self._samples[id(target)]
        ev = evaluate(target, workload, inputs, name=name or self._name(), warmup_s=warmup_s,
                      deadline_ms=deadline_ms)
        self._report.rows.append((self._request.node.nodeid, ev))
        return ev

    def peak_rate(self, target: Any, workload_at: Callable[[float], Any], *, start: float,
                  attainment: float = 0.99, steps: int = 6, grow_limit: float = 64.0,
                  inputs: Optional[Mapping[str, Any]] = None, name: Optional[str] = None,
                  warmup_s: float = 0.0) -> Dict[str, Any]:
        """The highest rate at which every model meets ``attainment``: ``workload_at(rate)``
        makes the workload of one try (e.g. ``lambda r: gpulanes.gamma({"a": r}, 3, 20)``).
        Returns rate, at_peak (that Evaluation, recorded as ``name``) and tried [(rate, worst
        attainment)]."""
        from .evaluation import evaluate, peak_rate

        if inputs is None and id(target) in self._samples:
            inputs = self._samples[id(target)]
        label = name or self._name("peak")
        res = peak_rate(lambda rate: evaluate(target, workload_at(rate), inputs,
                                              name=f"{label} at {rate:g}/s", warmup_s=warmup_s),
                        attainment=attainment, start=start, steps=steps, grow_limit=grow_limit)
        if res["at_peak"] is not None:
            self._report.rows.append((self._request.node.nodeid, res["at_peak"]))
        return res

    def _name(self, what: str = "evaluation") -> str:
        n = sum(test == self._request.node.nodeid for test, _ in self._report.rows)
        return f"{what} {n + 1}"

    def _finish(self) -> List[str]:
        """Shuts down what the test built; what did not add up."""
        from .evaluation import check_counters

        problems = []
        for rt in self._runtimes:
            try:
                rt.shutdown(drain=True)
                problems += check_counters(rt.stats())
            except Exception as e:  # noqa: BLE001 - reported as the test's failure
                problems.append(f"shutting the runtime down failed: {type(e).__name__}: {e}")
        return problems


@pytest.fixture
def gpulanes(request: pytest.FixtureRequest):
    """Builds runtimes and simulators, seeded workloads, evaluations (see :class:`GpuLanes`)."""
    g = GpuLanes(request, request.config.stash[_REPORT])
    yield g
    problems = g._finish()
    if problems:
        pytest.fail("gpulanes: after the test, the runtime's counters do not add up:\n  "
                    + "\n  ".join(problems), pytrace=False)


@pytest.fixture
def gpulanes_runtime(gpulanes: GpuLanes, request: pytest.FixtureRequest):
    """A started runtime built from the test's ``@pytest.mark.gpulanes(...)`` arguments."""
    marker = request.node.get_closest_marker("gpulanes")
    if marker is None or marker.args:
        raise pytest.UsageError("gpulanes_runtime needs @pytest.mark.gpulanes(config=... or "
                                "models=..., **Runtime options) (keyword arguments only)")
    return gpulanes.runtime(**marker.kwargs)
