"""Triton's system shared-memory extension against `gpulanes serve`, driven by tritonclient (its
shared_memory utilities, HTTP and gRPC on both gRPC front ends) and by perf_analyzer
`--shared-memory system`; and what a hostile client can name: regions that do not exist, keys
outside /dev/shm, symbolic links, spans past the end, sizes that lie, data given twice,
regions unregistered while a request holds them."""

import base64
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient.utils import InferenceServerException  # noqa: E402

from gpulanes.errors import InvalidInput  # noqa: E402
from gpulanes.serve.grpc_server import core_frontend_available  # noqa: E402
from gpulanes.serve.shared_memory import MAX_REGIONS, SystemSharedMemory  # noqa: E402
from serve_helpers import ServerProcess, perf_analyzer_run, write_config  # noqa: E402

FRONTENDS = ["python"] + (["core"] if core_frontend_available() else [])


@pytest.fixture(scope="module", params=FRONTENDS)
def server(tmp_path_factory, request):
    srv = ServerProcess(write_config(tmp_path_factory.mktemp("shm"), ["affine"],
                                     server=f'grpc_frontend = "{request.param}"'))
    yield srv
    assert srv.terminate() == 0, "".join(srv.lines)


class Regions:
    """POSIX shared-memory objects made the way tritonclient's users make them; all destroyed at
    the end."""

    def __init__(self):
        self.handles = []

    def make(self, byte_size: int):
        key = f"/gl_test_{uuid.uuid4().hex[:12]}"
        h = shm.create_shared_memory_region(key[1:], key, byte_size)
        self.handles.append(h)
        return key, h

    def close(self):
        for h in self.handles:
            shm.destroy_shared_memory_region(h)


@pytest.fixture
def regions():
    r = Regions()
    yield r
    r.close()


def client(srv, kind):
    return th.InferenceServerClient(srv.http) if kind == "http" else \
        tg.InferenceServerClient(srv.grpc)


def lib(kind):
    return th if kind == "http" else tg


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory_round_trip(server, regions, kind):
    c = client(server, kind)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    in_key, in_h = regions.make(x.nbytes + 16)
    out_key, out_h = regions.make(x.nbytes)
    shm.set_shared_memory_region(in_h, [x], offset=16)
    name_in, name_out = f"in-{kind}", f"out-{kind}"
    c.register_system_shared_memory(name_in, in_key, x.nbytes + 16)
    c.register_system_shared_memory(name_out, out_key, x.nbytes)
    try:
        inp = lib(kind).InferInput("INPUT__0", [3, 4], "FP32")
        inp.set_shared_memory(name_in, x.nbytes, offset=16)
        out = lib(kind).InferRequestedOutput("OUTPUT__0")
        out.set_shared_memory(name_out, x.nbytes)
        result = c.infer("affine", [inp], outputs=[out])
        got = shm.get_contents_as_numpy(out_h, np.float32, [3, 4])
        np.testing.assert_array_equal(got, 2 * x + 1)
        meta = result.get_output("OUTPUT__0")
        if kind == "http":  # no data, and no parameters (as Triton)
            assert "data" not in meta and "parameters" not in meta, meta
        else:
            params = {k: getattr(v, v.WhichOneof("parameter_choice"))
                      for k, v in meta.parameters.items()}
            assert params["shared_memory_region"] == name_out
            assert params["shared_memory_byte_size"] == x.nbytes
        # An input in the region, the output back in the reply.
        result = c.infer("affine", [inp])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT__0"), 2 * x + 1)
    finally:
        c.unregister_system_shared_memory()


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_status_register_and_unregister(server, regions, kind):
    c = client(server, kind)
    key, _ = regions.make(64)
    c.register_system_shared_memory("a", key, 32, offset=8)
    c.register_system_shared_memory("b", key, 64)
    try:
        status = c.get_system_shared_memory_status(**({} if kind == "http" else {"as_json": True}))
        by_name = {r["name"]: r for r in (status if kind == "http" else status["regions"].values())}
        assert set(by_name) == {"a", "b"}
        assert by_name["a"]["key"] == key
        assert int(by_name["a"]["offset"]) == 8 and int(by_name["a"]["byte_size"]) == 32
        with pytest.raises(InferenceServerException, match="already registered"):
            c.register_system_shared_memory("a", key, 8)
        c.unregister_system_shared_memory("a")
        status = c.get_system_shared_memory_status(**({} if kind == "http" else {"as_json": True}))
        names = [r["name"] for r in (status if kind == "http" else status["regions"].values())]
        assert names == ["b"]
    finally:
        c.unregister_system_shared_memory()
    status = c.get_system_shared_memory_status(**({} if kind == "http" else {"as_json": True}))
    assert not (status if kind == "http" else status.get("regions"))


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_what_a_hostile_client_names_is_refused(server, regions, kind, tmp_path):
    c = client(server, kind)
    key, h = regions.make(16)
    secret = tmp_path / "secret"
    secret.write_bytes(b"x" * 64)
    link = Path("/dev/shm") / f"gl_test_link_{uuid.uuid4().hex[:8]}"
    link.symlink_to(secret)
    try:
        refused = [("/gl_test_does_not_exist", 16, 0, "cannot be opened"),
                   ("/../etc/passwd", 16, 0, "must be '/'"),
                   ("relative", 16, 0, "must be '/'"),
                   (f"/{link.name}", 16, 0, "cannot be opened"),  # O_NOFOLLOW
                   (key, 32, 0, "runs past"),
                   (key, 8, 12, "runs past")]
        for k, size, offset, why in refused:
            with pytest.raises(InferenceServerException, match=why):
                c.register_system_shared_memory("r", k, size, offset=offset)
        with pytest.raises(InferenceServerException, match="name"):
            c.register_system_shared_memory("x" * 200, key, 16)
        c.register_system_shared_memory("small", key, 16)
        cases = [("nowhere", 16, 0, "no shared-memory region"),
                 ("small", 16, 8, "run past"),
                 ("small", 12, 0, "take 16 bytes")]
        for region, size, offset, why in cases:
            inp = lib(kind).InferInput("INPUT__0", [1, 4], "FP32")
            inp.set_shared_memory(region, size, offset=offset)
            with pytest.raises(InferenceServerException, match=why):
                c.infer("affine", [inp])
        # An output that does not fit its region.
        inp = lib(kind).InferInput("INPUT__0", [1, 4], "FP32")
        inp.set_data_from_numpy(np.ones((1, 4), np.float32))
        out = lib(kind).InferRequestedOutput("OUTPUT__0")
        out.set_shared_memory("small", 8)
        with pytest.raises(InferenceServerException, match="do not fit"):
            c.infer("affine", [inp], outputs=[out])
        assert c.is_server_live()
    finally:
        link.unlink()
        c.unregister_system_shared_memory()


