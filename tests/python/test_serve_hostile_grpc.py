"""`gpulanes serve`'s gRPC front ends (the core's and grpcio's) against compression bombs with
and without the token and 2,000 concurrent calls, and TLS on both protocols with tritonclient.
Child servers on loopback, bounded counts and times."""

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("uvicorn")

from serve_helpers import ServerProcess, rss_kib, write_config  # noqa: E402


# -- compressed gRPC messages ----------------------------------------------------------------


def grpc_frontends():
    from gpulanes.serve.grpc_server import core_frontend_available
    return ["python"] + (["core"] if core_frontend_available() else [])


@pytest.fixture(scope="module", params=grpc_frontends())
def token_server(tmp_path_factory, request):
    cfg = write_config(tmp_path_factory.mktemp(f"bomb-{request.param}"), ["affine"],
                       server=f'token = "s3cret"\nmax_body_bytes = 1048576\n'
                              f'grpc_frontend = "{request.param}"')
    srv = ServerProcess(cfg)
    srv.frontend = request.param
    yield srv
    assert srv.terminate() == 0, "".join(srv.lines)


def bomb(inflated: int, model: str = "affine") -> bytes:
    """A ModelInferRequest whose raw contents are `inflated` zero bytes (gzip: about 0.1%)."""
    from gpulanes.serve.grpc_server import messages
    req = messages()["ModelInferRequest"](model_name=model, raw_input_contents=[bytes(inflated)])
    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[inflated // 16, 4])
    return req.SerializeToString()


@pytest.mark.parametrize("authorized, algorithm, inflated", [
    (False, "Gzip", 128 << 20), (True, "Gzip", 128 << 20), (True, "Deflate", 96 << 20),
    (True, "Gzip", (1 << 20) + 1), (False, "Deflate", 3 << 20)])
def test_a_compression_bomb_is_refused_without_inflating_it(token_server, authorized, algorithm,
                                                           inflated):
    grpc = pytest.importorskip("grpc")
    payload = bomb(inflated)
    metadata = [("authorization", "Bearer s3cret")] if authorized else []
    rss0 = rss_kib(token_server.proc.pid)
    codes = []

    def one(_):
        with grpc.insecure_channel(token_server.grpc,
                                   compression=getattr(grpc.Compression, algorithm)) as ch:
            call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            try:
                call(payload, timeout=60, metadata=metadata)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(4)))
    grown_mib = (rss_kib(token_server.proc.pid) - rss0) / 1024
    # grpcio: refused for its size (grpc's own check, inflating at most the limit). The core
    # front end refuses compressed messages from the call's headers, before reading them.
    wanted = ((grpc.StatusCode.RESOURCE_EXHAUSTED,) if token_server.frontend == "python"
              else (grpc.StatusCode.UNIMPLEMENTED,))
    assert set(codes) <= set(wanted) and len(codes) == 4, codes
    # four messages of up to 128 MiB, 1 MiB allowed: never inflated past the limit
    assert grown_mib < 48, grown_mib
    assert tg.InferenceServerClient(token_server.grpc).is_server_live()


def test_compressed_calls_are_served_by_grpcio_and_refused_by_name_by_the_core(token_server):
    grpc = pytest.importorskip("grpc")
    payload = bomb(64)  # a valid request of 4 rows
    with grpc.insecure_channel(token_server.grpc, compression=grpc.Compression.Gzip) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        meta = [("authorization", "Bearer s3cret")]
        if token_server.frontend == "python":
            assert call(payload, timeout=60, metadata=meta)
        else:
            with pytest.raises(grpc.RpcError) as e:
                call(payload, timeout=60, metadata=meta)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
            assert "gzip" in e.value.details()


# -- every gRPC call gets a real answer --------------------------------------------------------


