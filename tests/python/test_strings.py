"""String inputs and outputs: TorchScript models that take and return ``List[str]``, in the
Python API (a request gives one ``str``/``bytes``, a batch's strings make the list) and as
KServe v2 BYTES tensors over HTTP (JSON and binary, tritonclient's own serializer), gRPC (both
front ends, raw and typed contents), system shared memory and perf_analyzer; models with and
without a batch dimension; and what a hostile client sends: lengths that lie, counts that do not
match the shape, strings where tensors go, output JSON cannot carry."""

import struct
from typing import List
import uuid

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

import gpulanes as gl
from gpulanes.serve import app
from gpulanes.serve.grpc_server import core_frontend_available, messages
from serve_helpers import (InProcessServer, Reverse, ServerProcess, Shout, WordCount,
                           perf_analyzer_run, write_config)

tu = pytest.importorskip("tritonclient.utils")
tg = pytest.importorskip("tritonclient.grpc")
th = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("grpc")

FRONTENDS = ["python"] + (["core"] if core_frontend_available() else [])


def strings_runtime(**kwargs) -> gl.Runtime:
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False, **kwargs)
    rt.register("shout", torch.jit.script(Shout()), slo_ms=60_000, example_inputs=(["0", "1"],),
                max_batch_size=8)
    rt.register("wordcount", torch.jit.script(WordCount()), slo_ms=60_000,
                example_inputs=(["a b"], torch.ones(1, 1)), max_batch_size=8)
    rt.register("reverse", torch.jit.script(Reverse()), slo_ms=60_000, example_inputs=(["0"],),
                max_batch_size=0)
    return rt


@pytest.fixture(scope="module")
def rt():
    runtime = strings_runtime()
    with runtime:
        yield runtime


# -- the Python API ---------------------------------------------------------------------------

def test_each_request_gives_one_string_and_gets_its_own_back(rt):
    texts = [f"text {i}" for i in range(300)] + ["", "héllo wörld", "a\x00b"]
    futures = [rt.submit("shout", t) for t in texts]
    # the model's own forward on all of them at once is the reference (its upper() is ASCII's)
    assert [f.result(timeout=60) for f in futures] == torch.jit.script(Shout())(texts)
    stats = rt.stats()["shout"]
    assert sum(size * n for size, n in stats["batch_sizes"].items()) >= len(texts)
    assert rt.input_signature("shout") == [((), str)]


def test_bytes_that_are_not_utf8_go_in_and_come_back_as_bytes(rt):
    assert rt.infer("shout", b"\xff\xfe x") == b"\xff\xfe X!"
    assert rt.infer("shout", bytearray(b"ok")) == "OK!"


def test_strings_and_tensors_in_one_request(rt):
    futures = [rt.submit("wordcount", " ".join(["w"] * i), torch.full((1,), 0.5))
               for i in range(40)]
    for i, f in enumerate(futures):
        assert torch.equal(f.result(timeout=60), torch.tensor([i * 0.5]))


def test_without_a_batch_dimension_a_request_is_the_whole_list(rt):
    assert rt.infer("reverse", ["a", "b", "c"]) == ["c", "b", "a"]
    assert rt.infer("reverse", []) == []
    assert rt.infer("reverse", ("x", b"\xff")) == [b"\xff", "x"]
    assert rt.input_signature("reverse") == [((-1,), str)]
    assert set(rt.stats()["reverse"]["batch_sizes"]) == {1}


@pytest.mark.parametrize("model, inputs, says", [
    ("shout", (torch.zeros(3),), "input 0 must be strings"),
    ("shout", (["a", "b"],), "one string per request, got 2"),
    ("shout", (5,), "input 0 is a int, not a torch.Tensor"),
    ("shout", (["a", 1],), "input 0 is a list"),
    ("shout", ("\ud800",), "not valid UTF-8"),
    ("wordcount", ("a", "b"), "input 1 takes a tensor, Float.1. .one sample"),
    ("reverse", ([["nested"]],), "input 0 is a list"),
])
def test_wrong_inputs_are_invalid_input_naming_them(rt, model, inputs, says):
    with pytest.raises(gl.InvalidInput, match=says):
        rt.submit(model, *inputs)
    assert rt.infer("shout", "still") == "STILL!"


