"""The core's gRPC front end from Python: :class:`CoreGrpcServer` starts and stops the C++
server (``csrc/gpulanes/serve/grpc_frontend.h``), tells it which models it serves itself, and
answers the calls it forwards with grpc_server.py's handlers."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from typing import Optional, Tuple

from ..errors import GpuLanesError, InvalidInput
from .grpc_server import InferenceService, Refused
from .protocol import NAMES, Endpoint, grpc_code, protocol_sample, public_error


class _Deadline:
    """What the handlers ask of a call's context, for calls the core forwards."""

    def __init__(self, remaining_s: Optional[float]) -> None:
        self._until = None if remaining_s is None else time.monotonic() + remaining_s

    def time_remaining(self) -> Optional[float]:
        return None if self._until is None else max(0.0, self._until - time.monotonic())


class CoreGrpcServer:
    """The core's gRPC front end (grpc++; ``csrc/gpulanes/serve/grpc_frontend.h``) with the
    start/stop of a ``grpc.aio`` server. ModelInfer for the models it was told about (all of
    the runtime's, kept current as the endpoint loads and unloads) runs in C++ from the wire to
    the runtime and back; the bearer token is checked there too. Every other call comes here
    (:meth:`_forward`, on a grpc++ thread) and is answered by the same handlers as the grpcio
    server's, on this server's asyncio loop. Made on that loop."""

    def __init__(self, endpoint: Endpoint, address: str, max_message_bytes: int,
                 token: Optional[str], tls: Optional[Tuple[bytes, bytes]] = None) -> None:
        from .. import _C

        self.ep = endpoint
        self.service = InferenceService(endpoint)
        self._loop = asyncio.get_running_loop()
        self._tasks: set = set()  # forwarded calls being answered
        self._told: set = set()   # the models the core serves ModelInfer for
        core = getattr(endpoint.runtime, "_core", None)
        if core is None:
            raise InvalidInput("the core's gRPC front end serves a gpulanes.Runtime only")
        # The core holds the hook; through a weak reference, so that a server dropped without
        # stop() is not kept alive by a cycle the collector cannot see (the core stops then).
        me = weakref.ref(self)

        def forward(method, payload, remaining_s, reply):
            server = me()
            if server is None:
                reply(_code("UNAVAILABLE"), "the server is shutting down", b"")
            else:
                server._forward(method, payload, remaining_s, reply)
        self._frontend = _C.GrpcFrontend(core, address, max_message_bytes, token,
                                         endpoint.max_rows, forward,  # InvalidInput if taken
                                         tls=None if tls is None else (tls[0].decode(),
                                                                       tls[1].decode()))
        self.port = self._frontend.port
        endpoint.listeners.append(self.sync)
        self.sync()

    def sync(self) -> None:
        """Tells the core every model the runtime serves, with the endpoint's tensor names."""
        rt = self.ep.runtime
        # A model without a batch dimension is served through the forward hook (Python).
        served = {m for m in rt.models if self.ep.rows_limit(m) > 0}
        for model in served:
            sig = rt.input_signature(model)
            io = self.ep.io.get(model)
            self._frontend.set_model(model, self.ep.input_names(model),
                                     [NAMES[d] for _, d in sig],
                                     [list(protocol_sample(s, d)) for s, d in sig],
                                     list(io.outputs) if io and io.outputs else [],
                                     self.ep.rows_limit(model))
        for model in self._told - served:
            self._frontend.forget_model(model)
        self._told = served

    async def start(self) -> None:
        pass  # serving since it was made

    async def stop(self, grace: Optional[float]) -> None:
        with contextlib.suppress(ValueError):
            self.ep.listeners.remove(self.sync)
        await asyncio.to_thread(self._frontend.stop, grace or 0.0)

    def _forward(self, method: str, payload: bytes, remaining_s: Optional[float], reply) -> None:
        try:
            self._loop.call_soon_threadsafe(self._spawn, method, payload, remaining_s, reply)
        except RuntimeError:  # the loop is closed: nobody will answer here
            reply(_code("UNAVAILABLE"), "the server is shutting down", b"")

    def _spawn(self, method: str, payload: bytes, remaining_s: Optional[float], reply) -> None:
        task = self._loop.create_task(self._answer(method, payload, remaining_s, reply))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, method, payload, remaining_s, reply) -> None:
        try:
            response = await self.service.answer(method, payload, _Deadline(remaining_s))
            reply(0, "", response.SerializeToString())
        except Refused as e:
            reply(e.code.value[0], e.details, b"")
        except GpuLanesError as e:
            reply(grpc_code(e).value[0], public_error(e), b"")
        except Exception as e:  # noqa: BLE001 - the client gets INTERNAL, the server goes on
            reply(_code("INTERNAL"), public_error(e), b"")
        # A model the runtime serves but the core was not told about: it is from now on (a
        # flood of requests for unknown models costs one set comparison each, no more).
        if method == "ModelInfer" and set(self.ep.runtime.models) != self._told:
            with contextlib.suppress(GpuLanesError):
                self.sync()


def _code(name: str) -> int:
    import grpc

    return getattr(grpc.StatusCode, name).value[0]
