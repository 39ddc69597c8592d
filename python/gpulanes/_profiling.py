"""The latency-profile half of Runtime: where each model's profile comes from (given, the
profile cache, or measured at start), keyed by the device, lane kind and SM share it was measured
at, and saving or loading profile files (gpulanes.profiles)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from . import _C
from . import profiles as _profiles
from .errors import UnmeetableSlo


class Profiling:
    """Mixed into Runtime: it provides ``_core``, ``_cache``, ``_layout``, ``_profile_keys``,
    ``_profile_source``, ``_slo_ms``, ``device`` and ``partitioning``."""

    def _load_partition_profiles(self, lane: Dict[str, Any]) -> set:
        """Before start: cached profiles of the green-lane sizes the layout will have; returns
        the (model, SMs) found."""
        found = set()
        for name, sms in self._partition_sizes():
            hit = self._cache.get(self._partition_entry(name, lane, sms, []))
            if hit is not None:
                self._core.set_profile(name, hit["points"], sms=sms)
                found.add((name, sms))
        return found

    def _partition_sizes(self) -> List[tuple]:
        """(model, SMs) of each green lane the layout makes: whole groups of the device's split."""
        if self.partitioning not in ("green", "auto") or not _C.cuda_lane_support():
            return []
        out = set()
        for spec in self._layout:
            if not spec["device"].startswith("cuda") or spec["sms"] <= 0:
                continue
            index = int(spec["device"].split(":")[1])
            if _C.green_context_support(index):
                return []
            split = _C.green_sm_split(index)
            if spec["sms"] >= split["device_sms"]:
                continue
            sms = -(-spec["sms"] // split["group_sms"]) * split["group_sms"]
            for name in spec["models"] or list(self._slo_ms):
                out.add((name, sms))
        return sorted(out)

    def _cache_profiles(self, lane: Dict[str, Any], measured: Sequence[str]) -> None:
        """Writes the profiles measured so far to the cache, each keyed by the SM share it was
        measured at: a model's own (whole device, or the partition lane it had to use) and every
        green-lane size's. Entries already cached are left as they are."""
        if self._cache is None:
            return
        entries = []
        for name in measured:
            origin = self._core.profile_origin(name)
            if origin["sms"] > 0:
                entries.append(self._partition_entry(name, lane, origin["sms"], self.profile(name)))
            else:
                entries.append(self._profile_entry(name, lane, self.profile(name)))
        for p in self._core.partition_profiles():
            entries.append(self._partition_entry(p["model"], lane, p["sms"], p["points"]))
        try:
            for entry in entries:
                if self._cache.get(entry) is None:
                    self._cache.put(entry)
        except OSError as e:  # a read-only home must not stop serving
            import warnings

            warnings.warn(f"gpulanes: profile cache not written: {e}")

    def _profile_lane(self) -> Dict[str, Any]:
        """Device name and lane kind the profiles of this runtime are measured on."""
        dev = self.device
        if dev == "auto":
            dev = "cuda:0" if _C.cuda_lane_support() else "cpu"
        elif dev == "cuda":
            dev = "cuda:0"
        if dev.startswith("cuda") and not _C.cuda_lane_support():
            return {"device": dev, "lane_kind": "cuda-stream"}  # start() will refuse it
        return {"device": _profiles.device_name(dev),
                "lane_kind": "cpu" if dev == "cpu" else "cuda-stream"}

    def _profile_entry(self, name: str, lane: Dict[str, Any],
                       points: Sequence[Dict[str, float]]) -> Dict[str, Any]:
        return {**self._profile_keys[name], **lane, "torch": torch.__version__, "sm_share": 1.0,
                "sms": None, "points": list(points)}

    def _partition_entry(self, name: str, lane: Dict[str, Any], sms: int,
                         points: Sequence[Dict[str, float]]) -> Dict[str, Any]:
        """A profile measured on a partition lane of ``sms`` SMs (the runtime's first GPU): a
        green one, or an MPS client's share."""
        total = torch.cuda.get_device_properties(0).multi_processor_count
        mps = self.partitioning == "mps" or (self.partitioning == "auto"
                                             and self.isolation == "process")
        return {**self._profile_entry(name, lane, points),
                "lane_kind": "cuda-mps" if mps else "cuda-green",
                "sm_share": min(1.0, sms / total), "sms": int(sms)}

    def profile_source(self, model: str) -> Optional[str]:
        """Where ``model``'s latency profile came from: ``"given"`` (:meth:`set_profile` or
        :meth:`load_profiles`), ``"cache"``, ``"measured"``, or None before :meth:`start`."""
        return self._profile_source.get(model)

    def save_profiles(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """After :meth:`start`: writes every model's profile to ``path`` in the schema of
        :mod:`gpulanes.profiles` (also what the simulator reads)."""
        lane = self._profile_lane()
        _profiles.save(path, [self._profile_entry(n, lane, self.profile(n)) for n in self._slo_ms])

    def load_profiles(self, path: Union[str, "os.PathLike[str]"]) -> List[str]:
        """Before :meth:`start`: uses the profiles in ``path`` for the registered models they
        name, instead of measuring them; returns those models. Raises :class:`ProfileError`
        (an :class:`InvalidInput`) for a file that breaks the schema or an entry whose model
        hash or input signature differs from the registered model's."""
        doc = _profiles.load(path)
        used = []
        for e in doc["profiles"]:
            key = self._profile_keys.get(e["model"])
            if key is None or e["sm_share"] != 1.0:
                continue
            for field in ("model_hash", "inputs"):
                if e.get(field) not in (None, []) and e.get(field) != key[field]:
                    raise _profiles.ProfileError(
                        f"{path}: the profile of {e['model']!r} was measured for a different "
                        f"model ({field} differs)")
            self.set_profile(e["model"], e["points"])
            used.append(e["model"])
        return used

    def profile(self, model: str, lane: Optional[int] = None) -> List[Dict[str, float]]:
        """The latency profile ``model`` is scheduled with: per profiled batch size its mean,
        p50 and p99 latency (microseconds, stack + forward + split on one lane) and samples.
        With ``lane`` (an index of :meth:`lanes`), the one that lane uses: a GPU partition lane
        has its own, measured at start at its SM count."""
        return self._core.profile(model, -1 if lane is None else int(lane))

    def set_profile(self, model: str, points: Sequence[Dict[str, float]]) -> None:
        """Before :meth:`start`: use these points (``batch_size``, ``p50_us``; optionally
        ``mean_us``, ``p99_us``, ``samples``) instead of measuring ``model``'s profile."""
        self._core.set_profile(model, list(points))
        self._profile_source[model] = "given"

    def _warn_unmeetable_slos(self) -> None:
        """At start: a model whose SLO is below its batch-1 latency on every lane that serves it
        would have every request refused (DeadlineExceeded at submit); say so once, naming the
        model and both numbers, instead of leaving the user to find out request by request."""
        import warnings

        lanes = self._core.lanes()
        for name, slo_ms in self._slo_ms.items():
            fastest = None
            for i, lane in enumerate(lanes):
                if name not in lane["models"]:
                    continue
                for p in self._core.profile(name, i):
                    if p["batch_size"] == 1:
                        ms = p["p50_us"] / 1e3
                        fastest = ms if fastest is None else min(fastest, ms)
            if fastest is not None and slo_ms < fastest:
                warnings.warn(f"model {name!r}: slo_ms={slo_ms:g} is below its batch-1 latency "
                              f"({fastest:.3g} ms at the median) on every lane that serves it: "
                              "requests with that deadline will be refused", UnmeetableSlo,
                              stacklevel=3)
