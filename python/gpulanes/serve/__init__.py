"""Serving a :class:`gpulanes.Runtime` to clients written by others, over the KServe v2 / Open
Inference Protocol (what tritonclient, perf_analyzer and KServe clients speak).

- :func:`app`: the HTTP front end as an ASGI app, to mount in your own FastAPI/Starlette service
  or to run with uvicorn (JSON and binary tensors).
- :func:`grpc_server`: the gRPC front end (``inference.GRPCInferenceService``): the core's
  (grpc++, ModelInfer without Python) where gpulanes was built with it, else grpcio's.
- :func:`load_config` / :func:`serve`: what ``gpulanes serve CONFIG.toml`` runs.

Needs the ``server`` extra (Starlette, uvicorn, grpcio, protobuf).
"""

from .config import ServeConfig, load_config, parse_config
from .grpc_server import grpc_server
from .http import app
from .protocol import Endpoint, ModelIO, grpc_code, http_status
from .server import serve

__all__ = ["app", "grpc_server", "load_config", "parse_config", "serve", "Endpoint", "ModelIO",
           "ServeConfig", "http_status", "grpc_code"]
