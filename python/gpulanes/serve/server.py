"""`gpulanes serve CONFIG.toml`: one process, one Runtime, HTTP (uvicorn) and gRPC front ends on
one asyncio loop.

Order of life: the front ends listen first (liveness answers, readiness says 503), the runtime
starts (profiling, possibly seconds), readiness turns true. SIGTERM or SIGINT: readiness turns
false, both front ends stop accepting and let in-flight requests finish (up to
``drain_timeout_s``), then the runtime drains and shuts down; the exit status is 0.
"""

from __future__ import annotations

import asyncio
import gc
import contextlib
import signal
import socket
import sys
from typing import Any, List, Optional

from ..errors import InvalidInput
from .config import ServeConfig
from .protocol import Endpoint


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

    config = uvicorn.Config(app, log_level=cfg.log_level, lifespan="off", access_log=False,
                            proxy_headers=False,  # no proxy in front that we know of
                            timeout_graceful_shutdown=int(max(1, cfg.drain_timeout_s)))
    return Server(config)


async def serve(cfg: ServeConfig, stop: Optional[asyncio.Event] = None,
                runtime: Any = None) -> int:
    """Serves until ``stop`` is set (or SIGTERM/SIGINT); returns the exit status."""
    from .grpc_server import grpc_server
    from .http import app

    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
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
            http = _uvicorn_server(app(rt, endpoint=endpoint, max_body_bytes=cfg.max_body_bytes,
                                       token=cfg.token), cfg)
            http_task = asyncio.create_task(http.serve(sockets=[sock]))
            listening.append(f"http={host}:{sock.getsockname()[1]}")
        if cfg.grpc_port >= 0:
            grpc, port = grpc_server(endpoint, f"{host}:{cfg.grpc_port}",
                                     max_message_bytes=cfg.max_body_bytes, token=cfg.token,
                                     frontend=cfg.grpc_frontend)
            await grpc.start()
            # Which front end answers gRPC: the core's (grpc++) or grpcio's (the fallback).
            kind = "core" if type(grpc).__name__ == "CoreGrpcServer" else "grpcio"
            listening.append(f"grpc={host}:{port} ({kind})")
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
        endpoint.draining = True
        waits = []
        if grpc is not None:
            waits.append(grpc.stop(cfg.drain_timeout_s))
        if http is not None:
            http.should_exit = True
            waits.append(http_task)
        await asyncio.gather(*waits, return_exceptions=True)
        await asyncio.to_thread(rt.shutdown, True)
    _say("stopped")
    return 0


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
