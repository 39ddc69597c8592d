"""The public Runtime: a thin layer over the C++ core (gpulanes._C).

Every scheduling decision is made in the core's event loop; this module only converts
arguments, creates futures and documents the contract.
"""

from __future__ import annotations

import asyncio
import atexit
import math
import os
import time
import weakref
from concurrent.futures import Future
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _C
from . import formats as _formats
from . import profiles as _profiles
from ._futures import _AsyncSink, _completions_of, _Future
from .errors import InvalidInput, UnknownModel
from ._checks import _flag, _number
from ._options import (_MAX_DEADLINE_S, _PARTITIONING, _RUNTIME_PLANNER, _isolation_config,
                       _lane_specs, _model_stats, _policy_options, _predictor_config,
                       _register_args, _replan_config, _trace_frame)
from ._profiling import Profiling
from .planning import Planning

__all__ = ["Runtime"]

ModelSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, torch.jit.ScriptModule,
                    torch.nn.Module, "torch.export.ExportedProgram"]


# Runtimes still running at interpreter exit are shut down (without draining) before Python
# finalizes, so no core thread ever waits for a GIL that is gone.
_live: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


def _sample_signature(example: Any, max_batch_size: int) -> Tuple[Tuple[int, ...], Any]:
    """(shape, dtype) of one sample of an example input. A string input's is ``((), str)``: one
    string per request; without a batch dimension ``((-1,), str)``: a list of any length."""
    if not isinstance(example, torch.Tensor):
        return ((-1,) if max_batch_size == 0 else ()), str
    return tuple(example.shape[0 if max_batch_size == 0 else 1:]), example.dtype


@atexit.register
def _shutdown_all() -> None:
    for rt in list(_live):
        rt.shutdown(drain=False)
    _C.join_background(10.0)  # shutdowns begun in done-callbacks


