"""KServe v2 over gRPC (``inference.GRPCInferenceService``): two servers, one set of handlers.

- :class:`~gpulanes.serve.grpc_core.CoreGrpcServer` (the default where gpulanes was built with
  grpc++; grpc_core.py): the core's
  front end (``csrc/gpulanes/serve/grpc_frontend.h``) answers ModelInfer in C++ from the wire to
  the runtime and back, and forwards every other call here.
- grpcio's asyncio server (``frontend="python"``, and where grpc++ was missing at build time).

The messages come from ``kserve_v2.proto``, compiled at build time into a descriptor set that
is loaded here into a private descriptor pool: tritonclient registers the same message names
in protobuf's default pool, and both must live in one process (a test, a notebook). Requests
are parsed inside the handlers, so a malformed message gets INVALID_ARGUMENT, not INTERNAL.
Inputs may come as typed ``contents`` or as ``raw_input_contents``; outputs always go back as
``raw_output_contents`` (what Triton does). A gRPC deadline, when the client set one, caps the
request's gpulanes deadline.

Why two (benchmarks/serve.py): with grpcio, its own per-call machinery in Python took most of a
tiny request's time (0.25 ms at p50 for a server that answers with a fixed reply on the 2-core
VM), so the hot path moved into the core. Of grpcio's servers the asyncio one is kept: a
thread-pool ``grpc.server`` blocking in ``Runtime.infer`` had lower latency alone but fewer
requests per second under load.
"""

from __future__ import annotations

import asyncio
import functools
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from .. import __version__
from ..errors import GpuLanesError, InvalidInput, UnknownModel
from . import codec
from .protocol import Endpoint, check_shape, client_message, grpc_code, public_error
from .shared_memory import uses_shared_memory

SERVICE = "inference.GRPCInferenceService"
STREAM_PENDING = 256  # ModelStreamInfer: requests read ahead of their answers, per stream

# Which InferTensorContents field carries each datatype.
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
             "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
             "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
             "FP32": "fp32_contents", "FP64": "fp64_contents"}


def descriptor_set_path() -> Path:
    from .. import _C

    return Path(_C.__file__).with_name("kserve_v2.pb")