@pytest.mark.parametrize("frontend", grpc_frontends())
@pytest.mark.parametrize("max_queue", [100_000, 64])
def test_2000_concurrent_calls_are_each_served_or_refused_never_cancelled(tmp_path, frontend,
                                                                          max_queue):
    import asyncio
    from collections import Counter
    grpc = pytest.importorskip("grpc")
    # The short queue's model is slow enough (tens of ms a batch) that 2,000 calls fill its 64
    # places whatever this machine's speed.
    model = "slower" if max_queue < 1000 else "affine"
    srv = ServerProcess(write_config(tmp_path, [model], server=f'grpc_frontend = "{frontend}"',
                                     max_queue=max_queue))
    try:
        payload = bomb(16, model)

        async def run():
            codes = Counter()
            async with grpc.aio.insecure_channel(srv.grpc) as ch:
                call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")

                async def one():
                    try:
                        await call(payload, timeout=120)
                        codes["OK"] += 1
                    except grpc.aio.AioRpcError as e:
                        codes[e.code().name] += 1
                await asyncio.gather(*(one() for _ in range(2000)))
            return codes
        codes = asyncio.run(run())
    finally:
        assert srv.terminate() == 0, "".join(srv.lines)
    assert sum(codes.values()) == 2000
    if max_queue > 1000:
        assert codes == Counter(OK=2000), codes
    else:  # a short queue: the rest are refused as such
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}, codes
        assert codes["OK"] >= 64 and codes["RESOURCE_EXHAUSTED"] + codes["UNAVAILABLE"] > 0, codes


# -- TLS -----------------------------------------------------------------------------------------


def self_signed(root) -> tuple:
    import subprocess
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("frontend", grpc_frontends())
def test_tls_on_both_front_ends_with_tritonclient(tmp_path, frontend):
    cert, key = self_signed(tmp_path)
    srv = ServerProcess(write_config(tmp_path, ["affine"], server=(
        f'token = "s3cret"\ngrpc_frontend = "{frontend}"\n'
        f'tls_cert_file = "cert.pem"\ntls_key_file = "key.pem"')))
    try:
        assert "(tls)" in srv._ready_line and "tls)" in srv._ready_line.split("grpc=")[1]
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        auth = {"authorization": "Bearer s3cret"}
        hc = th.InferenceServerClient(srv.http.replace("127.0.0.1", "localhost"), ssl=True,
                                      ssl_options={"ca_certs": str(cert)})
        inp = th.InferInput("INPUT__0", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        out = hc.infer("affine", [inp], headers=dict(auth)).as_numpy("OUTPUT__0")
        assert np.array_equal(out, x * 2 + 1)
        gc = tg.InferenceServerClient(srv.grpc.replace("127.0.0.1", "localhost"), ssl=True,
                                      root_certificates=str(cert))
        inp = tg.InferInput("INPUT__0", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        out = gc.infer("affine", [inp], headers=dict(auth)).as_numpy("OUTPUT__0")
        assert np.array_equal(out, x * 2 + 1)
        # plain text to a TLS port is not served
        with pytest.raises(Exception):
            th.InferenceServerClient(srv.http, network_timeout=5).is_server_live()
        with pytest.raises(Exception):
            tg.InferenceServerClient(srv.grpc).is_server_live(client_timeout=5)
    finally:
        t0 = time.monotonic()
        assert srv.terminate() == 0, "".join(srv.lines)
        # nothing in flight: no wait for the TLS close of idle keep-alive clients (30 s drain)
        assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("server_lines, says", [
    ('tls_cert_file = "cert.pem"', "both"),
    ('tls_cert_file = "cert.pem"\ntls_key_file = "nope.pem"', "do not load"),
    ('tls_cert_file = "key.pem"\ntls_key_file = "key.pem"', "do not load"),
])
def test_tls_files_that_do_not_fit_are_refused_at_start(tmp_path, server_lines, says):
    import subprocess
    import sys
    self_signed(tmp_path)
    cfg = write_config(tmp_path, ["affine"], server=server_lines)
    r = subprocess.run([sys.executable, "-m", "gpulanes", "serve", str(cfg)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
