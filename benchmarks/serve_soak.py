"""Soak of `gpulanes serve` against a hostile mix: valid clients over HTTP and gRPC while others
send malformed requests, dribble headers, stall bodies and hold idle sockets, all at once.

Arrivals: valid requests are open-loop Poisson, ``--rate`` per second on each protocol (HTTP
JSON on kept-alive connections, gRPC on one channel), each with its own id; malformed ones are
Poisson at ``--bad-rate`` (bad JSON, wrong shape, unknown model, an oversized body); held
throughout: ``--slow`` connections sending one header line a second, ``--slow`` more declaring
a body they never send, and ``--idle`` connections that send nothing (each reopened when the
server closes it). The server runs with its shipped defaults except the HTTP connection cap.

Reported: whether every valid request was answered exactly once with its own id, their status
counts and p50/p99 latency per protocol, the malformed requests' statuses (any 5xx is a
defect), how often the server closed slow and idle sockets, and the server's resident memory
and open files sampled every second (start, max, end).

    python benchmarks/serve_soak.py [--duration 600] [--rate 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from _common import RESULTS, environment, write_result  # noqa: E402
from serve_helpers import ServerProcess, write_config  # noqa: E402


def _proc(pid: int) -> Dict[str, float]:
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
    return {"rss_mb": rss / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def _percentiles(ms: List[float]) -> Dict[str, float]:
    if not ms:
        return {}
    a = np.array(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "max_ms": float(a.max())}


class Soak:
    def __init__(self, srv: ServerProcess, args) -> None:
        self.srv, self.args = srv, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent: Counter = Counter()          # valid requests sent, per protocol
        self.answers: Dict[str, Counter] = {"http": Counter(), "grpc": Counter()}
        self.wrong_id = 0                       # answers that carried another request's id
        self.latency: Dict[str, List[float]] = {"http": [], "grpc": []}
        self.bad: Counter = Counter()           # malformed requests' statuses
        self.closed_by_server: Counter = Counter()  # slow / idle sockets the server closed
        self.samples: List[Dict[str, float]] = []
        self.host, port = srv.http.rsplit(":", 1)
        self.port = int(port)

    # -- valid HTTP ------------------------------------------------------------------------

    def http_valid(self) -> None:
        local = threading.local()
        rng = random.Random(1)

        def one(i: int) -> None:
            conn = getattr(local, "conn", None) or http.client.HTTPConnection(
                self.host, self.port, timeout=60)
            local.conn = conn
            rid = f"h{i}"
            body = json.dumps({"id": rid, "inputs": [{"name": "INPUT__0", "datatype": "FP32",
                                                       "shape": [1, 4], "data": [i % 7, 1, 2, 3]}]})
            t0 = time.monotonic()
            try:
                conn.request("POST", "/v2/models/affine/infer", body,
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                data = r.read()
                status = str(r.status)
                ok_id = r.status != 200 or json.loads(data).get("id") == rid
            except (OSError, http.client.HTTPException) as e:
                local.conn = None
                status, ok_id = f"error {type(e).__name__}", True
            with self.lock:
                self.answers["http"][status] += 1
                self.wrong_id += not ok_id
                if status == "200":
                    self.latency["http"].append((time.monotonic() - t0) * 1e3)
        with ThreadPoolExecutor(32) as pool:
            self._poisson(rng, self.args.rate, lambda i: (self._count("http"), pool.submit(one, i)))

    def _count(self, proto: str) -> None:
        with self.lock:
            self.sent[proto] += 1

    def _poisson(self, rng: random.Random, rate: float, fire) -> None:
        t, i = time.monotonic(), 0
        while not self.stop.is_set():
            t += rng.expovariate(rate)
            delay = t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            fire(i)
            i += 1

    # -- valid gRPC ------------------------------------------------------------------------

    def grpc_valid(self) -> None:
        import grpc
        from gpulanes.serve.grpc_server import messages

        m = messages()
        rng = random.Random(2)

        async def run() -> None:
            async with grpc.aio.insecure_channel(self.srv.grpc) as ch:
                call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
                tasks = set()

                async def one(i: int) -> None:
                    rid = f"g{i}"
                    req = m["ModelInferRequest"](model_name="affine", id=rid, raw_input_contents=[
                        np.array([i % 7, 1, 2, 3], np.float32).tobytes()])
                    req.inputs.add(name="INPUT__0", datatype="FP32", shape=[1, 4])
                    t0 = time.monotonic()
                    try:
                        raw = await call(req.SerializeToString(), timeout=60)
                        reply = m["ModelInferResponse"].FromString(raw)
                        status, ok_id = "OK", reply.id == rid
                    except grpc.aio.AioRpcError as e:
                        status, ok_id = e.code().name, True
                    with self.lock:
                        self.answers["grpc"][status] += 1
                        self.wrong_id += not ok_id
                        if status == "OK":
                            self.latency["grpc"].append((time.monotonic() - t0) * 1e3)
                t, i = time.monotonic(), 0
                while not self.stop.is_set():
                    t += rng.expovariate(self.args.rate)
                    await asyncio.sleep(max(0.0, t - time.monotonic()))
                    self._count("grpc")
                    task = asyncio.create_task(one(i))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    i += 1
                await asyncio.gather(*tasks)
        asyncio.run(run())

    # -- malformed -------------------------------------------------------------------------

    def malformed(self) -> None:
        rng = random.Random(3)
        cases = [
            ("/v2/models/affine/infer", b"{not json"),
            ("/v2/models/affine/infer", json.dumps({"inputs": [{  # wrong shape
                "name": "INPUT__0", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]
            }).encode()),
            ("/v2/models/nope/infer", b'{"inputs": []}'),
            ("/v2/models/affine/infer", b"x" * (self.args.max_body + 1)),
        ]

        def one(i: int) -> None:
            path, body = cases[i % len(cases)]
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("POST", path, body, {"Content-Type": "application/json"})
                status = str(conn.getresponse().status)
                conn.close()
            except (OSError, http.client.HTTPException) as e:
                status = f"error {type(e).__name__}"
            with self.lock:
                self.bad[status] += 1
        with ThreadPoolExecutor(4) as pool:
            self._poisson(rng, self.args.bad_rate, lambda i: pool.submit(one, i))

    # -- slow and idle sockets -------------------------------------------------------------

    def held(self, kind: str, count: int) -> None:
        socks: List[socket.socket] = []
        while not self.stop.is_set():
            while len(socks) < count:
                try:
                    s = socket.create_connection((self.host, self.port), timeout=5)
                    s.setblocking(False)
                    if kind == "slow_body":
                        s.send(b"POST /v2/models/affine/infer HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Length: 1000\r\n\r\n{")
                    elif kind == "slow_headers":
                        s.send(b"POST /v2/models/affine/infer HTTP/1.1\r\n")
                    socks.append(s)
                except OSError:
                    break
            for s in list(socks):
                try:
                    if kind == "slow_headers":
                        s.send(b"X-Slow: 1\r\n")
                    gone = s.recv(4096) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    s.close()
                    socks.remove(s)
                    with self.lock:
                        self.closed_by_server[kind] += 1
            self.stop.wait(1.0)
        for s in socks:
            s.close()

    def sample(self) -> None:
        while not self.stop.is_set():
            self.samples.append({"t": time.monotonic(), **_proc(self.srv.proc.pid)})
            self.stop.wait(1.0)

    def run(self) -> Dict[str, Any]:
        workers = [threading.Thread(target=self.sample),
                   threading.Thread(target=self.http_valid),
                   threading.Thread(target=self.grpc_valid),
                   threading.Thread(target=self.malformed),
                   threading.Thread(target=self.held, args=("slow_headers", self.args.slow)),
                   threading.Thread(target=self.held, args=("slow_body", self.args.slow)),
                   threading.Thread(target=self.held, args=("idle", self.args.idle))]
        for w in workers:
            w.start()
        self.stop.wait(self.args.duration)
        self.stop.set()
        for w in workers:
            w.join(120)
        answered = {p: sum(c.values()) for p, c in self.answers.items()}
        rss = [s["rss_mb"] for s in self.samples]
        fds = [s["fds"] for s in self.samples]
        return {
            "duration_s": self.args.duration,
            "arrivals": (f"valid: Poisson {self.args.rate}/s on HTTP and on gRPC (open loop); "
                         f"malformed: Poisson {self.args.bad_rate}/s; held throughout: "
                         f"{self.args.slow} slow-header, {self.args.slow} slow-body and "
                         f"{self.args.idle} idle connections"),
            "valid": {p: {"sent": self.sent[p], "answered": answered[p],
                          "statuses": dict(self.answers[p]), **_percentiles(self.latency[p])}
                      for p in ("http", "grpc")},
            "answered_exactly_once": all(self.sent[p] == answered[p] for p in answered)
            and self.wrong_id == 0,
            "wrong_ids": self.wrong_id,
            "malformed_statuses": dict(self.bad),
            "malformed_5xx": sum(n for s, n in self.bad.items() if s.startswith("5")),
            "sockets_closed_by_server": dict(self.closed_by_server),
            "server_rss_mb": {"start": rss[0], "max": max(rss), "end": rss[-1]} if rss else {},
            "server_fds": {"start": fds[0], "max": max(fds), "end": fds[-1]} if fds else {},
        }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    p.add_argument("--rate", type=float, default=100.0, help="valid requests/s per protocol")
    p.add_argument("--bad-rate", type=float, default=10.0, help="malformed requests/s")
    p.add_argument("--slow", type=int, default=50, help="slow-header and slow-body sockets each")
    p.add_argument("--idle", type=int, default=100, help="idle sockets")
    p.add_argument("--max-connections", type=int, default=128, help="the server's HTTP cap")
    p.add_argument("--max-body", type=int, default=1 << 20, help="the server's max_body_bytes")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def soak(args) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_config(Path(tmp), ["affine"], slo_ms=1000, max_queue=4096, server=(
            f"max_connections = {args.max_connections}\nmax_body_bytes = {args.max_body}\n"
            "drain_timeout_s = 5"))
        srv = ServerProcess(cfg)
        try:
            out = Soak(srv, args).run()
        finally:
            t0 = time.monotonic()
            out_rc = srv.terminate()
        out.update(exit_status=out_rc, exit_s=time.monotonic() - t0,
                   server_log_tracebacks=sum("Traceback" in line for line in srv.lines))
        return out


def main(argv=None) -> None:
    args = parse_args(argv)
    result = soak(args)
    env = environment("cpu")
    path = write_result("serve-soak", env, {"config": vars(args) | {"out": str(args.out)},
                                            **result}, args.out)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
