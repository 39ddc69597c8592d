"""KServe v2 over HTTP (JSON tensors) on a CPU runtime, driven as a client would: the protocol's
endpoints, batches split into requests and stacked back, and every bad request a 4xx with the
protocol's error body, never a 500 or a crash."""

import json

import pytest
import torch

import gpulanes as gl
from conftest import Affine, scripted

starlette = pytest.importorskip("starlette")
from starlette.testclient import TestClient  # noqa: E402

from gpulanes.serve import app  # noqa: E402


@pytest.fixture(scope="module")
def client():
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4),
                max_batch_size=8, max_queue=64)
    rt.start()
    with TestClient(app(rt, max_body_bytes=4096)) as c:
        yield c, rt
    rt.shutdown()


def body(data, shape=(1, 4), datatype="FP32", **extra):
    return {"inputs": [{"name": "INPUT__0", "shape": list(shape), "datatype": datatype,
                        "data": data}], **extra}


def test_server_and_model_endpoints(client):
    c, _ = client
    assert c.get("/v2").json()["name"] == "gpulanes"
    # health as the Open Inference Protocol has it: JSON bodies (KServe's client reads them)
    assert c.get("/v2/health/live").json() == {"live": True}
    r = c.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    assert c.get("/v2/models/affine/ready").json() == {"name": "affine", "ready": True}
    assert c.get("/v2/models/affine/infer").status_code == 405  # infer is POST only
    assert "binary_tensor_data" in c.get("/v2").json()["extensions"]
    meta = c.get("/v2/models/affine").json()
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 4]}]
    assert c.get("/v2/models/affine/versions/1").json()["name"] == "affine"
    assert c.get("/v2/models/affine/ready").status_code == 200
    assert c.get("/v2/models/nope/ready").status_code == 404
    text = c.get("/metrics").text
    assert "gpulanes" in text


def test_a_batch_is_served_row_by_row_and_stacked(client):
    c, _ = client
    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    r = c.post("/v2/models/affine/infer",
               json=body(x.flatten().tolist(), shape=(3, 4), id="req-7",
                         parameters={"timeout": 30_000_000, "priority": 2}))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "req-7" and out["model_name"] == "affine"
    o = out["outputs"][0]
    assert o["name"] == "OUTPUT__0" and o["datatype"] == "FP32" and o["shape"] == [3, 4]
    assert torch.equal(torch.tensor(o["data"]).reshape(3, 4), 2 * x + 1)  # Affine: 2x + 1


@pytest.mark.parametrize("payload, status, says", [
    (b"{not json", 400, "not JSON"),
    (json.dumps({"inputs": "x"}).encode(), 400, "inputs"),
    (json.dumps(body([1.0] * 4, datatype="INT64")).encode(), 400, "datatype"),
    (json.dumps(body([1.0] * 4, shape=(1, 5))).encode(), 400, "shape"),
    (json.dumps(body([1.0] * 3)).encode(), 400, "values"),
    (json.dumps(body(["a"] * 4)).encode(), 400, "data"),
    (json.dumps(body([1.0] * 4, parameters={"timeout": -5})).encode(), 400, "timeout"),
    (json.dumps({"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32",
                             "data": [0, 0, 0, 0]}]}).encode(), 400, "unknown input"),
    (b"[" + b"1.0," * 2000 + b"1.0]", 413, "limit"),
])
def test_bad_requests_get_400_with_an_error_body(client, payload, status, says):
    c, rt = client
    r = c.post("/v2/models/affine/infer", content=payload,
               headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert says in r.json()["error"]
    assert rt.stats()["affine"]["in_flight"] == 0


def test_unknown_model_is_404_and_a_past_deadline_504(client):
    c, _ = client
    r = c.post("/v2/models/nope/infer", json=body([0.0] * 4))
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = c.post("/v2/models/affine/infer", json=body([0.0] * 4, parameters={"timeout": 1}))
    assert r.status_code == 504, r.text  # 1 us: cannot be met even alone


def test_a_closed_runtime_answers_503_with_retry_after():
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("affine", scripted(Affine()), slo_ms=1000, example_inputs=torch.zeros(2, 4))
    with TestClient(app(rt)) as c:
        r = c.get("/v2/health/ready")
        assert r.status_code == 400 and r.json() == {"ready": False}  # not started yet
        r = c.post("/v2/models/affine/infer", json=body([0.0] * 4))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"


def binary_request(header: dict, raw: bytes):
    head = json.dumps(header).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "content-type": "application/octet-stream"}


