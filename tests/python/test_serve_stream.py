"""gRPC ModelStreamInfer (Triton's streaming, perf_analyzer --streaming) on both front ends:
every request on a stream is answered on it with its id, in the order the answers come; a
request that fails is answered in-band and the stream goes on; garbage, unknown models, a
missing token and a client that leaves mid-stream break nothing."""

import queue
import time

import numpy as np
import pytest
import torch

import gpulanes as gl
from conftest import Affine, Busy, scripted

grpc = pytest.importorskip("grpc")
tg = pytest.importorskip("tritonclient.grpc")

from gpulanes.serve.grpc_server import core_frontend_available, messages  # noqa: E402
from serve_helpers import InProcessServer  # noqa: E402

FRONTENDS = ["python"] + (["core"] if core_frontend_available() else [])


@pytest.fixture(scope="module")
def runtime():
    rt = gl.Runtime(device="cpu", cpu_lanes=2, warmup_rounds=1, profile_reps=3,
                    profile_cache=False)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.register("busy", scripted(Busy(20)), slo_ms=60_000, example_inputs=torch.zeros(2, 4))
    rt.start()
    yield rt
    rt.shutdown()


@pytest.fixture(scope="module", params=FRONTENDS)
def server(runtime, request):
    s = InProcessServer(runtime, frontend=request.param)
    yield s
    s.close()


def affine_input(value: float, rows: int = 1, shape=(4,)):
    x = tg.InferInput("INPUT__0", [rows, *shape], "FP32")
    x.set_data_from_numpy(np.full((rows, *shape), value, np.float32))
    return x


class Stream:
    """tritonclient's stream with its answers collected: (result, error) by request id."""

    def __init__(self, address, **kwargs):
        self.client = tg.InferenceServerClient(address)
        self.answers: "queue.Queue" = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)),
                                 **kwargs)

    def collect(self, n: int, timeout_s: float = 60):
        out = []
        end = time.monotonic() + timeout_s
        while len(out) < n:
            out.append(self.answers.get(timeout=max(0.01, end - time.monotonic())))
        return out

    def close(self):
        self.client.stop_stream()
        self.client.close()


def test_every_request_on_a_stream_is_answered_once_with_its_id(server):
    s = Stream(server.address)
    try:
        for i in range(200):
            s.client.async_stream_infer("affine", [affine_input(float(i))], request_id=str(i))
        answers = s.collect(200)
    finally:
        s.close()
    seen = {}
    for result, error in answers:
        assert error is None, error
        rid = result.get_response().id
        assert rid not in seen, f"request {rid} answered twice"
        seen[rid] = result.as_numpy("OUTPUT__0")
    assert sorted(seen, key=int) == [str(i) for i in range(200)]
    for rid, out in seen.items():
        assert np.array_equal(out, np.full((1, 4), 2.0 * int(rid) + 1.0, np.float32))


def test_a_failed_request_is_answered_in_band_and_the_stream_goes_on(server):
    s = Stream(server.address)
    try:
        s.client.async_stream_infer("affine", [affine_input(1.0, shape=(5,))], request_id="bad")
        s.client.async_stream_infer("nope", [affine_input(1.0)], request_id="unknown")
        s.client.async_stream_infer("affine", [affine_input(2.0)], request_id="good")
        answers = s.collect(3)
    finally:
        s.close()
    errors = [str(e) for r, e in answers if e is not None]
    results = [r for r, e in answers if e is None]
    assert len(errors) == 2 and len(results) == 1, answers
    assert any("INPUT__0" in e for e in errors), errors
    assert any("nope" in e for e in errors), errors
    assert results[0].get_response().id == "good"
    assert np.array_equal(results[0].as_numpy("OUTPUT__0"), np.full((1, 4), 5.0, np.float32))


def raw_stream(address, metadata=()):
    """A ModelStreamInfer call with bytes in and parsed messages out (no client library)."""
    channel = grpc.insecure_channel(address)
    call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer",
                                 request_serializer=lambda b: b,
                                 response_deserializer=messages()["ModelStreamInferResponse"].FromString)
    return channel, call


def test_garbage_on_the_stream_is_answered_and_the_stream_goes_on(server):
    good = messages()["ModelInferRequest"](model_name="affine", id="after")
    t = good.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    good.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    del t
    channel, call = raw_stream(server.address)
    try:
        replies = list(call(iter([b"\xff\xff\xff garbage", good.SerializeToString()]), timeout=60))
    finally:
        channel.close()
    assert len(replies) == 2
    errors = [r.error_message for r in replies if r.error_message]
    assert len(errors) == 1 and "malformed" in errors[0], replies
    ok = [r for r in replies if not r.error_message][0]
    assert ok.infer_response.id == "after"


