"""The KServe v2 / Open Inference Protocol as both front ends (HTTP and gRPC) see one Runtime.

:class:`Endpoint` owns what the protocol adds to a Runtime: tensor names, decoding a request's
tensors into checked batches, the deadline and priority a request carries, serving a batch as
one gpulanes request per row (the runtime batches rows with everyone else's), and the outputs
stacked back. The front ends only move bytes and map errors (:func:`http_status`,
:func:`grpc_code`). It is called from the server's asyncio loop only.

Request ``parameters``: ``timeout`` (microseconds, as tritonclient sends it) sets the deadline,
else the model's SLO applies; ``priority`` 0 or 1 (Triton: the default and the highest level)
maps to gpulanes' latency-critical 0, 2 and above to best effort 1.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import (DeadlineExceeded, GpuLanesError, InvalidInput, ModelError, Overloaded,
                      QueueFull, RuntimeClosed, UnknownModel)
from . import codec
from .codec import NAMES
from .shared_memory import SystemSharedMemory

_log = logging.getLogger("gpulanes.serve")
# Triton's sequence batcher keeps state per sequence; gpulanes serves stateless models, so a
# request that belongs to a sequence is refused rather than served as if it did not.
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
SEQUENCES_NOT_SERVED = ("sequences (stateful models, Triton's sequence batcher) are not served "
                        "by gpulanes: send requests without them")
_MAX_TIMEOUT_US = 30 * 86400 * 10**6  # the runtime's own bound on a deadline


MAX_ERROR_CHARS = 512  # an error a client gets echoes at most this much (its own input included)


def client_message(message: str) -> str:
    """What a client is told: at most MAX_ERROR_CHARS, so that a 10 KB model name or thousands of
    unknown input names are not echoed back whole."""
    message = str(message)
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS - 4] + " ..."


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def public_error(e: BaseException, what: str = "") -> str:
    """What a client is told of ``e``. Errors of the request (bad input, unknown model, full
    queue, deadline) say what was wrong. A model's failure, a load that failed or anything
    unexpected would carry internals (a TorchScript traceback with source lines, file paths,
    C++ frames): the client gets the error's last line with paths masked and an error id, and
    the server log gets the whole text under the same id. ``what``: the action, for the log."""
    if isinstance(e, GpuLanesError) and not isinstance(e, ModelError) and not what:
        return client_message(str(e))
    text = str(e) if isinstance(e, GpuLanesError) else f"{type(e).__name__}: {e}"
    error_id = secrets.token_hex(4)
    _log.error("error %s%s: %s", error_id, f" ({what})" if what else "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = _PATH.sub("<path>", lines[-1] if lines else type(e).__name__)[:300]
    return client_message(f"{what + ': ' if what else ''}{last} (error id {error_id}; details in "
                          "the server log)")


class TooLarge(InvalidInput):
    """A body over its size limit, as sent or once inflated (HTTP 413)."""


def http_status(e: BaseException) -> int:
    """HTTP status of a gpulanes error: 400 bad input (413 over a size limit), 404 unknown
    model, 503 shed, full or closed, 504 deadline, 500 model failure (and anything
    unexpected)."""
    for kind, status in ((TooLarge, 413), (UnknownModel, 404), (QueueFull, 503),
                         (RuntimeClosed, 503), (DeadlineExceeded, 504), (ModelError, 500),
                         (InvalidInput, 400)):
        if isinstance(e, kind):
            return status
    return 500


def grpc_code(e: BaseException):
    """gRPC status code of a gpulanes error (grpc imported only by the gRPC front end)."""
    import grpc

    for kind, code in ((UnknownModel, grpc.StatusCode.NOT_FOUND),
                       (Overloaded, grpc.StatusCode.UNAVAILABLE),
                       (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
                       (RuntimeClosed, grpc.StatusCode.UNAVAILABLE),
                       (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
                       (ModelError, grpc.StatusCode.INTERNAL),
                       (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT)):
        if isinstance(e, kind):
            return code
    return grpc.StatusCode.INTERNAL


@dataclass
class ModelIO:
    """Tensor names of a served model, and what its outputs are when the config says so."""

    inputs: Optional[List[str]] = None     # default INPUT__0.. (Triton's PyTorch convention)
    outputs: Optional[List[str]] = None    # default OUTPUT__0..
    output_meta: List[Dict[str, Any]] = field(default_factory=list)  # datatype/shape per output


def protocol_sample(shape: Tuple[int, ...], dtype: Any) -> Tuple[int, ...]:
    """One sample's shape as the protocol states it: a string input that takes one string per
    request is ``[1]`` (Triton's dims for a libtorch model's string input); ``-1`` is any size."""
    return (1,) if dtype is str and shape == () else tuple(shape)


def check_shape(name: str, datatype: Any, shape: Any, sample: Tuple[int, ...],
                dtype: Any, max_rows: int) -> Tuple[int, ...]:
    """Checks a protocol tensor's datatype and shape ([rows, *sample]; ``sample`` itself when
    ``max_rows`` is 0: a model without a batch dimension) against the model. ``sample`` is the
    protocol's (:func:`protocol_sample`); a -1 in it takes any size."""
    if datatype != NAMES.get(dtype):
        raise InvalidInput(f"input {name!r} has datatype {datatype!r}; the model takes "
                           f"{NAMES.get(dtype, str(dtype))}")
    if max_rows == 0:
        if (not isinstance(shape, (list, tuple)) or len(shape) != len(sample)
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 0
                       or s not in (-1, d) for d, s in zip(shape, sample))):
            raise InvalidInput(f"input {name!r} has shape {shape!r}; the model (no batch "
                               f"dimension) takes {list(sample)}")
        return tuple(shape)
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidInput(f"input {name!r}: shape must be a non-empty list of sizes, got {shape!r}")
    if tuple(shape[1:]) != tuple(sample) or shape[0] < 1:
        wanted = ", ".join(["batch >= 1", *map(str, sample)])
        raise InvalidInput(f"input {name!r} has shape {list(shape)}; the model takes [{wanted}]")
    if shape[0] > max_rows:
        raise InvalidInput(f"input {name!r} has {shape[0]} rows; a request may carry at most "
                           f"{max_rows}")
    return tuple(shape)


