"""Four models on one GPU, four ways of sharing it (issue 6, item 5): ResNet-50, MobileNetV2,
VGG-16 and a BERT-base-sized encoder (fp16, random weights) under the same open-loop Poisson
mix (a quarter of the rate each), served by

- "temporal": one whole-GPU lane (partitioning "none": batches take turns);
- "streams": one lane per model, concurrent CUDA streams without SM limits;
- "green": one green-context lane per model, SMs split in proportion to each model's GPU time
  per request at its largest batch (measured at start), in whole groups of the device's
  green-context split (`gl._C.green_sm_split`), within the SMs that split offers;
- "mps": one MPS lane per model (a worker process each, an MPS client whose active-thread
  percentage is its share), with the same SM split as "green" (recorded as skipped where
  MPS is unavailable).

By default (the GPU proof's call 2) each configuration starts ONE runtime and serves it at a
few fixed total rates (``--rates``: fractions of the whole GPU's capacity with perfect batching,
estimated from the measured profiles): per rate, every model's SLO attainment and the goodput;
the results file is rewritten after each configuration, most telling first (temporal, green,
mps, streams), so a run cut short keeps what it reached. With ``--search`` it finds, per
configuration, the highest total rate at which every model keeps >= 99% SLO attainment
(doubling, then bisection; a runtime per point: minutes on a GPU). SLOs are 10x each model's
batch-1 latency on the whole GPU (at least 10 ms). Target (issue 6): green holds >= 1.5x the
rate of temporal. Arrivals: Poisson.

On the CPU (``--device cpu``, for checking the script) the models are small stand-ins and every
configuration is CPU lanes.

    python benchmarks/gpu_mix.py [--device cuda] [--seconds 3] [--rates 0.4 0.7 1.0] [--out DIR]
    python benchmarks/gpu_mix.py --search [--seconds 6] [--steps 6] [--grow 64]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (RESULTS, environment, measured_profiles, peak_search, traced,  # noqa: E402
                     write_result)

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
MAX_BATCH = 16


def build(device: str) -> Dict[str, Any]:
    if device == "cuda":
        from gpu_partitions import models

        return models(["resnet50", "mobilenet_v2", "vgg16", "bert"])
    import torchvision
    from policies import TextEncoder

    torch.manual_seed(0)
    img = torch.randn(1, 3, 64, 64)
    return traced({"resnet50": (torchvision.models.resnet18(weights=None), img),
                   "mobilenet_v2": (torchvision.models.mobilenet_v2(weights=None), img),
                   "vgg16": (torchvision.models.squeezenet1_0(weights=None), img),
                   "bert": (TextEncoder(), torch.randint(0, 1000, (1, 32)))})


def green_split(cost: Dict[str, float], sms: int, granule: int = 8) -> Dict[str, int]:
    """SMs per model in proportion to `cost`, multiples of `granule`, at least one each, at
    most `sms` in all (the SMs the device's green-context split offers)."""
    total = sum(cost.values())
    share = {m: max(granule, int(sms * c / total) // granule * granule) for m, c in cost.items()}
    while sum(share.values()) > sms:  # rounding up the smallest ones can overshoot
        biggest = max(share, key=share.get)
        share[biggest] -= granule
    return share


def layouts(device: str, names: List[str], cost: Dict[str, float]):
    """(label, Runtime kwargs, set_lanes layout or None), the baseline first, then the
    partitions the GPU proof is for, then plain streams."""
    if device == "cpu":
        yield "temporal", {"cpu_lanes": 1}, None
        yield "streams", {}, [{"device": "cpu", "models": [n]} for n in names]
        return
    yield "temporal", {"partitioning": "none"}, None
    if not gl._C.green_context_support(0):  # else recorded as skipped by main(), MPS too
        device_split = gl._C.green_sm_split(0)
        split = green_split(cost, device_split["usable_sms"], device_split["group_sms"])
        layout = [{"device": 0, "sms": split[n], "models": [n]} for n in names]
        yield "green", {"partitioning": "green"}, layout
        if mps_missing() is None:  # MPS takes green's split, to compare like with like
            yield "mps", {"partitioning": "mps"}, layout
    yield "streams", {"partitioning": "streams"}, [{"device": 0, "models": [n]} for n in names]


def mps_missing() -> Optional[str]:
    """Why MPS lanes cannot run here, or None."""
    import os
    import shutil

    running = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control")
    if running.exists() or shutil.which("nvidia-cuda-mps-control"):
        return None
    return "no MPS daemon runs and nvidia-cuda-mps-control is not on PATH"


def started(device, models, slo, kw, layout):
    rt = gl.Runtime(device=device, **kw)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=slo[name], example_inputs=example,
                    max_batch_size=MAX_BATCH)
    if layout:
        rt.set_lanes(layout)
    return rt.start(progress=False)


def drive_at(rt, models, rate: float, seconds: float) -> Dict[str, Any]:
    """Poisson arrivals at `rate` in all (a quarter per model) for `seconds` on a started runtime."""
    work = wl.Poisson({n: rate / len(models) for n in models}, seconds, seed=int(rate) % 9973)
    out = wl.drive(rt, work, {n: (ex[0],) for n, (_, ex) in models.items()},
                   warmup_s=min(1.0, seconds / 3), progress=False)
    per = out["models"]
    return {"rate": rate, "worst_attainment": min(m["attainment"] for m in per.values()),
            "goodput": sum(m["goodput"] for m in per.values()),
            "attainment": {n: m["attainment"] for n, m in per.items()}}


def at_fixed_rates(device, models, slo, kw, layout, rates, seconds) -> Dict[str, Any]:
    rt = started(device, models, slo, kw, layout)
    try:
        points = [drive_at(rt, models, rate, seconds) for rate in rates]
        lanes = rt.lanes()
    finally:
        rt.shutdown()
    held = [p["rate"] for p in points if p["worst_attainment"] >= 0.99]
    return {"points": points, "lanes": lanes, "max_rate_held": max(held, default=0.0)}


def searched(device, models, slo, kw, layout, start, seconds, steps, grow) -> Dict[str, Any]:
    def point(rate):
        rt = started(device, models, slo, kw, layout)
        try:
            return {**drive_at(rt, models, rate, seconds), "lanes": rt.lanes()}
        finally:
            rt.shutdown()

    res = peak_search(point, lambda row: row["worst_attainment"] >= 0.99, start, steps,
                      grow_limit=grow)
    res["max_rate"] = res.pop("max_load")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seconds", type=float, default=3.0, help="per load point")
    ap.add_argument("--rates", type=float, nargs="+", default=[0.4, 0.7, 1.0],
                    help="total rates, as fractions of the estimated whole-GPU capacity")
    ap.add_argument("--search", action="store_true", help="search each configuration's peak")
    ap.add_argument("--steps", type=int, default=6, help="--search: bisection steps")
    ap.add_argument("--grow", type=float, default=64.0,
                    help="--search: the rate doubles up to this factor over its start")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and gl._C.cuda_lane_support()):
        raise SystemExit("--device cuda needs a CUDA GPU and a CUDA build of gpulanes")
    models = build(args.device)
    names = list(models)

    # Calibrate on one whole-device lane: SLOs from batch-1 latency, GPU time per request.
    profiles = measured_profiles(args.device, models, MAX_BATCH)
    slo, cost = {}, {}
    for name in names:
        pts = profiles[name]
        l1 = next(p["p50_us"] for p in pts if p["batch_size"] == 1) / 1e3
        slo[name] = max(10.0, round(10 * l1, 1))
        cost[name] = min(p["p50_us"] / p["batch_size"] for p in pts) / 1e6  # s per request
    # What one device serves of the mix with perfect batching, one after another.
    capacity = len(names) / sum(cost.values())
    rates = [round(f * capacity, 1) for f in args.rates]

    results: Dict[str, Any] = {"slo_ms": slo, "seconds_per_request": cost, "max_batch": MAX_BATCH,
                               "seconds_per_point": args.seconds, "arrivals": "poisson",
                               "capacity_estimate": capacity, "configs": {}}
    if not args.search:
        results["rates"] = rates
    env = environment(args.device)
    if args.device == "cuda" and gl._C.green_context_support(0):
        results["configs"]["green"] = {"skipped": gl._C.green_context_support(0)}
        results["configs"]["mps"] = {"skipped": "takes green's split, which this device lacks"}
    elif args.device == "cuda" and mps_missing():
        results["configs"]["mps"] = {"skipped": mps_missing()}
    path = write_result("gpu-mix", env, results, args.out or RESULTS)
    for label, kw, layout in layouts(args.device, names, cost):
        try:
            if args.search:
                res = searched(args.device, models, slo, kw, layout, capacity / 4, args.seconds,
                               args.steps, args.grow)
            else:
                res = at_fixed_rates(args.device, models, slo, kw, layout, rates, args.seconds)
        except gl.GpuLanesError as e:  # one configuration that cannot run does not stop the rest
            results["configs"][label] = {"runtime": kw, "layout": layout, "error": str(e)[:500]}
            print(f"{label:<9} failed: {e}", flush=True)
            path = write_result("gpu-mix", env, results, args.out or RESULTS)
            continue
        results["configs"][label] = {"runtime": kw, "layout": layout, **res}
        if args.search:
            good = res["at_max"]["goodput"] if res["at_max"] else 0.0
            print(f"{label:<9} max rate at >= 99%: {res['max_rate']:8.1f}/s  goodput there "
                  f"{good:8.1f}/s", flush=True)
        else:
            for p in res["points"]:
                print(f"{label:<9} rate {p['rate']:8.1f}/s: worst attainment "
                      f"{p['worst_attainment']:.3f}, goodput {p['goodput']:8.1f}/s", flush=True)
        base = results["configs"]["temporal"]
        for r in results["configs"].values():
            if args.search and "max_rate" in r and base["max_rate"] > 0:
                r["vs_temporal"] = r["max_rate"] / base["max_rate"]
            elif "points" in r:  # goodput against temporal's at each rate
                r["goodput_vs_temporal"] = [p["goodput"] / b["goodput"] if b["goodput"] else None
                                            for p, b in zip(r["points"], base["points"])]
        path = write_result("gpu-mix", env, results, args.out or RESULTS)  # as it goes
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
