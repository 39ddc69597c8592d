"""`gpulanes serve` driven by tritonclient (written by others) over loopback, HTTP and gRPC, as a
Triton user would: health, metadata, JSON and binary tensors, several inputs and outputs,
int64 and fp16, timeout and priority, every error mapping, concurrent clients, and SIGTERM
draining every in-flight request."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("uvicorn")
from tritonclient.utils import InferenceServerException  # noqa: E402

from serve_helpers import Affine, ServerProcess, write_config  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    # model_dir: one good entry, and two that point outside it (a symlink, a ../ file)
    models = root / "more"
    models.mkdir()
    torch.jit.save(torch.jit.script(Affine().eval()), str(models / "extra.pt"))
    table = 'slo_ms = 60000\ninputs = [{ name = "INPUT__0", datatype = "FP32", shape = [4] }]\n'
    (models / "extra.toml").write_text('file = "extra.pt"\n' + table)
    (root / "outside.toml").write_text('file = "more/extra.pt"\n' + table)
    (models / "evil.toml").symlink_to(root / "outside.toml")
    (models / "sneaky.toml").write_text('file = "../affine.pt"\n' + table)
    cfg = write_config(root, ["affine", "pair", "half", "slow"],
                       server='max_body_bytes = 65536\nmax_rows = 64\nmodel_dir = "more"',
                       max_queue={"slow": 2}, later={"later": "affine"})
    srv = ServerProcess(cfg)
    yield srv
    assert srv.terminate() == 0, "".join(srv.lines)


def client(server, protocol):
    if protocol == "http":
        return th.InferenceServerClient(server.http, concurrency=4)
    return tg.InferenceServerClient(server.grpc)


def inp(mod, name, array, binary=True):
    i = mod.InferInput(name, list(array.shape), {np.float32: "FP32", np.int64: "INT64",
                                                np.float16: "FP16"}[array.dtype.type])
    if mod is th:
        i.set_data_from_numpy(array, binary_data=binary)
    else:
        i.set_data_from_numpy(array)
    return i


def out(mod, name, binary=True):
    return mod.InferRequestedOutput(name, binary_data=binary) if mod is th else mod.InferRequestedOutput(name)


PROTOCOLS = [("http", th), ("grpc", tg)]


def test_the_ready_line_says_which_grpc_front_end_runs(server):
    from gpulanes.serve.grpc_server import core_frontend_available

    kind = "core" if core_frontend_available() else "grpcio"
    assert f"grpc={server.grpc} ({kind})" in server._ready_line, server._ready_line


@pytest.mark.parametrize("frontend", ["auto", "python"])
def test_a_second_server_on_a_taken_port_exits_2_in_one_line(server, tmp_path, frontend):
    # gRPC sets SO_REUSEPORT by default: a second server would share the port's clients.
    cfg = write_config(tmp_path, ["affine"], server=f'grpc_frontend = "{frontend}"')
    for protocol, address in (("gRPC", server.grpc), ("HTTP", server.http)):
        port = address.rsplit(":", 1)[1]
        args = (["--grpc-port", port, "--http-port", "-1"] if protocol == "gRPC"
                else ["--http-port", port, "--grpc-port", "-1"])
        done = subprocess.run([sys.executable, "-m", "gpulanes", "serve", str(cfg), *args],
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 2, done.stderr[-2000:]
        errors = [line for line in done.stderr.splitlines() if "gpulanes serve: error:" in line]
        assert len(errors) == 1 and f"{protocol} could not listen on 127.0.0.1:{port}" in errors[0]
        assert "Traceback" not in done.stderr
    assert client(server, "grpc").is_server_live()  # the first one is untouched


def test_an_ipv6_host_serves_both_protocols(tmp_path):
    srv = ServerProcess(write_config(tmp_path, ["affine"]), command=[
        sys.executable, "-m", "gpulanes", "serve", "--host", "::1"])
    try:
        assert srv.http.startswith("[::1]:") and srv.grpc.startswith("[::1]:"), srv._ready_line
        x = np.ones((1, 4), dtype=np.float32)
        for protocol, mod in PROTOCOLS:
            c = client(srv, protocol)
            assert c.is_server_live()
            got = c.infer("affine", [inp(mod, "INPUT__0", x)]).as_numpy("OUTPUT__0")
            assert got.tolist() == [[3.0] * 4]
    finally:
        assert srv.terminate() == 0, "".join(srv.lines)


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_health_and_metadata(server, protocol, mod):
    c = client(server, protocol)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("pair") and not c.is_model_ready("pair", "7")
    meta = c.get_model_metadata("pair")
    if mod is tg:
        meta = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                           for t in meta.inputs],
                "outputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
                            for t in meta.outputs]}
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 3]},
                              {"name": "b", "datatype": "INT64", "shape": [-1, 3]}]
    assert meta["outputs"] == [{"name": "sum", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "twice", "datatype": "INT64", "shape": [-1, 3]}]
    server_meta = c.get_server_metadata()
    assert (server_meta["name"] if mod is th else server_meta.name) == "gpulanes"


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_repository_index_and_loading_what_the_config_declares(server, protocol, mod):
    c = client(server, protocol)

    def index():
        got = c.get_model_repository_index()
        if mod is tg:
            got = [{"name": m.name, "version": m.version, "state": m.state} for m in got.models]
        return {m["name"]: m["state"] for m in got}
    before = index()
    assert {k: before[k] for k in ("affine", "half", "pair", "slow")} == dict.fromkeys(
        ("affine", "half", "pair", "slow"), "READY")
    c.load_model("affine")  # already served: nothing to do
    for name in ("later", "extra"):  # declared with load = false; in model_dir
        c.load_model(name)  # loads while the others serve; the second protocol finds it loaded
        assert c.is_model_ready(name) and index()[name] == "READY"
        x = np.ones((2, 4), dtype=np.float32)
        np.testing.assert_array_equal(c.infer(name, [inp(mod, "INPUT__0", x)]).as_numpy("OUTPUT__0"),
                                      2 * x + 1)
    refusals = [("evil", "outside"), ("sneaky", "outside"), ("nope", "no model named"),
                (".hidden", "plain name")]
    if mod is tg:
        refusals.append(("../affine", "plain name"))
    for name, says in refusals:
        with pytest.raises(InferenceServerException) as e:
            c.load_model(name)
        assert says in e.value.message(), (name, e.value)
    with pytest.raises(InferenceServerException) as e:  # a client-given config is refused
        c.load_model("later", config='{"backend": "python"}')
    assert ("400" if mod is th else "INVALID_ARGUMENT") in str(e.value.status())
    # Unload: the model goes (404 / NOT_FOUND after), the others stay; loading brings it back.
    name = "later" if mod is th else "extra"
    c.unload_model(name)
    assert not c.is_model_ready(name) and c.is_model_ready("affine")
    with pytest.raises(InferenceServerException) as e:
        c.infer(name, [inp(mod, "INPUT__0", np.ones((1, 4), dtype=np.float32))])
    assert ("404" if mod is th else "NOT_FOUND") in str(e.value.status())
    # The config declares "later" (listed while unloaded); "extra" came from model_dir.
    assert index().get(name) == ("UNAVAILABLE" if name == "later" else None)
    with pytest.raises(InferenceServerException) as e:
        c.unload_model(name)  # not served any more
    assert ("404" if mod is th else "NOT_FOUND") in str(e.value.status())
    c.load_model(name)
    assert c.is_model_ready(name)
    assert c.infer(name, [inp(mod, "INPUT__0", np.ones((1, 4), dtype=np.float32))]).as_numpy(
        "OUTPUT__0").tolist() == [[3.0] * 4]


@pytest.mark.parametrize("protocol, mod, binary", [("http", th, True), ("http", th, False),
                                                   ("grpc", tg, True)])
def test_infer_one_input(server, protocol, mod, binary):
    c = client(server, protocol)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    r = c.infer("affine", [inp(mod, "INPUT__0", x, binary)], outputs=[out(mod, "OUTPUT__0", binary)],
                request_id="id-42")
    np.testing.assert_array_equal(r.as_numpy("OUTPUT__0"), 2 * x + 1)
    resp = r.get_response()
    assert (resp["id"] if mod is th else resp.id) == "id-42"


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_two_inputs_two_outputs_int64_and_a_chosen_output(server, protocol, mod):
    c = client(server, protocol)
    a = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    b = np.arange(15, dtype=np.int64).reshape(5, 3) - 7
    r = c.infer("pair", [inp(mod, "a", a), inp(mod, "b", b)])
    np.testing.assert_allclose(r.as_numpy("sum"), a + b, rtol=1e-6)
    assert r.as_numpy("twice").dtype == np.int64
    np.testing.assert_array_equal(r.as_numpy("twice"), 2 * b)
    r = c.infer("pair", [inp(mod, "a", a), inp(mod, "b", b)], outputs=[out(mod, "twice")])
    assert r.as_numpy("sum") is None
    np.testing.assert_array_equal(r.as_numpy("twice"), 2 * b)


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_fp16(server, protocol, mod):
    c = client(server, protocol)
    x = (np.arange(8, dtype=np.float16) / 4).reshape(2, 4)
    r = c.infer("half", [inp(mod, "INPUT__0", x)])
    y = r.as_numpy("OUTPUT__0")
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, 2 * x)


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_timeout_is_the_deadline_and_priority_is_taken(server, protocol, mod):
    c = client(server, protocol)
    x = np.zeros((1, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as e:
        c.infer("affine", [inp(mod, "INPUT__0", x)], timeout=1)  # 1 us: missed at once
    assert ("504" if mod is th else "DEADLINE_EXCEEDED") in str(e.value.status())
    r = c.infer("affine", [inp(mod, "INPUT__0", x)], timeout=30_000_000, priority=2)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT__0"), x * 2 + 1)


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_errors_map_to_status_codes(server, protocol, mod):
    c = client(server, protocol)
    x = np.zeros((1, 4), dtype=np.float32)
    cases = [
        (lambda: c.infer("nope", [inp(mod, "INPUT__0", x)]), "404", "NOT_FOUND", "nope"),
        (lambda: c.infer("affine", [inp(mod, "INPUT__0", np.zeros((1, 4), np.int64))]),
         "400", "INVALID_ARGUMENT", "datatype"),
        (lambda: c.infer("affine", [inp(mod, "INPUT__0", np.zeros((1, 5), np.float32))]),
         "400", "INVALID_ARGUMENT", "shape"),
        (lambda: c.infer("affine", [inp(mod, "X", x)]), "400", "INVALID_ARGUMENT", "unknown input"),
        (lambda: c.infer("affine", [inp(mod, "INPUT__0", np.zeros((9, 4), np.float32))]),
         "400", "INVALID_ARGUMENT", "at most 8"),
        (lambda: c.infer("affine", [inp(mod, "INPUT__0", x)], outputs=[out(mod, "Y")]),
         "400", "INVALID_ARGUMENT", "unknown output"),
    ]
    for call, http, grpc, says in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert (http if mod is th else grpc) in str(e.value.status()), e.value
        assert says in e.value.message()


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_a_full_queue_is_503_or_resource_exhausted_and_the_rest_are_served(server, protocol, mod):
    # slow: max_queue 2, batches of ~10+ ms: 12 concurrent single requests overflow it.
    x = np.zeros((1, 4), dtype=np.float32)

    def one(_):
        try:
            return client(server, protocol).infer("slow", [inp(mod, "INPUT__0", x)]).as_numpy("OUTPUT__0")
        except InferenceServerException as e:
            return e
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(12)))
    refused = [r for r in results if isinstance(r, InferenceServerException)]
    served = [r for r in results if not isinstance(r, InferenceServerException)]
    want = "503" if mod is th else ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
    assert all(any(w in str(r.status()) for w in ([want] if mod is th else want))
               for r in refused), [str(r) for r in refused]
    assert served and all(np.array_equal(s, x + 1) for s in served)


def test_concurrent_clients_of_both_protocols(server):
    errors = []

    def worker(k):
        mod = th if k % 2 else tg
        c = client(server, "http" if mod is th else "grpc")
        for i in range(15):
            x = np.full((1 + i % 3, 4), k * 100 + i, dtype=np.float32)
            y = c.infer("affine", [inp(mod, "INPUT__0", x)]).as_numpy("OUTPUT__0")
            if not np.array_equal(y, 2 * x + 1):
                errors.append((k, i))
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors


def test_sigterm_drains_every_in_flight_request(tmp_path):
    srv = ServerProcess(write_config(tmp_path, ["slower"], max_batch_size=1, max_queue=64))
    x = np.zeros((1, 4), dtype=np.float32)
    done, results = [], []
    first = threading.Event()

    def one():
        r = th.InferenceServerClient(srv.http).infer("slower", [inp(th, "INPUT__0", x)])
        results.append(r.as_numpy("OUTPUT__0"))
        done.append(time.monotonic())
        first.set()
    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    assert first.wait(120)
    sent = time.monotonic()
    assert srv.terminate() == 0, "".join(srv.lines)
    for t in threads:
        t.join(60)
    assert len(results) == 16 and all(np.array_equal(r, x + 1) for r in results)
    assert max(done) > sent  # some were still in flight when SIGTERM came, and were answered
    assert any("draining" in line for line in srv.lines)


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
@pytest.mark.parametrize("sequence", [dict(sequence_id=7), dict(sequence_id="s1"),
                                      dict(sequence_id=7, sequence_start=True),
                                      dict(sequence_id=7, sequence_end=True)])
def test_a_request_of_a_sequence_is_refused_naming_the_parameter(server, protocol, mod, sequence):
    # Stateful models are not served: a sequence's request is refused, never served as if alone.
    x = np.zeros((1, 4), dtype=np.float32)
    c = client(server, protocol)
    with pytest.raises(InferenceServerException) as e:
        c.infer("affine", [inp(mod, "INPUT__0", x)], **sequence)
    assert "parameters.sequence_id" in str(e.value) and "not served" in str(e.value)
    assert "400" in str(e.value.status()) or "INVALID_ARGUMENT" in str(e.value.status())
    # sequence_id 0 (tritonclient's default: no sequence) is served as usual
    r = c.infer("affine", [inp(mod, "INPUT__0", x)], sequence_id=0)
    assert np.array_equal(r.as_numpy("OUTPUT__0"), x * 2 + 1)


def test_health_answers_json_as_the_open_inference_protocol_has_it(server):
    import json
    import urllib.request
    for path, body in (("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
                       ("/v2/models/affine/ready", {"name": "affine", "ready": True})):
        with urllib.request.urlopen(f"http://{server.http}{path}", timeout=30) as r:
            assert r.status == 200 and json.loads(r.read()) == body


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_the_statistics_extension_counts_what_was_served(server, protocol, mod):
    # Triton's examples call get_inference_statistics after inferring; its schema, from the
    # runtime's own counters.
    import time as _time

    c = client(server, protocol)

    def stats(name=""):
        got = c.get_inference_statistics(name, as_json=True) if mod is tg else \
            c.get_inference_statistics(name)
        return {s["name"]: s for s in got["model_stats"]}
    before = stats("half")["half"]
    x = np.ones((3, 4), dtype=np.float16)
    t0 = _time.time()
    c.infer("half", [inp(mod, "INPUT__0", x)])
    after = stats("half")["half"]
    count = lambda s: int(s.get("inference_count", 0))  # noqa: E731 - gRPC JSON omits zeros
    assert count(after) == count(before) + 3
    assert int(after["execution_count"]) > int(before.get("execution_count", 0))
    succ = after["inference_stats"]["success"]
    assert int(succ["count"]) == count(after) and int(succ["ns"]) > 0
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    assert int(after["last_inference"]) >= int(t0 * 1000) - 1000
    sizes = {int(b["batch_size"]): b for b in after["batch_stats"]}
    assert sum(int(b["compute_infer"]["count"]) * size for size, b in sizes.items()) == \
        int(after["inference_stats"]["compute_infer"]["count"])
    # every model at once, and an unknown one refused
    assert {"affine", "pair", "half", "slow"} <= set(stats())
    with pytest.raises(InferenceServerException):
        stats("nope")


@pytest.mark.parametrize("protocol, mod", PROTOCOLS)
def test_config_reports_the_models_own_max_batch_and_more_rows_are_refused(server, protocol, mod):
    # The config gives every model max_batch_size 8 (and the server max_rows 64): /config says
    # 8, as Triton's does, and perf_analyzer or a client sending 9 rows is refused.
    c = client(server, protocol)
    config = c.get_model_config("affine") if mod is th else \
        c.get_model_config("affine", as_json=True)["config"]
    assert int(config["max_batch_size"]) == 8
    x = np.zeros((8, 4), dtype=np.float32)
    assert c.infer("affine", [inp(mod, "INPUT__0", x)]).as_numpy("OUTPUT__0").shape == (8, 4)
    with pytest.raises(InferenceServerException) as e:
        c.infer("affine", [inp(mod, "INPUT__0", np.zeros((9, 4), dtype=np.float32))])
    assert "at most 8" in str(e.value)