@pytest.mark.parametrize("kwargs, error, says", [
    (dict(model=torch.nn.Identity(), example_inputs=(["a"],)), gl.InvalidInput,
     "only a TorchScript model takes"),
    (dict(example_inputs=["a", "b"]), gl.InvalidInput, r"inside the tuple of inputs, e.g. "
                                                       r"example_inputs=\(\['a', 'b'\],\)"),
    (dict(example_inputs=([],)), gl.InvalidInput, "needs at least one string"),
    (dict(example_inputs=([1, 2],)), gl.InvalidInput, "a list of str or bytes"),
    (dict(example_inputs=(torch.zeros(2, 1),)), gl.InvalidInput, "do not fit the model"),
])
def test_register_refuses_examples_a_string_model_cannot_take(kwargs, error, says):
    runtime = gl.Runtime(device="cpu", profile_cache=False)
    args = dict(model=torch.jit.script(Shout()), slo_ms=1000)
    args.update(kwargs)
    with pytest.raises(error, match=says):
        runtime.register("m", args.pop("model"), **args)
    runtime.shutdown()


def test_a_list_output_of_the_wrong_length_fails_the_warm_up():
    class Short(torch.nn.Module):
        def forward(self, texts: List[str]) -> List[str]:
            return texts[:1]

    runtime = gl.Runtime(device="cpu", profile_cache=False, warmup_rounds=1, profile_reps=3)
    runtime.register("short", torch.jit.script(Short()), slo_ms=1000, example_inputs=(["a"],))
    with pytest.raises(gl.ModelError, match="one per request of the batch"):
        runtime.start()
    runtime.shutdown()


class Label(torch.nn.Module):
    """Tensors in, strings out."""

    def forward(self, x: torch.Tensor) -> List[str]:
        return ["pos" if float(v) > 0 else "neg" for v in x.sum(1)]


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_model_that_returns_strings_for_tensors(isolation):
    runtime = gl.Runtime(device="cpu", isolation=isolation, profile_cache=False,
                         warmup_rounds=1, profile_reps=3)
    runtime.register("label", torch.jit.script(Label()), slo_ms=60_000,
                     example_inputs=torch.zeros(2, 3))
    try:
        if isolation == "process":  # the worker sends tensors only: refused at warm-up
            with pytest.raises(gl.ModelError, match="returns strings, which process and MPS"):
                runtime.start()
            return
        runtime.start()
        futures = [runtime.submit("label", torch.full((3,), float(i - 5))) for i in range(10)]
        assert [f.result(timeout=60) for f in futures] == ["neg"] * 6 + ["pos"] * 4
    finally:
        runtime.shutdown()


def test_process_lanes_refuse_string_models_at_register():
    runtime = gl.Runtime(device="cpu", isolation="process", profile_cache=False)
    with pytest.raises(gl.InvalidInput, match="process lanes do not carry"):
        runtime.register("shout", torch.jit.script(Shout()), slo_ms=1000,
                         example_inputs=(["a"],))
    runtime.shutdown()


# -- KServe v2 over HTTP ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def http(rt):
    with TestClient(app(rt)) as c:
        yield c


def binary_body(inputs, outputs_binary=True):
    """A binary-data body as tritonclient writes it: JSON header, then each input's bytes."""
    import json
    head, raw = {"inputs": [], "parameters": {"binary_data_output": outputs_binary}}, b""
    for name, datatype, shape, data in inputs:
        head["inputs"].append({"name": name, "datatype": datatype, "shape": shape,
                               "parameters": {"binary_data_size": len(data)}})
        raw += data
    text = json.dumps(head).encode()
    return text + raw, {"Inference-Header-Content-Length": str(len(text)),
                        "Content-Type": "application/octet-stream"}


