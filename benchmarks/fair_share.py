"""Fair share: what the deadline policy's `fair_share` option buys and costs under overload.

Two models share one lane (a whole simulated H100, gpulanes.sim, the same C++ policy and event
loop the runtime runs): a cheap short-SLO model and a dear long-SLO one (bert, 22 ms, with
vgg16, 142 ms, and with resnet50, 108 ms; zoo profiles and SLOs). Under EDF alone the
short-SLO model always holds the earliest deadline, so under overload the other one gets the
lane only at its head's latest start, with small batches.

Load: each model's solo capacity (the highest Poisson rate it alone meets 99% of on the lane,
by peak search) halved is "1x": at 1x both models together fill the lane. Offered 0.5x, 1x,
2x, 5x and 10x, with open-loop Poisson and Gamma CV 3 arrivals (--seconds each, the first
second excluded, seeded), fair_share off and on: per model goodput, attainment and its share of
the lane's busy time, and the total goodput. Max-min fair lane time would give each model
min(its demand, half the lane).

    python benchmarks/fair_share.py [--seconds 10] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, peak_search, write_result  # noqa: E402

PAIRS = (("bert", "vgg16"), ("bert", "resnet50"))
FACTORS = (0.5, 1, 2, 5, 10)
SHAPES = {"poisson": 1.0, "gamma_cv3": 3.0}


def simulate(models, rates: Dict[str, float], seconds: float, cv: float, fair: bool) -> Dict[str, Any]:
    sim = gl.sim.Simulator(gpus=1, seed=3, policy_options={"fair_share": fair}, trace=True)
    for m in models:
        sim.add_model(m)
    sim.set_lanes([{"gpu": 0, "sms": 132, "models": list(models)}])
    work = (wl.Poisson(rates, seconds, seed=1) if cv == 1.0
            else wl.Gamma(rates, cv, seconds, seed=1))
    out = sim.run(work, warmup_s=1)
    df = sim.trace_frame()
    ran = df[(df.batch_id >= 0) & (df.start_s >= 1)].drop_duplicates("batch_id")
    busy = (ran.end_s - ran.start_s).groupby(ran.model).sum() / (seconds - 1)
    row: Dict[str, Any] = {"models": {}}
    for m in models:
        s = out["models"][m]
        row["models"][m] = {"offered": rates[m], "goodput": s["goodput"],
                            "attainment": s["attainment"], "lane_share": float(busy.get(m, 0.0)),
                            "rejected": s["rejected"], "dropped": s["dropped"],
                            "mean_batch": float(ran[ran.model == m].batch_size.mean())
                            if (ran.model == m).any() else 0.0}
    row["total_goodput"] = sum(v["goodput"] for v in row["models"].values())
    return row


def solo_capacity(model: str, seconds: float) -> float:
    found = peak_search(lambda r: simulate((model,), {model: r}, seconds, 1.0, False),
                        lambda row: row["models"][model]["attainment"] >= 0.99,
                        start=100.0, steps=6, grow_limit=1024)
    return found["max_load"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    env = environment("sim-h100")
    solo = {m: solo_capacity(m, args.seconds) for m in {m for pair in PAIRS for m in pair}}
    print("solo capacity (req/s at 99%):", {m: round(r) for m, r in solo.items()})
    results: Dict[str, Any] = {"lane": "one whole simulated H100", "solo_capacity": solo,
                               "seconds": args.seconds, "arrivals": "open loop, seeded",
                               "pairs": []}
    for pair in PAIRS:
        rows = []
        for shape, cv in SHAPES.items():
            for k in FACTORS:
                rates = {m: k * solo[m] / 2 for m in pair}
                for fair in (False, True):
                    row = simulate(pair, rates, args.seconds, cv, fair)
                    row.update(arrivals=shape, factor=k, fair_share=fair)
                    rows.append(row)
                    per = "  ".join(f"{m} {v['goodput']:7.1f}/s ({v['attainment']:.2f}, "
                                    f"{v['lane_share']:.2f} of lane, b {v['mean_batch']:.1f})"
                                    for m, v in row["models"].items())
                    print(f"{'+'.join(pair):14s} {shape:9s} {k:4g}x fair={'on ' if fair else 'off'} "
                          f"total {row['total_goodput']:7.1f}/s  {per}")
        results["pairs"].append({"models": list(pair), "rows": rows})
    print("wrote", write_result("fair-share", env, results, args.out))


if __name__ == "__main__":
    main()
