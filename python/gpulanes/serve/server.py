"""`gpulanes serve CONFIG.toml`: one process, one Runtime, HTTP (uvicorn) and gRPC front ends on
one asyncio loop.

Order of life: the front ends listen first (liveness answers, readiness says 503), the runtime
starts (profiling, possibly seconds), readiness turns true. SIGTERM or SIGINT (again or not):
readiness turns false, both front ends stop accepting and let in-flight requests finish. At
``drain_timeout_s`` what is still queued fails with :class:`RuntimeClosed` (503 / UNAVAILABLE,
the protocol's own answer), running batches get ``STOP_GRACE_S`` more, and the process exits 0:
a supervisor never needs its SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import signal
import socket
import sys
from typing import Any, List, Optional

from ..errors import InvalidInput
from .config import ServeConfig
from .protocol import Endpoint


STOP_GRACE_S = 3.0  # after the drain deadline: failed requests answered, running batches end


def _say(*parts: Any) -> None:
    print("gpulanes serve:", *parts, file=sys.stderr, flush=True)


def _uvicorn_server(app, cfg: ServeConfig):
    import uvicorn

    class Server(uvicorn.Server):
        # The process's signals belong to serve(): it drains gRPC and the runtime as well.
        @contextlib.contextmanager
        def capture_signals(self):
            yield

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29
            pass

    from .http_guard import guarded_protocol

    protocol = guarded_protocol(cfg.http)  # its counters: protocol.guard
    tls = {} if cfg.tls_cert_file is None else {"ssl_certfile": str(cfg.tls_cert_file),
                                                "ssl_keyfile": str(cfg.tls_key_file)}
    config = uvicorn.Config(app, log_level=cfg.log_level, lifespan="off", access_log=False,
                            **tls,
                            proxy_headers=False,  # no proxy in front that we know of
                            http=protocol, timeout_keep_alive=cfg.http.keepalive_timeout_s,
                            # past the drain deadline (when the runtime has failed what it
                            # queued), uvicorn cancels what is left: _answer_cancelled says 503
                            timeout_graceful_shutdown=cfg.drain_timeout_s + 1.0)
    return Server(config)


def _answer_cancelled(app):
    """``app``, answering 503 in the protocol's form (not uvicorn's 500 and a traceback) to a
    request cancelled because the server stops before it could be served."""
    from .http import _error_body

    async def asgi(scope, receive, send) -> None:
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)
        try:
            await app(scope, receive, tracked)
        except asyncio.CancelledError:
            if scope["type"] != "http" or started:
                return
            status, headers, body = _error_body(503, "the server is shutting down")
            with contextlib.suppress(Exception):
                await send({"type": "http.response.start", "status": status, "headers": [
                    (k.encode(), v.encode()) for k, v in
                    {**headers, "content-length": str(len(body)), "connection": "close"}.items()]})
                await send({"type": "http.response.body", "body": body})
    return asgi


def _open_files_for(cfg: ServeConfig) -> None:
    """Raises the soft limit on open files to the hard one, and refuses a connection cap that
    would leave too few for gRPC, the models and the runtime (an HTTP flood must never starve
    them: the guard closes connections before the process runs out)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
    if cfg.http_port >= 0 and cfg.http.max_connections + _KEPT_FILES > soft:
        raise InvalidInput(
            f"config: server.max_connections {cfg.http.max_connections} leaves too few of this "
            f"process's {soft} open files (RLIMIT_NOFILE) for gRPC and the models: lower it to "
            f"{max(1, soft - _KEPT_FILES)} or raise the limit (ulimit -n)")


_KEPT_FILES = 256  # open files kept out of HTTP's reach: gRPC, models, worker pipes, logs


