"""gpulanes' pytest plugin, tested with pytest's own pytester: its fixtures, marker, assertions
(and the tables they fail with), --gpulanes-json, the terminal summary, the counters check after
a test, the peak search, and examples/test_serving_slos.py."""

import json
from pathlib import Path

import pytest

import gpulanes as gl
from gpulanes.evaluation import Evaluation, check_counters, peak_rate

pytest_plugins = ["pytester"]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "test_serving_slos.py"

HEADER = '''
import pytest, torch
from torch import nn

class Scale(nn.Module):
    def forward(self, x):
        return x * 2.0

MODELS = {"scale": dict(model=torch.jit.script(Scale().eval()), slo_ms=500,
                        example_inputs=torch.zeros(1, 4), max_batch_size=8)}
'''


def run(pytester, source: str, *args: str):
    pytester.makepyfile(HEADER + source)
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def test_a_runtime_from_the_marker_is_evaluated_and_shut_down(pytester):
    result = run(pytester, '''
KEPT = []

@pytest.mark.gpulanes(device="cpu", models=MODELS, profile_cache=False)
def test_holds(gpulanes, gpulanes_runtime):
    KEPT.append(gpulanes_runtime)
    ev = gpulanes.evaluate(gpulanes_runtime, gpulanes.poisson({"scale": 50}, 1.0))
    assert ev.requests > 20 and ev.models["scale"]["failed"] == 0
    ev.assert_slo(attainment=0.95, p99_ms={"scale": 500})
    assert ev.kind == "runtime" and ev.gpus_used == 0

def test_it_was_shut_down():
    import gpulanes as gl
    with pytest.raises(gl.RuntimeClosed):
        KEPT[0].submit("scale", torch.zeros(4))
''')
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*gpulanes: 1 evaluation(s)*", "*test_holds*runtime, Poisson*"])


def test_a_failed_slo_shows_what_was_measured_against_what_was_asked(pytester):
    # Virtual time: an overloaded simulated GPU misses deadlines the same way every run.
    result = run(pytester, '''
def test_overloaded(gpulanes):
    sim = gpulanes.simulator(gpus=1, models={"bert": None})
    ev = gpulanes.evaluate(sim, gpulanes.poisson({"bert": 20000}, 2), name="too much")
    ev.assert_slo(attainment=0.99, p99_ms={"bert": 22})
''')
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*SloViolation: too much (simulator, Poisson (bert 20000/s) for 2 s*assert_slo failed*",
        "*bert: attainment 0.* < 0.99*",
        "*model*requests*attainment*p50 ms*p99 ms*goodput/s*dropped*rejected*failed*mean batch*",
        "*bert*< 0.99*",
    ])


def test_goodput_and_gpu_assertions_name_their_numbers(pytester):
    result = run(pytester, '''
def sim_on_three_gpus(gpulanes):
    sim = gpulanes.simulator(gpus=4, models={"bert": None, "resnet50": None})
    sim.set_lanes([{"gpu": 0, "models": ["bert"]}, {"gpu": 1, "models": ["resnet50"]},
                   {"gpu": 2, "models": ["resnet50"]}])
    return gpulanes.evaluate(sim, gpulanes.poisson({"bert": 100, "resnet50": 100}, 2))

def test_gpus(gpulanes):
    ev = sim_on_three_gpus(gpulanes)
    ev.assert_gpus_at_most(3)
    ev.assert_gpus_at_most(2)

def test_goodput(gpulanes):
    sim_on_three_gpus(gpulanes).assert_goodput(at_least=150, per_model={"bert": 1000})
''')
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*used 3 GPUs > 2*"])
    result.stdout.fnmatch_lines(["*bert: goodput * < 1000/s*", "*bert*< 1000*"])


def test_a_runtime_from_a_serve_config_gets_its_inputs_from_the_config(pytester):
    import torch

    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2).eval()), str(pytester.path / "lin.pt"))
    (pytester.path / "serve.toml").write_text("""
[runtime]
device = "cpu"
profile_cache = false

[models.lin]
file = "lin.pt"
slo_ms = 500
max_batch_size = 4
inputs = [{ name = "INPUT__0", datatype = "FP32", shape = [3] }]
""")
    result = run(pytester, '''
@pytest.mark.gpulanes(config="serve.toml")
def test_config(gpulanes, gpulanes_runtime):
    assert gpulanes_runtime.models == ["lin"] and gpulanes_runtime.running
    gpulanes.evaluate(gpulanes_runtime, gpulanes.poisson({"lin": 40}, 1)).assert_slo(0.95)
''')
    result.assert_outcomes(passed=1)


