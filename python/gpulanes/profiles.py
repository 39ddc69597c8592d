"""Latency profiles on disk: one versioned JSON schema for the runtime's measurements, its
profile cache and the simulator's input.

A profile file is a JSON object::

    {
      "schema": "gpulanes.profiles",
      "version": 1,
      "created": "2026-11-22T07:30:00Z",      # UTC, ISO 8601
      "source": "measured",                    # or "synthetic" (then "note" says how)
      "note": "...",                           # optional, free text
      "profiles": [ <entry>, ... ]
    }

and each entry describes one model on one kind of lane::

    {
      "model": "resnet50",                     # the registered name (or a simulator key)
      "model_hash": "sha256:9f2c...",          # of the TorchScript file's bytes, or null
      "device": "NVIDIA H100 80GB HBM3",       # device name (CPU: model name and threads)
      "torch": "2.11.0+cu130",                 # torch version it was measured with, or null
      "lane_kind": "cuda-stream",              # "cpu", "cuda-stream", "green", "mps", "sim"
      "sm_share": 1.0,                         # fraction of the device's SMs the lane had
      "sms": null,                             # SMs the lane had, when known
      "inputs": [[[3, 224, 224], "float32"]],  # one (shape, dtype) per input, no batch dim
      "max_batch_size": 32,
      "points": [                              # one per profiled batch size, increasing
        {"batch_size": 1, "mean_us": 812.0, "p50_us": 805.5, "p99_us": 901.2, "samples": 10,
         "device_p50_us": 640.1, "l2": 0.09, "dram": 0.07}
      ],
      "intensity": {"l2": 0.31, "dram": 0.12}, # optional: default l2/dram of the points
      "memory_mb": 410.0                       # optional: device memory per lane holding it
    }

``l2`` and ``dram`` (optional, per point or as the entry's ``intensity``) are the fractions of
the GPU's L2 and DRAM bandwidth a batch of that size uses while it runs alone on a lane of that
share: the inputs of the interference models (``gpulanes.sim``) and predictors.

Latencies are what a batch costs on the lane, start to outputs ready (stacking, copies,
forward, splitting); ``device_p50_us`` (optional, GPU only) is the median of the same runs timed
with CUDA events. Batch sizes between points are interpolated by the core (linearly on p50), beyond the last
point extrapolated from the last two. A reader must reject a different ``schema`` or a newer
``version``; version 1 readers ignore unknown keys.

The profile cache stores one file per (model bytes, input signature, max batch size, device,
torch version, lane kind, SM share), so a second :meth:`Runtime.start` with the same model on
the same machine skips profiling. It lives in ``$GPULANES_CACHE_DIR`` or
``~/.cache/gpulanes/profiles``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch

from .errors import InvalidInput

__all__ = ["SCHEMA", "VERSION", "ProfileError", "load", "save", "validate", "make_entry",
           "find", "device_name", "model_hash", "default_cache_dir", "ProfileCache"]

SCHEMA = "gpulanes.profiles"
VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]
_POINT_KEYS = ("batch_size", "p50_us", "mean_us", "p99_us", "samples", "device_p50_us", "l2",
               "dram")


class ProfileError(InvalidInput):
    """A profile file or entry does not follow the schema."""


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def device_name(device: str) -> str:
    """A stable human-readable name for ``device`` ("cpu", "cuda:N"): the GPU's name, or for
    the CPU its model name and the number of intra-op threads (both change latencies)."""
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return torch.cuda.get_device_name(index)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def make_entry(model: str, points: Sequence[Dict[str, float]], *, model_hash: Optional[str],
               device: str, lane_kind: str, max_batch_size: int,
               inputs: Optional[Sequence[Sequence[Any]]] = None, sm_share: float = 1.0,
               sms: Optional[int] = None, torch_version: Optional[str] = torch.__version__,
               intensity: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    entry = {
        "model": model,
        "model_hash": model_hash,
        "device": device,
        "torch": torch_version,
        "lane_kind": lane_kind,
        "sm_share": float(sm_share),
        "sms": sms,
        "inputs": [[list(shape), str(dtype)] for shape, dtype in (inputs or [])],
        "max_batch_size": int(max_batch_size),
        "points": [{k: p[k] for k in _POINT_KEYS if k in p} for p in points],
    }
    if intensity is not None:
        entry["intensity"] = dict(intensity)
    _check_entry(entry, "entry")
    return entry


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_entry(e: Any, where: str) -> None:
    if not isinstance(e, dict):
        raise ProfileError(f"{where}: must be an object")
    for key, types in (("model", str), ("device", str), ("lane_kind", str),
                       ("sm_share", (int, float)), ("max_batch_size", int), ("points", list)):
        if not isinstance(e.get(key), types):
            raise ProfileError(f"{where}: '{key}' is missing or of the wrong type")
    if not _finite(e["sm_share"]) or not 0 < e["sm_share"] <= 1:
        raise ProfileError(f"{where}: sm_share must be in (0, 1], got {e['sm_share']}")
    if not e["points"]:
        raise ProfileError(f"{where}: 'points' is empty")
    last = 0
    for i, p in enumerate(e["points"]):
        here = f"{where}.points[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("batch_size"), int):
            raise ProfileError(f"{here}: needs an integer 'batch_size'")
        if p["batch_size"] <= last:
            raise ProfileError(f"{here}: batch sizes must increase")
        last = p["batch_size"]
        if not _finite(p.get("p50_us")) or not 0 < p["p50_us"] < 1e12:
            raise ProfileError(f"{here}: needs a finite 'p50_us' > 0")
        for k in _POINT_KEYS[2:]:
            if k in p and (not _finite(p[k]) or p[k] < 0):
                raise ProfileError(f"{here}: '{k}' must be a finite number >= 0")
    if "memory_mb" in e and (not _finite(e["memory_mb"]) or e["memory_mb"] < 0):
        raise ProfileError(f"{where}: 'memory_mb' must be a finite number >= 0")
    intensity = e.get("intensity")
    if intensity is not None and not (isinstance(intensity, dict) and all(
            _finite(v) and v >= 0 for v in intensity.values())):
        raise ProfileError(f"{where}: 'intensity' must map names to numbers")


def validate(doc: Any) -> Dict[str, Any]:
    """Returns ``doc`` if it follows the schema, else raises :class:`ProfileError`."""
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ProfileError(f"not a gpulanes profile file (schema must be {SCHEMA!r})")
    version = doc.get("version")
    if not isinstance(version, int) or version < 1:
        raise ProfileError("'version' must be a positive integer")
    if version > VERSION:
        raise ProfileError(f"profile file version {version} is newer than this gpulanes "
                           f"reads ({VERSION}); upgrade gpulanes")
    if not isinstance(doc.get("profiles"), list):
        raise ProfileError("'profiles' must be a list")
    for i, e in enumerate(doc["profiles"]):
        _check_entry(e, f"profiles[{i}]")
    return doc


def load(path: PathLike) -> Dict[str, Any]:
    """Reads and validates a profile file."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ProfileError(f"{path}: not JSON ({e})") from None
    try:
        return validate(doc)
    except ProfileError as e:
        raise ProfileError(f"{path}: {e}") from None


