"""Re-planning under a rate change, in the simulator: scen4 (BERT x2, ResNet-50, MobileNetV2) on
4 simulated H100s, planned for a low load; after 20 s the load rises 7x. Compared: the static
plan, and re-planning every 5 s on EWMA-smoothed measured rates (spatiotemporal planner). Reports
attainment per 2-second window, GPUs used after each re-plan, and what planning cost.

    python benchmarks/replan.py [--every 5] [--low 300] [--high 2100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--low", type=float, default=300.0)
    ap.add_argument("--high", type=float, default=2100.0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import gpulanes as gl
    from _common import RESULTS, environment, write_result

    results = {}
    fig, ax = plt.subplots(figsize=(9, 3.5))
    for label, replan in (("static plan", None),
                          (f"re-plan every {args.every:g} s", {"every_s": args.every})):
        sim = gl.sim.Simulator(gpus=4, seed=0, trace=True)
        scn = sim.add_scenario("scen4")
        # Held to the GPUs the low rate needs: spreading over the budget would give the static
        # plan the headroom that re-planning is here to provide.
        sim.apply_plan(sim.plan(scn.rates(args.low), spread=False))
        work = gl.workloads.Steps([(20, scn.rates(args.low)), (40, scn.rates(args.high))], seed=1)
        out = sim.run(work, warmup_s=1, replan=replan)
        df = sim.trace_frame()
        window = (df["arrival_s"] // 2) * 2
        attain = (df["outcome"] == "met").groupby(window).mean()
        ax.plot(attain.index, 100 * attain.values, label=label)
        req = sum(s["requests"] for s in out["models"].values())
        results[label] = {
            "attainment": sum(s["met"] for s in out["models"].values()) / req,
            "attainment_after_step": float((df[df["arrival_s"] >= 20]["outcome"] == "met").mean()),
            "per_window": {float(k): float(v) for k, v in attain.items()},
            "replans": out["replans"]}
        costs = [e["plan_wall_us"] for e in out["replans"]]
        print(f"{label:<20} attainment {100 * results[label]['attainment']:.2f}% (after the step "
              f"{100 * results[label]['attainment_after_step']:.2f}%); re-plans {len(costs)}, "
              f"layout changes {sum(e['changed'] for e in out['replans'])}, GPUs "
              f"{[e['gpus_used'] for e in out['replans']]}, planning "
              f"{max(costs, default=0):.0f} us at most", flush=True)
    ax.axvline(20, color="k", ls=":")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title("scen4 on 4 simulated H100s: load x7 at 20 s")
    ax.legend()
    fig.tight_layout()
    path = write_result("replan", environment("cpu"),
                        {"every_s": args.every, "low": args.low, "high": args.high, **results},
                        args.out or RESULTS)
    fig.savefig(path.with_suffix(".png"), dpi=110)
    print(f"wrote {path} and {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