def test_binary_tensors_in_and_out(client):
    c, _ = client
    x = torch.arange(8, dtype=torch.float32).reshape(2, 4)
    payload, headers = binary_request(
        {"inputs": [{"name": "INPUT__0", "shape": [2, 4], "datatype": "FP32",
                     "parameters": {"binary_data_size": 32}}],
         "outputs": [{"name": "OUTPUT__0", "parameters": {"binary_data": True}}]},
        x.numpy().tobytes())
    r = c.post("/v2/models/affine/infer", content=payload, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 32
    y = torch.frombuffer(bytearray(r.content[n:]), dtype=torch.float32).reshape(2, 4)
    assert torch.equal(y, 2 * x + 1)


@pytest.mark.parametrize("header, raw, header_length, says", [
    ({"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32",
                  "parameters": {"binary_data_size": 16}}]}, b"\0" * 12, None, "runs past"),
    ({"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32",
                  "parameters": {"binary_data_size": 12}}]}, b"\0" * 12, None, "needs 16"),
    ({"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32",
                  "parameters": {"binary_data_size": 16}}]}, b"\0" * 20, None, "claim 16"),
    ({"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "FP32",
                  "parameters": {"binary_data_size": -1}}]}, b"", None, "byte count"),
    ({"inputs": [{"name": "INPUT__0", "shape": [1, 4], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 16}}]}, b"\0" * 16, None, "datatype"),
    ({"inputs": []}, b"", "99999", "does not fit"),
    ({"inputs": []}, b"", "-3", "does not fit"),
])
def test_binary_sizes_that_disagree_get_400(client, header, raw, header_length, says):
    c, rt = client
    payload, headers = binary_request(header, raw)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    r = c.post("/v2/models/affine/infer", content=payload, headers=headers)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]
    assert rt.stats()["affine"]["in_flight"] == 0


def test_a_bearer_token_guards_everything_but_health():
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.start()
    try:
        with TestClient(app(rt, token="s3cret")) as c:
            assert c.get("/v2/health/live").status_code == 200
            assert c.get("/v2/health/ready").status_code == 200
            for path in ("/v2", "/v2/models/affine", "/metrics"):
                assert c.get(path).status_code == 401
                assert c.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
                assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            before = rt.stats()["affine"]["submitted"]
            r = c.post("/v2/models/affine/infer", json=body([0.0] * 4))
            assert r.status_code == 401 and rt.stats()["affine"]["submitted"] == before
            # Two Authorization headers are refused by every route alike (not first-wins on
            # one and last-wins on another).
            twice = [("Authorization", "Bearer s3cret"), ("Authorization", "Bearer wrong")]
            for order in (twice, twice[::-1]):
                for method, path in (("GET", "/v2/models/affine"), ("POST", "/v2/models/affine/infer")):
                    r = c.request(method, path, headers=order, json=body([0.0] * 4))
                    assert r.status_code == 400 and "more than one Authorization" in r.text, r.text
            assert rt.stats()["affine"]["submitted"] == before
    finally:
        rt.shutdown()


def test_errors_echo_at_most_512_characters_of_what_the_client_sent(client):
    c, _ = client
    r = c.post("/v2/models/" + "m" * 10_000 + "/infer", json=body([0.0] * 4))
    assert r.status_code in (400, 404) and len(r.json()["error"]) <= 512
    many = {"inputs": [{"name": f"nope_{i}", "shape": [1, 4], "datatype": "FP32",
                        "data": [0.0] * 4} for i in range(50)]}
    r = c.post("/v2/models/affine/infer", json=many)
    assert r.status_code == 400 and len(r.json()["error"]) <= 512


# Latin-1 superscripts (b"\xb2" reads as a digit, which int() refuses), UTF-8 Arabic-Indic
# three, and plain non-numbers.
@pytest.mark.parametrize("length", [b"\xb2", b"\xb9", "\u0663".encode(), b"1e3", b"-5"])
def test_a_header_length_that_is_not_ascii_digits_is_400(client, length):
    c, _ = client
    r = c.post("/v2/models/affine/infer", content=b'{"inputs": []}',
               headers={"Inference-Header-Content-Length": length})
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("kwargs, says", [({"max_body_bytes": 0}, "max_body_bytes"),
                                          ({"max_rows": 1.5}, "max_rows"),
                                          ({"token": ""}, "token")])
def test_app_options_are_checked(client, kwargs, says):
    _, rt = client
    with pytest.raises(gl.InvalidInput, match=says):
        app(rt, **kwargs)


