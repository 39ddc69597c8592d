"""The TOML file `gpulanes serve` (and the Ray and pytest integrations) read: the server, the
runtime options and every model. Unknown keys and wrong types are refused with an
:class:`InvalidInput` naming the key, so a typo never passes silently. ``examples/serve/serve.toml``
shows every section.

.. code-block:: toml

    [server]                    # all optional
    host = "127.0.0.1"          # loopback unless told otherwise
    http_port = 8000            # 0: any free port; -1: no HTTP
    grpc_port = 8001            # 0: any free port; -1: no gRPC
    max_body_bytes = 67108864   # larger bodies (inflated too) / messages: 413 / RESOURCE_EXHAUSTED
    max_rows = 1024             # most samples one request may carry
    token_env = "GPULANES_TOKEN"  # bearer token from this variable (or token = "...")
    drain_timeout_s = 30        # SIGTERM: how long in-flight requests may take to finish
    max_connections = 512       # HTTP: open connections (over it the longest idle one goes)
    max_header_bytes = 32768    # HTTP: request line and headers (more: 431)
    header_timeout_s = 10       # HTTP: a request's headers must arrive within this (else 408)
    body_timeout_s = 60         # HTTP: its body within this after the headers (else closed)
    keepalive_timeout_s = 5     # HTTP: an idle connection between requests is closed after this
    tls_cert_file = "cert.pem"  # TLS on both front ends (PEM certificate chain and its key);
    tls_key_file = "key.pem"    # without them both serve plain text (keep those to loopback)
    grpc_frontend = "auto"      # "core": C++ (grpc++), "python": grpcio; auto: core if built
    model_dir = "more"          # repository `load` may also bring in <model_dir>/NAME.toml
                                # (a [models.NAME] table; its file inside model_dir)

    [runtime]                   # gpulanes.Runtime's keyword arguments, plus `lanes`
    device = "cpu"
    cpu_lanes = 2

    [models.doubler]
    file = "doubler.pt"         # relative to this file
    slo_ms = 20
    max_batch_size = 16         # 0: the model has no batch dimension (a request is its whole
                                # input, run alone), as Triton's max_batch_size 0
    max_queue = 1000
    inputs = [{ name = "INPUT__0", datatype = "FP32", shape = [4] }]  # BYTES (a List[str]
                                # input): shape [1], one string per request; [-1] for a model
                                # without a batch dimension (the whole list)
    outputs = [{ name = "OUTPUT__0", datatype = "FP32", shape = [4] }]  # or just names
    load = true                 # false: declared only, loaded by a repository `load` request
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..errors import InvalidInput, UnknownModel
from .codec import DATATYPES
from .protocol import ModelIO

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

_RUNTIME_KEYS = {"device", "partitioning", "policy", "predictor", "policy_options",
                 "predictor_options", "cpu_lanes", "output_device", "warmup_rounds", "spin_us",
                 "profile_reps", "trace", "profile_cache", "replan"}


@dataclass
class HttpLimits:
    """What the HTTP front end allows each client (the ``[server]`` keys of the same names)."""

    max_connections: int = 512        # open connections; over it the longest-waiting one goes
    max_header_bytes: int = 32768     # request line and headers of one request
    header_timeout_s: float = 10.0    # from a request's first byte (or the connection's start)
    body_timeout_s: float = 60.0      # from the end of the headers to the end of the body
    keepalive_timeout_s: float = 5.0  # an idle connection between requests


@dataclass
class ModelConfig:
    name: str
    file: Path
    slo_ms: float
    max_batch_size: int
    max_queue: int
    inputs: List[Dict[str, Any]]   # name, datatype, shape (one sample)
    io: ModelIO
    load: bool = True              # registered at start; else on a repository `load` request

    def register(self, rt) -> None:
        """Registers it with `rt`; an error names the config entry it came from."""
        from ..errors import GpuLanesError

        try:
            rt.register(self.name, self.file, slo_ms=self.slo_ms,
                        example_inputs=self.example_inputs(), max_batch_size=self.max_batch_size,
                        max_queue=self.max_queue)
        except GpuLanesError as e:
            message = e.args[0] if e.args else str(e)
            raise type(e)(f"[models.{self.name}]: {message}") from None

    def example_inputs(self) -> List[Any]:
        """A batch of two zero samples of every input (zeros are valid indices, too; a BYTES
        input's are the string "0", which a model that parses numbers takes too); for a model
        without a batch dimension (max_batch_size 0), one whole input of zeros."""
        rows = () if self.max_batch_size == 0 else (2,)
        return [["0"] * 2 if t["datatype"] == "BYTES" else
                torch.zeros((*rows, *t["shape"]), dtype=DATATYPES[t["datatype"]])
                for t in self.inputs]


@dataclass
class ServeConfig:
    path: Optional[Path] = None
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    max_body_bytes: int = 64 << 20
    max_rows: int = 1024
    token: Optional[str] = None
    drain_timeout_s: float = 30.0
    log_level: str = "warning"
    grpc_frontend: str = "auto"  # "core" (grpc++), "python" (grpcio), "auto": core if built
    model_dir: Optional[Path] = None  # where repository `load` may find more models
    http: HttpLimits = field(default_factory=HttpLimits)  # connections, header and body bounds
    tls_cert_file: Optional[Path] = None  # PEM certificate chain: both front ends serve TLS
    tls_key_file: Optional[Path] = None   # its PEM private key

    def tls(self) -> Optional[Tuple[bytes, bytes]]:
        """(private key, certificate chain) in PEM, or None without TLS."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return _pem(self.tls_key_file, "tls_key_file"), _pem(self.tls_cert_file, "tls_cert_file")
    runtime: Dict[str, Any] = field(default_factory=dict)
    lanes: Optional[List[Dict[str, Any]]] = None
    models: List[ModelConfig] = field(default_factory=list)

    def io(self) -> Dict[str, ModelIO]:
        return {m.name: m.io for m in self.models}

    def new_runtime(self):
        """A Runtime with the configured options and no model (not started)."""
        from ..runtime import Runtime

        return Runtime(**self.runtime)

    def build_runtime(self):
        """A Runtime with every model to load at start registered (not started)."""
        rt = self.new_runtime()
        for m in self.models:
            if m.load:
                m.register(rt)
        return rt

    def loadable(self, name: str) -> ModelConfig:
        """The model a repository `load` request for ``name`` may bring in: one the config
        declares, else ``<model_dir>/<name>.toml`` (a [models.NAME] table without the header, its
        file inside model_dir). Nothing a client sends becomes a path: the name must be a plain
        name, and every path must resolve inside model_dir (symlinks included)."""
        for m in self.models:
            if m.name == name:
                return m
        if self.model_dir is None:
            raise UnknownModel(f"no model named {name!r} is declared in the config")
        if (not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or ".." in name
                or name == "stats"):
            raise InvalidInput(f"model name {name!r} is not a plain name ([A-Za-z0-9_.-], no '..', "
                               "not 'stats')")
        root = self.model_dir.resolve()
        path = _inside(root, root / f"{name}.toml", name)
        if not path.is_file():
            raise UnknownModel(f"no model named {name!r} in the config or in model_dir")
        try:
            with open(path, "rb") as f:
                table = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise InvalidInput(f"model_dir entry {name!r} is not readable TOML: {e}") from None
        model = _model(name, table, root)
        model.file = _inside(root, model.file, name)
        return model

    def start_runtime(self, rt) -> None:
        """Applies the configured lane layout, then starts ``rt`` (profiling as needed)."""
        if self.lanes is not None:
            rt.set_lanes(self.lanes)
        rt.start(progress=False)


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def _inside(root: Path, path: Path, name: str) -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies inside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise InvalidInput(f"model {name!r}: {path.name} lies outside model_dir")
    return resolved


def _table(doc: Any, where: str) -> Dict[str, Any]:
    if not isinstance(doc, dict):
        raise InvalidInput(f"config: {where} must be a table, got {type(doc).__name__}")
    return doc


def _check_keys(table: Dict[str, Any], allowed, where: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise InvalidInput(f"config: unknown key(s) {unknown} in {where}; allowed: {sorted(allowed)}")


def _int(table: Dict[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidInput(f"config: {where}.{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _positive(table: Dict[str, Any], key: str, where: str, default: Optional[float]) -> float:
    v = table.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise InvalidInput(f"config: {where}.{key} must be a positive number, got {v!r}")
    return float(v)


def _str(table: Dict[str, Any], key: str, where: str, default: Optional[str]) -> Optional[str]:
    v = table.get(key, default)
    if v is not None and not isinstance(v, str):
        raise InvalidInput(f"config: {where}.{key} must be a string, got {v!r}")
    return v


def _tensors(items: Any, where: str, names_only: bool) -> List[Dict[str, Any]]:
    if not isinstance(items, list) or not items:
        raise InvalidInput(f"config: {where} must be a non-empty list")
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if names_only and isinstance(item, str):
            item = {"name": item}
        item = dict(_table(item, at))
        _check_keys(item, {"name", "datatype", "shape"}, at)
        if not isinstance(item.get("name"), str) or not item["name"]:
            raise InvalidInput(f"config: {at}.name must be a non-empty string")
        if "datatype" in item or not names_only:
            if item.get("datatype") not in DATATYPES:
                raise InvalidInput(f"config: {at}.datatype must be one of {sorted(DATATYPES)}, "
                                   f"got {item.get('datatype')!r}")
        if "shape" in item or not names_only:
            shape = item.get("shape")
            if not isinstance(shape, list) or not all(
                    isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                if not (item.get("datatype") == "BYTES" and shape == [-1]):
                    raise InvalidInput(f"config: {at}.shape must be a list of sizes of one "
                                       f"sample (no batch dimension), got {shape!r}")
        out.append(item)
    names = [t["name"] for t in out]
    if len(set(names)) != len(names):
        raise InvalidInput(f"config: {where} repeats a name: {names}")
    return out


def _model(name: str, table: Any, base: Path) -> ModelConfig:
    where = f"models.{name}"
    if not _PLAIN_NAME.fullmatch(name) or ".." in name:
        # The HTTP API addresses a model by a path segment: no slashes, spaces or controls.
        raise InvalidInput(f"config: model name {name[:80]!r} is not a plain name "
                           "([A-Za-z0-9_.-], at most 128, starting with a letter or digit)")
    if name == "stats":  # GET /v2/models/stats is Triton's statistics of every model
        raise InvalidInput("config: model name 'stats' is taken by the statistics route "
                           "(/v2/models/stats): its metadata could not be addressed")
    table = _table(table, where)
    _check_keys(table, {"file", "slo_ms", "max_batch_size", "max_queue", "inputs", "outputs",
                        "load"}, where)
    load = table.get("load", True)
    if not isinstance(load, bool):
        raise InvalidInput(f"config: {where}.load must be true or false, got {load!r}")
    file = _str(table, "file", where, None)
    if not file:
        raise InvalidInput(f"config: {where}.file must name the model file")
    path = Path(file) if Path(file).is_absolute() else base / file
    inputs = _tensors(table.get("inputs"), f"{where}.inputs", names_only=False)
    outputs = (_tensors(table["outputs"], f"{where}.outputs", names_only=True)
               if "outputs" in table else [])
    max_batch_size = _int(table, "max_batch_size", where, 32, 0, 65536)  # 0: no batch dimension
    rows = [] if max_batch_size == 0 else [-1]
    strings = [1] if max_batch_size else [-1]  # one string per request, or the whole list
    for i, t in enumerate([*inputs, *outputs]):
        if t.get("datatype") == "BYTES" and t.get("shape", strings) != strings:
            at = f"{where}.inputs[{i}]" if i < len(inputs) else f"{where}.outputs[{i - len(inputs)}]"
            raise InvalidInput(f"config: {at}: a BYTES tensor of a model "
                               f"{'with' if max_batch_size else 'without'} a batch dimension "
                               f"has shape {strings} (TorchScript's List[str] holds "
                               f"{'one string per request' if max_batch_size else 'the whole list'})"
                               f", got {t.get('shape')}")
    meta = ([{"name": o["name"], "datatype": o["datatype"], "shape": [*rows, *o["shape"]]}
             for o in outputs] if outputs and all("datatype" in o and "shape" in o for o in outputs)
            else [])
    io = ModelIO(inputs=[t["name"] for t in inputs],
                 outputs=[o["name"] for o in outputs] or None, output_meta=meta)
    return ModelConfig(name=name, file=path, slo_ms=_positive(table, "slo_ms", where, None),
                       max_batch_size=max_batch_size,
                       max_queue=_int(table, "max_queue", where, 10_000, 1, 10**9),
                       inputs=inputs, io=io, load=load)


def parse_config(doc: Dict[str, Any], base: Union[str, Path] = ".") -> ServeConfig:
    """A checked :class:`ServeConfig` from a parsed TOML document; files relative to ``base``."""
    doc = _table(doc, "the file")
    _check_keys(doc, {"server", "runtime", "models"}, "the file")
    server = _table(doc.get("server", {}), "[server]")
    _check_keys(server, {"host", "http_port", "grpc_port", "max_body_bytes", "max_rows", "token",
                         "model_dir",
                         "token_env", "drain_timeout_s", "log_level", "grpc_frontend",
                         "max_connections", "max_header_bytes", "header_timeout_s",
                         "body_timeout_s", "keepalive_timeout_s", "tls_cert_file",
                         "tls_key_file"}, "[server]")
    cfg = ServeConfig()
    cfg.host = _str(server, "host", "server", cfg.host)
    cfg.http_port = _int(server, "http_port", "server", cfg.http_port, -1, 65535)
    cfg.grpc_port = _int(server, "grpc_port", "server", cfg.grpc_port, -1, 65535)
    if cfg.http_port == -1 and cfg.grpc_port == -1:
        raise InvalidInput("config: server.http_port and server.grpc_port are both -1 (off)")
    cfg.max_body_bytes = _int(server, "max_body_bytes", "server", cfg.max_body_bytes, 1, 2**31 - 1)
    cfg.max_rows = _int(server, "max_rows", "server", cfg.max_rows, 1, 65536)
    cfg.drain_timeout_s = _positive(server, "drain_timeout_s", "server", cfg.drain_timeout_s)
    h = cfg.http
    h.max_connections = _int(server, "max_connections", "server", h.max_connections, 1, 1 << 20)
    h.max_header_bytes = _int(server, "max_header_bytes", "server", h.max_header_bytes, 1024,
                              1 << 24)
    for key in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        setattr(h, key, _positive(server, key, "server", getattr(h, key)))
    cfg.log_level = _str(server, "log_level", "server", cfg.log_level)
    cfg.grpc_frontend = _str(server, "grpc_frontend", "server", cfg.grpc_frontend)
    if cfg.grpc_frontend not in ("auto", "core", "python"):
        raise InvalidInput(f"config: server.grpc_frontend {cfg.grpc_frontend!r} is not one of "
                           "'auto', 'core', 'python'")
    if cfg.log_level not in ("critical", "error", "warning", "info", "debug"):
        raise InvalidInput(f"config: server.log_level {cfg.log_level!r} is not a log level")
    token, token_env = _str(server, "token", "server", None), _str(server, "token_env", "server", None)
    if token is not None and token_env is not None:
        raise InvalidInput("config: give server.token or server.token_env, not both")
    if token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise InvalidInput(f"config: server.token_env names {token_env!r}, which is not set")
    if token is not None and not token:
        raise InvalidInput("config: server.token is empty")
    cfg.token = token
    runtime = dict(_table(doc.get("runtime", {}), "[runtime]"))
    _check_keys(runtime, _RUNTIME_KEYS | {"lanes"}, "[runtime]")
    cfg.lanes = runtime.pop("lanes", None)
    if cfg.lanes is not None and not isinstance(cfg.lanes, list):
        raise InvalidInput("config: runtime.lanes must be a list of lane tables")
    cfg.runtime = runtime
    models = _table(doc.get("models", {}), "[models]")
    if not models:
        raise InvalidInput("config: no [models.NAME] table: nothing to serve")
    base = Path(base)
    model_dir = _str(server, "model_dir", "server", None)
    if model_dir is not None:
        cfg.model_dir = Path(model_dir) if Path(model_dir).is_absolute() else base / model_dir
        if not cfg.model_dir.is_dir():
            raise InvalidInput(f"config: server.model_dir {str(cfg.model_dir)!r} is not a directory")
    cfg.models = [_model(name, table, base) for name, table in models.items()]
    _tls(cfg, server, base)
    return cfg


def _tls(cfg: ServeConfig, server: Dict[str, Any], base: Path) -> None:
    """Both TLS files or neither; they must load as a certificate chain and its key."""
    cert, key = (_str(server, k, "server", None) for k in ("tls_cert_file", "tls_key_file"))
    if (cert is None) != (key is None):
        raise InvalidInput("config: give both server.tls_cert_file and server.tls_key_file, or "
                           "neither")
    if cert is None:
        return
    cfg.tls_cert_file, cfg.tls_key_file = (Path(p) if Path(p).is_absolute() else base / p
                                           for p in (cert, key))
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cfg.tls_cert_file, cfg.tls_key_file)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise InvalidInput(f"config: server.tls_cert_file and tls_key_file do not load as a "
                           f"certificate and its private key: {getattr(e, 'strerror', None) or e}"
                           ) from None


def _pem(path: Path, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read((1 << 20) + 1)
    except OSError as e:
        raise InvalidInput(f"config: server.{key}: cannot read it: {e.strerror}") from None
    if len(data) > 1 << 20:
        raise InvalidInput(f"config: server.{key} is over 1 MiB: not a PEM file")
    return data


def load_config(path: Union[str, os.PathLike]) -> ServeConfig:
    """Reads and checks a TOML config file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise InvalidInput(f"config: cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"config: {path} is not valid TOML: {e}") from None
    cfg = parse_config(doc, path.resolve().parent)
    cfg.path = path
    return cfg
