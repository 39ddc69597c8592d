"""The planner driving a real runtime through a rate change (issue 7, item 6): a 3-model mix
(ResNet-50, MobileNetV2, a small transformer encoder; random weights) whose rates triple
halfway, served two ways with the same open-loop workload:

- "single lane": one whole-GPU lane, no planner (temporal sharing only);
- "planner": ``Runtime(partitioning="green", replan={"every_s": 5, "drift": 0.5})``: the core
  plans lanes from the measured rates and re-lays them out while serving; what it cannot place
  is shed (``Overloaded``).

SLOs are 10x each model's measured batch-1 latency (at least 10 ms); the rates are set from the
measured batch throughput so that the first half loads one GPU to about a third and the second
half to about its capacity. Per-SM-share planner profiles come from ``--profiles`` (the file
``benchmarks/gpu_partitions.py`` writes) when given, else from the whole-GPU profile measured at
start (smaller lanes extrapolated as latency / share). Reports attainment and goodput per
2-second window and overall; JSON and a plot.

On the CPU (``--device cpu``, for checking the script) the models are smaller and the planner
packs them into CPU lanes.

    python benchmarks/gpu_plan.py [--device cuda] [--seconds 60] [--profiles FILE] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Dict

import torch
import torchvision

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, traced, write_result  # noqa: E402
from policies import TextEncoder  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
WINDOW_S = 2.0


def build(device: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    px = 224 if device == "cuda" else 64
    specs = {"resnet50": (torchvision.models.resnet50(weights=None) if device == "cuda"
                          else torchvision.models.resnet18(weights=None),
                          torch.randn(1, 3, px, px)),
             "mobilenet_v2": (torchvision.models.mobilenet_v2(weights=None),
                              torch.randn(1, 3, px, px)),
             "encoder": (TextEncoder(), torch.randint(0, 1000, (1, 32)))}
    return traced(specs)


def runtime(device: str, models, slo, profiles, planner: bool, profile_file) -> gl.Runtime:
    kw: Dict[str, Any] = {"trace": True}
    if planner:
        kw["replan"] = {"every_s": 5.0, "drift": 0.5}
        kw["partitioning"] = "green" if device == "cuda" else "auto"
    else:
        kw["partitioning"] = "none"
    if device == "cpu":
        kw["cpu_lanes"] = 2 if planner else 1
    rt = gl.Runtime(device=device, **kw)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=slo[name], example_inputs=example, max_batch_size=16)
        if profiles:
            rt.set_profile(name, profiles[name])
    if planner and profile_file:
        rt.load_planner_profiles(profile_file)
    return rt


def windows(df, t0: float, seconds: float) -> Dict[str, Any]:
    df = df.assign(w=((df["arrival_s"] - t0) // WINDOW_S).astype(int))
    att, good = [], []
    for w in range(int(seconds // WINDOW_S)):
        part = df[df["w"] == w]
        att.append(float((part["outcome"] == "met").mean()) if len(part) else None)
        good.append(float((part["outcome"] == "met").sum()) / WINDOW_S)
    return {"t_s": [WINDOW_S * w for w in range(len(att))], "attainment": att, "goodput": good}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--profiles", type=Path, default=None, help="per-share profiles (simulator schema)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.device == "cuda" and not (torch.cuda.is_available() and gl._C.cuda_lane_support()):
        raise SystemExit("--device cuda needs a CUDA GPU and a CUDA build of gpulanes")
    models = build(args.device)

    # Calibrate on one whole-device lane: batch-1 latency (SLOs) and best batch throughput.
    probe = gl.Runtime(device=args.device, profile_cache=False)
    for name, (module, example) in models.items():
        probe.register(name, module, slo_ms=10_000, example_inputs=example, max_batch_size=16)
    probe.start(progress=False)
    profiles = {n: probe.profile(n) for n in models}
    probe.shutdown()
    slo, capacity = {}, {}
    for name, pts in profiles.items():
        l1 = next(p["p50_us"] for p in pts if p["batch_size"] == 1) / 1e3
        slo[name] = max(10.0, round(10 * l1, 1))
        capacity[name] = max(p["batch_size"] / (p["p50_us"] / 1e6) for p in pts)
    # Each model gets a third of the device: ~1/3 loaded in the first half, ~full in the second.
    low = {n: capacity[n] / 3 / 3 for n in models}
    high = {n: 3 * r for n, r in low.items()}
    half = args.seconds / 2
    work = wl.Steps([(half, low), (half, high)], cv=1.0, seed=7)
    inputs = {n: (ex[0],) for n, (_, ex) in models.items()}

    results: Dict[str, Any] = {"slo_ms": slo, "capacity_per_s": capacity, "low": low, "high": high,
                               "seconds": args.seconds, "window_s": WINDOW_S,
                               "profiles": str(args.profiles) if args.profiles else "measured"}
    for label, planner in (("single lane", False), ("planner", True)):
        rt = runtime(args.device, models, slo, profiles, planner, args.profiles)
        rt.start(progress=False)
        summary = wl.drive(rt, work, inputs, warmup_s=0.0, progress=False)
        replans = rt.replans()
        lanes = rt.lanes()
        rt.shutdown()
        df = rt.trace_frame()
        t0 = float(df["arrival_s"].min())
        per = summary["models"]
        met = sum(m["met"] for m in per.values())
        n = sum(m["requests"] for m in per.values())
        results[label] = {"attainment": met / n if n else 1.0,
                          "goodput": sum(m["goodput"] for m in per.values()),
                          "models": per, "over_time": windows(df, t0, args.seconds),
                          "replans": replans, "final_lanes": lanes}
        print(f"{label:<12} attainment {100 * met / max(1, n):6.2f}%  goodput "
              f"{results[label]['goodput']:8.1f}/s  re-plans {len(replans)}  "
              f"layout changes {sum(e['changed'] for e in replans)}  lanes at the end {len(lanes)}",
              flush=True)
    path = write_result("gpu-plan", environment(args.device), results, args.out or RESULTS)
    plot(results, path.with_suffix(".png"), half)
    print(f"wrote {path}")


def plot(results: Dict[str, Any], path: Path, step_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for label in ("single lane", "planner"):
        ot = results[label]["over_time"]
        ax[0].plot(ot["t_s"], [100 * a if a is not None else None for a in ot["attainment"]],
                   label=label)
        ax[1].plot(ot["t_s"], ot["goodput"], label=label)
    for a in ax:
        a.axvline(step_s, color="k", ls=":")
    ax[0].set_ylabel("SLO attainment per window (%)")
    ax[1].set_ylabel("goodput (met requests/s)")
    ax[1].set_xlabel("seconds (rates triple at the dotted line)")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
