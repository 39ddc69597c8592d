"""Argument validation and conversions shared by Runtime and the Simulator: policy and
predictor options with their defaults, re-planning options, lane layouts, statistics rows and
trace frames."""

from __future__ import annotations

import os

from typing import Any, Collection, Dict, List, Optional, Tuple

from ._checks import _flag, _number, _numbers
from .errors import InvalidInput, UnknownModel
from .planning import replan_config

# The planner's starting config in a runtime; the core fills in its devices (GPUs, SMs).
_RUNTIME_PLANNER = {"variant": "spatiotemporal", "gpus": 1, "sms_per_gpu": 1, "granularity": 8,
                    "memory_gb": 80.0}


def _replan_config(replan: Optional[Dict[str, Any]], planner: Dict[str, Any]):
    return None if replan is None else replan_config(replan, planner)


# Process lanes (isolation="process"): their worker's settings and defaults.
_WORKER_OPTIONS = {"watchdog_s": 60.0, "max_restarts": 5, "libraries": (), "spin_us": 0.0,
                   "retry_after_s": 30.0, "start_timeout_s": 20.0}


def _worker_path() -> str:
    import os

    from . import _C
    return os.environ.get("GPULANES_WORKER") or os.path.join(os.path.dirname(_C.__file__),
                                                             "gpulanes_worker")


