"""The gRPC front end in-process: its .proto against tritonclient's own (field numbers and types
are the wire protocol), typed `contents` as well as raw bytes, malformed messages, and the
bearer token."""

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

import gpulanes as gl
from conftest import Affine, Picky, scripted

grpc = pytest.importorskip("grpc")
tg = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as triton_pb  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from gpulanes.serve.grpc_server import core_frontend_available, messages  # noqa: E402
from serve_helpers import InProcessServer  # noqa: E402


@pytest.fixture(scope="module")
def runtime():
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("ids", scripted(Affine()).to(torch.float32), slo_ms=60_000,
                example_inputs=torch.zeros(2, 3, dtype=torch.int64))
    rt.register("picky", scripted(Picky()), slo_ms=60_000, example_inputs=torch.ones(2, 4))
    rt.start()
    yield rt
    rt.shutdown()


FRONTENDS = ["python"] + (["core"] if core_frontend_available() else [])


@pytest.fixture(scope="module", params=FRONTENDS)
def server(runtime, request):
    s = InProcessServer(runtime, frontend=request.param)
    yield s
    s.close()


def test_our_proto_matches_tritonclients_on_the_wire():
    ours = messages()
    checked = 0
    for name, cls in ours.items():
        stack = [(cls.DESCRIPTOR, triton_pb.DESCRIPTOR.message_types_by_name[name])]
        while stack:
            mine, theirs = stack.pop()
            for f in mine.fields:
                t = theirs.fields_by_name[f.name]
                assert (f.number, f.type, _repeated(f)) == (t.number, t.type, _repeated(t)), \
                    f"{mine.full_name}.{f.name}"
                if f.message_type is not None:
                    stack.append((f.message_type, t.message_type))
                checked += 1
    assert checked > 40


def _repeated(field) -> bool:
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == 3


def raw_call(server, method, payload: bytes):
    with grpc.insecure_channel(server.address) as ch:
        return ch.unary_unary(f"/inference.GRPCInferenceService/{method}")(payload, timeout=30)


