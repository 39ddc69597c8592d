"""What process lanes cost: the same CPU lane in the runtime's process (isolation="thread") and
in a worker process (isolation="process"), and how long a killed worker takes to come back.

One CPU lane, one intra-op thread, max batch 16. Per mode:

- the hop by itself: `infer()` latency of a tiny elementwise model (x * 2 + 1) on a 64-float
  sample and on a ResNet-sized one (3 x 224 x 224 floats, 588 KiB in and out), p50/p99 over
  --requests sequential calls (closed loop, one request at a time, so the difference between the
  modes is the round trip to the worker and the copies through shared memory);
- a CNN (MobileNetV3-Small at 96x96): its profile (p50 at batch 1 and 16 over --profile-reps
  runs, measured through the lane, the hop included), its saturated throughput (rounds of 16
  requests submitted at once, each waited for, --seconds) and its peak rate: the highest open-loop Poisson rate of
  which 99% is met (SLO 100 ms, --seconds per run, the first half second excluded; peak
  search). The peak rate follows the profile: a profile measured high makes the deadline
  policy admit and batch less, so both modes measure it over 25 runs per batch size (with the
  default 5, one mode's p50 at batch 1 came out 1.5 ms high in some starts here);
- process mode only: a worker killed with SIGKILL while idle, then the time until the next
  request is answered (a new worker started and the lane's models loaded into it).

Each mode is started --reps times, alternating (this VM's speed drifts by a fifth from one start
to the next); medians are reported.

Targets (issue 17, this 2-core machine): at most 50 us added per batch at p50 for a small
tensor, at most 5% lower peak rate for the CNN.

    python benchmarks/process_lanes.py [--requests 2000] [--seconds 3] [--reps 3] [--profile-reps 25]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, mobilenet_v3_96, peak_search, write_result  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
SLO_MS = 100.0


class Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


def latency_us(rt: "gl.Runtime", model: str, x: torch.Tensor, n: int) -> dict:
    for _ in range(min(200, n)):
        rt.infer(model, x)
    lat = []
    for _ in range(n):
        a = time.perf_counter_ns()
        rt.infer(model, x)
        lat.append((time.perf_counter_ns() - a) / 1e3)
    return {"p50": round(float(np.percentile(lat, 50)), 1),
            "p99": round(float(np.percentile(lat, 99)), 1)}


def peak_rate(rt: "gl.Runtime", sample: torch.Tensor, seconds: float) -> dict:
    def run(rate: float) -> dict:
        out = wl.drive(rt, wl.Poisson({"mobilenet": rate}, seconds, seed=int(rate)),
                       {"mobilenet": (sample,)}, warmup_s=0.5, progress=False)
        return {"rate": rate, **out["models"]["mobilenet"]}
    found = peak_search(run, lambda r: r["attainment"] >= 0.99, start=50.0, steps=4)
    return {"req_per_s": round(found["max_load"], 1),
            "tried": [{"rate": round(r["rate"], 1), "attainment": round(r["attainment"], 4)}
                      for r in found["tried"]]}


def saturated(rt: "gl.Runtime", sample: torch.Tensor, seconds: float) -> float:
    """Requests per second served in rounds of 16 (one full batch) submitted at once, each
    round waited for: the lane's capacity, with the queue never deeper than the SLO allows."""
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        futures = []
        for _ in range(16):
            try:
                futures.append(rt.submit("mobilenet", sample))
            except gl.Overloaded:
                pass
        for f in futures:
            f.result()
        done += len(futures)
    return round(done / (time.perf_counter() - t0), 1)


