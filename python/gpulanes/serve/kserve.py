"""KServe v2 (Open Inference Protocol) over HTTP, JSON tensors: the endpoints that
tritonclient and KServe clients call, on top of one started Runtime.

One request of the protocol may carry a batch (the first dimension of every input): its rows
are submitted as separate gpulanes requests, which the runtime batches with everyone else's,
and the outputs are stacked again. Request ``parameters``: ``timeout`` (microseconds, as
tritonclient sends it) sets the deadline, else the model's SLO applies; ``priority`` 0 or 1
(Triton: default and highest) maps to gpulanes' latency-critical 0, 2 and above to best
effort 1. Errors carry the protocol's ``{"error": ...}`` body: bad input 400, unknown model
404, shed, full or closed 503 (with Retry-After), deadline 504, model failure 500.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import (DeadlineExceeded, GpuLanesError, InvalidInput, ModelError, QueueFull,
                      RuntimeClosed, UnknownModel)

# KServe v2 datatypes and the torch dtypes they carry (BYTES has no tensor equivalent).
DATATYPES: Dict[str, torch.dtype] = {
    "BOOL": torch.bool, "UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16,
    "INT32": torch.int32, "INT64": torch.int64, "FP16": torch.float16, "BF16": torch.bfloat16,
    "FP32": torch.float32, "FP64": torch.float64,
}
_NAMES = {v: k for k, v in DATATYPES.items()}


def _status(e: BaseException) -> int:
    if isinstance(e, UnknownModel):
        return 404
    if isinstance(e, (QueueFull, RuntimeClosed)):
        return 503
    if isinstance(e, DeadlineExceeded):
        return 504
    if isinstance(e, ModelError):
        return 500
    if isinstance(e, InvalidInput):
        return 400
    return 500


def _error(status: int, message: str):
    from starlette.responses import JSONResponse

    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _tensor(spec: Any, name: str, sample_shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """One protocol input -> a batch tensor [n, *sample_shape], checked against the model."""
    if not isinstance(spec, dict):
        raise InvalidInput(f"input {name!r} must be an object with name, shape, datatype, data")
    datatype = spec.get("datatype")
    if datatype != _NAMES.get(dtype):
        raise InvalidInput(f"input {name!r} has datatype {datatype!r}; the model takes "
                           f"{_NAMES.get(dtype, str(dtype))}")
    shape = spec.get("shape")
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput(f"input {name!r}: shape must be a non-empty list of sizes, got {shape!r}")
    if tuple(shape[1:]) != tuple(sample_shape) or shape[0] < 1:
        wanted = ", ".join(["batch >= 1", *map(str, sample_shape)])
        raise InvalidInput(f"input {name!r} has shape {shape}; the model takes [{wanted}]")
    data = spec.get("data")
    if not isinstance(data, list):
        raise InvalidInput(f"input {name!r}: data must be a list")
    try:
        t = torch.tensor(data, dtype=dtype).flatten()
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise InvalidInput(f"input {name!r}: data does not fit {datatype}: {e}") from None
    if t.numel() != math.prod(shape):
        raise InvalidInput(f"input {name!r}: {t.numel()} values for shape {shape} "
                           f"({math.prod(shape)} expected)")
    return t.reshape(shape)


def _outputs(value: Any, names: Sequence[str]) -> List[Dict[str, Any]]:
    tensors = list(value) if isinstance(value, (tuple, list)) else [value]
    out = []
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dtype not in _NAMES:
            raise ModelError(f"output {i} is not a tensor of a KServe datatype")
        t = t.detach().cpu().contiguous()
        out.append({"name": names[i] if i < len(names) else f"OUTPUT__{i}",
                    "datatype": _NAMES[t.dtype], "shape": list(t.shape),
                    "data": t.flatten().tolist()})
    return out


def kserve_app(runtime: Any, *, max_body_bytes: int = 64 << 20,
               inputs: Optional[Dict[str, List[str]]] = None,
               outputs: Optional[Dict[str, List[str]]] = None):
    """The ASGI app. ``inputs`` / ``outputs``: per model, the tensor names (default INPUT__0...
    and OUTPUT__0..., Triton's PyTorch convention). Bodies over ``max_body_bytes`` get 400."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    def in_names(model: str) -> List[str]:
        n = len(runtime.input_signature(model))
        return list((inputs or {}).get(model) or [f"INPUT__{i}" for i in range(n)])

    def out_names(model: str) -> List[str]:
        return list((outputs or {}).get(model) or ["OUTPUT__0"])

    async def server_metadata(request: Request):
        from .. import __version__
        return JSONResponse({"name": "gpulanes", "version": __version__, "extensions": []})

    async def live(request: Request):
        return Response(status_code=200)

    async def ready(request: Request):
        return Response(status_code=200 if runtime.running else 503)

    def known(request: Request) -> str:
        model = request.path_params["model"]
        if model not in runtime.models:
            raise UnknownModel(f"no model named {model!r} is served")
        return model

    async def model_metadata(request: Request):
        try:
            model = known(request)
        except UnknownModel as e:
            return _error(404, str(e))
        sig = runtime.input_signature(model)
        return JSONResponse({
            "name": model, "versions": ["1"], "platform": "pytorch_torchscript",
            "inputs": [{"name": n, "datatype": _NAMES.get(d, str(d)), "shape": [-1, *s]}
                       for n, (s, d) in zip(in_names(model), sig)],
            "outputs": [{"name": n, "datatype": "", "shape": []} for n in out_names(model)]})

    async def model_ready(request: Request):
        try:
            known(request)
        except UnknownModel as e:
            return _error(404, str(e))
        return Response(status_code=200 if runtime.running else 503)

    async def metrics(request: Request):
        return PlainTextResponse(runtime.metrics_text(),
                                 media_type="text/plain; version=0.0.4")

    async def infer(request: Request):
        try:
            model = known(request)
            size = int(request.headers.get("content-length") or 0)
            if size > max_body_bytes:
                raise InvalidInput(f"body of {size} bytes is over the limit of {max_body_bytes}")
            body = await request.body()
            if len(body) > max_body_bytes:
                raise InvalidInput(f"body of {len(body)} bytes is over the limit of {max_body_bytes}")
            try:
                doc = json.loads(body)
            except (ValueError, UnicodeDecodeError) as e:
                raise InvalidInput(f"body is not JSON: {e}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
                raise InvalidInput("body must be an object with an 'inputs' list")
            names = in_names(model)
            given = {}
            for spec in doc["inputs"]:
                name = spec.get("name") if isinstance(spec, dict) else None
                if name not in names:
                    raise InvalidInput(f"unknown input {name!r}; {model!r} takes {names}")
                given[name] = spec
            missing = [n for n in names if n not in given]
            if missing:
                raise InvalidInput(f"missing input(s) {missing}")
            sig = runtime.input_signature(model)
            batch = [_tensor(given[n], n, s, d) for n, (s, d) in zip(names, sig)]
            rows = {t.shape[0] for t in batch}
            if len(rows) != 1:
                raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
            params = doc.get("parameters") or {}
            if not isinstance(params, dict):
                raise InvalidInput("parameters must be an object")
            deadline_ms = None
            if "timeout" in params:
                timeout = params["timeout"]
                if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
                    raise InvalidInput(f"parameters.timeout must be > 0 microseconds, got {timeout!r}")
                deadline_ms = timeout / 1000.0
            priority = params.get("priority", 0)
            if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
                raise InvalidInput(f"parameters.priority must be an integer >= 0, got {priority!r}")
            jobs = [runtime.infer_async(model, *(t[i] for t in batch), deadline_ms=deadline_ms,
                                        priority=0 if priority <= 1 else 1)
                    for i in range(rows.pop())]
            results = await asyncio.gather(*jobs, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            first = results[0]
            stacked = (tuple(torch.stack([r[k] for r in results]) for k in range(len(first)))
                       if isinstance(first, (tuple, list)) else torch.stack(results))
            reply = {"model_name": model, "model_version": "1",
                     "outputs": _outputs(stacked, out_names(model))}
            if "id" in doc:
                reply["id"] = doc["id"]
            return JSONResponse(reply)
        except GpuLanesError as e:
            return _error(_status(e), str(e))

    routes = [Route("/v2", server_metadata), Route("/v2/health/live", live),
              Route("/v2/health/ready", ready), Route("/metrics", metrics)]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        routes += [Route(prefix, model_metadata), Route(prefix + "/ready", model_ready),
                   Route(prefix + "/infer", infer, methods=["POST"])]
    return Starlette(routes=routes)