@functools.lru_cache(maxsize=1)
def messages() -> Dict[str, Any]:
    """Message classes of the service, by short name, from a private descriptor pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    path = descriptor_set_path()
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: gpulanes was built without grpcio-tools or "
                           "protoc, so it cannot serve gRPC (pip install grpcio-tools, rebuild)")
    files = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    try:
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:  # protobuf < 4.22
        from google.protobuf.message_factory import MessageFactory
        GetMessageClass = MessageFactory(pool).GetPrototype  # noqa: N806
    service = pool.FindServiceByName(SERVICE)
    out: Dict[str, Any] = {}
    for method in service.methods:
        out[method.input_type.name] = GetMessageClass(method.input_type)
        out[method.output_type.name] = GetMessageClass(method.output_type)
    return out


def _param(p) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return None if kind is None else getattr(p, kind)


class Refused(Exception):
    """A call refused with a gRPC status code that no gpulanes error stands for."""

    def __init__(self, code, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class InferenceService:
    """The RPC handlers, on one :class:`Endpoint`. Called on the server's asyncio loop."""

    def __init__(self, endpoint: Endpoint, token: Optional[str] = None) -> None:
        self.ep = endpoint
        self.token = token
        self.m = messages()

    # -- plumbing ----------------------------------------------------------------------------

    # name -> (handler, request message, open: answered without the bearer token)
    _RPCS = {"ServerLive": ("server_live", "ServerLiveRequest", True),
             "ServerReady": ("server_ready", "ServerReadyRequest", True),
             "ModelReady": ("model_ready", "ModelReadyRequest", False),
             "ServerMetadata": ("server_metadata", "ServerMetadataRequest", False),
             "ModelMetadata": ("model_metadata", "ModelMetadataRequest", False),
             "ModelInfer": ("model_infer", "ModelInferRequest", False),
             "ModelConfig": ("model_config", "ModelConfigRequest", False),
             "ModelStatistics": ("model_statistics", "ModelStatisticsRequest", False),
             "RepositoryIndex": ("repository_index", "RepositoryIndexRequest", False),
             "RepositoryModelLoad": ("repository_load", "RepositoryModelLoadRequest", False),
             "RepositoryModelUnload": ("repository_unload", "RepositoryModelUnloadRequest", False),
             "SystemSharedMemoryStatus": ("shm_status", "SystemSharedMemoryStatusRequest", False),
             "SystemSharedMemoryRegister": ("shm_register", "SystemSharedMemoryRegisterRequest",
                                            False),
             "SystemSharedMemoryUnregister": ("shm_unregister",
                                              "SystemSharedMemoryUnregisterRequest", False),
             "CudaSharedMemoryStatus": ("cuda_status", "CudaSharedMemoryStatusRequest", False),
             "CudaSharedMemoryRegister": ("cuda_register", "CudaSharedMemoryRegisterRequest",
                                          False),
             "CudaSharedMemoryUnregister": ("cuda_unregister",
                                            "CudaSharedMemoryUnregisterRequest", False)}

    async def answer(self, method: str, raw: bytes, context) -> Any:
        """The reply message to one call (the token already checked), or raises
        :class:`Refused` / a gpulanes error."""
        from google.protobuf.message import DecodeError

        import grpc

        if method not in self._RPCS:
            raise Refused(grpc.StatusCode.UNIMPLEMENTED, f"no method {method!r}")
        fn, request, _ = self._RPCS[method]
        try:
            parsed = self.m[request].FromString(raw)
        except DecodeError as e:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {e}") from None
        return await getattr(self, fn)(parsed, context)

    def handler(self):
        """The generic handler to add to a ``grpc.aio.server``."""
        import grpc

        handlers = {name: grpc.unary_unary_rpc_method_handler(
                        self._wrap(name, open_),
                        response_serializer=lambda msg: msg.SerializeToString())
                    for name, (_, _, open_) in self._RPCS.items()}
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(
            self._stream, response_serializer=lambda msg: msg.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def _authorize(self, context) -> None:
        import hmac

        import grpc

        if self.token is None:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

    def _wrap(self, method: str, open_: bool):
        import grpc

        async def call(raw: bytes, context):
            if not open_:
                await self._authorize(context)
            try:
                return await self.answer(method, raw, context)
            except Refused as e:
                await context.abort(e.code, client_message(e.details))
            except GpuLanesError as e:
                await context.abort(grpc_code(e), public_error(e))
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as e:  # noqa: BLE001 - INTERNAL with an error id, never a traceback
                await context.abort(grpc.StatusCode.INTERNAL, public_error(e))
        return call

    async def _stream(self, requests, context):
        """ModelStreamInfer: every request on the stream answered as ModelInfer would be, in the
        order the answers come, an error as the answer's error_message. At most STREAM_PENDING
        requests are read ahead of their answers (as the core's front end), so a client that
        sends without reading holds bounded memory."""
        await self._authorize(context)
        answers: asyncio.Queue = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_PENDING)
        tasks = set()
        state = {"pending": 0, "read_all": False}

        async def one(raw: bytes) -> None:
            reply = self.m["ModelStreamInferResponse"]()
            try:
                reply.infer_response.CopyFrom(await self.answer("ModelInfer", raw, context))
            except Refused as e:
                reply.error_message = client_message(e.details)
            except GpuLanesError as e:
                reply.error_message = client_message(public_error(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - in-band, with an error id
                reply.error_message = public_error(e)
            answers.put_nowait(reply)

        async def read() -> None:
            try:
                async for raw in requests:
                    await room.acquire()
                    state["pending"] += 1
                    task = asyncio.ensure_future(one(raw))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                state["read_all"] = True
                answers.put_nowait(None)  # wakes the writer to check whether it is done

        reader = asyncio.ensure_future(read())
        try:
            while not (state["read_all"] and state["pending"] == 0):
                reply = await answers.get()
                if reply is None:
                    continue
                state["pending"] -= 1
                room.release()
                yield reply
            await reader  # raises what broke the read side (the client's stream)
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    # -- health and metadata -----------------------------------------------------------------

    async def server_live(self, request, context):
        return self.m["ServerLiveResponse"](live=True)

    async def server_ready(self, request, context):
        return self.m["ServerReadyResponse"](ready=self.ep.ready())

    async def model_ready(self, request, context):
        try:
            self.ep.model(request.name, request.version)
        except UnknownModel:  # as Triton: not an error, just not ready
            return self.m["ModelReadyResponse"](ready=False)
        return self.m["ModelReadyResponse"](ready=self.ep.ready())

    async def server_metadata(self, request, context):
        return self.m["ServerMetadataResponse"](name="gpulanes", version=__version__,
                                                extensions=self.ep.extensions())

    async def model_metadata(self, request, context):
        meta = await self.ep.metadata(self.ep.model(request.name, request.version))
        reply = self.m["ModelMetadataResponse"](name=meta["name"], versions=meta["versions"],
                                                platform=meta["platform"])
        for key in ("inputs", "outputs"):
            for t in meta[key]:
                getattr(reply, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        return reply

    async def model_config(self, request, context):
        config = await self.ep.config(self.ep.model(request.name, request.version))
        reply = self.m["ModelConfigResponse"]()
        c = reply.config
        c.name, c.platform, c.backend = config["name"], config["platform"], config["backend"]
        c.max_batch_size = config["max_batch_size"]
        for t in config["input"]:
            c.input.add(name=t["name"], data_type=t["data_type"], dims=t["dims"])
        for t in config["output"]:
            c.output.add(name=t["name"], data_type=t["data_type"], dims=t["dims"])
        return reply

    async def model_statistics(self, request, context):
        from google.protobuf import json_format

        doc = self.ep.statistics(request.name, request.version)
        return json_format.ParseDict(doc, self.m["ModelStatisticsResponse"]())

    async def repository_index(self, request, context):
        reply = self.m["RepositoryIndexResponse"]()
        for entry in self.ep.index(request.ready):
            reply.models.add(**entry)
        return reply

    async def repository_load(self, request, context):
        if request.parameters:
            raise InvalidInput("load takes no parameters: only models the server's config or "
                               "model_dir declares can be loaded")
        await self.ep.load(request.model_name)
        return self.m["RepositoryModelLoadResponse"]()

    async def repository_unload(self, request, context):
        params = {k: _param(v) for k, v in request.parameters.items()}
        await self.ep.unload(request.model_name, params)
        return self.m["RepositoryModelUnloadResponse"]()

    # -- system shared memory ----------------------------------------------------------------

    async def shm_status(self, request, context):
        reply = self.m["SystemSharedMemoryStatusResponse"]()
        for r in self.ep.shm.status(request.name):
            reply.regions[r["name"]].CopyFrom(
                reply.RegionStatus(name=r["name"], key=r["key"], offset=r["offset"],
                                   byte_size=r["byte_size"]))
        return reply

    async def shm_register(self, request, context):
        self.ep.shm.register(request.name, request.key, request.offset, request.byte_size)
        return self.m["SystemSharedMemoryRegisterResponse"]()

    async def shm_unregister(self, request, context):
        self.ep.shm.unregister(request.name)
        return self.m["SystemSharedMemoryUnregisterResponse"]()

    async def cuda_status(self, request, context):
        reply = self.m["CudaSharedMemoryStatusResponse"]()
        for r in self.ep.shm.status(request.name, cuda=True):
            reply.regions[r["name"]].CopyFrom(reply.RegionStatus(**r))
        return reply

    async def cuda_register(self, request, context):
        from .cuda_shared_memory import decode_handle

        self.ep.shm.register_cuda(request.name, decode_handle(request.raw_handle, False),
                                  request.device_id, request.byte_size)
        return self.m["CudaSharedMemoryRegisterResponse"]()

    async def cuda_unregister(self, request, context):
        self.ep.shm.unregister(request.name, cuda=True)
        return self.m["CudaSharedMemoryUnregisterResponse"]()

    # -- inference ---------------------------------------------------------------------------

    async def model_infer(self, request, context):
        model = self.ep.model(request.model_name, request.model_version)
        given = {}
        for t in request.inputs:
            if t.name in given:
                raise InvalidInput(f"input {t.name!r} is given twice")
            given[t.name] = t
        wanted = {n: (s, d) for n, s, d in self.ep.order_inputs(model, given)}
        # raw_input_contents: one per input not in shared memory, in order (as tritonclient)
        shared = {t.name: {k: _param(v) for k, v in t.parameters.items()}
                  for t in request.inputs if uses_shared_memory(t.parameters)}
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs) - len(shared):
            raise InvalidInput(f"raw_input_contents has {len(raw)} entries for "
                               f"{len(request.inputs) - len(shared)} inputs not in shared memory")
        # Refused as HTTP refuses them: data given twice, and an extension not served.
        for t in request.inputs:
            if (raw or t.name in shared) and t.HasField("contents") and t.contents.ByteSize():
                raise InvalidInput(f"input {t.name!r} has typed contents and "
                                   f"{'a shared-memory region' if t.name in shared else 'raw_input_contents'}"
                                   ": give its data one way")
        for o in request.outputs:
            if "classification" in o.parameters:
                raise InvalidInput(f"the classification extension is not supported (output "
                                   f"{o.name!r})")
        tensors = {}
        contents = iter(raw)
        for t in request.inputs:
            sample, dtype = wanted[t.name]
            shape = check_shape(t.name, t.datatype, list(t.shape), sample, dtype,
                                self.ep.rows_limit(model))
            if t.name in shared:
                tensors[t.name] = codec.decode_bytes(
                    t.name, shape, dtype, self.ep.shm.read(f"input {t.name!r}", shared[t.name],
                                                           codec.byte_size(shape, dtype)))
            elif raw:
                tensors[t.name] = codec.decode_bytes(t.name, shape, dtype,
                                                     memoryview(bytearray(next(contents))))
            else:
                tensors[t.name] = _from_contents(t, shape, dtype)
        params = {k: _param(v) for k, v in request.parameters.items()}
        deadline_ms, priority = self.ep.request_options(params)
        remaining = context.time_remaining()  # no client deadline: None (or a huge number)
        if (remaining is not None and remaining < 86400
                and (deadline_ms is None or remaining * 1e3 < deadline_ms)):
            deadline_ms = max(remaining * 1e3, 1e-3)
        outputs = await self.ep.run(model, [tensors[n] for n in self.ep.input_names(model)],
                                    deadline_ms, priority)
        reply = self.m["ModelInferResponse"](model_name=model, model_version="1", id=request.id)
        requested = [o.name for o in request.outputs] or None
        shared_out = {o.name: {k: _param(v) for k, v in o.parameters.items()}
                      for o in request.outputs if uses_shared_memory(o.parameters)}
        for name, t in self.ep.select_outputs(model, outputs, requested):
            out = reply.outputs.add(name=name, datatype=codec.datatype_of(t), shape=list(t.shape))
            if name in shared_out:
                # written into the region; an empty entry keeps raw_output_contents aligned
                # with outputs (tritonclient indexes them together)
                written = self.ep.shm.write(f"output {name!r}", shared_out[name],
                                            codec.encode_bytes(t))
                out.parameters["shared_memory_region"].string_param = \
                    shared_out[name]["shared_memory_region"]
                out.parameters["shared_memory_byte_size"].int64_param = written
                reply.raw_output_contents.append(b"")
            else:
                reply.raw_output_contents.append(codec.encode_bytes(t))
        return reply


def _from_contents(t, shape, dtype: Any) -> Any:
    if dtype is str:  # BYTES: contents.bytes_contents, one element each
        codec.check_count(t.name, shape)
        values = list(t.contents.bytes_contents)
        if len(values) != math.prod(shape):
            raise InvalidInput(f"input {t.name!r}: {len(values)} values in contents.bytes_contents "
                               f"for shape {list(shape)} ({math.prod(shape)} expected)")
        return codec.strings_array(values, tuple(shape))
    field = _CONTENTS.get(t.datatype)
    if field is None:
        raise InvalidInput(f"input {t.name!r}: {t.datatype} must come in raw_input_contents")
    values: List[Any] = list(getattr(t.contents, field))
    if len(values) != math.prod(shape):
        raise InvalidInput(f"input {t.name!r}: {len(values)} values in contents.{field} for "
                           f"shape {list(shape)} ({math.prod(shape)} expected)")
    try:
        return torch.tensor(values, dtype=dtype).reshape(shape)
    except (RuntimeError, OverflowError, ValueError) as e:
        raise InvalidInput(f"input {t.name!r}: values do not fit {t.datatype}: {e}") from None


_MAX_PENDING = 1 << 16  # calls the server may hold before the application takes them


def core_frontend_available() -> bool:
    """Whether this build of gpulanes has the core's gRPC front end (grpc++ was found)."""
    from .. import _C

    return bool(getattr(_C, "HAS_GRPC_FRONTEND", False))


def grpc_server(endpoint: Endpoint, address: str, *, max_message_bytes: int = 64 << 20,
                token: Optional[str] = None, frontend: str = "auto",
                tls: Optional[Tuple[bytes, bytes]] = None):
    """A gRPC server serving ``endpoint`` at ``address``: ``frontend="core"`` the core's
    (grpc++; serving once made), ``"python"`` grpcio's asyncio server (serving after ``await
    server.start()``), ``"auto"`` the core's where this build has it. ``tls``: (private key,
    certificate chain) in PEM, to serve TLS only. Call it on the asyncio loop that is to answer
    calls. Returns (server, bound port); both kinds have ``start()`` and
    ``stop(grace)`` coroutines."""
    if frontend not in ("auto", "core", "python"):
        raise InvalidInput(f"frontend must be 'auto', 'core' or 'python', got {frontend!r}")
    if frontend == "core" and not core_frontend_available():
        raise InvalidInput("frontend='core': this build of gpulanes has no C++ gRPC front end "
                           "(grpc++ was not found when it was built)")
    if frontend != "python" and core_frontend_available():
        from .grpc_core import CoreGrpcServer
        server = CoreGrpcServer(endpoint, address, max_message_bytes, token, tls)
        return server, server.port
    import grpc

    # grpc.so_reuseport 0: a second server on the same port fails to bind instead of sharing
    # the port's clients with this one (gRPC's default sets SO_REUSEPORT).
    # gRPC's server cancels, silently, every call beyond 1,000 that waits for the application
    # to take it (max_pending_requests): 5-10% of 2,000 concurrent calls were CANCELLED and never
    # reached the runtime. Calls are taken as fast as they come here, and the runtime refuses
    # what it cannot queue (RESOURCE_EXHAUSTED), so that limit only loses calls: raised. (A cap
    # on a connection's streams is no help: clients open streams before they learn it, and
    # grpc's refusal, REFUSED_STREAM, reaches them as UNAVAILABLE.)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", 0),
                                      ("grpc.server.max_pending_requests", _MAX_PENDING),
                                      ("grpc.server.max_pending_requests_hard_limit",
                                       _MAX_PENDING)])
    server.add_generic_rpc_handlers((InferenceService(endpoint, token).handler(),))
    try:
        port = (server.add_insecure_port(address) if tls is None else
                server.add_secure_port(address, grpc.ssl_server_credentials([tls])))
    except RuntimeError:  # newer grpcio raises where older ones return 0
        port = 0
    if port == 0:
        raise InvalidInput(f"gRPC could not listen on {address} (is the port in use?)")
    return server, port