def test_http_data_given_twice_is_refused(server, regions):
    import json
    import urllib.error
    import urllib.request
    key, _ = regions.make(16)
    c = th.InferenceServerClient(server.http)
    c.register_system_shared_memory("twice", key, 16)
    body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": [1, 4],
                                   "data": [1, 2, 3, 4],
                                   "parameters": {"shared_memory_region": "twice",
                                                  "shared_memory_byte_size": 16}}]}).encode()
    req = urllib.request.Request(f"http://{server.http}/v2/models/affine/infer", body,
                                 {"Content-Type": "application/json"})
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 400 and "one way" in json.loads(e.value.read())["error"]
    finally:
        c.unregister_system_shared_memory()


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_cuda_shared_memory_without_a_gpu_says_why(server, kind):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: test_cuda_shared_memory_* in the gpu run cover it")
    c = client(server, kind)
    status = c.get_cuda_shared_memory_status(**({} if kind == "http" else {"as_json": True}))
    assert not (status if kind == "http" else status.get("regions"))
    handle = base64.b64encode(b"\0" * 64)
    with pytest.raises(InferenceServerException, match="needs a CUDA GPU"):
        c.register_cuda_shared_memory("gpu", handle, 0, 64)


def test_a_region_unregistered_while_a_request_holds_it(regions):
    # What the handlers do, in the order a racing unregister would interleave them.
    key, h = regions.make(32)
    regions_ = SystemSharedMemory()
    regions_.register("r", key, 0, 32)
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 16}
    held = regions_._span("output", params)  # a request took the region
    data = regions_.read("input", params, 16)
    assert len(data) == 16
    with pytest.raises(InvalidInput, match="take 8 bytes"):  # checked before copying
        regions_.read("input", params, 8)
    regions_.unregister("r")
    with pytest.raises(InvalidInput, match="no shared-memory region"):
        regions_.write("output", params, b"\0" * 16)
    region, start, size = held
    with pytest.raises(ValueError):  # its mapping is gone; the handlers turn this into 400
        region.view[start:start + size] = b"\0" * 16


def test_at_most_max_regions_are_registered(regions):
    key, _ = regions.make(8)
    r = SystemSharedMemory()
    try:
        for i in range(MAX_REGIONS):
            r.register(f"r{i}", key, 0, 8)
        with pytest.raises(InvalidInput, match=f"at most {MAX_REGIONS}"):
            r.register("one-more", key, 0, 8)
    finally:
        r.unregister()
    assert r.status() == []


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_with_system_shared_memory(server, protocol, tmp_path):
    url = server.http if protocol == "http" else server.grpc
    rc, output, row = perf_analyzer_run("affine", url, protocol, tmp_path / "pa.csv",
                                        "--shape", "INPUT__0:4", "--shared-memory", "system",
                                        "--output-shared-memory-size", "64")
    assert rc == 0, output
    assert float(row["Inferences/Second"]) > 0, row
    # perf_analyzer unregisters what it registered
    assert th.InferenceServerClient(server.http).get_system_shared_memory_status() == []


@pytest.mark.parametrize("kind", ["http", "grpc"])
def test_tritonclients_asyncio_clients_with_shared_memory(server, regions, kind):
    import asyncio
    lib = pytest.importorskip(f"tritonclient.{kind}.aio")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    key, handle = regions.make(x.nbytes)
    shm.set_shared_memory_region(handle, [x])

    async def run():
        c = lib.InferenceServerClient(server.http if kind == "http" else server.grpc)
        try:
            await c.register_system_shared_memory(f"aio-{kind}", key, x.nbytes)
            inp = lib.InferInput("INPUT__0", [2, 4], "FP32")
            inp.set_shared_memory(f"aio-{kind}", x.nbytes)
            result = await c.infer("affine", [inp])
            await c.unregister_system_shared_memory(f"aio-{kind}")
            return result.as_numpy("OUTPUT__0")
        finally:
            await c.close()
    np.testing.assert_array_equal(asyncio.run(run()), 2 * x + 1)
