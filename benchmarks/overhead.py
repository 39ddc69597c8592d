"""Runtime overhead per request on a trivial model, and submit throughput.

Added latency = submit-to-result latency minus the forward time the lane measured (its median),
for requests sent one at a time so that nothing queues. The three request paths are measured in
interleaved rounds (so that machine noise hits each alike); percentiles pool all rounds, and the
range of per-round medians shows the spread. Throughput = back-to-back submits from
1 and 4 Python threads (open loop), then waiting for all results.

    python benchmarks/overhead.py [--device auto|cpu|cuda] [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import gpulanes as gl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, write_result  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)


class Trivial(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * len(s))) - 1))]


def summarize_us(rounds_ns, forward_us):
    e2e = [v / 1e3 for r in rounds_ns for v in r]
    p50, p99 = statistics.median(e2e), pct(e2e, 0.99)
    round_medians = [statistics.median(r) / 1e3 - forward_us for r in rounds_ns]
    return {"e2e_p50_us": round(p50, 2), "e2e_p99_us": round(p99, 2),
            "added_p50_us": round(p50 - forward_us, 2), "added_p99_us": round(p99 - forward_us, 2),
            "added_p50_us_per_round": [round(v, 2) for v in round_medians],
            "requests": len(e2e)}


def sequential(rt, x, n, mode):
    out = []
    if mode == "async":
        async def run():
            for _ in range(n):
                t0 = time.perf_counter_ns()
                await rt.infer_async("trivial", x)
                out.append(time.perf_counter_ns() - t0)
        asyncio.run(run())
        return out
    for _ in range(n):
        t0 = time.perf_counter_ns()
        if mode == "future":
            rt.submit("trivial", x).result()
        else:
            rt.infer("trivial", x)
        out.append(time.perf_counter_ns() - t0)
    return out


def throughput(rt, x, threads, per_thread):
    futures = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)
    submit_end = [0.0] * threads

    def worker(i):
        barrier.wait()
        fs = futures[i]
        for _ in range(per_thread):
            fs.append(rt.submit("trivial", x))
        submit_end[i] = time.perf_counter()

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    for fs in futures:
        for f in fs:
            f.result()
    t_done = time.perf_counter()
    n = threads * per_thread
    return {"threads": threads, "requests": n,
            "submits_per_s": round(n / (max(submit_end) - t0)),
            "completions_per_s": round(n / (t_done - t0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--requests", type=int, default=2000, help="per path and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--spin-us", type=float, default=50.0, help="Runtime(spin_us=...)")
    ap.add_argument("--throughput-requests", type=int, default=40000)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() and gl._C.cuda_lane_support() else "cpu") \
        if args.device == "auto" else args.device
    env = environment(device)  # before the run: the commit and date it started with

    rt = gl.Runtime(device=device, spin_us=args.spin_us)
    rt.register("trivial", torch.jit.script(Trivial()), slo_ms=10_000,
                example_inputs=torch.zeros(1, 16), max_batch_size=64, max_queue=1_000_000)
    x = torch.randn(16)
    results = {}
    with rt:
        sequential(rt, x, 500, "future")  # warm caches and code paths
        seq = {mode: [] for mode in ("future", "infer", "async")}
        for _ in range(args.rounds):
            for mode in seq:
                seq[mode].append(sequential(rt, x, args.requests, mode))
        forward_us = rt.stats()["trivial"]["exec_ms"]["p50"] * 1e3
        results["forward_p50_us"] = round(forward_us, 2)
        for mode, samples in seq.items():
            results[f"sequential_{mode}"] = summarize_us(samples, forward_us)
        per = args.throughput_requests
        results["throughput_1_thread"] = throughput(rt, x, 1, per)
        results["throughput_4_threads"] = throughput(rt, x, 4, per // 4)
        s = rt.stats()["trivial"]
        results["spin_us"] = args.spin_us
        results["mean_batch_size"] = round(s["mean_batch_size"], 2)
        results["all_met"] = s["met"] == s["submitted"]
    results["targets"] = {"added_p50_us_cpu_2core": 50, "added_p50_us_h100_host": 30}
    name = "overhead" if args.spin_us == 50.0 else f"overhead-spin{args.spin_us:g}us"
    path = write_result(name, env, results, args.out)

    print(f"device {device} ({env.get('gpu', env['cpu'])}), torch {torch.__version__}")
    print(f"forward (lane-measured median): {results['forward_p50_us']:.1f} us")
    print(f"| path | e2e p50 | e2e p99 | added p50 | added p99 | added p50 per round |\n"
          f"|---|---:|---:|---:|---:|---|")
    for mode, label in (("future", "`submit().result()`"), ("infer", "`infer()`"),
                        ("async", "`await infer_async()`")):
        r = results[f"sequential_{mode}"]
        spread = f"{min(r['added_p50_us_per_round']):.1f} - {max(r['added_p50_us_per_round']):.1f}"
        print(f"| {label} | {r['e2e_p50_us']:.1f} | {r['e2e_p99_us']:.1f} | "
              f"{r['added_p50_us']:.1f} | {r['added_p99_us']:.1f} | {spread} |")
    print("(microseconds)")
    for key in ("throughput_1_thread", "throughput_4_threads"):
        r = results[key]
        print(f"{r['threads']} thread(s): {r['submits_per_s']:,} submits/s, "
              f"{r['completions_per_s']:,} completions/s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