class Runtime(Planning, Profiling):
    """Serves registered TorchScript models with a deadline for every request.

    Args:
        device: ``"auto"`` (CUDA when usable, else CPU), ``"cpu"``, ``"cuda"`` (one lane per
            GPU) or ``"cuda:N"``.
        partitioning: how a GPU is split when :meth:`set_lanes` gives its lanes fewer SMs than
            it has: ``"green"`` (CUDA green contexts: disjoint SM groups, one stream each),
            ``"streams"`` (concurrent streams, no SM limit), ``"none"`` (one whole-GPU lane per
            GPU), ``"mps"`` (gpu-let's mechanism: each lane a worker process that is an MPS
            client, its share of the SMs its ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``; uses the
            MPS daemon you run, or starts a private one and stops it at shutdown; the
            process lanes' ``worker_options`` apply), ``"auto"`` (green where the driver
            supports it, else streams; MPS with ``isolation="process"``). Without a layout
            every GPU is one lane; on the CPU it has no effect.
        policy: how batches are formed, all in the C++ core:

            - ``"deadline"`` (ours): earliest deadline first; the largest batch whose predicted
              completion (profiled latency + an adaptive safety margin) meets the earliest
              deadline in it; waits for a larger batch only while arrivals continue and the
              deadline allows (``wait_for_batch``; off by default: in the demo it raised
              latency without raising attainment); drops requests expected to miss, without running them;
              refuses at submit a deadline that even an idle lane cannot meet.
            - ``"fifo"``: arrival order, no batching.
            - ``"max_delay"``: Triton's dynamic batcher. Options use Triton's names:
              ``preferred_batch_size`` (list), ``max_queue_delay_microseconds``,
              ``default_timeout_microseconds`` (queue timeout, rejects; 0 = none).
            - ``"aimd"``: Clipper's additive-increase/multiplicative-decrease batch cap against
              the SLO (``additive_increase``, ``multiplicative_decrease``).

            Only ``deadline`` knows deadlines: the baselines run late requests (counted missed).
        policy_options: the chosen policy's options (see above); ``deadline`` takes
            ``min_margin_us``, ``margin_quantile``, ``margin_window``, ``wait_for_batch``
            (True: may idle a lane to let a larger batch form), ``queue_admission`` (True:
            refuse at submit, with :class:`Overloaded`, a request that the work queued ahead
            of it would finish late) and ``fair_share`` (False; True: under overload each
            model of a shared lane gets at least an even share of its time, as far as it asks,
            instead of EDF starving the longer-SLO one). Every option is checked here (type and
            range).
        predictor: how the ``deadline`` policy predicts a batch's latency: ``"none"`` (the
            profile times a learned slow-down factor), ``"static"`` / ``"ewma"`` (a linear model
            over co-location features with offline weights), ``"sgd"`` / ``"rls"`` (the same,
            learned online from every batch; default ``"rls"``). See :mod:`gpulanes.predict`.
        predictor_options: ``alpha`` (EWMA weight of co-location signals, 0.3), ``forgetting``
            (RLS, 0.98), ``delta`` (RLS initial covariance, 10), ``lr`` (SGD, 0.05),
            ``weights`` (offline or initial weights, one per ``gpulanes.predict.FEATURES``), ``warmup_batches`` (online
            kinds predict with ``weights`` until they learned from this many batches, 20),
            ``record`` (keep every batch).
        cpu_lanes: number of CPU lanes (worker threads) when running on the CPU.
        output_device: ``"cpu"`` (default) or ``"cuda"`` to leave outputs on the GPU.
        warmup_rounds: forward passes per (lane, model, batch size) during :meth:`start`.
        profile_reps: timed forward passes per batch size when :meth:`start` profiles a model.
        trace: record every request's arrival, start, end, batch, lane and outcome
            (:meth:`trace_frame`).
        spin_us: how long an idle lane, and a caller blocked in :meth:`infer`, poll before
            sleeping. Polling saves a thread wake-up (tens of microseconds) when work follows
            soon; 0 turns it off (lowest CPU use).
        replan: re-plan the lanes while serving (see :mod:`gpulanes.planning`): ``{"every_s":
            10}`` plus optional ``variant``, ``drift`` (re-plan early when a model's rate moved by
            this fraction, checked every ``check_s``), ``alpha`` (EWMA of rates), ``min_rate``,
            ``granularity``, ``gpus``, ``admission`` (shed what the plan cannot place;
            default True) and ``admit_fraction`` (of what it placed for such a model; 0.9).
            Each re-plan is in :meth:`replans`.
        isolation: ``"thread"`` (default: lanes run models in this process) or ``"process"``:
            each lane runs its batches in a worker process of its own (``gpulanes_worker``,
            LibTorch without Python; inputs and outputs through shared memory, pinned on a
            GPU). A model that crashes the process (a signal, abort, out of memory) or hangs
            past the watchdog fails only the batch it ran, with :class:`ModelError` naming
            what happened; the lane starts a new worker. Lanes that split a GPU are then MPS
            clients (``partitioning`` ``"mps"`` or ``"auto"``; ``"green"`` is refused).
        worker_options: for process and MPS lanes: ``watchdog_s`` (60; a batch running longer
            has its worker killed; (0, 86400]), ``max_restarts`` (5; deaths in a row before
            a lane gives up and fails its batches at once, reported by :meth:`lanes`; 0..1000),
            ``retry_after_s`` (30; how long such a lane stays down before it tries one more
            worker, doubling each time it gives up again, at most 10 minutes),
            ``start_timeout_s`` (20; a worker not ready by then is killed and counts as a
            death: an MPS client that cannot reach its daemon hangs in CUDA's start; (0, 3600]),
            ``libraries`` (paths of shared libraries, e.g. custom operators your models
            call, that each worker loads before any model; what ``torch.ops.load_library``
            does in this process) and ``spin_us`` (0; how long lane and worker poll for each
            other's next message before they sleep: pays only with cores to spare).
        layout_changes: what :meth:`register` and :meth:`unregister` do while serving.
            ``"incremental"`` (default): only the changed model is loaded (warmed up and
            measured on the serving lanes beside the others) or unloaded, and the lanes keep
            serving their other models, where the lanes allow it (CPU thread lanes); GPU,
            process and MPS lanes are still built anew. ``"rebuild"``: every change builds new
            lanes that load and warm up every model (kept for comparison).
        profile_cache: where measured latency profiles are kept between runs, keyed by model
            bytes, input signature, device, torch version and lane share (see
            :mod:`gpulanes.profiles`): ``True`` (default) for ``$GPULANES_CACHE_DIR`` or
            ``~/.cache/gpulanes``, a directory, or ``False`` to always measure.

    Outputs are computed under ``torch.inference_mode()``: they are inference tensors, so
    ``clone()`` one before modifying it in place outside inference mode.
    """

    def __init__(
        self,
        device: str = "auto",
        partitioning: str = "auto",
        policy: str = "deadline",
        predictor: str = "rls",
        *,
        policy_options: Optional[Dict[str, Any]] = None,
        predictor_options: Optional[Dict[str, Any]] = None,
        cpu_lanes: int = 1,
        output_device: str = "cpu",
        warmup_rounds: int = 2,
        spin_us: float = 50.0,
        profile_reps: int = 10,
        trace: bool = False,
        profile_cache: Union[bool, str, "os.PathLike[str]"] = True,
        replan: Optional[Dict[str, Any]] = None,
        isolation: str = "thread",
        worker_options: Optional[Dict[str, Any]] = None,
        layout_changes: str = "incremental",
    ) -> None:
        self.policy_options = _policy_options(policy, policy_options)
        if partitioning not in _PARTITIONING:
            raise InvalidInput(f"partitioning must be one of {_PARTITIONING}, got {partitioning!r}")
        self.predictor_options = _predictor_config(predictor, predictor_options)
        if output_device not in ("cpu", "cuda"):
            raise InvalidInput(f"output_device must be 'cpu' or 'cuda', got {output_device!r}")
        if not isinstance(device, str):
            raise InvalidInput(f"device must be a string such as 'cuda:0', got {device!r}")
        self.device = device
        self.partitioning = partitioning
        self.isolation = isolation
        self.policy = policy
        self.predictor = predictor
        if layout_changes not in ("incremental", "rebuild"):
            raise InvalidInput(f"layout_changes must be 'incremental' or 'rebuild', got "
                               f"{layout_changes!r}")
        spin_us = _number("spin_us", spin_us)
        self._core = _C.Runtime(device, policy, self.policy_options,
                                _number("cpu_lanes", cpu_lanes, integer=True),
                                output_device == "cuda",
                                _number("warmup_rounds", warmup_rounds, integer=True), spin_us,
                                _number("profile_reps", profile_reps, integer=True),
                                _flag("trace", trace), self.predictor_options,
                                partitioning, _replan_config(replan, _RUNTIME_PLANNER),
                                _isolation_config(isolation, worker_options), layout_changes)
        self._spin_us = spin_us
        self._slo_ms: Dict[str, float] = {}
        self._signatures: Dict[str, List[Tuple[Tuple[int, ...], Any]]] = {}
        # Per model: what its profile depends on (a profile entry without points).
        self._profile_keys: Dict[str, Dict[str, Any]] = {}
        self._profile_source: Dict[str, str] = {}  # model -> "given", "cache" or "measured"
        self._formats: Dict[str, str] = {}  # model -> "torchscript" or "aoti"
        self._layout: List[Dict[str, Any]] = []   # the last set_lanes() layout, as the core took it
        if profile_cache is True:
            self._cache: Optional[_profiles.ProfileCache] = _profiles.ProfileCache(
                _profiles.default_cache_dir())
        elif profile_cache is False or profile_cache is None:
            self._cache = None
        else:
            self._cache = _profiles.ProfileCache(profile_cache)
        _live.add(self)

    # -- setup -------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: ModelSource,
        *,
        slo_ms: float,
        example_inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
        max_batch_size: int = 32,
        max_queue: int = 10_000,
        progress: Optional[bool] = None,
    ) -> None:
        """Registers a model, before :meth:`start` or while serving.

        While serving, the model is added to every lane: on CPU thread lanes (with
        ``layout_changes="incremental"``) it alone is loaded, warmed up and its latency profile
        measured there while they keep serving; other lanes are built anew with every model
        while the current ones serve, then take over as in :meth:`set_lanes`. ``submit`` knows
        the model once this returns; other models are served throughout. Its profile is
        measured (not read from the profile cache) and then cached.

        ``model`` is, in any of the formats of :mod:`gpulanes.formats`: an ``nn.Module`` or a
        ``torch.export.ExportedProgram`` (exported with a dynamic batch dimension and compiled
        to an AOTInductor package for this runtime's device, cached; ``progress`` shows a bar);
        a path to, or the bytes of, an AOTInductor package (``.pt2``), a ``torch.export.save``
        archive or a ``torch.jit.save`` file; or a ``torch.jit.ScriptModule``. It is copied:
        later changes to it do not reach the runtime.
        ``example_inputs`` are batched tensors (leading batch dimension); a request is one sample
        of each, i.e. the same shapes without the batch dimension and the same dtypes. A
        TorchScript model may take ``List[str]`` inputs: their example is a list of ``str`` or
        ``bytes`` (a batch of strings) and a request gives one ``str`` or ``bytes`` (a batch's
        strings make the list, in order); a model that returns ``List[str]`` gives each request
        its ``str`` (``bytes`` where it is not UTF-8). Process lanes do not carry strings.
        ``max_batch_size=0`` (Triton's meaning) is a model without a batch dimension: the
        examples are whole inputs, a request has exactly their shapes (a string input: a list
        of any length) and runs alone.
        Raises :class:`ModelError` for a missing or corrupt model, one that cannot be exported
        or compiled (with export's or the compiler's reason) or a package made for another
        device or torch version; :class:`InvalidInput` for bad arguments or a duplicate name.
        """
        example_inputs, slo_ms, max_batch_size, max_queue = _register_args(
            name, example_inputs, slo_ms, max_batch_size, max_queue)
        if self.isolation == "process" and not all(isinstance(t, torch.Tensor)
                                                   for t in example_inputs):
            raise InvalidInput(f"{name!r} takes strings, which process lanes do not carry (their "
                               "worker gets tensors only): use isolation='thread'")
        file = _formats.resolve(model, name=name, example_inputs=tuple(example_inputs),
                                max_batch_size=max_batch_size, device=self._compile_device(),
                                progress=progress, run_script_module=self.isolation != "process")
        self._core.register_model(name, file.kind, file.source, tuple(example_inputs),
                                  int(slo_ms * 1e6), max_batch_size, max_queue)
        self._formats[name] = file.format
        self._slo_ms[name] = slo_ms
        self._signatures[name] = [_sample_signature(t, max_batch_size) for t in example_inputs]
        self._profile_keys[name] = {
            "model": name, "model_hash": file.digest, "max_batch_size": max_batch_size,
            "inputs": [[list(shape), getattr(dtype, "__name__", str(dtype)).replace("torch.", "")]
                       for shape, dtype in self._signatures[name]]}
        if self._core.running:  # registered live: its profile was measured just now
            self._profile_source[name] = "measured"
            self._cache_profiles(self._profile_lane(), [name])

    def _compile_device(self) -> str:
        """The device type models registered as nn.Module or ExportedProgram are compiled for."""
        on_cpu = self.device == "cpu" or (self.device == "auto" and not _C.cuda_lane_support())
        return "cpu" if on_cpu else "cuda"

    def formats(self) -> Dict[str, str]:
        """Each registered model's format as served: "torchscript" or "aoti"."""
        return dict(self._formats)

    def start(self, progress: Optional[bool] = None) -> "Runtime":
        """Creates the lanes, loads and warms up every model on each, measures the latency
        profile (per batch size 1, 2, 4, ..., max) of each model that has none, starts serving.

        ``progress``: show a progress bar (default: when stderr is a terminal).
        """
        from tqdm.auto import tqdm

        bar = tqdm(desc="gpulanes start", unit="step", disable=None if progress is None
                   else not progress, leave=False)

        def update(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(what, refresh=False)
            bar.refresh()

        lane = self._profile_lane()
        cached: set = set()
        if self._cache is not None:
            for name in self._slo_ms:
                if name in self._profile_source:
                    continue
                hit = self._cache.get(self._profile_entry(name, lane, []))
                if hit is not None:
                    self._core.set_profile(name, hit["points"])
                    self._profile_source[name] = "cache"
            cached = self._load_partition_profiles(lane)
        try:
            self._core.start(update)
        finally:
            bar.close()
        measured = []
        for name in self._slo_ms:
            if name in self._profile_source:
                continue
            # Served by green lanes only, a model's profile is that of its first lane's size.
            sms = self._core.profile_origin(name)["sms"]
            self._profile_source[name] = "cache" if (name, sms) in cached else "measured"
            if self._profile_source[name] == "measured":
                measured.append(name)
        self._cache_profiles(lane, measured)
        self._warn_unmeetable_slos()
        return self

    def __enter__(self) -> "Runtime":
        if not self._core.running:
            self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown(drain=exc_info[0] is None)

    # -- requests ----------------------------------------------------------------------------

    def _request_args(self, model: Any, deadline_ms: Optional[float], deadline: Optional[float],
                      priority: Any) -> tuple:
        """(model, absolute deadline in ns or None, priority), checked: InvalidInput naming the
        argument for a wrong type, NaN, infinity or a deadline that cannot be meant."""
        if not isinstance(model, str):
            raise InvalidInput(f"model must be a registered model's name (str), got "
                               f"{type(model).__name__} {model!r}")
        if isinstance(priority, bool) or priority not in (0, 1):
            raise InvalidInput(f"priority must be 0 (latency-critical) or 1 (best effort), "
                               f"got {priority!r}")
        if deadline_ms is not None and deadline is not None:
            raise InvalidInput("give deadline_ms (relative) or deadline (absolute), not both")
        if deadline_ms is not None:
            ms = _number("deadline_ms", deadline_ms)
            if ms > _MAX_DEADLINE_S * 1e3:
                raise InvalidInput(f"deadline_ms must be at most {_MAX_DEADLINE_S * 1e3:.0f} "
                                   f"(30 days), got {deadline_ms!r}")
            ms = max(ms, -_MAX_DEADLINE_S * 1e3)  # long past is past: keep the ns in range
            return model, time.monotonic_ns() + int(ms * 1e6), int(priority)
        if deadline is not None:
            at = _number("deadline", deadline)
            if at > time.monotonic() + _MAX_DEADLINE_S:
                raise InvalidInput(f"deadline={deadline!r} is more than 30 days ahead of "
                                   f"time.monotonic() ({time.monotonic():.0f}): deadlines are "
                                   "time.monotonic() seconds, not time.time(); for a relative "
                                   "deadline pass deadline_ms")
            return model, int(max(at, 0.0) * 1e9), int(priority)
        return model, None, int(priority)  # the model's SLO from now

    def submit(self, model: str, *inputs: torch.Tensor, deadline_ms: Optional[float] = None,
               deadline: Optional[float] = None, priority: int = 0) -> Future:
        """Queues one request and returns a :class:`concurrent.futures.Future` of its output.

        ``inputs`` are one sample per model input (no batch dimension). The deadline is
        ``deadline_ms`` from now, or ``deadline`` in ``time.monotonic()`` seconds, or the
        model's SLO from now. ``priority`` 0 (latency-critical, the default) or 1 (best
        effort): under the ``deadline`` policy a best-effort request gives way, and is dropped
        if it then cannot make its deadline, when both cannot be served. Raises at once :class:`UnknownModel`, :class:`InvalidInput`,
        :class:`DeadlineExceeded` (already past), :class:`QueueFull` or :class:`RuntimeClosed`.
        The future fails later with :class:`DeadlineExceeded`, :class:`ModelError` or
        :class:`RuntimeClosed`. It cannot be cancelled once submitted.
        """
        model, at, priority = self._request_args(model, deadline_ms, deadline, priority)
        out = self._core.submit(model, inputs, at, priority, self._new_future)
        if isinstance(out, BaseException):
            # Not a plain `raise out`: this frame's `out` would keep the exception, whose
            # traceback keeps this frame, a cycle left to the garbage collector. Under overload
            # refusals come by the thousand and those cycles make collections that stall
            # every thread (a gen-2 one for 100 ms with torch loaded).
            try:
                raise out
            finally:
                del out
        return out

    def _new_future(self) -> "_Future":
        fut = _Future(self._spin_us, self._core.core_id)
        fut.set_running_or_notify_cancel()
        return fut

    def infer(self, model: str, *inputs: torch.Tensor, deadline_ms: Optional[float] = None,
              deadline: Optional[float] = None, priority: int = 0,
              timeout: Optional[float] = None) -> Any:
        """Submits one request and waits for its output; raises what the future would.

        Waits in C++ with the GIL released (other Python threads run; Ctrl-C interrupts it).
        ``timeout`` (seconds) raises :class:`TimeoutError`; the request stays in flight.
        """
        model, at, priority = self._request_args(model, deadline_ms, deadline, priority)
        if timeout is not None:
            timeout = _number("timeout", timeout) if timeout != math.inf else None
            if timeout is not None and timeout < 0:
                raise InvalidInput(f"timeout must be >= 0 seconds (or None), got {timeout}")
        return self._core.infer(model, inputs, at, priority, timeout)

    async def infer_async(self, model: str, *inputs: torch.Tensor,
                          deadline_ms: Optional[float] = None, deadline: Optional[float] = None,
                          priority: int = 0) -> Any:
        """Awaitable :meth:`infer`: no thread is blocked while the request is served."""
        model, at, priority = self._request_args(model, deadline_ms, deadline, priority)
        loop = asyncio.get_running_loop()
        completions = _completions_of(loop)
        if completions is None:
            out = self._core.submit(model, inputs, at, priority,
                                    lambda: _AsyncSink(loop, loop.create_future()))
            if isinstance(out, BaseException):
                try:
                    raise out
                finally:  # no cycle through this frame (see submit)
                    del out
            return await out.future
        completions.tokens += 1
        token = completions.tokens
        refused = self._core.submit_to(model, inputs, at, priority, completions.queue, token)
        if refused is not None:
            try:
                raise refused
            finally:  # no cycle through this frame (see submit)
                del refused
        # Set before the loop runs again: the outcome, even one already queued, is drained
        # only by a later iteration of this same loop.
        fut = completions.pending[token] = loop.create_future()
        return await fut

    # -- observation and teardown ------------------------------------------------------------

    def stats(self, per: str = "model") -> Dict[Any, Dict[str, Any]]:
        """``per="model"`` (default), keyed by model name: submitted, completed, met, missed,
        dropped, rejected, failed, in_flight, goodput and throughput (per second since start),
        latency/queue/exec percentiles in ms, batch-size histogram, mean batch size, and
        ``prediction_error`` of the batch latency over recent batches (``mape``, signed
        ``bias`` = mean (measured - predicted) / measured, ``p99_abs_ms``).

        ``per="lane"``, keyed by lane index: kind, device, batches, requests, met, missed,
        failed, busy_s, busy_fraction (of the time since start), batch duration percentiles in
        ms and batches per model."""
        if per == "lane":
            return {s["index"]: s for s in self._core.lane_stats()}
        if per != "model":
            raise ValueError(f"per must be 'model' or 'lane', not {per!r}")
        return _model_stats(self._core.stats(), self._slo_ms)

    def metrics_text(self) -> str:
        """The statistics of :meth:`stats` in the Prometheus text exposition format: per model,
        request outcomes as counters, in-flight, goodput and prediction error as gauges,
        latency/queueing/batch execution as summaries (seconds), batch sizes as a histogram;
        per lane, batches, requests and busy seconds as counters and the busy fraction as a
        gauge. Serve it at ``/metrics``."""
        return self._core.metrics_text()

    def trace_frame(self):
        """With ``trace=True``: a pandas DataFrame, one row per finished request, in the order
        outcomes were decided: request_id, model, arrival_s, start_s, end_s, deadline_s (all
        ``time.monotonic()`` seconds; start_s is NaN for requests that never ran), latency_ms,
        batch_id and lane (-1 if never run), batch_size, outcome (met, missed, dropped,
        rejected, failed)."""
        cols = self._core.trace()
        return _trace_frame(cols, cols.pop("names"))

    def lanes(self) -> List[Dict[str, Any]]:
        """The lanes serving now: index, kind, device, sms (SMs owned; 0 on the CPU), the
        models each serves and ``loads``, the model instances it loaded over its life (what
        layout changes cost it)."""
        return self._core.lanes()

    @property
    def model_loads(self) -> int:
        """Model instances loaded on lanes so far: one per (lane, model) at :meth:`start`, and
        what each later change loaded (with ``layout_changes="incremental"`` on CPU thread
        lanes, registering a model while serving loads it once per lane and nothing else)."""
        return self._core.model_loads()

    def set_lanes(self, layout: Sequence[Dict[str, Any]]) -> None:
        """Sets the lane layout: a list of ``{"device": "cpu" | N | "cuda:N", "sms": n,
        "models": [...]}`` (``sms``: SMs of the lane's GPU partition, default the whole device;
        ``models``: default every model). Before :meth:`start` it is what start creates. While
        serving, the new lanes are built and warmed up first (on CPU thread lanes with
        ``layout_changes="incremental"``, a lane that holds models of a new lane's list is kept
        for it and loads only the models it gains); then the runtime stops handing out batches,
        lets running ones finish, swaps the layout in and resumes: queued requests stay queued
        and none is lost (per-lane statistics restart when lanes come, go or move). A model that
        no lane serves is refused at submit with :class:`InvalidInput`."""
        specs = _lane_specs(layout, self._slo_ms)
        self._core.set_lanes(specs)
        self._layout = specs
        if self._core.running:  # the new lanes' sizes may have been measured just now
            self._cache_profiles(self._profile_lane(), [])

    def unregister(self, name: str, drain: bool = True) -> None:
        """Removes a model while serving (or before :meth:`start`), as Triton's model unload.

        From now on ``submit`` raises :class:`UnknownModel` for it. ``drain=True`` (default)
        lets its queued requests run (each still within its deadline); ``drain=False`` fails
        them with :class:`RuntimeClosed`. Returns once none of its requests is in flight and
        the lanes no longer hold it (CPU thread lanes with ``layout_changes="incremental"``
        unload it and load nothing; other lanes are built anew without it while the current
        ones serve the other models, then swapped in as in :meth:`set_lanes`): the memory the
        lanes held for it is freed. A lane that served only this model goes. Its statistics leave
        :meth:`stats`; its trace records keep its name. The name may be registered again.
        Not from a done-callback of this runtime (:class:`InvalidInput`): it waits for the
        runtime's own threads."""
        if not isinstance(name, str) or name not in self._slo_ms:
            raise UnknownModel(f"no model named {name!r} is registered")
        self._core.unregister_model(name, _flag("drain", drain))
        for table in (self._slo_ms, self._signatures, self._profile_keys, self._profile_source,
                      self._formats):
            table.pop(name, None)
        kept = []  # as the core changed it: a lane that served only this model went
        for lane in self._layout:
            if name in lane["models"]:
                if len(lane["models"]) == 1:
                    continue
                lane = dict(lane, models=[m for m in lane["models"] if m != name])
            kept.append(lane)
        self._layout = kept

    @property
    def models(self) -> List[str]:
        return list(self._slo_ms)

    def max_batch_size(self, model: str) -> int:
        """The most samples one batch of a registered model may hold (``register``'s
        ``max_batch_size``; 0 for a model without a batch dimension, which runs alone)."""
        if model not in self._profile_keys:
            raise UnknownModel(f"no model named {model!r} is registered")
        return int(self._profile_keys[model]["max_batch_size"])

    def input_signature(self, model: str) -> List[Tuple[Tuple[int, ...], Any]]:
        """(shape of one sample, dtype) of each input of a registered model; a string input's
        dtype is ``str`` and its shape ``()`` (one string per request) or, for a model without
        a batch dimension, ``(-1,)`` (a list of any length)."""
        if model not in self._signatures:
            raise UnknownModel(f"no model named {model!r} is registered")
        return list(self._signatures[model])

    @property
    def running(self) -> bool:
        return self._core.running

    def __repr__(self) -> str:
        state = "running" if self.running else "not started" if self in _live else "closed"
        lanes = ""
        if self.running:
            try:
                lanes = f" lanes={len(self.lanes())}"
            except Exception:  # noqa: BLE001 - a repr never raises
                pass
        more = f", ... ({len(self.models)})" if len(self.models) > 8 else ""
        shown = ", ".join(self.models[:8]) + more
        return (f"<gpulanes.Runtime {state} device={self.device} policy={self.policy} "
                f"partitioning={self.partitioning}{lanes} models=[{shown}]>")

    def shutdown(self, drain: bool = True) -> None:
        """Stops accepting requests. ``drain=True`` finishes queued requests first;
        ``drain=False`` fails them with :class:`RuntimeClosed`. Running batches always finish.
        Idempotent.

        Called from a done-callback of this runtime (which runs on one of its own threads), it
        refuses new requests at once and finishes the rest in the background instead of waiting
        on itself; interpreter exit waits for it. In a child of ``os.fork()`` it does nothing
        (the runtime's threads stayed in the parent)."""
        self._core.shutdown(bool(drain))
        _live.discard(self)

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None:
            core.shutdown(False)