def test_steps_and_trace_replay_run_in_virtual_time(pytester):
    (pytester.path / "trace.csv").write_text(
        "HashOwner,HashApp,HashFunction,Trigger," + ",".join(str(m) for m in range(1, 4)) + "\n"
        "o,a,f1,http,600,1200,300\n")
    result = run(pytester, '''
def test_shapes(gpulanes):
    sim = gpulanes.simulator(gpus=1, models={"resnet50": None})
    steps = gpulanes.steps([(5, {"resnet50": 100}), (5, {"resnet50": 400})], cv=2)
    ev = gpulanes.evaluate(sim, steps, name="steps")
    assert 2000 < ev.requests < 3000
    trace = gpulanes.azure_trace("trace.csv", {"f1": "resnet50"}, scale=10, minutes=(1, 3))
    ev = gpulanes.evaluate(sim, trace, name="trace")
    assert 19000 < ev.requests < 23000 and ev.workload.startswith("AzureTrace for 180 s")
    ev.assert_slo(0.99)
''')
    result.assert_outcomes(passed=1)


def test_the_marker_skips_a_device_this_machine_lacks(pytester):
    result = run(pytester, '''
@pytest.mark.gpulanes(device="cuda:7", models=MODELS)
def test_needs_a_gpu(gpulanes_runtime):
    raise AssertionError("ran without its device")
''', "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs cuda:7*"])


def test_json_report_has_every_evaluation_and_its_checks(pytester):
    out = pytester.path / "reports" / "slo.json"
    result = run(pytester, '''
def test_sim(gpulanes):
    sim = gpulanes.simulator(gpus=1, models={"resnet50": None})
    ev = gpulanes.evaluate(sim, gpulanes.gamma({"resnet50": 200}, cv=3, duration_s=5), name="g")
    ev.assert_slo(attainment=0.9)
    gpulanes.evaluate(sim, gpulanes.poisson({"resnet50": 100}, 5))
''', f"--gpulanes-json={out}")
    result.assert_outcomes(passed=1)
    doc = json.loads(out.read_text())
    assert doc["gpulanes"] == gl.__version__ and doc["torch"]
    evs = doc["evaluations"]
    assert [e["name"] for e in evs] == ["g", "evaluation 2"]
    assert all(e["test"].endswith("::test_sim") and e["kind"] == "simulator" for e in evs)
    assert evs[0]["workload"].startswith("Gamma CV 3 (resnet50 200/s) for 5 s")
    assert evs[0]["checks"] == [{"check": "assert_slo", "asked": {"resnet50": {"attainment": 0.9}},
                                 "passed": True, "violations": []}]
    assert evs[0]["models"]["resnet50"]["requests"] > 500
    result.stdout.fnmatch_lines(["*evaluations written to*slo.json*"])


def test_workloads_are_seeded_by_the_test(pytester):
    result = run(pytester, '''
SEEN = {}

@pytest.mark.parametrize("again", [0, 1])
def test_same(gpulanes, again):
    SEEN.setdefault(gpulanes.seed, []).append(gpulanes.gamma({"a": 100}, 2, 1).as_list())

def test_check():
    assert len(SEEN) == 2  # each test its own seed
    for streams in SEEN.values():
        assert len(streams) == 1 and len(streams[0]) > 50
''')
    result.assert_outcomes(passed=3)


def test_counters_that_do_not_add_up_fail_the_test_after_it(pytester):
    result = run(pytester, '''
def test_leaky(monkeypatch, gpulanes):
    # Requested before gpulanes: still patched when gpulanes checks after the test.
    monkeypatch.setattr("gpulanes.evaluation.check_counters",
                        lambda stats: ["scale: 1 requests still in flight after shutdown"])
    gpulanes.runtime(device="cpu", models=MODELS, profile_cache=False)
''')
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*counters do not add up*", "*scale: 1 requests still in flight*"])


