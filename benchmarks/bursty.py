"""Plans under bursty traffic (issue 14): for the gpu-let scenarios on 4 simulated H100s (zoo
profiles, gpu-let's linear interference), each load and each arrival shape, the minimum
per-model SLO attainment of the plan applied and simulated, with the GPUs it needed and used.

Arrival shapes (20 simulated s, the first 2 s warm-up): Poisson; Gamma gaps with CV 2 and 3;
on-off steps (the mean rate x 0.6 for 4 s, then x 2.6 for 1 s, repeated: flash crowds).
Planners:
  mean          spatiotemporal planned for the mean rate, no spreading, no simulation check
                (what the planner did before issue 14);
  spatiotemporal / temporal_only
                sized for each model's burst as measured (a first simulated run on a generous
                layout measures, per SLO-long window as the runtime does, each model's CV and
                its peak rate),
                spread over the GPU budget, and proven by simulation before it is applied.

    python benchmarks/bursty.py [--seconds 20] [--scenarios scen4 scen1 traffic game]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, write_result  # noqa: E402

LOADS = (50, 100, 200, 400)
SHAPES = ("poisson", "gamma-cv2", "gamma-cv3", "on-off")
PLANNERS = ("mean", "spatiotemporal", "temporal_only")


def workload(shape: str, rates: Dict[str, float], seconds: float, seed: int):
    from gpulanes import workloads as wl

    if shape == "poisson":
        return wl.Poisson(rates, seconds, seed=seed)
    if shape.startswith("gamma-cv"):
        return wl.Gamma(rates, float(shape[len("gamma-cv"):]), seconds, seed=seed)
    steps = []  # mean-preserving: 4 s at 0.6x, 1 s at 2.6x
    for k in range(int(seconds // 5)):
        steps += [(4.0, {m: 0.6 * r for m, r in rates.items()}),
                  (1.0, {m: 2.6 * r for m, r in rates.items()})]
    return wl.Steps(steps, seed=seed)


def measured_traffic(scn_name: str, shape: str, load: float, gpus: int, seconds: float) -> Dict[str, Any]:
    """The traffic per model as the runtime measures it (SLO-long windows): cv, peak_rate."""
    import gpulanes as gl

    sim = gl.sim.Simulator(gpus=gpus, seed=0)
    scn = sim.add_scenario(scn_name)
    sim.apply_plan(sim.plan(scn.rates(load), "temporal_only", cv=3, check=False))
    out = sim.run(workload(shape, scn.rates(load), seconds, seed=7), warmup_s=0)
    return {m: {"cv": t["cv"], "peak_rate": t["peak_rate"], "rate": t["rate"]}
            for m, t in out["traffic"].items() if m in scn.rates(load)}


def evaluate(scn_name: str, shape: str, load: float, planner: str, gpus: int, seconds: float,
             traffic: Dict[str, Any]) -> Dict[str, Any]:
    import gpulanes as gl

    sim = gl.sim.Simulator(gpus=gpus, seed=0)
    scn = sim.add_scenario(scn_name)
    rates = scn.rates(load)
    if planner == "mean":
        plan = sim.plan(rates, "spatiotemporal", cv=0, spread=False, check=False)
    else:
        plan = sim.plan(rates, planner, traffic=traffic)
    row: Dict[str, Any] = {"gpus_needed": plan["gpus_needed"], "gpus_used": plan["gpus_used"],
                           "headroom": plan["headroom"], "feasible": plan["feasible"],
                           "why": plan["why"], "lanes": len(plan["lanes"]),
                           "simulated_check": (plan.get("simulated") or {}).get("min_attainment")}
    sim.apply_plan(plan)
    out = sim.run(workload(shape, rates, seconds, seed=1), warmup_s=2)
    att = {m: s["attainment"] for m, s in out["models"].items() if s["requests"]}
    row.update(min_attainment=min(att.values()), attainment=att)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument("--scenarios", nargs="+", default=["scen4", "scen1", "traffic", "game"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    results: Dict[str, Any] = {"gpus": args.gpus, "seconds": args.seconds, "loads": list(LOADS),
                               "shapes": list(SHAPES), "planners": list(PLANNERS),
                               "device": "simulated H100 x4 (zoo profiles, gpu-let interference)",
                               "rows": []}
    for scn_name in args.scenarios:
        for shape in SHAPES:
            for load in LOADS:
                traffic = measured_traffic(scn_name, shape, load, args.gpus, args.seconds)
                cells = []
                for planner in PLANNERS:
                    row = evaluate(scn_name, shape, load, planner, args.gpus, args.seconds, traffic)
                    row.update(scenario=scn_name, shape=shape, load=load, planner=planner,
                               measured=traffic)
                    results["rows"].append(row)
                    cells.append(f"{planner} {100 * row['min_attainment']:5.1f}% "
                                 f"({row['gpus_needed']}/{row['gpus_used']} GPUs)")
                print(f"{scn_name:<8} {shape:<10} load {load:>3}: " + " | ".join(cells), flush=True)
        path = write_result("bursty", environment("cpu"), results, args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
