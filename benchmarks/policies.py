"""The four batch policies under the same open-loop workload, over a sweep of request rates.

Two models share one lane (CPU: MobileNetV3-Small at 96x96 and a small Transformer encoder;
CUDA: ResNet-50 and MobileNetV2 at 224x224, fp32). Their profiles are measured once on a lane and
reused by every run; each model's SLO is max(20 x its batch-1 latency, 10 x the slowest model's)
(on a noisy 2-core VM in-lane latency varies up to ~4x its profiled median under load).
The total rate is swept as multiples of the lane's batch-1 capacity (1 / sum of batch-1
latencies), split equally, Poisson. Each policy (max_delay at several queue delays, so that a
well-tuned one is in the comparison) serves each rate for --seconds, the first second excluded.
Reported per policy: attainment, goodput and p99 per rate, and the highest rate up to which
every point of the sweep held >= 99% attainment. JSON and a plot go to benchmarks/results/. On the CPU, torch gets one intra-op thread
(--threads) so that the lane and the Python load driver each have a core.

    python benchmarks/policies.py [--device auto|cpu|cuda] [--seconds 5] [--loads 0.25,0.5,...]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, device_tag, environment, traced, write_result  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


class TextEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(1000, 128)
        layer = nn.TransformerEncoderLayer(128, 4, 256, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(128, 10)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.emb(ids)).mean(dim=1))


def build(device: str):
    torch.manual_seed(0)
    if device == "cuda":
        specs = {"resnet50": (torchvision.models.resnet50(weights=None), torch.randn(1, 3, 224, 224)),
                 "mobilenet_v2": (torchvision.models.mobilenet_v2(weights=None),
                                  torch.randn(1, 3, 224, 224))}
    else:
        specs = {"mobilenet_v3": (torchvision.models.mobilenet_v3_small(weights=None),
                                  torch.randn(1, 3, 96, 96)),
                 "transformer": (TextEncoder(), torch.randint(0, 1000, (1, 32)))}
    return traced(specs)


def policies():
    yield "deadline", "deadline", {}
    yield "fifo", "fifo", {}
    for delay_us in (0, 2000, 10000):
        yield f"max_delay_{delay_us}us", "max_delay", {"max_queue_delay_microseconds": delay_us}
    yield "aimd", "aimd", {}


def serve(models, profiles, slo, device, policy, options, rate, seconds, max_batch):
    rt = gl.Runtime(device=device, policy=policy, policy_options=options)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=slo[name], example_inputs=example,
                    max_batch_size=max_batch)
        rt.set_profile(name, profiles[name])
    rt.start(progress=False)
    work = wl.Poisson({n: rate / len(models) for n in models}, seconds,
                      seed=int(rate * 1000) % 100_000)
    inputs = {n: (ex[0].to("cpu"),) for n, (_, ex) in models.items()}
    out = wl.drive(rt, work, inputs, warmup_s=1.0, progress=False)
    rt.shutdown()
    per = out["models"]
    n = sum(m["requests"] for m in per.values())
    met = sum(m["met"] for m in per.values())
    return {"rate": round(rate, 2), "requests": n, "attainment": met / n if n else 1.0,
            "goodput": sum(m["goodput"] for m in per.values()),
            "p99_ms": max(m["p99_ms"] for m in per.values()),
            "dropped": sum(m["dropped"] + m["rejected"] for m in per.values()),
            "late": sum(m["late"] for m in per.values()),
            "submit_lateness_p99_ms": out["submit_lateness_ms"]["p99"]}


def plot(json_path: Path) -> Path:
    """Attainment vs offered load per policy, from a result file; labelled with its provenance."""
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(Path(json_path).read_text())
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for label, r in doc["results"]["policies"].items():
        ax.plot([p["rate"] for p in r["sweep"]], [100 * p["attainment"] for p in r["sweep"]],
                marker="o", label=f"{label} (holds {r['max_rate_at_99']:.0f}/s)")
    ax.axhline(99, color="gray", linestyle=":", linewidth=1)
    ax.set_xlabel(f"offered load (requests/s, Poisson, {' + '.join(doc['results']['models'])} "
                  "on one lane)")
    ax.set_ylabel("SLO attainment (%)")
    v = doc["versions"]
    ax.set_title(f"gpulanes policies on {doc.get('gpu', doc['cpu'])}, {doc['date'][:10]}", fontsize=9)
    fig.text(0.01, 0.01, f"torch {v['torch']}, gpulanes {v['git_commit']}, Python {v['python']}; "
             f"{doc['command']}", fontsize=6, color="gray")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    png = Path(json_path).with_suffix(".png")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--loads", default="0.25,0.5,0.75,1.0,1.5,2.0,3.0",
                    help="total rate as multiples of the lane's batch-1 capacity")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (CPU: 1 leaves a core to the load driver)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--replot", type=Path, help="only redraw the plot of this result file")
    args = ap.parse_args()
    if args.replot:
        print(f"wrote {plot(args.replot)}")
        return
    torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() and gl._C.cuda_lane_support() else "cpu") \
        if args.device == "auto" else args.device
    env = environment(device)  # before the run: the commit and date it started with

    models = build(device)
    cal = gl.Runtime(device=device, profile_reps=30)
    for name, (module, example) in models.items():
        cal.register(name, module, slo_ms=60_000, example_inputs=example, max_batch_size=args.max_batch)
    cal.start(progress=False)
    profiles = {n: cal.profile(n) for n in models}
    cal.shutdown()
    lat1 = {n: p[0]["p50_us"] / 1e3 for n, p in profiles.items()}
    slowest = max(lat1.values())
    slo = {n: round(max(20 * l, 10 * slowest), 1) for n, l in lat1.items()}
    capacity = 1e3 / sum(lat1.values())  # requests/s at batch 1, all models alternating
    loads = [float(x) for x in args.loads.split(",")]
    print(f"device {device}; batch-1 ms {lat1}; SLO ms {slo}; batch-1 capacity {capacity:.0f}/s")

    results = {}
    for label, policy, options in policies():
        rows = []
        for load in loads:
            row = serve(models, profiles, slo, device, policy, options, load * capacity,
                        args.seconds, args.max_batch)
            row["load"] = load
            rows.append(row)
            print(f"{label:<20} load {load:4.1f} rate {row['rate']:8.1f}/s  attainment "
                  f"{100 * row['attainment']:6.2f}%  goodput {row['goodput']:8.1f}/s  "
                  f"p99 {row['p99_ms']:7.1f} ms", flush=True)
        # Sustained: the highest rate up to which every point held >= 99%.
        held = 0.0
        for r in rows:
            if r["attainment"] < 0.99:
                break
            held = r["rate"]
        results[label] = {"policy": policy, "options": options, "sweep": rows,
                          "max_rate_at_99": held}

    payload = {"models": list(models), "slo_ms": slo, "batch1_ms": lat1, "profiles": profiles,
               "capacity_batch1_per_s": capacity, "seconds_per_point": args.seconds,
               "warmup_s": 1.0, "max_batch_size": args.max_batch, "torch_threads": args.threads,
               "policies": results}
    path = write_result("policies", env, payload, args.out)

    png = plot(path)
    print("\nhighest rate at >= 99% attainment:")
    for label, r in results.items():
        print(f"  {label:<20} {r['max_rate_at_99']:8.1f}/s")
    print(f"wrote {path} and {png} ({device_tag(env)})")


if __name__ == "__main__":
    main()