def test_a_malformed_message_is_invalid_argument(server):
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", b"\xff\xff\xff\xff")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_errors_echo_at_most_512_characters_of_what_the_client_sent(server):
    m = messages()
    req = m["ModelInferRequest"](model_name="m" * 10_000)  # unknown, 10 KB long
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and len(e.value.details()) <= 512
    req = m["ModelInferRequest"](model_name="affine")  # 5,000 unknown input names
    for i in range(5000):
        req.inputs.add(name=f"nope_{i}", datatype="FP32", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 0 < len(e.value.details()) <= 512 and e.value.details().endswith(" ...")


def test_typed_contents_and_their_errors(server):
    m = messages()
    req = m["ModelInferRequest"](model_name="affine", id="x1")
    t = req.inputs.add(name="INPUT__0", datatype="FP32", shape=[2, 4])
    t.contents.fp32_contents.extend(range(8))
    reply = m["ModelInferResponse"].FromString(raw_call(server, "ModelInfer",
                                                         req.SerializeToString()))
    assert reply.id == "x1" and list(reply.outputs[0].shape) == [2, 4]
    y = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32)
    np.testing.assert_array_equal(y, np.arange(8) * 2 + 1)

    req = m["ModelInferRequest"](model_name="ids")
    t = req.inputs.add(name="INPUT__0", datatype="INT64", shape=[1, 3])
    t.contents.int64_contents.extend([5, 6, 7])
    reply = m["ModelInferResponse"].FromString(raw_call(server, "ModelInfer",
                                                         req.SerializeToString()))
    assert reply.outputs[0].datatype == "FP32"

    t.contents.int64_contents.append(8)  # 4 values for shape [1, 3]
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "4 values" in e.value.details()

    req = m["ModelInferRequest"](model_name="affine", raw_input_contents=[b"a", b"b"])
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 entries" in e.value.details()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_the_bearer_token(runtime, frontend):
    s = InProcessServer(runtime, token="s3cret", frontend=frontend)
    try:
        c = tg.InferenceServerClient(s.address)
        assert c.is_server_live()  # health needs no token
        x = tg.InferInput("INPUT__0", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        with pytest.raises(InferenceServerException) as e:
            c.infer("affine", [x])
        assert "UNAUTHENTICATED" in str(e.value.status())
        with pytest.raises(InferenceServerException):
            c.infer("affine", [x], headers={"authorization": "Bearer wrong"})
        r = c.infer("affine", [x], headers={"authorization": "Bearer s3cret"})
        np.testing.assert_array_equal(r.as_numpy("OUTPUT__0"), np.full((1, 4), 3, np.float32))
    finally:
        s.close()


def test_mutated_and_random_messages_never_break_the_server(server):
    # Valid requests with fields flipped to hostile values, and random bytes: every call ends
    # with a status (no crash, no hang), and the server still answers a good request after.
    import random

    m = messages()
    rng = random.Random(7)
    good = m["ModelInferRequest"](model_name="affine", raw_input_contents=[b"\0" * 16])
    good.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    codes = set()
    with grpc.insecure_channel(server.address) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        for i in range(200):
            req = m["ModelInferRequest"]()
            req.CopyFrom(good)
            t = req.inputs[0]
            kind = i % 8
            if kind == 0:
                t.shape[:] = [rng.choice([-1, 0, 2**62, 2**31, 1]) for _ in range(rng.randint(0, 6))]
            elif kind == 1:
                t.datatype = rng.choice(["FP16", "BYTES", "", "fp32", "INT64", "\x00"])
            elif kind == 2:
                req.raw_input_contents[0] = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
            elif kind == 3:
                req.parameters["timeout"].double_param = rng.choice([-1.0, 0.0, 1e300, float("nan")])
            elif kind == 4:
                req.parameters["priority"].string_param = "high"
            elif kind == 5:
                req.model_name = rng.choice(["", "affine\x00", "../affine", "x" * 10000])
            elif kind == 6:
                req.outputs.add(name=rng.choice(["", "OUTPUT__7", "OUTPUT__0"]))
            payload = req.SerializeToString()
            if kind == 7:
                payload = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
            try:
                call(payload, timeout=30)
                codes.add(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED or kind == 3, e
                codes.add(e.code())
        reply = m["ModelInferResponse"].FromString(call(good.SerializeToString(), timeout=30))
    assert list(reply.outputs[0].shape) == [1, 4]
    assert grpc.StatusCode.INVALID_ARGUMENT in codes and grpc.StatusCode.NOT_FOUND in codes
    assert grpc.StatusCode.INTERNAL not in codes and grpc.StatusCode.UNKNOWN not in codes


def test_the_core_front_end_is_built_wherever_grpc_plus_plus_is_installed():
    # No silent fallback: a machine with grpc++'s headers must get the C++ front end (CMake's
    # warning says which piece was missing; scripts/bootstrap.sh installs them all).
    if not Path("/usr/include/grpcpp/grpcpp.h").exists():
        pytest.skip("grpc++ is not installed here: gRPC is served by grpcio")
    assert core_frontend_available(), (
        "grpc++ is installed but gpulanes was built without its C++ gRPC front end: the build "
        "log's CMake warning names the missing piece (libprotobuf-dev?)")


@pytest.mark.skipif(not core_frontend_available(), reason="built without grpc++")
def test_a_core_server_dropped_without_stop_is_freed_and_stops(runtime):
    import gc
    import weakref

    s = InProcessServer(runtime, frontend="core")
    address, ref = s.address, weakref.ref(s.server)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), s.loop).result(10)
    s.server = None
    gc.collect()
    assert ref() is None  # no cycle through the core keeps it
    with grpc.insecure_channel(address) as ch:
        with pytest.raises(grpc.RpcError) as e:
            ch.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=2)
    assert e.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    s.loop.call_soon_threadsafe(s.loop.stop)
    s.thread.join(10)


def test_a_model_that_raises_is_internal_with_an_error_id_and_no_traceback(server, caplog, capfd):
    m = messages()
    req = m["ModelInferRequest"](model_name="picky", raw_input_contents=[
        np.full(4, -1, np.float32).tobytes()])
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    with caplog.at_level("ERROR", logger="gpulanes.serve"):
        with pytest.raises(grpc.RpcError) as e:
            raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INTERNAL
    details = e.value.details()
    assert "negative input" in details and "error id" in details
    assert "\n" not in details and "Traceback" not in details and ".py" not in details, details
    error_id = details.split("error id ")[1].split(";")[0]
    # the whole text is in the server's log: Python's logger, or the core front end's stderr
    logged = [r.getMessage() for r in caplog.records] + [capfd.readouterr().err]
    assert any(error_id in text and "Traceback" in text for text in logged)


