"""The built-in profile set of the simulator: the gpu-let model zoo on an H100, **synthetic**.

Until measured H100 profiles replace them (issue 6 writes those to ``benchmarks/profiles/``),
these profiles are derived from a small latency model with stated assumptions. They are
plausible in shape and order of magnitude, not measurements; every entry says
``"source": "synthetic"``.

Model of one batch of ``b`` samples on a lane with a fraction ``s`` of the GPU's SMs:

- A model at batch ``b`` can keep at most a fraction ``u(b)`` of the SMs busy:
  ``u(b) = min(1, u1 + (1 - u1) * (b - 1) / (sat - 1))``, from ``u1`` at batch 1 up to the
  whole GPU at batch ``sat``.
- ``latency(b, s) = fixed + per_sample * b / min(s, u(b))`` where ``fixed`` is the part that
  does not shrink with SMs (kernel launches, small serial kernels) and
  ``per_sample = (L1 - fixed) * u1`` makes ``latency(1, 1) = L1``.
- While it runs alone, the batch uses ``l2_peak * min(s, u(b))`` of the GPU's L2 bandwidth and
  ``dram_peak * min(s, u(b))`` of its DRAM bandwidth: bandwidth follows the SMs it keeps busy.
- ``memory_mb``: weights plus workspace at batch 32, fp16.

The per-model parameters (``L1`` = batch-1 latency on a whole H100 in ms, ``fixed``, ``u1``,
``sat``, intensities, memory) are our estimates for fp16 PyTorch inference, scaled from public
V100/A100 numbers; the SLOs are the gpu-let paper's (``shared/REFERENCES.md``).
"""

from __future__ import annotations

from typing import Any, Dict, List

__all__ = ["MODELS", "SLO_MS", "H100_SMS", "H100_MEMORY_GB", "SHARES", "BATCH_SIZES", "profiles",
           "latency_ms"]

H100_SMS = 132
H100_MEMORY_GB = 80.0
SHARES = tuple(round(0.1 * k, 1) for k in range(1, 11))  # 10% .. 100%
BATCH_SIZES = tuple(range(1, 33))

#            L1 ms  fixed  u1    sat  l2    dram  memory_mb
MODELS: Dict[str, Dict[str, float]] = {
    "lenet":         dict(L1=0.15, fixed=0.12, u1=0.05, sat=256, l2=0.05, dram=0.02, memory_mb=8),
    "googlenet":     dict(L1=1.8, fixed=1.2, u1=0.15, sat=64, l2=0.35, dram=0.20, memory_mb=220),
    "resnet50":      dict(L1=2.0, fixed=0.8, u1=0.20, sat=64, l2=0.45, dram=0.35, memory_mb=420),
    "ssd_mobilenet": dict(L1=2.5, fixed=1.5, u1=0.15, sat=64, l2=0.30, dram=0.30, memory_mb=320),
    "vgg16":         dict(L1=2.5, fixed=0.4, u1=0.50, sat=16, l2=0.60, dram=0.55, memory_mb=1300),
    "mnasnet":       dict(L1=1.5, fixed=1.1, u1=0.10, sat=128, l2=0.25, dram=0.20, memory_mb=160),
    "mobilenet_v2":  dict(L1=1.4, fixed=1.0, u1=0.10, sat=128, l2=0.25, dram=0.25, memory_mb=160),
    "densenet161":   dict(L1=5.5, fixed=3.5, u1=0.20, sat=64, l2=0.40, dram=0.30, memory_mb=650),
    "bert":          dict(L1=2.2, fixed=0.8, u1=0.30, sat=32, l2=0.55, dram=0.45, memory_mb=1100),
}

# gpu-let's per-model SLOs (ms).
SLO_MS = {"lenet": 5, "googlenet": 66, "resnet50": 108, "ssd_mobilenet": 202, "vgg16": 142,
          "mnasnet": 62, "mobilenet_v2": 64, "densenet161": 202, "bert": 22}


def _usable(p: Dict[str, float], b: int) -> float:
    return min(1.0, p["u1"] + (1.0 - p["u1"]) * (b - 1) / (p["sat"] - 1))


def latency_ms(model: str, b: int, share: float) -> float:
    """The synthetic solo latency of a batch of ``b`` on a lane with ``share`` of the SMs."""
    p = MODELS[model]
    per_sample = (p["L1"] - p["fixed"]) * p["u1"]
    return p["fixed"] + per_sample * b / min(share, _usable(p, b))


def profiles() -> Dict[str, Any]:
    """The whole set as a profile document (``gpulanes.profiles`` schema, version 1)."""
    from .. import profiles as schema

    entries: List[Dict[str, Any]] = []
    for model, p in MODELS.items():
        for share in SHARES:
            points = []
            for b in BATCH_SIZES:
                busy = min(share, _usable(p, b))
                us = round(latency_ms(model, b, share) * 1e3, 3)
                points.append({"batch_size": b, "p50_us": us, "mean_us": us, "p99_us": us,
                               "samples": 0, "l2": round(p["l2"] * busy, 4),
                               "dram": round(p["dram"] * busy, 4)})
            entries.append({
                "model": model, "model_hash": None, "device": "NVIDIA H100 (synthetic)",
                "torch": None, "lane_kind": "sim", "sm_share": share,
                "sms": round(share * H100_SMS), "inputs": [], "max_batch_size": 32,
                "points": points, "memory_mb": p["memory_mb"]})
    doc = {"schema": schema.SCHEMA, "version": schema.VERSION, "created": "2026-11-22T00:00:00Z",
           "source": "synthetic",
           "note": "gpu-let model zoo on an H100, from the latency model in gpulanes.sim.zoo; "
                   "not measured", "profiles": entries}
    return schema.validate(doc)
