"""`gpulanes serve` against clients that hold connections, dribble headers, lie about bodies or
send too much, and against an operator's signals: bounded connections, header and body times
and sizes, compressed bodies, and a drain that ends at its deadline. Loopback only, bounded
counts and times. (gRPC's own hostile cases and TLS: test_serve_hostile_grpc.py.)"""

import json
import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

th = pytest.importorskip("tritonclient.http")
tg = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("uvicorn")

from serve_helpers import (ServerProcess, open_fds, rss_kib, wait_until,  # noqa: E402
                           write_config)

LIMITS = ("max_connections = 16\nmax_header_bytes = 4096\nheader_timeout_s = 1.0\n"
          "body_timeout_s = 1.0\nkeepalive_timeout_s = 1.0")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(write_config(tmp_path_factory.mktemp("hostile"), ["affine"], server=LIMITS))
    yield srv
    assert srv.terminate() == 0, "".join(srv.lines)


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def reply_of(s: socket.socket, timeout_s: float = 10) -> bytes:
    """What the server sent before closing (b"" when it closed without a word); fails when the
    server keeps the connection open for ``timeout_s``."""
    end = time.monotonic() + timeout_s
    out = b""
    try:
        while True:
            s.settimeout(max(0.01, end - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except ConnectionResetError:
        return out
    except socket.timeout:
        raise AssertionError(f"the server kept the connection open for {timeout_s} s") from None


def healthy(srv) -> bool:
    return th.InferenceServerClient(srv.http).is_server_live()


def test_a_flood_of_slow_header_senders_is_bounded_and_health_and_grpc_keep_answering(server):
    base = open_fds(server.proc.pid)
    socks = []
    for _ in range(60):  # far over max_connections = 16
        s = connect(server.http)
        s.sendall(b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    # One header line now and then keeps no connection alive past header_timeout_s (1 s).
    stop = time.monotonic() + 3.0
    alive = list(socks)
    while time.monotonic() < stop and alive:
        for s in list(alive):
            try:
                s.sendall(b"X-Slow: 1\r\n")
            except OSError:
                alive.remove(s)
        # Health (HTTP) and gRPC answer while the flood goes on, and the server's files stay
        # bounded by the connection cap.
        assert healthy(server)
        assert tg.InferenceServerClient(server.grpc).is_server_live()
        assert open_fds(server.proc.pid) <= base + 16 + 8
        time.sleep(0.3)
    # Every slow connection was closed by the server (evicted, or 408 at its header deadline).
    for s in socks:
        got = reply_of(s, 10)
        assert got == b"" or got.startswith((b"HTTP/1.1 408", b"HTTP/1.1 503")), got[:80]
        s.close()
    assert wait_until(lambda: open_fds(server.proc.pid) <= base + 2, 10)


def test_a_connection_that_never_sends_a_byte_gets_408_at_the_header_deadline(server):
    s = connect(server.http)
    t0 = time.monotonic()
    got = reply_of(s, 10)
    took = time.monotonic() - t0
    s.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]
    assert 0.8 <= took < 8


def test_a_body_that_never_comes_closes_the_connection_at_the_body_deadline(server):
    base = open_fds(server.proc.pid)
    socks = []
    for _ in range(10):
        s = connect(server.http)
        s.sendall(b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"")
        socks.append(s)
    t0 = time.monotonic()
    for s in socks:
        reply_of(s, 10)  # returns when the server closes it
        s.close()
    assert time.monotonic() - t0 < 8
    assert wait_until(lambda: open_fds(server.proc.pid) <= base + 2, 10)
    assert healthy(server)


@pytest.mark.parametrize("seed", range(6))
def test_headers_over_the_limit_get_431_whatever_the_chunking(server, seed):
    """Fuzzed: header blocks just under and over max_header_bytes (4096), sent in random
    chunks; under the limit is served, over it is 431 and never read further."""
    rng = random.Random(seed)
    for size in (rng.randint(200, 3500), rng.randint(4200, 200_000)):
        line = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n"
        filler = b"X-Fill: " + b"a" * max(0, size - len(line) - 12) + b"\r\n"
        request = line + filler + b"\r\n"
        s = connect(server.http)
        try:
            at = 0
            while at < len(request):
                n = rng.randint(1, 9000)
                s.sendall(request[at:at + n])
                at += n
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed it mid-send: over the limit
        got = reply_of(s)
        s.close()
        if len(request) <= 4096:
            assert got.startswith(b"HTTP/1.1 200"), (len(request), got[:80])
        else:
            assert got == b"" or got.startswith(b"HTTP/1.1 431"), (len(request), got[:80])


def test_63_mib_of_header_lines_are_refused_without_reading_them(server):
    rss0 = rss_kib(server.proc.pid)
    s = connect(server.http)
    s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
    sent = 0
    chunk = b"X-Junk: " + b"z" * 1000 + b"\r\n"
    try:
        while sent < 63 << 20:
            s.sendall(chunk * 64)
            sent += len(chunk) * 64
    except OSError:
        pass  # closed by the server long before 63 MiB
    got = reply_of(s)
    s.close()
    assert sent < 8 << 20
    assert got == b"" or got.startswith(b"HTTP/1.1 431")
    assert rss_kib(server.proc.pid) - rss0 < 32 << 10


def infer_json(address: str, model: str, data, timeout_s: float = 120):
    """(status, body) of one JSON infer on a connection of its own."""
    import urllib.error
    import urllib.request
    body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32",
                                   "shape": [1, len(data)], "data": list(data)}]}).encode()
    req = urllib.request.Request(f"http://{address}/v2/models/{model}/infer", body,
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, repr(e).encode()


def test_served_clients_keep_their_connections_while_idle_sockets_churn_over_the_cap(server):
    # 8 clients on kept-alive connections send 64 requests while idle sockets keep coming, 10
    # every 50 ms (over the cap of 16): the churn is refused (503) or closes its own kind, never
    # a request in progress or a served client's connection, and every request is answered.
    import http.client
    host, port = server.http.rsplit(":", 1)
    stop = threading.Event()

    def idle_sockets():
        while not stop.is_set():
            socks = []
            for _ in range(10):
                try:
                    socks.append(connect(server.http))
                except OSError:
                    pass
            time.sleep(0.05)
            for s in socks:
                s.close()

    def client(n):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        out = []
        for i in range(n):
            body = json.dumps({"inputs": [{"name": "INPUT__0", "datatype": "FP32",
                                           "shape": [1, 4], "data": [1, 2, 3, 4]}]})
            conn.request("POST", "/v2/models/affine/infer", body,
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            out.append((r.status, r.read()))
        conn.close()
        return out
    churn = threading.Thread(target=idle_sockets)
    with ThreadPoolExecutor(8) as pool:
        # connections made before the churn starts (a served client's connection pre-exists)
        started = [pool.submit(client, 8) for _ in range(8)]
        churn.start()
        try:
            results = [r for f in started for r in f.result(120)]
        finally:
            stop.set()
            churn.join(30)
    assert [code for code, _ in results] == [200] * 64, results[:3]
    assert all(json.loads(b)["outputs"][0]["data"] == [3, 5, 7, 9] for _, b in results)


def test_a_served_clients_keep_alive_connection_outlives_a_flood_of_fresh_sockets(server):
    import http.client
    host, port = server.http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v2/health/live")
    first = conn.getresponse()
    first.read()
    assert first.status == 200
    flood = [connect(server.http) for _ in range(40)]  # 2.5 x the cap; each evicts a fresh one
    try:
        conn.request("GET", "/v2/health/live")  # the kept connection was not the one closed
        assert conn.getresponse().status == 200
    finally:
        conn.close()
        for s in flood:
            s.close()


# -- the drain ---------------------------------------------------------------------------------


def queued_server(tmp_path, drain_s: float):
    cfg = write_config(tmp_path, ["slower"], max_batch_size=1, max_queue=512,
                       server=f"drain_timeout_s = {drain_s}")
    return ServerProcess(cfg)


def submitted(srv, model: str) -> int:
    """Requests of `model` the server has taken in so far (its /metrics counter)."""
    import urllib.request
    with urllib.request.urlopen(f"http://{srv.http}/metrics", timeout=30) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(f'gpulanes_requests_submitted_total{{model="{model}"}}'):
            return int(float(line.split()[-1]))
    return 0


def flood(srv, n: int):
    """n requests in flight on their own threads; returns (threads, answers: (status, body))."""
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(infer_json(srv.http, "slower",
                                                                         [0, 0, 0, 0])))
               for _ in range(n)]
    for t in threads:
        t.start()
    return threads, answers