def measure(mode: str, models: dict, args) -> dict:
    """One runtime of `mode`: start time, the hop, the CNN's profile and peak rate."""
    rt = gl.Runtime(device="cpu", isolation=mode, profile_cache=False,
                    profile_reps=args.profile_reps)
    for name, (module, example, slo) in models.items():
        rt.register(name, module, slo_ms=slo, example_inputs=example, max_batch_size=16)
    t0 = time.perf_counter()
    rt.start(progress=False)
    row = {"start_s": round(time.perf_counter() - t0, 2),
           "tiny_infer_us": latency_us(rt, "tiny", torch.randn(64), args.requests),
           "image_infer_us": latency_us(rt, "tiny_image", torch.randn(3, 224, 224),
                                        args.requests // 2)}
    points = {p["batch_size"]: p["p50_us"] / 1e3 for p in rt.profile("mobilenet")}
    row["mobilenet_ms"] = {"batch1": round(points[1], 3), "batch16": round(points[16], 3)}
    row["mobilenet_saturated_req_per_s"] = saturated(rt, models["mobilenet"][1][0],
                                                     args.seconds)
    row["mobilenet_peak"] = peak_rate(rt, models["mobilenet"][1][0], args.seconds)
    if mode == "process":
        pid = rt.lanes()[0]["worker_pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        a = time.perf_counter()
        rt.infer("tiny", torch.randn(64))
        row["recovery_after_kill_s"] = round(time.perf_counter() - a, 3)
    rt.shutdown()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=3, help="runtimes per mode, alternating")
    ap.add_argument("--profile-reps", type=int, default=25, help="profile runs per batch size")
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment("cpu")
    mobilenet, example = mobilenet_v3_96()
    tiny = torch.jit.script(Tiny())
    models = {"tiny": (tiny, torch.zeros(1, 64), 1000.0),
              "tiny_image": (tiny, torch.zeros(1, 3, 224, 224), 1000.0),
              "mobilenet": (mobilenet, example, SLO_MS)}
    runs = {"thread": [], "process": []}
    for rep in range(args.reps):  # alternating: this VM's speed drifts by 20% between starts
        for mode in runs:
            row = measure(mode, models, args)
            runs[mode].append(row)
            print(rep, mode, {k: v for k, v in row.items() if k != "mobilenet_peak"},
                  "peak", row["mobilenet_peak"]["req_per_s"], flush=True)

    def median(mode: str, key: str, sub: str) -> float:
        return float(np.median([r[key][sub] for r in runs[mode]]))
    summary = {mode: {"tiny_infer_us_p50": median(mode, "tiny_infer_us", "p50"),
                      "image_infer_us_p50": median(mode, "image_infer_us", "p50"),
                      "mobilenet_batch16_ms": median(mode, "mobilenet_ms", "batch16"),
                      "mobilenet_peak_req_per_s": median(mode, "mobilenet_peak", "req_per_s"),
                      "mobilenet_saturated_req_per_s": float(np.median(
                          [r["mobilenet_saturated_req_per_s"] for r in runs[mode]]))}
               for mode in runs}
    t, p = summary["thread"], summary["process"]
    results = {"arrivals": "hop: closed loop, one request at a time; peak: open-loop Poisson",
               "slo_ms": SLO_MS, "reps": args.reps, "median": summary,
               "added_us_p50": {"tiny": round(p["tiny_infer_us_p50"] - t["tiny_infer_us_p50"], 1),
                                "image": round(p["image_infer_us_p50"] - t["image_infer_us_p50"], 1)},
               "peak_rate_ratio": round(p["mobilenet_peak_req_per_s"] /
                                        max(t["mobilenet_peak_req_per_s"], 1e-9), 3),
               "saturated_ratio": round(p["mobilenet_saturated_req_per_s"] /
                                        max(t["mobilenet_saturated_req_per_s"], 1e-9), 3),
               "profile_reps": args.profile_reps,
               "runs": runs}
    print("median:", summary)
    print("added p50 us:", results["added_us_p50"], " peak rate process/thread:",
          results["peak_rate_ratio"], " saturated process/thread:", results["saturated_ratio"])
    print("wrote", write_result("process-lanes", env, results))


if __name__ == "__main__":
    main()