def test_model_statistics_on_both_front_ends(server):
    c = tg.InferenceServerClient(server.address)
    x = tg.InferInput("INPUT__0", [2, 4], "FP32")
    x.set_data_from_numpy(np.ones((2, 4), np.float32))
    before = c.get_inference_statistics("affine").model_stats[0].inference_count
    c.infer("affine", [x])
    got = c.get_inference_statistics("affine").model_stats[0]
    assert got.name == "affine" and got.version == "1"
    assert got.inference_count == before + 2 and got.execution_count >= 1
    assert got.inference_stats.success.count == got.inference_count
    assert got.inference_stats.success.ns > 0 and got.last_inference > 0
    assert {s.name for s in c.get_inference_statistics().model_stats} >= {"affine", "ids"}
    with pytest.raises(InferenceServerException) as e:
        c.get_inference_statistics("nope")
    assert "NOT_FOUND" in str(e.value.status())


@pytest.mark.parametrize("case", ["both", "classification", "sequence"])
def test_grpc_refuses_what_http_refuses(server, case):
    m = messages()
    req = m["ModelInferRequest"](model_name="affine", raw_input_contents=[bytes(16)])
    t = req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    if case == "both":  # typed contents and raw bytes for the same input
        t.contents.fp32_contents.extend([1, 2, 3, 4])
        says = "one way"
    elif case == "classification":
        req.outputs.add(name="OUTPUT__0").parameters["classification"].int64_param = 3
        says = "classification"
    else:
        req.parameters["sequence_start"].bool_param = True
        says = "sequence_start"
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in e.value.details()


def test_the_servers_max_rows_bounds_a_model_whose_max_batch_is_larger(server):
    # affine's max_batch_size is 32 (register's default), the endpoint's max_rows 16
    m = messages()
    req = m["ModelInferRequest"](model_name="affine", raw_input_contents=[bytes(17 * 16)])
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[17, 4])
    with pytest.raises(grpc.RpcError) as e:
        raw_call(server, "ModelInfer", req.SerializeToString())
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 16" in e.value.details()
    config = m["ModelConfigResponse"].FromString(raw_call(server, "ModelConfig", m[
        "ModelConfigRequest"](name="affine").SerializeToString()))
    assert config.config.max_batch_size == 16


class Widen(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) * 2.0


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("datatype", ["UINT16", "UINT32", "UINT64"])
def test_unsigned_16_to_64_bit_inputs(frontend, datatype):
    dtype = {"UINT16": torch.uint16, "UINT32": torch.uint32, "UINT64": torch.uint64}[datatype]
    rt = gl.Runtime(device="cpu", warmup_rounds=1, profile_reps=3, profile_cache=False)
    rt.register("widen", scripted(Widen()), slo_ms=60_000,
                example_inputs=torch.zeros(2, 3, dtype=dtype))
    rt.start()
    s = InProcessServer(rt, frontend=frontend)
    try:
        m = messages()
        top = {"UINT16": 65535, "UINT32": 2**32 - 1, "UINT64": 2**53}[datatype]
        values = np.array([0, 1, top], dtype={"UINT16": np.uint16, "UINT32": np.uint32,
                                              "UINT64": np.uint64}[datatype])
        for raw in (True, False):
            req = m["ModelInferRequest"](model_name="widen")
            t = req.inputs.add(name="INPUT__0", datatype=datatype, shape=[1, 3])
            if raw:
                req.raw_input_contents.append(values.tobytes())
            else:
                field = "uint64_contents" if datatype == "UINT64" else "uint_contents"
                getattr(t.contents, field).extend(int(v) for v in values)
            reply = m["ModelInferResponse"].FromString(
                raw_call(s, "ModelInfer", req.SerializeToString()))
            out = np.frombuffer(reply.raw_output_contents[0], dtype=np.float64)
            assert out.tolist() == [0.0, 2.0, 2.0 * top]
        if datatype == "UINT16":  # a typed value over the datatype's range is refused
            req = m["ModelInferRequest"](model_name="widen")
            t = req.inputs.add(name="INPUT__0", datatype=datatype, shape=[1, 3])
            t.contents.uint_contents.extend([1, 2, 70000])
            with pytest.raises(grpc.RpcError) as e:
                raw_call(s, "ModelInfer", req.SerializeToString())
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        s.close()
        rt.shutdown()