@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)])
def test_the_drain_ends_at_its_deadline_and_answers_what_is_left_with_503(tmp_path, signals):
    srv = queued_server(tmp_path, 2.0)
    threads, answers = flood(srv, 120)
    # Every request read and submitted (serving, with a long queue behind): one still in the
    # listen backlog when HTTP stops listening is refused by the kernel, which no server answers.
    assert wait_until(lambda: submitted(srv, "slower") >= 120, 120)
    t0 = time.monotonic()
    for sig in signals:
        srv.proc.send_signal(sig)
        time.sleep(0.3)
    rc = srv.proc.wait(60)
    took = time.monotonic() - t0
    for t in threads:
        t.join(30)
    log = "".join(srv.lines)
    assert rc == 0, log
    # drain_timeout_s = 2, STOP_GRACE_S = 3: the bound, with a margin for a busy machine
    assert took < 2.0 + 3.0 + 4.0, (took, log)
    assert len(answers) == 120
    codes = [c for c, _ in answers]
    assert set(codes) <= {200, 503}, codes  # never 500, never a dropped connection
    assert codes.count(503) > 0
    for code, body in answers:
        if code == 503:
            assert json.loads(body)["error"]
    assert "Traceback" not in log, log


def test_a_short_soak_of_the_hostile_mix_answers_every_valid_request_once(tmp_path):
    """benchmarks/serve_soak.py for 8 s: its claims, asserted."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import serve_soak

    out = serve_soak.soak(serve_soak.parse_args(["--duration", "8", "--rate", "40", "--slow", "20",
                                                 "--idle", "40", "--max-connections", "48",
                                                 "--out", str(tmp_path)]))
    assert out["answered_exactly_once"] and out["wrong_ids"] == 0, out
    for proto, ok in (("http", "200"), ("grpc", "OK")):
        assert out["valid"][proto]["statuses"] == {ok: out["valid"][proto]["sent"]}, out
    assert out["malformed_5xx"] == 0 and out["malformed_statuses"], out
    assert out["sockets_closed_by_server"].get("idle", 0) > 0  # the cap was reached, and held
    assert out["server_fds"]["max"] <= out["server_fds"]["start"] + 48 + 16, out
    assert out["exit_status"] == 0 and out["server_log_tracebacks"] == 0, out


def test_a_corrupt_model_file_on_load_answers_an_error_id_and_no_path(tmp_path):
    more = tmp_path / "more"
    more.mkdir()
    (more / "broken.pt").write_bytes(b"PK\x03\x04 not a model at all" * 10)
    (more / "broken.toml").write_text('file = "broken.pt"\nslo_ms = 1000\n'
                                      'inputs = [{ name = "INPUT__0", datatype = "FP32", '
                                      'shape = [4] }]\n')
    srv = ServerProcess(write_config(tmp_path, ["affine"], server='model_dir = "more"'))
    try:
        import urllib.error
        import urllib.request
        req = urllib.request.Request(f"http://{srv.http}/v2/repository/models/broken/load",
                                     b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        error = json.loads(e.value.read())["error"]
        assert e.value.code == 500 and "error id" in error and "broken" in error, error
        assert str(tmp_path) not in error and "/" not in error.split("error id")[0], error
        error_id = error.split("error id ")[1].split(";")[0]
    finally:
        assert srv.terminate() == 0
    log = "".join(srv.lines)
    assert error_id in log and str(more) in log  # the server's log has the whole of it


def test_load_and_unload_go_on_past_the_registry_size_with_flat_memory(tmp_path):
    # Each load registers the model anew and each unload retires it: 1,030 cycles pass the
    # 1,024 models a runtime holds at once, which used to disable load for good, keeping
    # about 100 KB each.
    import numpy as np
    import tritonclient.http as th

    srv = ServerProcess(write_config(tmp_path, ["affine"], later={"extra": "affine"}))
    try:
        c = th.InferenceServerClient(srv.http)
        for i in range(1030):
            c.load_model("extra")
            c.unload_model("extra")
            if i == 29:
                rss0 = rss_kib(srv.proc.pid)
        grown_mib = (rss_kib(srv.proc.pid) - rss0) / 1024
        c.load_model("extra")
        x = th.InferInput("INPUT__0", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), np.float32))
        out = c.infer("extra", [x]).as_numpy("OUTPUT__0")
        assert np.array_equal(out, np.full((1, 4), 3.0, np.float32))
        assert grown_mib < 30, f"{grown_mib:.1f} MiB more after 1,000 cycles"
    finally:
        assert srv.terminate() == 0, "".join(srv.lines)


def test_http_gzip_bombs_are_refused_with_413_and_flat_memory(tmp_path):
    import http.client
    import zlib
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(16 << 20)
    bomb = b"".join(z.compress(zeros) for _ in range(32)) + z.flush()  # 512 MiB inflated
    assert len(bomb) < 1 << 20
    srv = ServerProcess(write_config(tmp_path, ["affine"], server="max_body_bytes = 1048576"))
    try:
        rss0 = rss_kib(srv.proc.pid)
        host, port = srv.http.rsplit(":", 1)

        def one(_):
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/v2/models/affine/infer", bomb,
                         {"Content-Type": "application/json", "Content-Encoding": "gzip"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())["error"]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4)))
        assert all(status == 413 and "inflates" in error for status, error in answers), answers
        assert (rss_kib(srv.proc.pid) - rss0) / 1024 < 48
        assert healthy(srv)
    finally:
        assert srv.terminate() == 0