def serialized(values) -> bytes:
    """tritonclient's own serializer of a BYTES tensor (not ours)."""
    return tu.serialize_byte_tensor(np.array(values, dtype=object)).item()


def test_metadata_and_config_say_bytes_with_triton_dims(http):
    meta = http.get("/v2/models/shout").json()
    assert meta["inputs"] == [{"name": "INPUT__0", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "OUTPUT__0", "datatype": "BYTES", "shape": [-1, 1]}]
    config = http.get("/v2/models/reverse/config").json()
    assert config["max_batch_size"] == 0
    # Triton's model configuration names BYTES TYPE_STRING
    assert config["input"] == [{"name": "INPUT__0", "data_type": "TYPE_STRING", "dims": [-1]}]
    assert config["output"] == [{"name": "OUTPUT__0", "data_type": "TYPE_STRING", "dims": [-1]}]


def test_json_and_binary_bytes_round_trip(http):
    r = http.post("/v2/models/shout/infer", json={"inputs": [
        {"name": "INPUT__0", "datatype": "BYTES", "shape": [3, 1], "data": [["a"], ["bé"], [""]]}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0] == {"name": "OUTPUT__0", "datatype": "BYTES", "shape": [3, 1],
                                      "data": ["A!", "Bé!", "!"]}
    body, headers = binary_body([("INPUT__0", "BYTES", [2, 1], serialized([[b"\xff"], [b"q"]]))])
    r = http.post("/v2/models/shout/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    out = tu.deserialize_bytes_tensor(r.content[n:])
    assert list(out) == [b"\xff!", b"Q!"]
    r = http.post("/v2/models/reverse/infer", json={"inputs": [
        {"name": "INPUT__0", "datatype": "BYTES", "shape": [4], "data": ["1", "2", "3", "4"]}]})
    assert r.json()["outputs"][0]["data"] == ["4", "3", "2", "1"]
    assert r.json()["outputs"][0]["shape"] == [4]
    r = http.post("/v2/models/wordcount/infer", json={"inputs": [
        {"name": "INPUT__0", "datatype": "BYTES", "shape": [2, 1], "data": ["a b c", "d"]},
        {"name": "INPUT__1", "datatype": "FP32", "shape": [2, 1], "data": [1, 2]}]})
    assert r.json()["outputs"][0]["data"] == [3.0, 2.0]


def test_output_that_is_not_utf8_is_refused_in_json_and_served_binary(http):
    body, headers = binary_body([("INPUT__0", "BYTES", [1, 1], serialized([[b"\xff"]]))],
                                outputs_binary=False)
    r = http.post("/v2/models/shout/infer", content=body, headers=headers)
    assert r.status_code == 400 and "not UTF-8" in r.json()["error"]
    assert "binary_data_output" in r.json()["error"]


@pytest.mark.parametrize("model, data, shape, says", [
    ("shout", struct.pack("<I", 9) + b"abc", [1, 1], "string 0 says it has 9 bytes, 3 are left"),
    ("shout", struct.pack("<I", 0xFFFFFFFF), [1, 1], "says it has 4294967295 bytes"),
    ("shout", struct.pack("<I", 1) + b"a" + b"\x02\x00", [1, 1], "length is cut off"),
    ("shout", serialized([b"a", b"b"]), [1, 1], "strings for shape [1, 1] (1 expected)"),
    ("shout", serialized([b""] * 100_000), [1, 1], "strings for shape [1, 1] (1 expected)"),
    ("reverse", serialized([b""] * 70_000), [70_000], "a BYTES input may hold at most 65536"),
    ("shout", serialized([b"a"]), [2, 1], "1 strings for shape [2, 1] (2 expected)"),
    ("shout", serialized([b"a", b"b"]), [1, 2], "has shape [1, 2]; the model takes [batch >= 1, 1]"),
    ("reverse", serialized([b"a", b"b"]), [3], "2 strings for shape [3] (3 expected)"),
    ("reverse", serialized([b"a"]), [1, 1], "no batch dimension) takes [-1]"),
])
def test_binary_bytes_that_lie_are_refused_naming_the_input(http, model, data, shape, says):
    body, headers = binary_body([("INPUT__0", "BYTES", shape, data)])
    r = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
    assert r.status_code == 400 and says in r.json()["error"], r.text
    assert "INPUT__0" in r.json()["error"]


@pytest.mark.parametrize("entry, says", [
    ({"datatype": "BYTES", "shape": [1, 1], "data": [5]}, "BYTES data must be strings, got int"),
    ({"datatype": "BYTES", "shape": [1, 1], "data": [[["x"]]]}, "nested deeper than shape"),
    ({"datatype": "BYTES", "shape": [2, 1], "data": ["x"]}, "1 strings for shape [2, 1]"),
    ({"datatype": "BYTES", "shape": [1, 1], "data": ["x", "y"]},
     "more than 1 strings for shape [1, 1] (1 expected)"),
    ({"datatype": "BYTES", "shape": [1, 1], "data": "x"}, "data must be a list"),
    ({"datatype": "FP32", "shape": [1, 1], "data": [1.0]}, "the model takes BYTES"),
])
def test_json_bytes_that_do_not_fit_are_refused(http, entry, says):
    r = http.post("/v2/models/shout/infer", json={"inputs": [{"name": "INPUT__0", **entry}]})
    assert r.status_code == 400 and says in r.json()["error"], r.text


def test_bytes_where_a_tensor_goes_is_refused(http):
    r = http.post("/v2/models/wordcount/infer", json={"inputs": [
        {"name": "INPUT__0", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]},
        {"name": "INPUT__1", "datatype": "BYTES", "shape": [1, 1], "data": ["1"]}]})
    assert r.status_code == 400 and "INPUT__1" in r.json()["error"]
    assert "the model takes FP32" in r.json()["error"]


# -- gRPC, both front ends ----------------------------------------------------------------------

@pytest.fixture(scope="module", params=FRONTENDS)
def grpc_server(rt, request):
    srv = InProcessServer(rt, frontend=request.param)
    yield srv
    srv.close()


def test_grpc_bytes_round_trip_raw_and_typed(grpc_server):
    c = tg.InferenceServerClient(grpc_server.address)
    inp = tg.InferInput("INPUT__0", [3, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b"x"], [b"\xff\x00"], [b""]], dtype=object))
    assert c.infer("shout", [inp]).as_numpy("OUTPUT__0").tolist() == [[b"X!"], [b"\xff\x00!"],
                                                                      [b"!"]]
    inp = tg.InferInput("INPUT__0", [2], "BYTES")
    inp.set_data_from_numpy(np.array([b"p", b"q"], dtype=object))
    assert c.infer("reverse", [inp]).as_numpy("OUTPUT__0").tolist() == [b"q", b"p"]
    m = messages()
    req = m["ModelInferRequest"](model_name="shout")
    t = req.inputs.add(name="INPUT__0", datatype="BYTES", shape=[2, 1])
    t.contents.bytes_contents.extend([b"typed", b"in"])
    reply = m["ModelInferResponse"].FromString(raw_call(grpc_server, req.SerializeToString()))
    assert list(tu.deserialize_bytes_tensor(reply.raw_output_contents[0])) == [b"TYPED!", b"IN!"]
    assert list(reply.outputs[0].shape) == [2, 1] and reply.outputs[0].datatype == "BYTES"