def save(path: PathLike, entries: Iterable[Dict[str, Any]], *, source: str = "measured",
         note: Optional[str] = None) -> Dict[str, Any]:
    """Writes ``entries`` as a profile file (atomically: readers never see half a file)."""
    doc: Dict[str, Any] = {"schema": SCHEMA, "version": VERSION, "created": _utc_now(),
                           "source": source}
    if note:
        doc["note"] = note
    doc["profiles"] = list(entries)
    validate(doc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return doc


def find(doc: Dict[str, Any], model: str, *, sm_share: Optional[float] = None,
         lane_kind: Optional[str] = None) -> List[Dict[str, Any]]:
    """The entries of ``doc`` for ``model`` (and, if given, that SM share / lane kind)."""
    return [e for e in doc["profiles"] if e["model"] == model
            and (sm_share is None or abs(e["sm_share"] - sm_share) < 1e-9)
            and (lane_kind is None or e["lane_kind"] == lane_kind)]


def default_cache_dir() -> Path:
    env = os.environ.get("GPULANES_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "gpulanes"
    return base / "profiles"


class ProfileCache:
    """Profiles keyed by what they depend on; one small profile file per key."""

    def __init__(self, directory: PathLike) -> None:
        self.directory = Path(directory)

    @staticmethod
    def key(entry: Dict[str, Any]) -> str:
        fields = {k: entry.get(k) for k in ("model_hash", "inputs", "max_batch_size", "device",
                                            "torch", "lane_kind", "sm_share", "sms")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]

    def path(self, entry: Dict[str, Any]) -> Path:
        return self.directory / f"{self.key(entry)}.json"

    def get(self, entry: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The cached entry matching ``entry``'s key fields (its points are ignored), or None.
        A missing, unreadable or invalid file is a miss."""
        if entry.get("model_hash") is None:
            return None
        path = self.path(entry)
        try:
            doc = load(path)
        except FileNotFoundError:
            return None
        except (OSError, ProfileError) as e:
            # Never fatal, never used: the profile is measured again and the file replaced.
            warnings.warn(f"gpulanes: ignoring a broken profile cache file ({e})")
            return None
        for e in doc["profiles"]:
            if self.key(e) == self.key(entry):
                return e
        return None

    def put(self, entry: Dict[str, Any]) -> Optional[Path]:
        if entry.get("model_hash") is None:
            return None
        path = self.path(entry)
        save(path, [entry], source="measured", note="gpulanes profile cache entry")
        return path
