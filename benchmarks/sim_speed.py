"""Simulator speed: a 16-GPU cluster (H100-sized, two 66-SM lanes per GPU) serving the nine zoo
models (scen1) at 20,000 requests/s for 10 simulated minutes, with the deadline policy, linear
interference and 2% noise. Reports wall time and simulated requests per wall second.
Target (issue 4): under 60 s wall on the 2-core development VM.

    python benchmarks/sim_speed.py [--gpus 16] [--rate 20000] [--minutes 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpus", type=int, default=16)
    ap.add_argument("--rate", type=float, default=20_000.0, help="total requests/s")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--policy", default="deadline")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import gpulanes as gl
    from _common import RESULTS, environment, write_result

    sim = gl.sim.Simulator(gpus=args.gpus, policy=args.policy, interference="linear", seed=0)
    scn = sim.add_scenario("scen1")
    names = list(scn.models)
    lanes = []
    for g in range(args.gpus):
        for half in range(2):  # lane k serves models k and k+1 (mod 9): each model on ~7 lanes
            k = (2 * g + half) % len(names)
            lanes.append({"gpu": g, "sms": 66, "models": [names[k], names[(k + 1) % len(names)]]})
    sim.set_lanes(lanes)
    t0 = time.perf_counter()
    work = scn.workload(args.rate / sum(scn.weights.values()), args.minutes * 60, seed=1)
    work.arrays()
    gen_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = sim.run(work, warmup_s=10)
    total_s = time.perf_counter() - t1
    s = out["simulator"]
    met = sum(m["met"] for m in out["models"].values())
    req = sum(m["requests"] for m in out["models"].values())
    print(f"{s['arrivals']:,} requests, {s['simulated_s']:.0f} simulated s, {args.gpus} GPUs, "
          f"{len(lanes)} lanes")
    print(f"workload generation {gen_s:.1f} s; run() {total_s:.1f} s wall, of which the C++ "
          f"loop {s['wall_s']:.1f} s; {s['requests_per_wall_s']:,.0f} simulated requests per "
          f"wall second; attainment {met / req:.4f}")
    path = write_result("sim-speed", environment("cpu"), {
        "gpus": args.gpus, "lanes": len(lanes), "rate": args.rate, "minutes": args.minutes,
        "policy": args.policy, "interference": "linear", "noise_cv": 0.02,
        "arrivals": s["arrivals"], "steps": s["steps"], "simulated_s": s["simulated_s"],
        "workload_generation_s": gen_s, "run_wall_s": total_s, "loop_wall_s": s["wall_s"],
        "requests_per_wall_s": s["requests_per_wall_s"], "attainment": met / req,
        "per_model_attainment": {m: v["attainment"] for m, v in out["models"].items()}},
        args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