def raw_call(server, payload: bytes) -> bytes:
    with grpc.insecure_channel(server.address) as ch:
        return ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(payload, timeout=30)


@pytest.mark.parametrize("raw, contents, shape, says", [
    (struct.pack("<I", 9) + b"abc", None, [1, 1], "string 0 says it has 9 bytes, 3 are left"),
    (struct.pack("<I", 1) + b"a\x01", None, [1, 1], "length is cut off"),
    (serialized([b"a", b"b", b"c"]), None, [2, 1], "strings for shape [2, 1] (2 expected)"),
    (None, [b"a"], [2, 1], "1 values in contents.bytes_contents for shape [2, 1]"),
])
def test_grpc_bytes_that_lie_are_invalid_argument(grpc_server, raw, contents, shape, says):
    m = messages()
    req = m["ModelInferRequest"](model_name="shout")
    t = req.inputs.add(name="INPUT__0", datatype="BYTES", shape=shape)
    if raw is not None:
        req.raw_input_contents.append(raw)
    else:
        t.contents.bytes_contents.extend(contents)
    with pytest.raises(grpc.RpcError) as e:
        raw_call(grpc_server, req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in e.value.details() and "INPUT__0" in e.value.details()


# -- a served config: tritonclient over the network, shared memory, perf_analyzer --------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(write_config(tmp_path_factory.mktemp("strings"), ["shout", "wordcount"]))
    yield srv
    assert srv.terminate() == 0, "".join(srv.lines)


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclient_sends_and_reads_bytes_by_configured_names(server, kind):
    lib = th if kind == "http" else tg
    c = lib.InferenceServerClient(server.http if kind == "http" else server.grpc)
    text = lib.InferInput("TEXT", [2, 1], "BYTES")
    text.set_data_from_numpy(np.array([["one two"], ["three"]], dtype=object))
    weight = lib.InferInput("WEIGHT", [2, 1], "FP32")
    weight.set_data_from_numpy(np.array([[1.0], [10.0]], dtype=np.float32))
    np.testing.assert_array_equal(c.infer("wordcount", [text, weight]).as_numpy("OUTPUT__0"),
                                  [[2.0], [10.0]])
    text = lib.InferInput("TEXT", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([["hey"]], dtype=object))
    assert c.infer("shout", [text]).as_numpy("LOUD").tolist() == [[b"HEY!"]]


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_bytes_in_and_out_of_system_shared_memory(server, kind):
    shm = pytest.importorskip("tritonclient.utils.shared_memory")
    lib = th if kind == "http" else tg
    c = lib.InferenceServerClient(server.http if kind == "http" else server.grpc)
    data = np.array([[b"shared"], [b"memory"]], dtype=object)
    raw = tu.serialize_byte_tensor(data)  # as tritonclient's users put BYTES in a region
    size = len(raw.item())
    keys = [f"/gl_s_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    regions = [shm.create_shared_memory_region(k[1:], k, 64) for k in keys]
    try:
        shm.set_shared_memory_region(regions[0], [raw])
        c.register_system_shared_memory(f"in-{kind}", keys[0], 64)
        c.register_system_shared_memory(f"out-{kind}", keys[1], 64)
        text = lib.InferInput("TEXT", [2, 1], "BYTES")
        text.set_shared_memory(f"in-{kind}", size)
        out = lib.InferRequestedOutput("LOUD", **({"binary_data": True} if kind == "http" else {}))
        out.set_shared_memory(f"out-{kind}", 64)
        c.infer("shout", [text], outputs=[out])
        got = shm.get_contents_as_numpy(regions[1], np.object_, [2, 1])
        assert got.tolist() == [[b"SHARED!"], [b"MEMORY!"]]
        c.unregister_system_shared_memory(f"in-{kind}")
        c.unregister_system_shared_memory(f"out-{kind}")
    finally:
        for r in regions:
            shm.destroy_shared_memory_region(r)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_drives_a_bytes_model(server, tmp_path, protocol):
    code, output, row = perf_analyzer_run(
        "shout", server.http if protocol == "http" else server.grpc, protocol,
        tmp_path / "pa.csv", "--string-length", "24")
    assert code == 0, output
    assert float(row["Inferences/Second"]) > 0, output


def test_grpc_typed_bytes_past_the_bound_are_refused_before_they_are_read(grpc_server):
    m = messages()
    req = m["ModelInferRequest"](model_name="reverse")  # no batch dimension: any list length
    t = req.inputs.add(name="INPUT__0", datatype="BYTES", shape=[70_000])
    t.contents.bytes_contents.extend([b""] * 70_000)
    with pytest.raises(grpc.RpcError) as e:
        raw_call(grpc_server, req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a BYTES input may hold at most 65536" in e.value.details()