def _isolation_config(isolation: Any, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """{"mode", "worker_path", "watchdog_s", "max_restarts"} for the core (which checks ranges)."""
    if isolation not in ("thread", "process"):
        raise InvalidInput(f"isolation must be 'thread' or 'process', got {isolation!r}")
    if options is not None and not isinstance(options, dict):
        raise InvalidInput(f"worker_options must be a dict, got {type(options).__name__}")
    given = dict(options or {})
    unknown = set(given) - set(_WORKER_OPTIONS)
    if unknown:
        raise InvalidInput(f"unknown worker_options {sorted(unknown)}; known: "
                           f"{sorted(_WORKER_OPTIONS)}")
    out = {"mode": isolation, "worker_path": _worker_path()}
    out["watchdog_s"] = _number("worker_options['watchdog_s']",
                                given.get("watchdog_s", _WORKER_OPTIONS["watchdog_s"]))
    out["max_restarts"] = _number("worker_options['max_restarts']",
                                  given.get("max_restarts", _WORKER_OPTIONS["max_restarts"]),
                                  integer=True)
    for key in ("spin_us", "retry_after_s", "start_timeout_s"):
        out[key] = _number(f"worker_options['{key}']", given.get(key, _WORKER_OPTIONS[key]))
    libraries = given.get("libraries", ())
    if isinstance(libraries, (str, bytes)) or not isinstance(libraries, (list, tuple)):
        raise InvalidInput("worker_options['libraries'] must be a list of paths to shared "
                           f"libraries (custom operators), got {libraries!r}")
    out["libraries"] = []
    for lib in libraries:
        if not isinstance(lib, (str, os.PathLike)) or not os.path.isfile(lib):
            raise InvalidInput(f"worker_options['libraries']: {lib!r} is not a file")
        out["libraries"].append(os.path.abspath(os.fspath(lib)))
    return out


# Each policy's options (Triton's configuration names for max_delay) and their defaults.
_POLICY_OPTIONS = {
    "deadline": {"min_margin_us": 200.0, "margin_quantile": 0.99, "margin_window": 256,
                 "wait_for_batch": False, "queue_admission": True,
                 "fair_share": False},
    "fifo": {},
    "max_delay": {"preferred_batch_size": [], "max_queue_delay_microseconds": 0,
                  "default_timeout_microseconds": 0},
    "aimd": {"additive_increase": 1, "multiplicative_decrease": 0.9},
}
_PARTITIONING = ("auto", "green", "streams", "none", "mps", "cpu")
_PREDICTORS = ("none", "static", "ewma", "sgd", "rls")
# Options of the latency predictors (see gpulanes.predict and csrc/gpulanes/predict/).
_PREDICTOR_OPTIONS = {"alpha": 0.3, "forgetting": 0.98, "delta": 10.0, "lr": 0.05, "weights": None,
                      "warmup_batches": 20, "record": False}


def _typed_like(defaults: Dict[str, Any], given: Dict[str, Any], where: str) -> Dict[str, Any]:
    """`given` converted to the type of each default: bool, int, float, a list of ints (list
    default), or a list of numbers or None (None default)."""
    out = dict(defaults)
    for key, value in given.items():
        name, default = f"{where} {key}", defaults[key]
        if isinstance(default, bool):
            out[key] = _flag(name, value)
        elif isinstance(default, int):
            out[key] = _number(name, value, integer=True)
        elif isinstance(default, float):
            out[key] = _number(name, value)
        elif isinstance(default, list):
            out[key] = _numbers(name, value, integer=True)
        else:
            out[key] = None if value is None else _numbers(name, value)
    return out


def _options_dict(name: str, options: Any) -> Dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidInput(f"{name} must be a dict, got {type(options).__name__}")
    return options


def _policy_options(policy: str, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The policy's options with defaults filled in and types checked; InvalidInput for an
    unknown name or a value of the wrong type (the core checks the ranges)."""
    if policy not in _POLICY_OPTIONS:
        raise InvalidInput(f"policy must be one of {tuple(_POLICY_OPTIONS)}, got {policy!r}")
    options = _options_dict("policy_options", options)
    unknown = set(options) - set(_POLICY_OPTIONS[policy])
    if unknown:
        raise InvalidInput(f"policy {policy!r} has no option(s) {sorted(unknown)}; "
                           f"it takes {sorted(_POLICY_OPTIONS[policy])}")
    return _typed_like(_POLICY_OPTIONS[policy], options, "policy option")


def _predictor_config(predictor: str, options: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The predictor's kind and options with defaults; InvalidInput for unknown names."""
    if predictor not in _PREDICTORS:
        raise InvalidInput(f"predictor must be one of {_PREDICTORS}, got {predictor!r}")
    options = _options_dict("predictor_options", options)
    unknown = set(options) - set(_PREDICTOR_OPTIONS)
    if unknown:
        raise InvalidInput(f"predictors have no option(s) {sorted(unknown)}; "
                           f"they take {sorted(_PREDICTOR_OPTIONS)}")
    return {**_typed_like(_PREDICTOR_OPTIONS, options, "predictor option"), "kind": predictor}


_MAX_DEADLINE_S = 30 * 86400  # a deadline further ahead is a unit or clock mistake
_MAX_BATCH = 65536            # largest max_batch_size
_MAX_BATCH_BYTES = 4 * 2**30  # largest batch of inputs warm-up may stack


def _is_strings(x: Any) -> bool:
    """A string input's example: a list or tuple of str or bytes."""
    return isinstance(x, (list, tuple)) and all(isinstance(s, (str, bytes)) for s in x)


def _sample_bytes(example: Any, max_batch_size: int) -> int:
    """The bytes of one sample of an example (the whole example without a batch dimension)."""
    if not hasattr(example, "numel"):  # strings: the first one, or all without a batch dimension
        return sum(map(len, example[:1] if max_batch_size else example))
    t = example
    rows = 1 if max_batch_size == 0 or not t.dim() or not t.shape[0] else t.shape[0]
    return t.numel() // rows * t.element_size()


def _register_args(name: Any, example_inputs: Any, slo_ms: Any, max_batch_size: Any,
                   max_queue: Any) -> Tuple[Tuple[Any, ...], float, int, int]:
    """register()'s arguments checked: (example_inputs as a tuple, slo_ms, max_batch_size,
    max_queue); InvalidInput naming the first that is wrong."""
    import torch

    if not isinstance(name, str) or not name:
        raise InvalidInput(f"name must be a non-empty str, got {name!r}")
    slo_ms = _number("slo_ms", slo_ms)
    if not 0 < slo_ms <= _MAX_DEADLINE_S * 1e3:
        raise InvalidInput(f"slo_ms must be > 0 and at most 30 days, got {slo_ms}")
    max_batch_size = _number("max_batch_size", max_batch_size, integer=True)
    max_queue = _number("max_queue", max_queue, integer=True)
    if not 0 <= max_batch_size <= _MAX_BATCH:
        raise InvalidInput(f"max_batch_size must be in [0, {_MAX_BATCH}] (0: the model has no "
                           f"batch dimension), got {max_batch_size}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
            isinstance(t, (str, bytes)) for t in example_inputs):
        raise InvalidInput(f"example_inputs of {name!r}: a string input's example is a list of "
                           f"strings inside the tuple of inputs, e.g. example_inputs="
                           f"({list(example_inputs)[:2]!r},)")
    if not isinstance(example_inputs, (tuple, list)) or not all(
            isinstance(t, torch.Tensor) or _is_strings(t) for t in example_inputs):
        raise InvalidInput(f"example_inputs of {name!r} must be a tensor or a tuple/list of "
                           f"tensors (a string input: a list of str or bytes), got "
                           f"{type(example_inputs).__name__}")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor):
            if not t and max_batch_size != 0:
                raise InvalidInput(f"example_inputs[{i}] of {name!r} is an empty list; a string "
                                   "input's example needs at least one string")
            continue
        if t.is_meta or t.layout != torch.strided:
            raise InvalidInput(f"example_inputs[{i}] of {name!r} is a "
                               f"{'meta' if t.is_meta else str(t.layout).split('.')[-1]} tensor; "
                               "give dense tensors with data (on the CPU or a GPU)")
    # Warm-up and profiling stack max_batch_size copies of the example: refuse what would
    # take more memory than a batch can sensibly use.
    batch_bytes = sum(_sample_bytes(t, max_batch_size) for t in example_inputs) * max(
        max_batch_size, 1)
    if batch_bytes > _MAX_BATCH_BYTES:
        raise InvalidInput(f"max_batch_size={max_batch_size} makes a batch of {name!r} "
                           f"{batch_bytes / 2**30:.1f} GiB of inputs (more than "
                           f"{_MAX_BATCH_BYTES / 2**30:.0f} GiB): warm-up would exhaust "
                           "memory; lower max_batch_size")
    if not 1 <= max_queue <= 10**9:
        raise InvalidInput(f"max_queue must be in [1, 1e9], got {max_queue}")
    return tuple(example_inputs), slo_ms, max_batch_size, max_queue


def _lane_specs(layout: Any, registered: Collection[str]) -> List[Dict[str, Any]]:
    """A set_lanes() layout checked and in the core's form (device "cpu"/"cuda:N", sms, models)."""
    if isinstance(layout, (str, bytes, dict)) or not hasattr(layout, "__iter__"):
        raise InvalidInput(f"layout must be a list of lane dicts, got {type(layout).__name__}")
    specs = []
    for i, lane in enumerate(layout):
        if not isinstance(lane, dict):
            raise InvalidInput(f"lane {i} must be a dict with device, sms and models, got "
                               f"{type(lane).__name__} {lane!r}")
        unknown = set(lane) - {"device", "sms", "models"}
        if unknown:
            raise InvalidInput(f"lane {i}: unknown key(s) {sorted(unknown)}")
        device = lane.get("device", "cpu")
        if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
            device = f"cuda:{device}"
        if not isinstance(device, str):
            raise InvalidInput(f"lane {i}: device must be 'cpu', 'cuda:N' or N, got {device!r}")
        models = lane.get("models", [])
        if isinstance(models, str) or not isinstance(models, (list, tuple)) or not all(
                isinstance(m, str) for m in models):
            raise InvalidInput(f"lane {i}: models must be a list of model names, got {models!r}")
        missing = [m for m in models if m not in registered]
        if missing:
            raise UnknownModel(f"lane {i} names models that are not registered: {missing}")
        sms = _number(f"lane {i} sms", lane.get("sms", 0), integer=True)
        if sms < 0:
            raise InvalidInput(f"lane {i}: sms must be >= 0 (0: the whole device), got {sms}")
        specs.append({"device": device, "sms": sms, "models": list(models)})
    return specs


def _model_stats(rows: List[Dict[str, Any]], slo_ms: Dict[str, float]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for s in rows:
        name = s.pop("name")
        s["slo_ms"] = slo_ms.get(name)
        out[name] = s
    return out


def _trace_frame(cols: Dict[str, Any], names, origin_ns: int = 0):
    """The core's trace columns as a DataFrame; times in seconds since `origin_ns`. `names`
    maps (a list or a dict) each model index the records use to its name."""
    import pandas as pd

    df = pd.DataFrame(cols)
    df.insert(1, "model", [names[i] for i in df.pop("model_index")])
    never_ran = df["start_ns"] == 0
    for c in ("arrival", "start", "end", "deadline"):
        df[f"{c}_s"] = (df.pop(f"{c}_ns") - origin_ns) / 1e9
    df.loc[never_ran, "start_s"] = float("nan")
    df["latency_ms"] = (df["end_s"] - df["arrival_s"]) * 1e3
    return df[["request_id", "model", "arrival_s", "start_s", "end_s", "deadline_s",
               "latency_ms", "batch_id", "lane", "batch_size", "outcome"]]
