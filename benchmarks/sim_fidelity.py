"""Simulator fidelity against the real runtime: the same open-loop workload runs on a real lane
(CPU here; CUDA when run on a GPU machine) and in the simulator, which gets the profile the
runtime measured, no interference (one lane) and batch-time noise estimated from that profile's
p99/p50 spread. Reports attainment and p99 latency side by side. Target (issue 4): p99 within
10% relative and attainment within 1 point.

    python benchmarks/sim_fidelity.py [--device cpu] [--seconds 20] [--loads 0.5 0.8]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
warnings.filterwarnings("ignore", category=FutureWarning)


def noise_cv_from(points) -> float:
    """Lognormal CV whose p99/p50 matches the profile's median spread over batch sizes."""
    ratios = sorted(p["p99_us"] / p["p50_us"] for p in points if p["p50_us"] > 0)
    sigma = math.log(max(1.0, ratios[len(ratios) // 2])) / 2.326
    return math.sqrt(math.exp(sigma ** 2) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8],
                    help="offered load as a fraction of the lane's batch-1 capacity")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import torch
    import torchvision

    import gpulanes as gl
    from gpulanes import workloads as wl
    from _common import RESULTS, environment, write_result

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    image = 128 if args.device == "cpu" else 224
    torch.manual_seed(0)
    nets = {"resnet18": torchvision.models.resnet18(weights=None),
            "mobilenet_v3": torchvision.models.mobilenet_v3_small(weights=None)}
    rt = gl.Runtime(device=args.device, profile_cache=False, profile_reps=30)
    for name, net in nets.items():
        x = torch.randn(1, 3, image, image)
        with torch.no_grad():
            rt.register(name, torch.jit.trace(net.eval(), x, check_trace=False), slo_ms=60_000,
                        example_inputs=x, max_batch_size=8)
    rt.start()
    profile = {n: rt.profile(n) for n in nets}
    alone_ms = {n: profile[n][0]["p50_us"] / 1e3 for n in nets}
    # SLO: 5x the batch-1 latency of the slower model, for both (they share the lane).
    slo = {n: 5 * max(alone_ms.values()) for n in nets}
    cv = noise_cv_from([p for n in nets for p in profile[n]])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.json"
        rt.save_profiles(path)
        rows = []
        for load in args.loads:
            # Equal rates whose batch-1 work fills `load` of the lane.
            rate = load / sum(a / 1e3 for a in alone_ms.values())
            work = wl.Poisson({n: rate for n in nets}, args.seconds, seed=int(load * 100))
            inputs = {n: (torch.randn(3, image, image),) for n in nets}
            real = wl.drive(rt, work, inputs, deadline_ms=slo, warmup_s=args.warmup,
                            progress=False)
            sim = gl.sim.Simulator(gpus=1, profile=path, interference="none", noise_cv=cv,
                                   seed=1)
            for n in nets:
                sim.add_model(n, slo_ms=slo[n], max_batch_size=8)
            simulated = sim.run(work, warmup_s=args.warmup, deadline_ms=slo)
            for n in nets:
                r, s = real["models"][n], simulated["models"][n]
                rows.append({"load": load, "model": n, "rate": rate, "slo_ms": slo[n],
                             "real_attainment": r["attainment"], "sim_attainment": s["attainment"],
                             "real_p99_ms": r["p99_ms"], "sim_p99_ms": s["p99_ms"],
                             "real_p50_ms": r["p50_ms"], "sim_p50_ms": s["p50_ms"],
                             "p99_rel_diff": (s["p99_ms"] - r["p99_ms"]) / r["p99_ms"],
                             "attainment_diff_points": 100 * (s["attainment"] - r["attainment"])})
                print(f"load {load:.2f} {n:<13} rate {rate:6.1f}/s  attainment real "
                      f"{100 * r['attainment']:6.2f}% sim {100 * s['attainment']:6.2f}%   p99 real "
                      f"{r['p99_ms']:7.2f} ms sim {s['p99_ms']:7.2f} ms "
                      f"({100 * rows[-1]['p99_rel_diff']:+.1f}%)", flush=True)
    rt.shutdown()
    path = write_result("sim-fidelity", environment(args.device), {
        "seconds": args.seconds, "warmup_s": args.warmup, "image": image,
        "torch_threads": torch.get_num_threads(), "noise_cv": cv, "profiles": profile,
        "rows": rows}, args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