def test_what_an_attacker_sends_gets_a_4xx_and_the_server_keeps_serving(client):
    c, rt = client
    nested = b"[" * 100_000 + b"]" * 100_000
    cases = [
        ("/v2/models/..%2F..%2Fetc%2Fpasswd/infer", json.dumps(body([0.0] * 4)).encode(), 404),
        ("/v2/models/affine/versions/..%2F2/infer", json.dumps(body([0.0] * 4)).encode(), 404),
        ("/v2/models/affine/infer", b'{"inputs": ' + nested[:3000] + b"}", 400),  # too deep
        ("/v2/models/affine/infer", json.dumps(body([[0.0, 1.0], [2.0], 3.0])).encode(), 400),
        ("/v2/models/affine/infer", json.dumps(body([0.0] * 4, shape=(10**12, 4))).encode(), 400),
        ("/v2/models/affine/infer", json.dumps(body([0.0] * 4, shape=(1, 4, 1))).encode(), 400),
        ("/v2/models/affine/infer", json.dumps(body([1e308 * 10] * 4)).encode(), 400),  # inf
        ("/v2/repository/models/affine/unload", b'{"parameters": {"path": "/etc"}}', 400),
        ("/v2/repository/models/affine/unload", b'{"parameters": {"unload_dependents": 1}}', 400),
        ("/v2/repository/models/affine/unload", b'["affine"]', 400),
        ("/v2/repository/models/..%2Faffine/unload", b"", 404),
    ]
    for path, payload, status in cases:
        r = c.post(path, content=payload, headers={"content-type": "application/json"})
        assert r.status_code == status, (path, payload[:60], r.text)
        assert "error" in r.json()

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield b" " * 1000
    for path in ("/v2/models/affine/infer", "/v2/repository/index",
                 "/v2/repository/models/affine/load", "/v2/repository/models/affine/unload"):
        r = c.post(path, content=chunks())  # every route that reads a body bounds it
        assert r.status_code == 413 and "limit" in r.json()["error"], (path, r.text)
        r = c.post(path, content=b" " * 5000)  # over max_body_bytes (4096), declared
        assert r.status_code == 413 and "limit" in r.json()["error"], (path, r.text)
    r = c.post("/v2/models/affine/infer", json=body([1.0] * 4))
    assert r.status_code == 200 and rt.stats()["affine"]["in_flight"] == 0


@pytest.mark.parametrize("datatype, data, fits", [
    ("UINT8", [255, 0], True), ("UINT8", [-1], False), ("UINT8", [256], False),
    ("INT8", [127, -128], True), ("INT8", [128], False),
    ("INT64", [2**62, -2**62], True), ("INT64", [1.5], False), ("INT64", [2.0], True),
    ("INT32", [True], False),
    ("FP32", [3.5, 1e38], True), ("FP32", [1e39], False), ("FP16", [65504.0], True),
    ("FP16", [70000.0], False), ("FP64", [1e300], True),
    ("BOOL", [True, False], True), ("BOOL", [2], False), ("BOOL", [1], False),
    ("UINT16", [65535, 0], True), ("UINT16", [65536], False), ("UINT16", [-1], False),
    ("UINT32", [2**32 - 1], True), ("UINT32", [2**32], False),
    ("UINT64", [2**63 - 1, 0], True), ("UINT64", [-1], False), ("UINT64", [0.5], False),
])
def test_json_values_the_datatype_cannot_hold_are_refused(datatype, data, fits):
    from gpulanes.serve.codec import DATATYPES, tensor_from_list

    dtype = DATATYPES[datatype]
    if fits:
        t = tensor_from_list("x", (len(data),), dtype, data)
        wide = torch.float64 if dtype.is_floating_point else None
        assert t.dtype == dtype and torch.equal(t, torch.tensor(data, dtype=wide).to(dtype))
    else:
        with pytest.raises(gl.InvalidInput, match=f"input 'x'.*{datatype}"):
            tensor_from_list("x", (len(data),), dtype, data)


def test_a_fraction_beside_big_integers_is_still_refused():
    from gpulanes.serve.codec import tensor_from_list

    # Read as float32, 16777217.5 would round to a whole 16777218 and pass as an integer.
    with pytest.raises(gl.InvalidInput, match="values must be integers"):
        tensor_from_list("x", (2,), torch.int64, [16777217.5, 1])


class Log(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)  # NaN below 0, -inf at 0


@pytest.fixture(scope="module")
def odd_models():
    from conftest import Picky

    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("picky", scripted(Picky()), slo_ms=60_000, example_inputs=torch.ones(2, 4))
    rt.register("log", scripted(Log()), slo_ms=60_000, example_inputs=torch.ones(2, 4))
    rt.start()
    with TestClient(app(rt)) as c:
        yield c
    rt.shutdown()


