"""What process lanes cost: the same CPU lane in the runtime's process (isolation="thread") and
in a worker process (isolation="process"), and how long a killed worker takes to come back.

Models: a tiny elementwise model (what the round trip costs by itself) and MobileNetV3-Small at
96x96 (a real model's batch), max batch 16, one CPU lane, one intra-op thread. Per mode:

- `infer()` latency of the tiny model, p50/p99 over --requests sequential calls (closed loop,
  one request at a time: the added cost of the hop is all there is);
- the runtime's profile of MobileNet (p50 at batch 1 and 16, measured through the lane, IPC
  included);
- process mode only: a worker killed with SIGKILL while idle, then the time until the next
  request is answered (a new worker started and the lane's models loaded into it).

    python benchmarks/isolation.py [--requests 2000]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, mobilenet_v3_96, write_result  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


class Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment("cpu")
    mobilenet, example = mobilenet_v3_96()
    tiny = torch.jit.script(Tiny())
    results = {"arrivals": "closed loop, one request at a time", "modes": {}}
    for mode in ("thread", "process"):
        rt = gl.Runtime(device="cpu", isolation=mode, profile_cache=False)
        rt.register("tiny", tiny, slo_ms=1000, example_inputs=torch.zeros(1, 64), max_batch_size=16)
        rt.register("mobilenet", mobilenet, slo_ms=1000, example_inputs=example, max_batch_size=16)
        t0 = time.perf_counter()
        rt.start(progress=False)
        start_s = time.perf_counter() - t0
        x = torch.randn(64)
        for _ in range(200):
            rt.infer("tiny", x)
        lat = []
        for _ in range(args.requests):
            a = time.perf_counter_ns()
            rt.infer("tiny", x)
            lat.append((time.perf_counter_ns() - a) / 1e3)
        points = {p["batch_size"]: p["p50_us"] / 1e3 for p in rt.profile("mobilenet")}
        row = {"start_s": round(start_s, 2),
               "tiny_infer_us": {"p50": round(float(np.percentile(lat, 50)), 1),
                                 "p99": round(float(np.percentile(lat, 99)), 1)},
               "mobilenet_ms": {"batch1": round(points[1], 3), "batch16": round(points[16], 3)}}
        if mode == "process":
            pid = rt.lanes()[0]["worker_pid"]
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
            a = time.perf_counter()
            rt.infer("tiny", x)
            row["recovery_after_kill_s"] = round(time.perf_counter() - a, 3)
            row["lanes"] = rt.lanes()
        rt.shutdown()
        results["modes"][mode] = row
        print(mode, row, flush=True)
    print("wrote", write_result("isolation", env, results))


if __name__ == "__main__":
    main()
