"""gpulanes.ray on a local Ray cluster: two replica slots on CPU lanes behind the router's KServe
v2 HTTP endpoint. Requests reach the replicas holding their model; a re-plan moves a model
between replicas under load without losing a request; a replica killed under load is replaced
by Ray Serve while the other serves, and every request is answered exactly once (a result or a
typed error), none hangs. Marked `ray` (`pytest -m ray` runs them alone; about a minute)."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import gpulanes.ray as glray  # noqa: E402
from serve_helpers import wait_until, write_config  # noqa: E402

pytestmark = pytest.mark.ray

HOME = {"replica-0": ["affine", "both"], "replica-1": ["slow", "both"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    config = write_config(root, ["affine", "slow"], later={"both": "affine"}, slo_ms=20_000)
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True)
    port = _free_port()
    c = glray.run(str(config), placement=HOME, http_port=port)
    yield c, f"http://127.0.0.1:{port}"
    c.shutdown()
    serve.shutdown()
    ray.shutdown()


def infer(url: str, model: str, value: float = 1.0, timeout_ms: float = 15_000):
    """(HTTP status, first output value or the error)."""
    body = {"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 4],
                        "data": [value] * 4}],
            "parameters": {"timeout": int(timeout_ms * 1000)}}
    req = urllib.request.Request(f"{url}/v2/models/{model}/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())["outputs"][0]["data"][0]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}").get("error")


class Load:
    """Threads sending requests for `models` until stopped; every answer is recorded."""

    def __init__(self, url: str, models, threads: int = 3) -> None:
        self.url, self.models = url, list(models)
        self.answers = []  # (model, status, value)
        self.sent = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, i: int) -> None:
        k = i
        while not self._stop.is_set():
            model = self.models[k % len(self.models)]
            k += 1
            with self._lock:
                self.sent += 1
            status, value = infer(self.url, model, float(k))
            with self._lock:
                self.answers.append((model, status, value, float(k)))

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(120)
        assert not any(t.is_alive() for t in self._threads), "a request hung"
        assert len(self.answers) == self.sent  # every request answered, once
        return self.answers


def test_requests_reach_the_replicas_holding_their_model(cluster):
    c, url = cluster
    before = c.info()
    for model, expect in (("affine", 3.0), ("slow", 2.0), ("both", 3.0)):
        for _ in range(12):
            assert infer(url, model) == (200, expect)
    after = c.info()
    sent = {slot: {m: after[slot]["submitted"].get(m, 0) - before[slot]["submitted"].get(m, 0)
                   for m in after[slot]["submitted"]} for slot in after}
    assert sent["replica-0"].get("affine") == 12 and "slow" not in after["replica-0"]["models"]
    assert sent["replica-1"].get("slow") == 12 and "affine" not in after["replica-1"]["models"]
    assert sent["replica-0"]["both"] + sent["replica-1"]["both"] == 12
    assert sent["replica-0"]["both"] > 0 and sent["replica-1"]["both"] > 0
    status, error = infer(url, "nope")
    assert status == 404 and "nope" in error


def test_a_replan_moves_a_model_between_replicas_without_losing_requests(cluster):
    c, url = cluster
    load = Load(url, ["affine", "both"])
    time.sleep(1.0)
    moved = {"replica-0": ["both"], "replica-1": ["slow", "both", "affine"]}
    c.apply(moved)
    time.sleep(1.0)
    answers = load.stop()
    assert answers and all(status == 200 and value == 2 * x + 1
                           for _, status, value, x in answers), \
        [a for a in answers if a[1] != 200][:5]
    info = c.info()
    assert "affine" not in info["replica-0"]["models"] and "affine" in info["replica-1"]["models"]

    # Back, through replan(): the planner sees the rates the replicas measured.
    seen = {}

    def planner(rates):
        seen.update(rates)
        return {"placement": HOME}
    c.replan(planner)
    assert seen.get("affine", 0) > 0
    assert {slot: set(i["models"]) for slot, i in c.info().items()} == \
        {slot: set(models) for slot, models in HOME.items()}


def test_a_killed_replica_is_replaced_while_the_other_serves(cluster):
    c, url = cluster
    c.apply(HOME)
    pid = c.info()["replica-0"]["pid"]
    load = Load(url, ["both", "affine"], threads=4)
    time.sleep(1.0)
    victims = [a for a in ray.util.list_named_actors(all_namespaces=True)
               if "replica-0" in a["name"] and a["namespace"] == "serve"]
    assert victims, ray.util.list_named_actors(all_namespaces=True)
    ray.kill(ray.get_actor(victims[0]["name"], namespace="serve"), no_restart=True)
    time.sleep(3.0)
    answers = load.stop()
    both = [a for a in answers if a[0] == "both"]
    assert both and all(status == 200 for _, status, _, _ in both), \
        [a for a in both if a[1] != 200][:5]  # retried on replica-1
    assert all(status in (200, 503, 504) for _, status, _, _ in answers)
    # Ray Serve starts a new replica-0 (a new process), which serves affine again.
    assert wait_until(lambda: infer(url, "affine")[0] == 200 and c.info()["replica-0"]["pid"] != pid,
                      timeout_s=120, poll_s=0.5)


def test_bad_arguments_are_refused_by_name_before_ray_starts(tmp_path):
    import gpulanes as gl

    config = write_config(tmp_path, ["affine"])
    cases = [({"replicas": 0}, "replicas"), ({"replicas": True}, "replicas"),
             ({"http_port": 70000}, "http_port"), ({"ray_actor_options": [1]}, "ray_actor_options"),
             ({"route_prefix": "x"}, "route_prefix"),
             ({"placement": {"replica-0": ["nope"]}}, "nope"),
             ({"placement": {"replica-0": "affine"}}, "list of model names"),
             ({"placement": ["affine"]}, "placement"),
             ({"placement": {"replica-0": ["affine"]}, "route": {"affine": {"replica-1": 1}}},
              "does not hold"),
             ({"placement": {"replica-0": ["affine"]}, "route": {"affine": {"replica-0": -1}}},
              ">= 0"),
             ({"placement": {"replica-0": ["affine"]},
               "route": {"affine": {"replica-0": float("nan")}}}, ">= 0"),
             ({"plan": {"machines": []}}, "plan_cluster")]
    for kwargs, says in cases:
        with pytest.raises(gl.InvalidInput, match=says):
            glray.run(str(config), **kwargs)
    with pytest.raises(gl.InvalidInput, match="config"):
        glray.run(str(tmp_path / "missing.toml"))