def test_a_model_that_raises_answers_500_with_an_error_id_and_no_traceback(odd_models, caplog):
    with caplog.at_level("ERROR", logger="gpulanes.serve"):
        r = odd_models.post("/v2/models/picky/infer", json=body([-1, 0, 0, 0]))
    assert r.status_code == 500
    error = r.json()["error"]
    assert "negative input" in error and "error id" in error
    # what the client sees: one line, no TorchScript traceback, no file path
    assert "\n" not in error and "Traceback" not in error and ".py" not in error, error
    error_id = error.split("error id ")[1].split(";")[0]
    logged = [rec.getMessage() for rec in caplog.records if error_id in rec.getMessage()]
    assert logged and "Traceback" in logged[0]  # the server log keeps the whole of it


def test_nan_and_infinity_are_never_written_as_json(odd_models):
    r = odd_models.post("/v2/models/log/infer", json=body([-1, 0, 1, 2]))
    assert r.status_code == 400
    assert "NaN or infinity" in r.json()["error"] and "binary" in r.json()["error"]
    # asked for as binary, the same output is served
    r = odd_models.post("/v2/models/log/infer",
                        json=body([-1, 0, 1, 2], parameters={"binary_data_output": True}))
    assert r.status_code == 200
    n = int(r.headers["inference-header-content-length"])
    out = torch.frombuffer(bytearray(r.content[n:]), dtype=torch.float32)
    assert torch.isnan(out[0]) and out[1] == float("-inf") and out[2] == 0


def test_the_statistics_extension_over_http(client):
    c, _ = client
    c.post("/v2/models/affine/infer", json=body([0.0] * 8, shape=(2, 4)))
    every = c.get("/v2/models/stats").json()["model_stats"]
    one = c.get("/v2/models/affine/stats").json()["model_stats"]
    same = c.get("/v2/models/affine/versions/1/stats").json()["model_stats"]
    assert [s["name"] for s in every] == ["affine"] and len(one) == len(same) == 1
    s = one[0]
    assert s["inference_count"] >= 2 and s["execution_count"] >= 1
    assert s["inference_stats"]["success"]["count"] == s["inference_count"]
    assert s["inference_stats"]["queue"]["count"] >= 2 and s["last_inference"] > 0
    assert c.get("/v2/models/nope/stats").status_code == 404
    assert c.get("/v2/models/affine/versions/7/stats").status_code == 404
    assert "statistics" in c.get("/v2").json()["extensions"]



@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_bodies_are_inflated_within_the_body_limit(client, encoding):
    import zlib
    c, _ = client

    def packed(data: bytes, level: int = 6) -> bytes:
        wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS,
                 "raw-deflate": -zlib.MAX_WBITS}[encoding]
        z = zlib.compressobj(level, zlib.DEFLATED, wbits)
        return z.compress(data) + z.flush()
    name = "deflate" if encoding == "raw-deflate" else encoding
    headers = {"content-type": "application/json", "content-encoding": name}
    ok = json.dumps(body([1.0, 2.0, 3.0, 4.0])).encode()
    r = c.post("/v2/models/affine/infer", content=packed(ok), headers=headers)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3, 5, 7, 9], r.text
    # A bomb: 3 MiB of spaces in about 3 KB (deflate's ratio tops out near 1000:1), against
    # max_body_bytes 4096: 413, inflated no further than the limit
    bomb = packed(b" " * (3 << 20), 9)
    assert len(bomb) < 4096
    r = c.post("/v2/models/affine/infer", content=bomb, headers=headers)
    assert r.status_code == 413 and "inflates" in r.json()["error"]
    # Truncated, or not compressed at all: 400
    r = c.post("/v2/models/affine/infer", content=packed(ok)[:-6], headers=headers)
    assert r.status_code == 400, r.text
    r = c.post("/v2/models/affine/infer", content=ok, headers=headers)
    assert r.status_code == 400 and encoding.split("-")[-1] in r.json()["error"]
    r = c.post("/v2/models/affine/infer", content=ok, headers={"content-encoding": "br"})
    assert r.status_code == 400 and "br" in r.json()["error"]


def test_a_runtime_without_statistics_does_not_claim_the_extension():
    class Replicas:  # what the Ray ingress serves over: no stats() of its own
        models = ["m"]
        running = True

        def input_signature(self, model):
            return [((4,), torch.float32)]

    with TestClient(app(Replicas())) as c:
        assert "statistics" not in c.get("/v2").json()["extensions"]
        r = c.get("/v2/models/stats")
        assert r.status_code == 400 and "statistics are not served here" in r.json()["error"]