async def serve(cfg: ServeConfig, stop: Optional[asyncio.Event] = None,
                runtime: Any = None) -> int:
    """Serves until ``stop`` is set (or SIGTERM/SIGINT); returns the exit status."""
    from .grpc_server import grpc_server
    from .http import app

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    _open_files_for(cfg)
    # A second (or later) SIGINT or SIGTERM during the drain only sets the same event: the drain
    # keeps its deadline and the exit status stays 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
    rt = runtime if runtime is not None else cfg.build_runtime()
    endpoint = Endpoint(rt, cfg.io(), cfg.max_rows, loadable=cfg.loadable,
                        declared=[m.name for m in cfg.models])
    listening: List[str] = []
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host  # an IPv6 address in brackets
    http = http_task = grpc = None
    try:
        if cfg.http_port >= 0:
            # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say TCP, and
            # without it a reply's headers and body wait 40 ms for the client's delayed ACK.
            sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET,
                                 socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((cfg.host, cfg.http_port))
                sock.listen(2048)  # listening before "listening" is said
            except OSError as e:
                sock.close()
                raise InvalidInput(f"HTTP could not listen on {host}:{cfg.http_port}: "
                                   f"{e.strerror or e}") from None
            http = _uvicorn_server(_answer_cancelled(app(
                rt, endpoint=endpoint, max_body_bytes=cfg.max_body_bytes, token=cfg.token)), cfg)
            http_task = asyncio.create_task(http.serve(sockets=[sock]))
            listening.append(f"http={host}:{sock.getsockname()[1]}"
                             + (" (tls)" if cfg.tls_cert_file else ""))
        if cfg.grpc_port >= 0:
            grpc, port = grpc_server(endpoint, f"{host}:{cfg.grpc_port}",
                                     max_message_bytes=cfg.max_body_bytes, token=cfg.token,
                                     frontend=cfg.grpc_frontend, tls=cfg.tls())
            await grpc.start()
            # Which front end answers gRPC: the core's (grpc++) or grpcio's (the fallback).
            kind = "core" if type(grpc).__name__ == "CoreGrpcServer" else "grpcio"
            listening.append(f"grpc={host}:{port} ({kind}{', tls' if cfg.tls_cert_file else ''})")
        _say("listening", *listening)
        starting = asyncio.create_task(asyncio.to_thread(cfg.start_runtime, rt))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a start that failed ends the process with its error
            # What exists now (torch, the models, the server) lives as long as the process:
            # out of the collector's sight, a full collection no longer walks it. With torch
            # and torchvision loaded one took 210 ms, stalling every request (README,
            # "Python's garbage collector").
            gc.collect()
            gc.freeze()
            _say("ready", *listening)
            await stopping
        else:
            await starting  # start() cannot be interrupted; stop as soon as it returns
        _say("draining")
    finally:
        left = await _drain(cfg, endpoint, rt, grpc, http, http_task)
    if left:
        # A batch still running past the grace (a model slower than STOP_GRACE_S): its requests
        # were answered with 503 already, and waiting on it would outlive the drain deadline.
        _say(f"stopped at the drain deadline ({left})")
        sys.stderr.flush()
        os._exit(0)
    _say("stopped")
    return 0


async def _drain(cfg: ServeConfig, endpoint: Endpoint, rt, grpc, http, http_task) -> str:
    """Stops the front ends and the runtime within ``drain_timeout_s`` + STOP_GRACE_S; returns
    what was still running at the end ("" when everything ended)."""
    endpoint.draining = True
    fronts = []
    if grpc is not None:  # in-flight calls answered, or cancelled after the grace
        fronts.append(asyncio.ensure_future(grpc.stop(cfg.drain_timeout_s + 1.0)))
    if http is not None:
        http.should_exit = True
        fronts.append(http_task)
    if fronts:
        await asyncio.wait(fronts, timeout=cfg.drain_timeout_s)
    # The deadline (or every front end done): what is queued fails with RuntimeClosed, so the
    # handlers still waiting answer 503 / UNAVAILABLE at once; running batches finish.
    closing = asyncio.ensure_future(asyncio.to_thread(rt.shutdown, False))
    _, pending = await asyncio.wait([closing, *fronts], timeout=STOP_GRACE_S)
    for task in fronts:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a front end that failed to stop is not news now
    if closing in pending:
        return "running batches abandoned"
    return "front ends abandoned" if pending else ""


def _run(coro) -> int:
    """Runs the server on uvloop when it is installed (about twice the HTTP requests per second
    of the default loop here), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: Optional[List[str]] = None) -> int:
    """`gpulanes serve ARGS` (gpulanes._serve_cli parses them)."""
    from .._serve_cli import main as cli

    return cli(argv)