def test_an_empty_stream_ends_ok_at_once(server):
    channel, call = raw_stream(server.address)
    try:
        assert list(call(iter([]), timeout=30)) == []
    finally:
        channel.close()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_stream_without_the_token_is_refused_before_reading(runtime, frontend):
    s = InProcessServer(runtime, token="s3cret", frontend=frontend)
    try:
        channel, call = raw_stream(s.address)
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([b"anything"]), timeout=30))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        channel, call = raw_stream(s.address)
        good = messages()["ModelInferRequest"](model_name="affine", id="t")
        good.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
        good.raw_input_contents.append(np.ones(4, np.float32).tobytes())
        replies = list(call(iter([good.SerializeToString()]), timeout=30,
                            metadata=[("authorization", "Bearer s3cret")]))
        assert [r.infer_response.id for r in replies] == ["t"]
        channel.close()
    finally:
        s.close()


def test_a_client_that_leaves_mid_stream_breaks_nothing(server, runtime):
    before = runtime.stats()["busy"]
    x = messages()["ModelInferRequest"](model_name="busy")
    x.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
    x.raw_input_contents.append(np.ones(4, np.float32).tobytes())
    for _ in range(5):
        channel, call = raw_stream(server.address)
        answers = call(iter([x.SerializeToString()] * 20))
        time.sleep(0.05)
        answers.cancel()
        channel.close()
    # Every request that reached the runtime resolves there; the server answers as before.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = runtime.stats()["busy"]
        if s["in_flight"] == 0:
            break
        time.sleep(0.1)
    s = runtime.stats()["busy"]
    assert s["in_flight"] == 0, s
    assert s["submitted"] - before["submitted"] == (s["met"] + s["missed"] + s["failed"]
                                                    + s["rejected"] + s["dropped"]
                                                    - before["met"] - before["missed"]
                                                    - before["failed"] - before["rejected"]
                                                    - before["dropped"])
    st = Stream(server.address)
    try:
        st.client.async_stream_infer("affine", [affine_input(3.0)], request_id="still")
        (result, error), = st.collect(1)
    finally:
        st.close()
    assert error is None and result.get_response().id == "still"


def test_many_requests_outrun_the_read_ahead_bound_and_all_are_answered(server):
    # More requests than the 256 the server reads ahead of their answers.
    channel, call = raw_stream(server.address)
    reqs = []
    for i in range(600):
        r = messages()["ModelInferRequest"](model_name="affine", id=str(i))
        r.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
        r.raw_input_contents.append(np.full(4, i, np.float32).tobytes())
        reqs.append(r.SerializeToString())
    try:
        replies = list(call(iter(reqs), timeout=120))
    finally:
        channel.close()
    assert sorted(int(r.infer_response.id) for r in replies) == list(range(600))
    for r in replies:
        out = np.frombuffer(r.infer_response.raw_output_contents[0], np.float32)
        assert np.array_equal(out, np.full(4, 2.0 * int(r.infer_response.id) + 1.0, np.float32))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("streaming", [True, False], ids=["streaming", "unary"])
def test_perf_analyzer_drives_gpulanes_serve_over_grpc(tmp_path, frontend, streaming):
    # Triton's own load generator, as its users run it (`-i grpc [--streaming]`); a count of
    # requests per window and a stability bound it always meets, so that this machine's speed
    # cannot fail it.
    from serve_helpers import ServerProcess, perf_analyzer_run, write_config

    srv = ServerProcess(write_config(tmp_path, ["affine"],
                                     server=f'grpc_frontend = "{frontend}"'))
    try:
        rc, output, row = perf_analyzer_run(
            "affine", srv.grpc, "grpc", tmp_path / "pa.csv", "--shape", "INPUT__0:4",
            *(["--streaming"] if streaming else []), concurrency=4, per_window=200)
        import tritonclient.grpc as tgc
        stats = tgc.InferenceServerClient(srv.grpc).get_inference_statistics("affine",
                                                                             as_json=True)
    finally:
        assert srv.terminate() == 0, "".join(srv.lines)
    assert rc == 0, output
    assert float(row["Inferences/Second"]) > 0, row
    inference = stats["model_stats"][0]["inference_stats"]
    assert int(inference["success"]["count"]) >= 600  # three windows of 200, none failed
    assert int(inference.get("fail", {}).get("count", 0)) == 0, inference


def test_tritonclients_asyncio_stream(server):
    import asyncio

    import tritonclient.grpc.aio as tga

    async def run():
        client = tga.InferenceServerClient(server.address)

        async def requests():
            for i in range(50):
                x = tga.InferInput("INPUT__0", [1, 4], "FP32")
                x.set_data_from_numpy(np.full((1, 4), i, np.float32))
                yield {"model_name": "affine", "inputs": [x], "request_id": str(i)}
        seen = {}
        try:
            async for result, error in client.stream_infer(requests()):
                assert error is None, error
                seen[result.get_response().id] = result.as_numpy("OUTPUT__0")
        finally:
            await client.close()
        return seen
    seen = asyncio.run(run())
    assert sorted(seen, key=int) == [str(i) for i in range(50)]
    for rid, out in seen.items():
        assert np.array_equal(out, np.full((1, 4), 2.0 * int(rid) + 1.0, np.float32))
