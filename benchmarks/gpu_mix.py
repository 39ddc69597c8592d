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

For each, the highest total rate at which every model keeps >= 99% SLO attainment (bisection
over short runs) and the goodput there. SLOs are 10x each model's batch-1 latency on the whole
GPU (at least 10 ms). Target (issue 6): green holds >= 1.5x the rate of temporal.

On the CPU (``--device cpu``, for checking the script) the models are small stand-ins and every
configuration is CPU lanes.

    python benchmarks/gpu_mix.py [--device cuda] [--seconds 6] [--steps 6] [--out DIR]
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
    """(label, Runtime kwargs, set_lanes layout or None)."""
    if device == "cpu":
        yield "temporal", {"cpu_lanes": 1}, None
        yield "streams", {}, [{"device": "cpu", "models": [n]} for n in names]
        return
    yield "temporal", {"partitioning": "none"}, None
    yield "streams", {"partitioning": "streams"}, [{"device": 0, "models": [n]} for n in names]
    if gl._C.green_context_support(0):
        return  # recorded as skipped by main(), MPS too: it takes green's split to compare
    device_split = gl._C.green_sm_split(0)
    split = green_split(cost, device_split["usable_sms"], device_split["group_sms"])
    layout = [{"device": 0, "sms": split[n], "models": [n]} for n in names]
    yield "green", {"partitioning": "green"}, layout
    if mps_missing() is None:
        yield "mps", {"partitioning": "mps"}, layout


def mps_missing() -> Optional[str]:
    """Why MPS lanes cannot run here, or None."""
    import os
    import shutil

    running = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"), "control")
    if running.exists() or shutil.which("nvidia-cuda-mps-control"):
        return None
    return "no MPS daemon runs and nvidia-cuda-mps-control is not on PATH"


def serve(device, models, slo, kw, layout, rate: float, seconds: float) -> Dict[str, Any]:
    rt = gl.Runtime(device=device, **kw)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=slo[name], example_inputs=example,
                    max_batch_size=MAX_BATCH)
    if layout:
        rt.set_lanes(layout)
    rt.start(progress=False)
    work = wl.Poisson({n: rate / len(models) for n in models}, seconds, seed=int(rate) % 9973)
    out = wl.drive(rt, work, {n: (ex[0],) for n, (_, ex) in models.items()},
                   warmup_s=min(1.0, seconds / 3),
                   progress=False)
    lanes = rt.lanes()
    rt.shutdown()
    per = out["models"]
    return {"rate": rate, "worst_attainment": min(m["attainment"] for m in per.values()),
            "goodput": sum(m["goodput"] for m in per.values()),
            "attainment": {n: m["attainment"] for n, m in per.items()}, "lanes": lanes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seconds", type=float, default=6.0, help="per load point")
    ap.add_argument("--steps", type=int, default=6, help="bisection steps")
    ap.add_argument("--grow", type=float, default=64.0,
                    help="the search doubles the rate up to this factor over its start")
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
    # Start the search at the rate one device would serve with perfect batching, / 4.
    start = len(names) / sum(cost.values()) / 4

    results: Dict[str, Any] = {"slo_ms": slo, "seconds_per_request": cost, "max_batch": MAX_BATCH,
                               "seconds_per_point": args.seconds, "configs": {}}
    env = environment(args.device)
    if args.device == "cuda" and gl._C.green_context_support(0):
        results["configs"]["green"] = {"skipped": gl._C.green_context_support(0)}
        results["configs"]["mps"] = {"skipped": "takes green's split, which this device lacks"}
    elif args.device == "cuda" and mps_missing():
        results["configs"]["mps"] = {"skipped": mps_missing()}
    for label, kw, layout in layouts(args.device, names, cost):
        res = peak_search(lambda rate: serve(args.device, models, slo, kw, layout, rate, args.seconds),
                          lambda row: row["worst_attainment"] >= 0.99, start, args.steps,
                          grow_limit=args.grow)
        res["max_rate"] = res.pop("max_load")
        results["configs"][label] = {"runtime": kw, "layout": layout, **res}
        good = res["at_max"]["goodput"] if res["at_max"] else 0.0
        print(f"{label:<9} max rate at >= 99%: {res['max_rate']:8.1f}/s  goodput there "
              f"{good:8.1f}/s", flush=True)
        base = results["configs"]["temporal"]["max_rate"]
        for r in results["configs"].values():
            if "max_rate" in r and base > 0:
                r["vs_temporal"] = r["max_rate"] / base
        path = write_result("gpu-mix", env, results, args.out or RESULTS)  # as it goes
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
