"""KServe v2 over HTTP: an ASGI (Starlette) app with JSON tensors and the binary tensor
extension, the one tritonclient uses by default.

Binary tensors: a request whose ``Inference-Header-Content-Length`` header is N carries N bytes
of JSON, then the raw bytes of every input that has ``parameters.binary_data_size``, in the
order the JSON lists them. An output goes back binary when the request asks for it
(``outputs[i].parameters.binary_data`` or ``parameters.binary_data_output``); the reply then has
the same layout. Every malformed request (not JSON, wrong datatype, shape or sizes, a body over
the limit) gets 400 with the protocol's ``{"error": ...}`` body.
"""

from __future__ import annotations

import hmac
import json
import re
import zlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import GpuLanesError, InvalidInput
from . import codec
from .protocol import (Endpoint, ModelIO, TooLarge, check_shape, client_message, http_status,
                       public_error)
from .shared_memory import uses_shared_memory

_HEADER_LENGTH = "inference-header-content-length"


def _error(status: int, message: str):
    from starlette.responses import Response

    status, headers, body = _error_body(status, message)
    return Response(body, status_code=status, headers=headers)


async def _read_body(headers: Mapping[str, str], receive, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` (a lying Content-Length included).
    A gzip or deflate body (``Content-Encoding``) is inflated, and refused as soon as what it
    inflates to passes ``limit``: a decompression bomb costs at most ``limit`` bytes. Every route
    that reads a body reads it through this."""
    declared = headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidInput(f"Content-Length {declared!r} is not a byte count")
        if int(declared) > limit:
            raise TooLarge(f"body of {declared} bytes is over the limit of {limit}")
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "", "gzip", "deflate"):
        raise InvalidInput(f"Content-Encoding {encoding!r} is not accepted (gzip, deflate or none)")
    chunks: List[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("the client went away before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"body of more than {limit} bytes is over the limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            return body if encoding in ("identity", "") else _inflate(body, encoding, limit)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` inflated, at most ``limit`` bytes of it (more: 413); "deflate" is the zlib
    format (RFC 9110), or raw deflate as some clients send it."""
    formats = (16 + zlib.MAX_WBITS,) if encoding == "gzip" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for wbits in formats:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise TooLarge(f"body inflates to more than {limit} bytes, over the limit")
        if not inflater.eof or inflater.unused_data:
            raise InvalidInput(f"the {encoding} body is truncated or has data after its end")
        return out
    raise InvalidInput(f"the body is not valid {encoding} data")


def _split_body(body: bytes, header: Optional[str]):
    """(JSON bytes, binary section as a writable memoryview)."""
    if header is None:
        return body, memoryview(bytearray())
    digits = header.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) > len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {header!r} does not fit a body of "
                           f"{len(body)} bytes")
    n = int(header)
    return body[:n], memoryview(bytearray(body[n:]))


def _decode_inputs(endpoint: Endpoint, model: str, specs: Any, binary: memoryview):
    if not isinstance(specs, list):
        raise InvalidInput("body must be an object with an 'inputs' list")
    given: Dict[str, Dict[str, Any]] = {}
    for spec in specs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise InvalidInput("every input must be an object with a name, shape, datatype and data")
        if name in given:
            raise InvalidInput(f"input {name!r} is given twice")
        given[name] = spec
    wanted = {n: (s, d) for n, s, d in endpoint.order_inputs(model, given)}
    tensors: Dict[str, Any] = {}
    offset = 0
    for name, spec in given.items():  # binary sections come in the order the JSON lists them
        sample, dtype = wanted[name]
        shape = check_shape(name, spec.get("datatype"), spec.get("shape"), sample, dtype,
                            endpoint.rows_limit(model))
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInput(f"input {name!r}: parameters must be an object")
        size = params.get("binary_data_size")
        if uses_shared_memory(params):
            if size is not None or "data" in spec:
                raise InvalidInput(f"input {name!r} names a shared-memory region and carries "
                                   "data: give its data one way")
            tensors[name] = codec.decode_bytes(
                name, shape, dtype,
                endpoint.shm.read(f"input {name!r}", params, codec.byte_size(shape, dtype)))
            continue
        if size is None:
            tensors[name] = codec.decode_list(name, shape, dtype, spec.get("data"))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"input {name!r}: binary_data_size must be a byte count, got {size!r}")
        if offset + size > len(binary):
            raise InvalidInput(f"input {name!r}: binary_data_size {size} runs past the "
                               f"{len(binary)} bytes of binary data")
        tensors[name] = codec.decode_bytes(name, shape, dtype, binary[offset:offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidInput(f"the body carries {len(binary)} bytes of binary data but the inputs "
                           f"claim {offset}")
    return [tensors[n] for n in endpoint.input_names(model)]


def _requested_outputs(doc: Dict[str, Any]):
    """(names asked for or None, names to send binary, binary for the rest, shared-memory
    parameters by output name)."""
    params = doc.get("parameters") or {}
    binary_all = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    specs = doc.get("outputs")
    if specs is None:
        return None, set(), binary_all, {}
    if not isinstance(specs, list) or not all(
            isinstance(s, dict) and isinstance(s.get("name"), str) for s in specs):
        raise InvalidInput("outputs must be a list of objects with a name")
    binary = set()
    shared = {}
    for s in specs:
        p = s.get("parameters") or {}
        if not isinstance(p, dict):
            raise InvalidInput(f"output {s['name']!r}: parameters must be an object")
        if p.get("classification"):
            raise InvalidInput("the classification extension is not supported")
        if uses_shared_memory(p):
            shared[s["name"]] = p
        elif p.get("binary_data", binary_all):
            binary.add(s["name"])
    return [s["name"] for s in specs], binary, False, shared


def app(runtime: Any, *, io: Optional[Dict[str, ModelIO]] = None,
        max_body_bytes: int = 64 << 20, max_rows: int = 1024, token: Optional[str] = None,
        endpoint: Optional[Endpoint] = None):
    """The ASGI app serving ``runtime`` (mount it in a FastAPI or Starlette service, or run it
    with uvicorn). ``io``: per model, tensor names (default INPUT__0.. / OUTPUT__0..). Bodies over
    ``max_body_bytes`` and requests of more than ``max_rows`` samples get 400. ``token``: when
    set, every endpoint but health needs ``Authorization: Bearer <token>``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    for key, value in (("max_body_bytes", max_body_bytes), ("max_rows", max_rows)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{key} must be an integer >= 1, got {value!r}")
    if token is not None and (not isinstance(token, str) or not token):
        raise InvalidInput("token must be a non-empty string or None")
    ep = endpoint or Endpoint(runtime, io, max_rows)
    # statistics only where the runtime keeps them (not the Ray ingress over replicas)
    extensions = ep.extensions()

    def guarded(handler, open_: bool = False):
        async def call(request: Request):
            if len(request.headers.getlist("authorization")) > 1:
                return _error(400, "more than one Authorization header")
            if token is not None and not open_:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    return _error(401, "missing or wrong bearer token")
            try:
                return await handler(request)
            except GpuLanesError as e:
                return _error(http_status(e), public_error(e))
        return call

    async def server_metadata(request: Request):
        from .. import __version__
        return JSONResponse({"name": "gpulanes", "version": __version__,
                             "extensions": extensions})

    # Health, as the Open Inference Protocol has it (KServe's own client reads the JSON body,
    # tritonclient only the status): 200 when live / ready, 400 when not ready.
    async def live(request: Request):
        return JSONResponse({"live": True})

    async def ready(request: Request):
        up = ep.ready()
        return JSONResponse({"ready": up}, status_code=200 if up else 400)

    def model_of(request: Request) -> str:
        return ep.model(request.path_params["model"], request.path_params.get("version"))

    async def model_metadata(request: Request):
        return JSONResponse(await ep.metadata(model_of(request)))

    async def model_config(request: Request):
        return JSONResponse(await ep.config(model_of(request)))

    async def statistics(request: Request):
        return JSONResponse(ep.statistics(request.path_params.get("model"),
                                          request.path_params.get("version")))

    async def json_object(request: Request) -> Any:
        """The body as JSON ({} when empty); bounded like every body."""
        body = await _read_body(request.headers, request.receive, max_body_bytes)
        try:
            return json.loads(body, parse_constant=_no_constant) if body.strip() else {}
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise InvalidInput(f"body is not JSON: {e}") from None

    async def repository_index(request: Request):
        doc = await json_object(request)
        if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
            raise InvalidInput('the body must be an object, with "ready" a boolean if given')
        return JSONResponse(ep.index(doc.get("ready", False)))

    async def repository_load(request: Request):
        body = await _read_body(request.headers, request.receive, max_body_bytes)
        if body.strip() not in (b"", b"{}"):
            # Triton takes a config or files here; gpulanes loads only what its own config
            # (or model_dir) declares, so nothing a client sends can name a file.
            raise InvalidInput("load takes no body: only models the server's config or "
                               "model_dir declares can be loaded")
        await ep.load(request.path_params["model"])
        return JSONResponse({})

    async def repository_unload(request: Request):
        doc = await json_object(request)
        if not isinstance(doc, dict) or set(doc) - {"parameters"}:
            raise InvalidInput('the body must be an object with at most "parameters"')
        await ep.unload(request.path_params["model"], doc.get("parameters") or {})
        return JSONResponse({})

    async def shm_status(request: Request):
        return JSONResponse(ep.shm.status(request.path_params.get("region")))

    async def shm_register(request: Request):
        doc = await json_object(request)
        if not isinstance(doc, dict) or set(doc) - {"key", "offset", "byte_size"}:
            raise InvalidInput('the body must be an object with "key", "byte_size" and '
                               'optionally "offset"')
        ep.shm.register(request.path_params["region"], doc.get("key"), doc.get("offset", 0),
                        doc.get("byte_size"))
        return JSONResponse({})

    async def shm_unregister(request: Request):
        await json_object(request)  # read (and bounded), nothing in it is used
        ep.shm.unregister(request.path_params.get("region"))
        return JSONResponse({})

    async def cuda_status(request: Request):
        return JSONResponse(ep.shm.status(request.path_params.get("region"), cuda=True))

    async def cuda_register(request: Request):
        from .cuda_shared_memory import decode_handle

        doc = await json_object(request)
        if (not isinstance(doc, dict) or set(doc) - {"raw_handle", "device_id", "byte_size"}
                or not isinstance(doc.get("raw_handle"), dict)):
            raise InvalidInput('the body must be an object with "raw_handle": {"b64": ...}, '
                               '"device_id" and "byte_size"')
        handle = decode_handle(doc["raw_handle"].get("b64"), base64_encoded=True)
        ep.shm.register_cuda(request.path_params["region"], handle, doc.get("device_id"),
                             doc.get("byte_size"))
        return JSONResponse({})

    async def cuda_unregister(request: Request):
        await json_object(request)  # read (and bounded), nothing in it is used
        ep.shm.unregister(request.path_params.get("region"), cuda=True)
        return JSONResponse({})

    async def model_ready(request: Request):
        name, up = model_of(request), ep.ready()
        return JSONResponse({"name": name, "ready": up}, status_code=200 if up else 400)

    async def infer_by_starlette(request: Request):  # POST .../infer is served before Starlette
        return _error(404, f"Not Found: {request.method} {request.url.path}")

    async def metrics(request: Request):
        return PlainTextResponse(runtime.metrics_text(), media_type="text/plain; version=0.0.4")

    async def infer(model_name: str, version: Optional[str], headers: Dict[str, str],
                    body: bytes) -> Tuple[int, Dict[str, str], bytes]:
        model = ep.model(model_name, version)
        head, binary = _split_body(body, headers.get(_HEADER_LENGTH))
        try:
            doc = json.loads(head, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise InvalidInput(f"body is not JSON (or nested too deeply): {e}") from None
        if not isinstance(doc, dict):
            raise InvalidInput("body must be an object with an 'inputs' list")
        batch = _decode_inputs(ep, model, doc.get("inputs"), binary)
        requested, binary_names, binary_all, shared = _requested_outputs(doc)
        deadline_ms, priority = ep.request_options(doc.get("parameters"))
        outputs = await ep.run(model, batch, deadline_ms, priority)
        reply: Dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": []}
        if "id" in doc:
            reply["id"] = doc["id"]
        raw: List[bytes] = []
        for name, t in ep.select_outputs(model, outputs, requested):
            entry: Dict[str, Any] = {"name": name, "datatype": codec.datatype_of(t),
                                     "shape": list(t.shape)}
            if name in shared:
                # No data and no parameters, as Triton answers: Triton's C++ HTTP client (and
                # perf_analyzer) reads every output's parameters as binary_data_size.
                ep.shm.write(f"output {name!r}", shared[name], codec.encode_bytes(t))
            elif binary_all or name in binary_names:
                data = codec.encode_bytes(t)
                entry["parameters"] = {"binary_data_size": len(data)}
                raw.append(data)
            else:
                entry["data"] = codec.encode_list(name, t)
            reply["outputs"].append(entry)
        head_out = json.dumps(reply, separators=(",", ":"), allow_nan=False).encode()
        if not raw:
            return 200, {"content-type": "application/json"}, head_out
        return 200, {"content-type": "application/octet-stream",
                     "inference-header-content-length": str(len(head_out))}, head_out + b"".join(raw)

    routes = [Route("/v2", guarded(server_metadata)), Route("/v2/health/live", guarded(live, True)),
              Route("/v2/health/ready", guarded(ready, True)), Route("/metrics", guarded(metrics)),
              Route("/v2/models/stats", guarded(statistics)),
              Route("/v2/repository/index", guarded(repository_index), methods=["POST"]),
              Route("/v2/repository/models/{model}/load", guarded(repository_load),
                    methods=["POST"]),
              Route("/v2/repository/models/{model}/unload", guarded(repository_unload),
                    methods=["POST"]),
              Route("/v2/systemsharedmemory/status", guarded(shm_status)),
              Route("/v2/systemsharedmemory/region/{region}/status", guarded(shm_status)),
              Route("/v2/systemsharedmemory/region/{region}/register", guarded(shm_register),
                    methods=["POST"]),
              Route("/v2/systemsharedmemory/region/{region}/unregister",
                    guarded(shm_unregister), methods=["POST"]),
              Route("/v2/systemsharedmemory/unregister", guarded(shm_unregister),
                    methods=["POST"]),
              Route("/v2/cudasharedmemory/status", guarded(cuda_status)),
              Route("/v2/cudasharedmemory/region/{region}/status", guarded(cuda_status)),
              Route("/v2/cudasharedmemory/region/{region}/register", guarded(cuda_register),
                    methods=["POST"]),
              Route("/v2/cudasharedmemory/region/{region}/unregister",
                    guarded(cuda_unregister), methods=["POST"]),
              Route("/v2/cudasharedmemory/unregister", guarded(cuda_unregister),
                    methods=["POST"])]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, guarded(model_metadata)),
                   Route(prefix + "/ready", guarded(model_ready)),
                   Route(prefix + "/config", guarded(model_config)),
                   Route(prefix + "/stats", guarded(statistics)),
                   # so that GET (or any method but POST) on the infer path is 405, not 404
                   Route(prefix + "/infer", infer_by_starlette, methods=["POST"])]
    async def http_error(request: Request, exc):  # unknown paths and methods, in the protocol's form
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    rest = Starlette(routes=routes, exception_handlers={404: http_error, 405: http_error})
    bearer = f"Bearer {token}".encode() if token is not None else None

    async def asgi(scope, receive, send) -> None:
        # POST .../infer is every request under load: served here, without Starlette's routing
        # and middleware layers (half of the front end's time per request); the rest by Starlette.
        match = None
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            root = scope.get("root_path", "")
            match = _INFER_PATH.fullmatch(path[len(root):] if root and path.startswith(root) else path)
        if match is None:
            return await rest(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if sum(k == b"authorization" for k, _ in scope["headers"]) > 1:
                # Refused, not read one way here and another by the other routes.
                status, out_headers, body = _error_body(400, "more than one Authorization header")
            elif bearer is not None and not hmac.compare_digest(
                    headers.get("authorization", "").encode("latin-1"), bearer):
                status, out_headers, body = _error_body(401, "missing or wrong bearer token")
            else:
                body = await _read_body(headers, receive, max_body_bytes)
                status, out_headers, body = await infer(match["model"], match["version"], headers,
                                                        body)
        except GpuLanesError as e:
            status, out_headers, body = _error_body(http_status(e), public_error(e))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in
                                {**out_headers, "content-length": str(len(body))}.items()]})
        await send({"type": "http.response.body", "body": body})

    return asgi


_INFER_PATH = re.compile(r"/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


def _no_constant(name: str):
    # Python's json takes NaN and Infinity; JSON (and KServe v2) has neither.
    raise ValueError(f"{name} is not JSON")


def _error_body(status: int, message: str) -> Tuple[int, Dict[str, str], bytes]:
    headers = {"content-type": "application/json"}
    if status == 503:
        headers["retry-after"] = "1"
    return status, headers, json.dumps({"error": client_message(message)}).encode()
