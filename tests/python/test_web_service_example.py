"""examples/web_service.py, the FastAPI service users write themselves, works as documented:
its own endpoint with a per-request deadline, typed errors as HTTP statuses, and the mounted
KServe v2 app and /metrics."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "web_service.py"


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("web_service_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with TestClient(module.app) as c:  # runs the lifespan: start ... shutdown
        yield c, module
    assert not module.runtime.running


def test_its_own_endpoint(client):
    c, module = client
    r = c.post("/classify", json={"features": [0.1 * i for i in range(8)], "deadline_ms": 5000})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["label"] in module.LABELS
    assert abs(sum(answer["scores"]) - 1) < 1e-5
    assert module.runtime.stats()["classifier"]["completed"] >= 1


def test_bad_input_and_a_deadline_that_cannot_be_met(client):
    c, _ = client
    assert c.post("/classify", json={"features": [1.0] * 3}).status_code == 422  # FastAPI's check
    r = c.post("/classify", json={"features": [1.0] * 8, "deadline_ms": 0.001})
    assert r.status_code == 504 and "deadline" in r.json()["error"]


def test_the_mounted_kserve_app_and_metrics(client):
    c, _ = client
    assert c.get("/v2/health/ready").status_code == 200
    r = c.post("/v2/models/classifier/infer", json={"inputs": [
        {"name": "INPUT__0", "shape": [2, 8], "datatype": "FP32", "data": [0.5] * 16}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 4]
    assert "gpulanes_requests_in_flight" in c.get("/metrics").text