class Endpoint:
    """One Runtime behind the protocol. ``io``: per model, its :class:`ModelIO`;
    ``max_rows``: the most rows (samples) one request may carry."""

    def __init__(self, runtime: Any, io: Optional[Dict[str, ModelIO]] = None,
                 max_rows: int = 1024, loadable: Optional[Any] = None,
                 declared: Sequence[str] = ()) -> None:
        self.runtime = runtime
        self.io = dict(io or {})
        self.max_rows = max_rows
        self.draining = False  # set when the server stops: readiness turns false
        self._probed: Dict[str, List[Dict[str, Any]]] = {}
        # name -> what to register for a repository `load` (a ModelConfig), or raises
        self._loadable = loadable
        self._declared = list(declared)  # models the repository index lists even unloaded
        self._loading: Optional[asyncio.Lock] = None
        # called after a model is loaded or unloaded (the core's gRPC front end follows them)
        self.listeners: List[Any] = []
        self.shm = SystemSharedMemory()  # regions registered by same-host clients

    # -- names and metadata ------------------------------------------------------------------

    def model(self, name: Any, version: Any = None) -> str:
        if not isinstance(name, str) or name not in self.runtime.models:
            raise UnknownModel(f"no model named {name!r} is served")
        if version not in (None, "", "1"):
            raise UnknownModel(f"model {name!r} has only version 1, not {version!r}")
        return name

    def ready(self) -> bool:
        return bool(self.runtime.running) and not self.draining

    def rows_limit(self, model: str) -> int:
        """The most rows one request for ``model`` may carry: its own max_batch_size (what
        /config reports, as Triton's), and never over the server's ``max_rows``; 0 for a model
        without a batch dimension (a request is its whole input)."""
        own = getattr(self.runtime, "max_batch_size", None)
        return min(self.max_rows, own(model)) if callable(own) else self.max_rows

    def input_names(self, model: str) -> List[str]:
        n = len(self.runtime.input_signature(model))
        io = self.io.get(model)
        return list(io.inputs) if io and io.inputs else [f"INPUT__{i}" for i in range(n)]

    def output_names(self, model: str, count: int = 1) -> List[str]:
        io = self.io.get(model)
        names = list(io.outputs) if io and io.outputs else []
        return names + [f"OUTPUT__{i}" for i in range(len(names), count)]

    def _rows(self, model: str) -> List[int]:
        """What a tensor's shape starts with in metadata: [-1] (any rows), or nothing for a
        model without a batch dimension."""
        return [] if self.rows_limit(model) == 0 else [-1]

    async def metadata(self, model: str) -> Dict[str, Any]:
        sig = self.runtime.input_signature(model)
        rows = self._rows(model)
        return {"name": model, "versions": ["1"], "platform": "pytorch_torchscript",
                "inputs": [{"name": n, "datatype": NAMES.get(d, str(d)),
                            "shape": [*rows, *protocol_sample(s, d)]}
                           for n, (s, d) in zip(self.input_names(model), sig)],
                "outputs": await self._output_meta(model)}

    async def _output_meta(self, model: str) -> List[Dict[str, Any]]:
        io = self.io.get(model)
        if io and io.output_meta:
            return io.output_meta
        if model not in self._probed:
            # What the model returns is known once it ran: run one sample of zeros, once.
            try:
                sig = self.runtime.input_signature(model)
                out = await self.runtime.infer_async(model, *(
                    torch.zeros(s, dtype=d) if d is not str else ["0"] if s else "0" for s, d in sig))
                outs = _outputs_of(out)
                self._probed[model] = [
                    {"name": n, "datatype": datatype, "shape": [*self._rows(model), *shape]}
                    for n, (datatype, shape) in zip(self.output_names(model, len(outs)),
                                                    map(_output_type, outs))]
            except Exception:  # noqa: BLE001 - metadata must not fail because a probe did
                return [{"name": n, "datatype": "", "shape": []} for n in self.output_names(model)]
        return self._probed[model]

    def index(self, ready_only: bool = False) -> List[Dict[str, str]]:
        """Triton's repository index: every served model, its version and state, and the
        models the config declares that are not loaded (UNAVAILABLE)."""
        state = "READY" if self.ready() else "UNAVAILABLE"
        reason = "" if self.ready() else ("draining" if self.draining else "starting")
        served = list(self.runtime.models)
        out = [] if ready_only and state != "READY" else [
            {"name": m, "version": "1", "state": state, "reason": reason} for m in served]
        if not ready_only:
            out += [{"name": m, "version": "1", "state": "UNAVAILABLE", "reason": "not loaded"}
                    for m in self._declared if m not in served]
        return out

    async def load(self, name: Any) -> None:
        """Triton's repository `load`: registers a model the config declares (or model_dir
        holds) while serving; a model already served is left as it is."""
        if self._loadable is None:
            raise InvalidInput("this server loads no models while serving (no config)")
        if not isinstance(name, str):
            raise InvalidInput(f"model name must be a string, got {name!r}")
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:  # one at a time; the runtime serializes them anyway
            if name in self.runtime.models:
                return
            try:
                model = self._loadable(name)
                await asyncio.to_thread(model.register, self.runtime)
            except UnknownModel:
                raise
            except GpuLanesError as e:  # its text names the server's files: the log keeps it
                raise type(e)(public_error(e, f"loading model {name!r}")) from None
            self.io[name] = model.io
            self._changed()

    async def unload(self, name: Any, params: Any) -> None:
        """Triton's repository `unload`: stops serving a model, lets its queued requests finish
        (the runtime's unregister), and frees it; the others keep serving. It may be loaded
        again if the config declares it. ``unload_dependents`` is accepted (gpulanes has no
        ensembles, so nothing depends on a model)."""
        if not isinstance(params, dict) or set(params) - {"unload_dependents"} or not isinstance(
                params.get("unload_dependents", False), bool):
            raise InvalidInput('unload takes only the parameter "unload_dependents" (a bool)')
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:  # never while the same model is being loaded
            model = self.model(name)
            await asyncio.to_thread(self.runtime.unregister, model)
            self.io.pop(model, None)
            self._probed.pop(model, None)
            self._changed()

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()

    def extensions(self) -> List[str]:
        """What the server metadata says is supported (Triton's extension names); statistics
        only where the runtime keeps them (not the Ray ingress over replicas)."""
        names = ["binary_tensor_data", "model_repository", "model_repository(unload_dependents)",
                 "model_configuration", "parameters", "statistics", "system_shared_memory"]
        if torch.cuda.is_available():  # where a CUDA IPC handle can be opened
            names.append("cuda_shared_memory")
        return [e for e in names
                if e != "statistics" or callable(getattr(self.runtime, "stats", None))]

    def statistics(self, name: Any = None, version: Any = None) -> Dict[str, Any]:
        """Triton's statistics extension: ``{"model_stats": [...]}`` for one model (or all, when
        ``name`` is empty), from the runtime's own counters. Per request: ``success`` (answered:
        arrival to result), ``fail`` (count only), ``queue`` (arrival to batch start),
        ``compute_infer`` (the forward time of its batch; input and output copies are inside
        it, so ``compute_input`` and ``compute_output`` count with 0 ns); per batch size: the
        batches and their forward time."""
        if not callable(getattr(self.runtime, "stats", None)):  # e.g. the Ray ingress
            raise InvalidInput("statistics are not served here: this endpoint's runtime keeps "
                               "none (ask each replica's own server)")
        models = [self.model(name, version)] if name else list(self.runtime.models)
        stats = self.runtime.stats()
        now_wall, now_mono = time.time(), time.monotonic()

        def duration(count: float, ms: float) -> Dict[str, int]:
            return {"count": int(count), "ns": int(round(ms * 1e6))}
        out = []
        for m in models:
            s = stats[m]
            ran = sum(size * n for size, n in s["batch_sizes"].items())
            last = s.get("last_result_s")
            last_ms = 0 if last is None else int((now_wall - (now_mono - last)) * 1000)
            sizes = sorted(s["batch_sizes"])
            out.append({
                "name": m, "version": "1", "last_inference": max(last_ms, 0),
                "inference_count": s["completed"], "execution_count": s["batches"],
                "inference_stats": {
                    "success": duration(s["completed"], s["latency_ms"]["mean"] * s["completed"]),
                    "fail": duration(s["failed"] + s["dropped"], 0.0),
                    "queue": duration(s["queue_ms"]["count"],
                                      s["queue_ms"]["mean"] * s["queue_ms"]["count"]),
                    "compute_input": duration(ran, 0.0),
                    "compute_infer": duration(ran, sum(size * s["batch_exec_ms"].get(size, 0.0)
                                                       for size in sizes)),
                    "compute_output": duration(ran, 0.0),
                    "cache_hit": duration(0, 0.0), "cache_miss": duration(0, 0.0)},
                "batch_stats": [{"batch_size": size,
                                 "compute_input": duration(s["batch_sizes"][size], 0.0),
                                 "compute_infer": duration(s["batch_sizes"][size],
                                                           s["batch_exec_ms"].get(size, 0.0)),
                                 "compute_output": duration(s["batch_sizes"][size], 0.0)}
                                for size in sizes]})
        return {"model_stats": out}

    async def config(self, model: str) -> Dict[str, Any]:
        """Triton's model configuration (what perf_analyzer reads): the protocol's batch limit
        (``max_rows``) and one sample's tensors."""
        meta = await self.metadata(model)
        skip = len(self._rows(model))

        def tensors(items):  # Triton's config names BYTES TYPE_STRING
            return [{"name": t["name"], "data_type": "TYPE_STRING" if t["datatype"] == "BYTES"
                     else f"TYPE_{t['datatype'] or 'INVALID'}",
                     "dims": list(t["shape"][skip:])} for t in items]
        return {"name": model, "platform": "pytorch_libtorch", "backend": "pytorch",
                "max_batch_size": self.rows_limit(model), "input": tensors(meta["inputs"]),
                "output": tensors(meta["outputs"])}

    # -- one inference -----------------------------------------------------------------------

    def request_options(self, params: Any) -> Tuple[Optional[float], int]:
        """(deadline_ms or None, gpulanes priority) from a request's ``parameters``."""
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidInput("parameters must be an object")
        for key in SEQUENCE_PARAMETERS:  # tritonclient sends them only for a sequence
            if params.get(key) not in (None, 0, False, ""):
                raise InvalidInput(f"parameters.{key}: {SEQUENCES_NOT_SERVED}")
        deadline_ms = None
        if params.get("timeout") is not None:
            timeout = params["timeout"]
            if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                    or not 0 < timeout <= _MAX_TIMEOUT_US):
                raise InvalidInput(f"parameters.timeout must be > 0 and at most 30 days in "
                                   f"microseconds, got {timeout!r}")
            deadline_ms = timeout / 1000.0
        priority = params.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise InvalidInput(f"parameters.priority must be an integer >= 0, got {priority!r}")
        return deadline_ms, 0 if priority <= 1 else 1

    def order_inputs(self, model: str, given: Dict[str, Any]) -> List[Tuple[str, Tuple[int, ...], torch.dtype]]:
        """Checks that ``given`` names exactly the model's inputs; returns (name, sample shape,
        dtype) in the model's order."""
        names = self.input_names(model)
        unknown = [n for n in given if n not in names]
        if unknown:
            raise InvalidInput(f"unknown input(s) {unknown}; {model!r} takes {names}")
        missing = [n for n in names if n not in given]
        if missing:
            raise InvalidInput(f"missing input(s) {missing}; {model!r} takes {names}")
        return [(n, protocol_sample(s, d), d)
                for n, (s, d) in zip(names, self.runtime.input_signature(model))]

    async def run(self, model: str, batch: Sequence[Any], deadline_ms: Optional[float],
                  priority: int) -> List[Any]:
        """Serves ``batch`` (one tensor or BYTES array per input, rows first; for a model
        without a batch dimension, its whole inputs) and returns its outputs stacked (as they
        are). Fails with the first error any row got; every row's request resolves either way."""
        if self.rows_limit(model) == 0:
            out = await self.runtime.infer_async(
                model, *(list(t.reshape(-1)) if codec.is_strings(t) else t for t in batch),
                deadline_ms=deadline_ms, priority=priority)
            return [_whole_output(o) for o in _outputs_of(out)]
        rows = {t.shape[0] for t in batch}
        if len(rows) != 1:
            raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
        n = rows.pop()
        jobs = [self.runtime.infer_async(model, *(t[i, 0] if codec.is_strings(t) else t[i]
                                                  for t in batch),
                                         deadline_ms=deadline_ms, priority=priority)
                for i in range(n)]
        if n == 1:  # the common case: no tasks to gather
            results = [await jobs[0]]
        else:
            results = await asyncio.gather(*jobs, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        per_row = [_outputs_of(r) for r in results]
        return [_stack_rows([row[k] for row in per_row]) for k in range(len(per_row[0]))]

    def select_outputs(self, model: str, outputs: List[torch.Tensor],
                       requested: Optional[Sequence[str]]) -> List[Tuple[str, torch.Tensor]]:
        """(name, tensor) of the outputs a request asked for (all when it named none)."""
        named = list(zip(self.output_names(model, len(outputs)), outputs))
        for name, t in named:
            if not codec.datatype_of(t):
                raise ModelError(f"output {name!r} has dtype {t.dtype}, which KServe v2 cannot carry")
        if not requested:
            return named
        by_name = dict(named)
        unknown = [r for r in requested if r not in by_name]
        if unknown:
            raise InvalidInput(f"unknown output(s) {unknown}; {model!r} has {list(by_name)}")
        return [(r, by_name[r]) for r in requested]


def _is_text(v: Any) -> bool:
    return isinstance(v, (str, bytes))


def _outputs_of(out: Any) -> List[Any]:
    """A request's result as its list of outputs: a tuple, or a list that is not one string
    output (an unbatched model's List[str]), holds several."""
    if isinstance(out, tuple) or (isinstance(out, list) and out and not all(map(_is_text, out))):
        return list(out)
    return [out]


def _output_type(out: Any) -> Tuple[str, List[int]]:
    """(datatype, shape of one request's output) for metadata; a string is ``[1]``, an unbatched
    model's list of strings ``[-1]``."""
    if _is_text(out):
        return "BYTES", [1]
    if isinstance(out, list):
        return "BYTES", [-1]
    return NAMES.get(out.dtype, ""), list(out.shape)


def _whole_output(out: Any) -> Any:
    """An unbatched model's output as the protocol carries it (a list of strings: ``[n]``)."""
    if isinstance(out, list):
        return codec.strings_array(out, (len(out),))
    return codec.strings_array([out], (1,)) if _is_text(out) else out


def _stack_rows(outs: List[Any]) -> Any:
    """One output of every row, stacked: tensors along a new first dimension, strings as
    ``[rows, 1]``."""
    if _is_text(outs[0]):
        return codec.strings_array(outs, (len(outs), 1))
    return outs[0].unsqueeze(0) if len(outs) == 1 else torch.stack(outs)
