"""What it costs to add, remove and move one model while N others serve: wall time of the call,
peak memory growth of the process (RSS high-water mark, reset before each change), model
instances loaded, and deadline misses of the other models' requests sent meanwhile; for
``layout_changes="rebuild"`` (new lanes load every model, the old way) and ``"incremental"``
(only the model that changed is loaded or unloaded).

Setup: CPU thread lanes (2), N = 1, 4, 16 serving models and the one added, each an MLP of
4 x Linear(1024, 1024) (16 MiB of float32 weights, max batch 8, SLO 500 ms), half of the N on
each lane. Meanwhile a thread sends the N models open-loop Poisson traffic (--rate requests/s in
all). "Alone" is the incremental add with no other model than a 4-float one: what the model's own
load, warm-up and profile cost. Every change is repeated --reps times, medians reported.

Targets (issue 32): adding one model costs its own load and warm-up (within 20% of "alone" at
N = 16), peak memory grows by at most 1.2x that model's own footprint, and no other model misses
a deadline during the change. GPU lanes are not measured here (no GPU on this machine); they
still rebuild.

    python benchmarks/live_models.py [--rate 100] [--reps 3] [--sizes 1,4,16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np
import torch
from torch import nn

import gpulanes as gl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_result  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
SLO_MS = 500.0
WIDTH = 1024


def big_model(seed: int) -> torch.jit.ScriptModule:
    torch.manual_seed(seed)
    layers: List[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
    return torch.jit.script(nn.Sequential(*layers).eval())


class Tiny(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


MODEL_BYTES = 4 * (WIDTH * WIDTH + WIDTH) * 4


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: VmHWM starts again from VmRSS
        f.write("5")


class Traffic:
    """Poisson requests to `models` from a thread; counts, per window, the misses."""

    def __init__(self, rt: gl.Runtime, models: List[str], rate: float) -> None:
        self.rt, self.models, self.rate = rt, models, rate
        self.sent: List[Any] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        rng = np.random.default_rng(0)
        x = torch.ones(WIDTH)
        while not self.stop.is_set():
            name = self.models[int(rng.integers(len(self.models)))]
            t = time.monotonic()
            try:
                self.sent.append((t, self.rt.submit(name, x, deadline_ms=SLO_MS)))
            except gl.GpuLanesError as e:
                self.sent.append((t, e))
            self.stop.wait(float(rng.exponential(1.0 / self.rate)))

    def misses(self, t0: float, t1: float) -> Dict[str, int]:
        during = [f for t, f in list(self.sent) if t0 <= t <= t1]
        missed = 0
        for f in during:
            if isinstance(f, BaseException):
                missed += 1
                continue
            try:
                f.result(timeout=60)
            except gl.GpuLanesError:
                missed += 1
        return {"requests": len(during), "missed": missed}

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def timed_change(rt: gl.Runtime, traffic: Traffic, call: Callable[[], None]) -> Dict[str, Any]:
    loads = rt.model_loads
    base = rss_kib("VmRSS")
    reset_peak()
    t0 = time.monotonic()
    call()
    t1 = time.monotonic()
    return {"s": t1 - t0, "peak_growth_mib": (rss_kib("VmHWM") - base) / 1024,
            "loads": rt.model_loads - loads, **traffic.misses(t0, t1)}


def one_run(mode: str, n: int, rate: float, seed: int) -> Dict[str, Any]:
    rt = gl.Runtime(device="cpu", cpu_lanes=2, warmup_rounds=1, profile_reps=3,
                    profile_cache=False, layout_changes=mode)
    names = [f"m{i}" for i in range(n)]
    for i, name in enumerate(names):
        rt.register(name, big_model(seed + i), slo_ms=SLO_MS,
                    example_inputs=torch.zeros(1, WIDTH), max_batch_size=8)
    if not names:  # "alone": a runtime serving only a tiny model
        rt.register("tiny", torch.jit.script(Tiny()), slo_ms=SLO_MS,
                    example_inputs=torch.zeros(1, 4))
    half = max(1, len(names) // 2)
    rt.set_lanes([{"device": "cpu", "models": names[:half] or ["tiny"]},
                  {"device": "cpu", "models": names[half:] or names[:1] or ["tiny"]}])
    rt.start()
    quiet = Traffic(rt, names or ["tiny"], rate if names else 1.0)
    new = big_model(seed + 1000)
    out = {"add": timed_change(rt, quiet, lambda: rt.register(
        "new", new, slo_ms=SLO_MS, example_inputs=torch.zeros(1, WIDTH), max_batch_size=8))}
    if names:
        layout = rt.lanes()
        a, b = layout[0]["models"], layout[1]["models"]
        moved = [m for m in a if m != "new"][0]
        out["move"] = timed_change(rt, quiet, lambda: rt.set_lanes([
            {"device": "cpu", "models": [m for m in a if m != moved]},
            {"device": "cpu", "models": b + [moved] if moved not in b else b}]))
        out["remove"] = timed_change(rt, quiet, lambda: rt.unregister("new"))
    quiet.close()
    rt.shutdown()
    return out


def median_of(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for change in runs[0]:
        rows = [r[change] for r in runs]
        out[change] = {k: (round(statistics.median(row[k] for row in rows), 4)
                           if k in ("s", "peak_growth_mib") else max(row[k] for row in rows))
                       for k in rows[0]}
    return out


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=100.0, help="requests/s to the N models, in all")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--sizes", default="1,4,16")
    args = p.parse_args(argv)
    env = environment("cpu")
    results: Dict[str, Any] = {"model_mib": MODEL_BYTES / 2**20, "slo_ms": SLO_MS,
                               "rate": args.rate, "lanes": 2, "reps": args.reps, "points": []}
    alone = median_of([one_run("incremental", 0, args.rate, 7 * r) for r in range(args.reps)])
    results["alone"] = alone["add"]
    print("alone", alone["add"], flush=True)
    for n in [int(x) for x in args.sizes.split(",")]:
        for mode in ("rebuild", "incremental"):
            runs = [one_run(mode, n, args.rate, 7 * r) for r in range(args.reps)]
            row = {"n": n, "mode": mode, **median_of(runs)}
            row["add_vs_alone"] = round(row["add"]["s"] / alone["add"]["s"], 2)
            row["add_peak_vs_model"] = round(row["add"]["peak_growth_mib"] * 2**20 / MODEL_BYTES, 2)
            print(row, flush=True)
            results["points"].append(row)
    print(f"wrote {write_result('live-models', env, results)}")


if __name__ == "__main__":
    main()