def test_the_example_runs(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", str(EXAMPLE))
    result.assert_outcomes(passed=3)


def test_check_counters_finds_each_mismatch():
    ok = {"submitted": 10, "rejected": 1, "completed": 7, "met": 6, "missed": 1, "dropped": 1,
          "failed": 1, "in_flight": 0}
    assert check_counters({"m": ok}) == []
    problems = check_counters({"a": {**ok, "in_flight": 2}, "b": {**ok, "submitted": 11},
                               "c": {**ok, "met": 7}})
    assert len(problems) == 4  # a: in flight (twice: also not ended), b: lost, c: met+missed
    assert any(p.startswith("a: 2 requests still in flight") for p in problems)
    assert any(p.startswith("b: submitted 11") for p in problems)
    assert any(p.startswith("c: completed 7 != met 7 + missed 1") for p in problems)


def _evaluation(attainment: float) -> Evaluation:
    row = {"requests": 100, "met": round(100 * attainment), "late": 0, "dropped": 0,
           "rejected": 0, "failed": 0, "attainment": attainment, "goodput": 10.0, "p50_ms": 1.0,
           "p99_ms": 2.0}
    return Evaluation("e", "simulator", {"models": {"m": row}}, workload="w", gpus_used=1,
                      batch_sizes={"m": 1.0})


def test_peak_rate_finds_the_highest_rate_that_holds():
    # Attainment falls below 0.99 above 730/s: doubling from 100 overshoots at 800, bisection
    # closes in from below.
    res = peak_rate(lambda r: _evaluation(1.0 if r <= 730 else 0.9), start=100, steps=6)
    assert 700 <= res["rate"] <= 730
    assert res["at_peak"].worst_attainment() == 1.0
    assert [r for r, _ in res["tried"][:4]] == [100, 200, 400, 800]
    assert peak_rate(lambda r: _evaluation(0.5), start=100, steps=2)["rate"] == 0.0


def test_bad_arguments_are_refused_by_name():
    ev = _evaluation(1.0)
    with pytest.raises(gl.InvalidInput, match="attainment"):
        ev.assert_slo(attainment=1.5)
    with pytest.raises(gl.InvalidInput, match="did not serve.*'nope'"):
        ev.assert_slo(p99_ms={"nope": 5})
    with pytest.raises(gl.InvalidInput, match="p99_ms must map"):
        ev.assert_slo(p99_ms=5)
    with pytest.raises(gl.InvalidInput, match="n must be"):
        ev.assert_gpus_at_most(-1)
    with pytest.raises(gl.InvalidInput, match="target must be"):
        gl.evaluation.evaluate(object(), gl.workloads.Poisson({"m": 1}, 1))
    with pytest.raises(gl.InvalidInput, match="start"):
        peak_rate(lambda r: ev, start=0)


def test_nan_inf_negative_and_wrong_types_are_refused_by_name():
    ev = _evaluation(1.0)
    for kwargs, name in (({"attainment": float("nan")}, "attainment"),
                         ({"attainment": "0.9"}, "attainment"),
                         ({"p99_ms": {"m": float("inf")}}, "p99_ms"),
                         ({"p99_ms": {"m": -1}}, "p99_ms"),
                         ({"max_failed": -1}, "max_failed"),
                         ({"max_failed": 0.5}, "max_failed")):
        with pytest.raises(gl.InvalidInput, match=name):
            ev.assert_slo(**kwargs)
    with pytest.raises(gl.InvalidInput, match="at_least"):
        ev.assert_goodput(at_least=float("nan"))
    with pytest.raises(gl.InvalidInput, match="n must be"):
        ev.assert_gpus_at_most(1.5)
    sim = gl.sim.Simulator(gpus=1)
    sim.add_model("bert")
    with pytest.raises(gl.InvalidInput, match="warmup_s"):
        gl.evaluation.evaluate(sim, gl.workloads.Poisson({"bert": 10}, 1), warmup_s=float("nan"))
    with pytest.raises(gl.InvalidInput, match="finite"):
        from gpulanes.cluster import plan_cluster
        plan_cluster(sim, {"bert": float("inf")}, [1])

