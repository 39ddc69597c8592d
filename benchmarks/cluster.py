"""Scale on paper and in the simulator (issue 18): 4 machines x 8 simulated H100s (132 SMs,
synthetic zoo profiles, gpu-let's linear interference, 2% noise), the gpu-let scenarios
("game", "traffic", "scen1".."scen5"), served two ways:

- gpulanes: one plan over all 32 GPUs grouped by machine (`gpulanes.cluster.plan_cluster`,
  packed onto as few GPUs as hold the rates, lanes sized for the arrivals' CV), each machine a
  replica holding the models its lanes serve; deadline policy;
- plain replicas, what a Ray Serve user does today: per model, whole-GPU replicas of that
  model alone, as many as its rate needs at the throughput one GPU sustains within the SLO
  (the largest batch b with 2 L(b) <= SLO, b / L(b) requests/s), each batching like
  `@serve.batch` / Triton's dynamic batcher (max_delay policy, max batch b, no queue delay).

For each scenario and arrival shape (Poisson; Gamma CV 3, bursty), the highest load (per-model
rate x the scenario's weights) at which every model keeps >= 99% of its deadlines met on the
32 GPUs (doubling until the GPUs cannot hold the plan, then bisection above the highest load
that held; each try --seconds simulated, the first second excluded; lower loads that failed
are listed),
the goodput there and the GPUs each used; and at the plain replicas' peak, the GPUs gpulanes
needs for the same load. A model's lanes on several machines share one queue in the simulator:
the router of a real deployment sends each request to the least-loaded replica holding its
model, which this idealizes. The Azure Functions trace is not in this repository (nor
reachable from this machine), so bursts come from Gamma arrivals at CV 3.

    python benchmarks/cluster.py [--seconds 4] [--scenarios game traffic ...]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, write_result  # noqa: E402

import gpulanes as gl  # noqa: E402
from gpulanes import workloads as wl  # noqa: E402
from gpulanes.cluster import plan_cluster  # noqa: E402
from gpulanes.sim import scenario, zoo  # noqa: E402

MACHINES = [8, 8, 8, 8]
SHAPES = {"poisson": None, "gamma_cv3": 3.0}


def plain_sizing(scn) -> Dict[str, Dict[str, float]]:
    """Per model: the largest batch with 2 L(b) <= SLO on a whole GPU, and what one GPU serves."""
    out = {}
    for name, key in scn.models.items():
        slo = scn.slo_ms(name)
        b = max([1] + [b for b in range(1, 33) if 2 * zoo.latency_ms(key, b, 1.0) <= slo])
        out[name] = {"batch": b, "per_gpu": b / zoo.latency_ms(key, b, 1.0) * 1e3}
    return out


def workload(rates: Dict[str, float], cv: Optional[float], seconds: float, seed: int):
    if cv is None:
        return wl.Poisson(rates, seconds, seed=seed)
    return wl.Gamma(rates, cv, seconds, seed=seed)


def summary(res: Dict[str, Any]) -> Dict[str, Any]:
    models = res["models"]
    return {"worst_attainment": min(m["attainment"] for m in models.values()),
            "goodput": sum(m["goodput"] for m in models.values())}


def run_gpulanes(scn_name: str, load: float, cv: Optional[float], seconds: float) -> Dict[str, Any]:
    sim = gl.sim.Simulator(gpus=sum(MACHINES), seed=1)
    scn = sim.add_scenario(scn_name)
    rates = scn.rates(load)
    cp = plan_cluster(sim, rates, MACHINES, cv=cv)
    row = {"load": load, "gpus_used": cp["gpus_used"], "machines_used": cp["machines_used"],
           "feasible": cp["feasible"]}
    if not cp["feasible"]:
        return {**row, "worst_attainment": 0.0, "goodput": 0.0}
    sim.apply_plan(cp["plan"])
    return {**row, **summary(sim.run(workload(rates, cv, seconds, seed=int(load)), warmup_s=1.0))}


def run_plain(scn_name: str, load: float, cv: Optional[float], seconds: float) -> Dict[str, Any]:
    scn = scenario(scn_name)
    sizing = plain_sizing(scn)
    rates = scn.rates(load)
    replicas = {m: max(1, math.ceil(rates[m] / sizing[m]["per_gpu"])) for m in rates}
    gpus = sum(replicas.values())
    row = {"load": load, "gpus_used": gpus, "replicas": replicas, "feasible": gpus <= sum(MACHINES)}
    if not row["feasible"]:
        return {**row, "worst_attainment": 0.0, "goodput": 0.0}
    sim = gl.sim.Simulator(gpus=sum(MACHINES), seed=1, policy="max_delay")
    for name, key in scn.models.items():
        sim.add_model(name, scn.slo_ms(name), key, max_batch_size=sizing[name]["batch"])
    layout, g = [], 0
    for m, n in replicas.items():
        for _ in range(n):
            layout.append({"gpu": g, "sms": sim.gpus[g]["sms"], "models": [m]})
            g += 1
    sim.set_lanes(layout)
    return {**row, **summary(sim.run(workload(rates, cv, seconds, seed=int(load)), warmup_s=1.0))}


def peak(run, scn_name: str, cv: Optional[float], seconds: float, steps: int) -> Dict[str, Any]:
    """The highest load held at 99%. Attainment need not fall monotonically with load here
    (replicas sized for the mean rate are tightest at low rates, where a burst of CV 3 lasts
    longest against the SLO), so the search doubles from the scenario's top rate until the
    32 GPUs no longer hold the plan, takes the highest load that held, and bisects between it
    and the next load tried; ``failed_below_peak`` lists loads under the peak that did not
    hold."""
    def ok(r):
        return r["feasible"] and r["worst_attainment"] >= 0.99

    def keep(r):
        return {k: r[k] for k in ("load", "gpus_used", "feasible", "worst_attainment")}

    load, tried = float(scenario(scn_name).loads[1]), []
    while True:
        tried.append(run(scn_name, load, cv, seconds))
        if not tried[-1]["feasible"]:
            break
        load *= 2
    held = [r for r in tried if ok(r)]
    best = max(held, key=lambda r: r["load"]) if held else None
    lo = best["load"] if best else 0.0
    hi = min((r["load"] for r in tried if r["load"] > lo), default=2 * lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        r = run(scn_name, mid, cv, seconds)
        tried.append(r)
        if ok(r):
            lo, best = mid, r
        else:
            hi = mid
    return {"peak_load": lo, "at_peak": best,
            "failed_below_peak": sorted(r["load"] for r in tried if r["load"] < lo and not ok(r)),
            "tried": [keep(r) for r in tried]}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--scenarios", nargs="+",
                    default=["game", "traffic", "scen1", "scen2", "scen3", "scen4", "scen5"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    env = environment("cpu")
    results: Dict[str, Any] = {"machines": MACHINES, "gpu": "simulated H100 (132 SMs, zoo profiles)",
                               "seconds_per_try": args.seconds, "warmup_s": 1.0,
                               "arrivals": {"poisson": "Poisson", "gamma_cv3": "Gamma CV 3"},
                               "scenarios": {}}
    for name in args.scenarios:
        for shape, cv in SHAPES.items():
            ours = peak(run_gpulanes, name, cv, args.seconds, args.steps)
            plain = peak(run_plain, name, cv, args.seconds, args.steps)
            # The GPUs gpulanes plans for the load plain replicas peak at (planning only).
            at = plain["peak_load"]
            needed = None
            if at > 0:
                sim = gl.sim.Simulator(gpus=sum(MACHINES), seed=1)
                scn = sim.add_scenario(name)
                needed = plan_cluster(sim, scn.rates(at), MACHINES, cv=cv)["gpus_used"]
            row = {"gpulanes": ours, "plain_replicas": plain,
                   "gpulanes_gpus_at_plain_peak": needed,
                   "plain_gpus_at_plain_peak": plain["at_peak"]["gpus_used"] if plain["at_peak"] else None,
                   "peak_ratio": round(ours["peak_load"] / plain["peak_load"], 3)
                   if plain["peak_load"] else None}
            results["scenarios"].setdefault(name, {})[shape] = row
            print(f"{name:8s} {shape:9s} peak load gpulanes {ours['peak_load']:9.0f} "
                  f"(goodput {ours['at_peak']['goodput'] if ours['at_peak'] else 0:9.0f}/s, "
                  f"{ours['at_peak']['gpus_used'] if ours['at_peak'] else 0} GPUs)  plain "
                  f"{plain['peak_load']:9.0f} ({plain['at_peak']['goodput'] if plain['at_peak'] else 0:9.0f}/s, "
                  f"{row['plain_gpus_at_plain_peak']} GPUs); at the plain peak gpulanes needs "
                  f"{needed} GPUs; failed below peak: {ours['failed_below_peak']} / "
                  f"{plain['failed_below_peak']}", flush=True)
    path = write_result("cluster", env, results, **({"out_dir": args.out} if args.out else {}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
