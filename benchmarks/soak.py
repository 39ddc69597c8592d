"""Soak: millions of requests through real runtimes, with everything that goes wrong in service
mixed in, checking that every future resolves exactly once and the counters add up.

Each cycle starts a runtime (2 CPU lanes; an exact model, a model that raises for negative
inputs, a slow one), then submitter threads send requests in bursts: 5% bad inputs (the model
raises on them), 3% deadlines already past, 5% deadlines too tight to make, bursts far beyond
capacity (Overloaded / QueueFull at submit), while another thread re-lays out the lanes
(set_lanes, sometimes dropping a model whose queued requests must then fail with Overloaded).
The cycle ends with shutdown, draining or not, and the next starts a new runtime.

Checked: every accepted request's future resolved exactly once with the result its input
demands (or a typed error); per model, submitted = met + missed + dropped + rejected + failed
with nothing in flight; resident memory back near where it was after the first cycle (also
reported after malloc_trim, which separates what the allocator caches from what is held).

    python benchmarks/soak.py [--requests 10000000] [--cycle 500000] [--out DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

import gpulanes as gl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from _common import RESULTS, current_rss_mb, environment, write_result  # noqa: E402
from conftest import Affine, Busy, Picky, scripted  # noqa: E402

warnings.filterwarnings("ignore")

LAYOUTS = [
    [{"device": "cpu"}, {"device": "cpu"}],
    [{"device": "cpu", "models": ["affine", "picky"]}, {"device": "cpu", "models": ["busy"]}],
    [{"device": "cpu", "models": ["affine"]}, {"device": "cpu", "models": ["picky", "busy"]}],
    [{"device": "cpu", "models": ["affine", "busy"]}],  # drops picky: its queue fails
]


def cycle(n: int, seed: int, drain: bool, threads: int = 2) -> Dict[str, Any]:
    rt = gl.Runtime(device="cpu", cpu_lanes=2, warmup_rounds=1, profile_reps=3,
                    profile_cache=False, spin_us=0)
    rt.register("affine", scripted(Affine()), slo_ms=2_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=32, max_queue=20_000)
    rt.register("picky", scripted(Picky()), slo_ms=2_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=16, max_queue=20_000)
    rt.register("busy", scripted(Busy(20)), slo_ms=500, example_inputs=torch.zeros(1, 4),
                max_batch_size=8, max_queue=2_000)
    rt.start(progress=False)
    resolved = np.zeros(n, dtype=np.int8)
    wrong = np.zeros(n, dtype=bool)
    outcome: Dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def relayout():
        rng = np.random.default_rng(seed + 99)
        while not stop.wait(0.3):
            try:
                rt.set_lanes(LAYOUTS[rng.integers(len(LAYOUTS))])
            except gl.RuntimeClosed:
                return

    def note(kind: str):
        with lock:
            outcome[kind] = outcome.get(kind, 0) + 1

    def callback(i: int, want: float):
        def done(f):
            resolved[i] += 1
            exc = f.exception()
            if exc is None:
                if abs(float(f.result()[0]) - want) > 1e-4:
                    wrong[i] = True
                note("result")
            else:
                note(type(exc).__name__)
        return done

    def submitter(t: int):
        rng = np.random.default_rng([seed, t])
        i = t
        while i < n:
            burst = int(rng.integers(1, 400)) if rng.random() > 0.01 else 20_000
            for _ in range(burst):
                if i >= n:
                    break
                r = rng.random()
                value = float(rng.integers(0, 1000))
                model = "affine" if r < 0.6 else "picky" if r < 0.9 else "busy"
                kwargs: Dict[str, Any] = {}
                if model == "picky" and rng.random() < 0.17:
                    value = -1.0  # makes the model raise
                d = rng.random()
                if d < 0.03:
                    kwargs["deadline_ms"] = -1.0  # already past
                elif d < 0.08:
                    kwargs["deadline_ms"] = 0.05  # too tight to make
                want = {"affine": 2 * value + 1, "picky": value + 1, "busy": value + 1}[model]
                try:
                    fut = rt.submit(model, torch.full((4,), value), **kwargs)
                except gl.GpuLanesError as e:
                    resolved[i] = -1
                    note("refused " + type(e).__name__)
                else:
                    fut.add_done_callback(callback(i, want))
                i += threads
            time.sleep(float(rng.random()) * 0.002)

    mover = threading.Thread(target=relayout)
    mover.start()
    workers = [threading.Thread(target=submitter, args=(t,)) for t in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    mover.join()
    rt.shutdown(drain=drain)
    deadline = time.monotonic() + 60
    while ((resolved == 0).any()) and time.monotonic() < deadline:
        time.sleep(0.01)  # callbacks of the last batches
    elapsed = time.monotonic() - t0
    stats = rt.stats()
    counters_add_up = all(
        s["submitted"] == s["met"] + s["missed"] + s["dropped"] + s["rejected"] + s["failed"]
        and s["in_flight"] == 0 for s in stats.values())
    accepted = resolved != -1
    return {"requests": n, "seconds": elapsed, "drain": drain, "outcomes": outcome,
            "accepted": int(accepted.sum()),
            "resolved_exactly_once": bool((resolved[accepted] == 1).all()),
            "never_resolved": int((resolved[accepted] == 0).sum()),
            "resolved_twice": int((resolved[accepted] > 1).sum()),
            "wrong_results": int(wrong.sum()), "counters_add_up": counters_add_up,
            "reruns": sum(s["reruns"] for s in stats.values())}


def trim_heap() -> float:
    """RSS in MB after glibc's malloc_trim(0) (returns free heap pages to the OS); plain RSS
    where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return current_rss_mb()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000_000)
    ap.add_argument("--cycle", type=int, default=500_000, help="requests per runtime")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment("cpu")
    cycles: List[Dict[str, Any]] = []
    rss: List[float] = []
    done = 0
    k = 0
    while done < args.requests:
        n = min(args.cycle, args.requests - done)
        row = cycle(n, seed=k, drain=k % 2 == 0)
        gc.collect()
        row["rss_mb_after"] = current_rss_mb()
        # What freed memory the C allocator keeps for reuse (per-thread arenas: every runtime
        # starts new threads) is not a leak; after handing it back, what is left is.
        row["rss_mb_after_trim"] = trim_heap()
        rss.append(row["rss_mb_after_trim"])
        cycles.append(row)
        done += n
        k += 1
        print(f"cycle {k}: {n} requests in {row['seconds']:.0f} s, once={row['resolved_exactly_once']} "
              f"wrong={row['wrong_results']} counters={row['counters_add_up']} rss {row['rss_mb_after']:.0f} "
              f"MB ({rss[-1]:.0f} MB trimmed) "
              f"{row['outcomes']}", flush=True)
        results = {"requests": done, "cycles": cycles,
                   "all_exactly_once": all(c["resolved_exactly_once"] for c in cycles),
                   "all_counters_add_up": all(c["counters_add_up"] for c in cycles),
                   "wrong_results": sum(c["wrong_results"] for c in cycles),
                   "rss_mb": {"after_first_cycle": cycles[0]["rss_mb_after"],
                              "after_last_cycle": cycles[-1]["rss_mb_after"],
                              "max": max(c["rss_mb_after"] for c in cycles),
                              "trimmed_after_first_cycle": rss[0],
                              "trimmed_after_last_cycle": rss[-1], "trimmed_max": max(rss)}}
        path = write_result("soak", env, results, args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
