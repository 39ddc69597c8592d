"""gpulanes.predict on numpy arrays, and the predictors inside the simulator's scheduler."""

import numpy as np
import pytest

import gpulanes as gl
from gpulanes import workloads as wl


def test_rls_and_sgd_learn_a_linear_relation_from_numpy():
    rng = np.random.default_rng(0)
    w = np.array([0.5, -1.0, 2.0, 3.0])
    rls, sgd = gl.predict.RLS(4, forgetting=1.0, delta=1e8), gl.predict.SGD(4, lr=0.5)
    for _ in range(3000):
        x = rng.normal(size=4)
        rls.update(x, x @ w)
        sgd.update(x, x @ w)
    assert np.abs(rls.weights - w).max() < 1e-6
    assert np.abs(sgd.weights - w).max() < 1e-4
    x = rng.normal(size=4)
    assert rls.predict(x) == pytest.approx(x @ w)
    rls.weights = np.zeros(4)
    assert rls.predict(x) == 0.0
    with pytest.raises(gl.InvalidInput):
        gl.predict.RLS(3, forgetting=1.5)


def test_least_squares_equals_numpy_even_with_collinear_columns():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 6))
    X[:, 0] = 1.0
    X[:, 2] = 0.5  # collinear with the intercept, as a constant SM share is
    y = X @ rng.normal(size=6) + 0.01 * rng.normal(size=200)
    np.testing.assert_allclose(gl.predict.least_squares(X, y),
                               np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-9, atol=1e-12)


def two_gpu_sim(predictor, interference="linear", **opts):
    sim = gl.sim.Simulator(gpus=2, seed=0, predictor=predictor, interference=interference,
                           noise_cv=0.0, predictor_options={"record": True, **opts})
    for m in ("bert", "resnet50", "mobilenet_v2", "vgg16"):
        sim.add_model(m)
    sim.set_lanes([{"gpu": 0, "sms": 66, "models": ["bert"]},
                   {"gpu": 0, "sms": 66, "models": ["resnet50"]},
                   {"gpu": 1, "sms": 66, "models": ["vgg16"]},
                   {"gpu": 1, "sms": 66, "models": ["mobilenet_v2"]}])
    return sim


WORK = wl.Poisson({"bert": 300, "resnet50": 250, "mobilenet_v2": 300, "vgg16": 150}, 10, seed=1)


def mape(sim, last_fraction=0.5):
    p = sim.predictions()
    err = np.abs(p["predicted_ms"] - p["actual_ms"]) / p["actual_ms"]
    return err[int(len(err) * (1 - last_fraction)):].mean()


def test_online_predictors_learn_the_interference_the_profile_misses():
    solo_only = two_gpu_sim("static")  # no offline weights: latency = solo latency
    solo_only.run(WORK)
    results = {}
    for kind in ("sgd", "rls"):
        sim = two_gpu_sim(kind)
        sim.run(WORK)
        results[kind] = mape(sim)
        assert np.any(sim.predictor_weights() != np.eye(len(gl.predict.FEATURES))[1])  # it learned something
    base = mape(solo_only)
    assert base > 0.03  # interference makes solo latencies too optimistic here
    assert results["rls"] < 0.6 * base and results["sgd"] < 0.9 * base


def test_offline_fit_from_recorded_batches_is_what_static_and_ewma_use():
    profiling = two_gpu_sim("none")
    profiling.run(WORK)
    p = profiling.predictions()
    assert p["fine"].shape == (len(p["actual_ms"]), len(gl.predict.FEATURES)) and len(p["actual_ms"]) > 1000
    assert set(p["model"]) == {"bert", "resnet50", "mobilenet_v2", "vgg16"}
    assert (p["end_s"] > p["start_s"]).all()
    np.testing.assert_allclose(p["actual_ms"], (p["end_s"] - p["start_s"]) * 1e3, rtol=1e-6)
    w = gl.predict.least_squares(p["coarse"], p["actual_ms"])
    sim = two_gpu_sim("static", weights=list(w))
    sim.run(WORK)
    np.testing.assert_allclose(sim.predictor_weights(), w)  # offline: never changes
    solo_only = two_gpu_sim("static")
    solo_only.run(WORK)
    assert mape(sim) < mape(solo_only)


def test_predictor_options_are_validated():
    with pytest.raises(gl.InvalidInput, match="predictor"):
        gl.sim.Simulator(predictor="magic")
    with pytest.raises(gl.InvalidInput, match="no option"):
        gl.sim.Simulator(predictor="rls", predictor_options={"gamma": 1})
    with pytest.raises(gl.InvalidInput, match=f"{len(gl.predict.FEATURES)} values"):
        two_gpu_sim("static", weights=[1.0, 2.0])  # at construction, not at the first run
