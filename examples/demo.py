"""gpulanes demo: three models with SLOs under Poisson load on the default device.

Builds ResNet-18, MobileNetV3-Small (torchvision, random weights) and a small Transformer
encoder, turns them into TorchScript, profiles them on a lane, registers them with SLOs derived
from their batch-1 latency there, drives open-loop Poisson arrivals for about 20 s at a rate the machine can
hold, and prints per-model results from ``Runtime.stats()``.

    python examples/demo.py [--seconds 20] [--device auto|cpu|cuda] [--load 0.4] [--policy ...]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import warnings

from pathlib import Path

import torch
import torchvision
from torch import nn
from tqdm import tqdm

import gpulanes as gl

warnings.filterwarnings("ignore", category=FutureWarning)   # torch.jit deprecation notice
warnings.filterwarnings("ignore", category=UserWarning)     # nested-tensor fast-path notice


class TextClassifier(nn.Module):
    """A small Transformer encoder over token ids: embedding, 2 layers, mean-pool, linear."""

    def __init__(self, vocab: int = 1000, dim: int = 128, classes: int = 10) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=256, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(ids)).mean(dim=1))


def build_models(image: int):
    """name -> (TorchScript module, example batch of one)."""
    torch.manual_seed(0)
    specs = {
        "resnet18": (torchvision.models.resnet18(weights=None), torch.randn(1, 3, image, image)),
        "mobilenet_v3": (torchvision.models.mobilenet_v3_small(weights=None),
                         torch.randn(1, 3, image, image)),
        "transformer": (TextClassifier(), torch.randint(0, 1000, (1, 32))),
    }
    out = {}
    for name, (model, example) in specs.items():
        with torch.no_grad():
            out[name] = (torch.jit.trace(model.eval(), example, check_trace=False), example)
    return out


def calibrate(models, device: str):
    """Latency profiles measured by gpulanes itself, on a lane, as serving will run them."""
    rt = gl.Runtime(device=device)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=60_000, example_inputs=example, max_batch_size=8)
    rt.start()
    profiles = {name: rt.profile(name) for name in models}
    rt.shutdown()
    return profiles


def poisson_schedule(rates: dict, seconds: float, seed: int = 0):
    """Sorted (time offset s, model) arrivals: independent Poisson processes per model."""
    rng = random.Random(seed)
    arrivals = []
    for name, rate in rates.items():
        t = rng.expovariate(rate)
        while t < seconds:
            arrivals.append((t, name))
            t += rng.expovariate(rate)
    arrivals.sort()
    return arrivals


def write_demo_json(args, device, slo, rates, lat1, stats, wall, arrivals, options) -> None:
    """The demo's table with its provenance, via the benchmarks' result writer."""
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from _common import environment, write_result

    env = environment(device)
    table = {name: {"slo_ms": slo[name], "rate_per_s": rates[name], "batch1_lane_ms": lat1[name],
                    **{k: s[k] for k in ("submitted", "met", "missed", "dropped", "rejected",
                                         "failed", "mean_batch_size")},
                    "latency_ms": s["latency_ms"], "throughput_per_s": s["completed"] / wall}
             for name, s in stats.items()}
    name = f"demo-{args.policy}" + ("-wait" if options.get("wait_for_batch") else "")
    path = write_result(name, env, {"seconds": args.seconds, "load": args.load,
                                    "arrivals": arrivals, "policy_options": options,
                                    "models": table}, args.out)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--policy", default="deadline", choices=["deadline", "fifo", "max_delay", "aimd"])
    ap.add_argument("--wait", action="store_true",
                    help="deadline policy: wait_for_batch=True (may idle a lane for a larger batch)")
    ap.add_argument("--out", type=Path, default=None,
                    help="also write the table as JSON into this folder (e.g. benchmarks/results)")
    ap.add_argument("--load", type=float, default=0.4,
                    help="offered load as a fraction of what one lane serves at batch size 1")
    args = ap.parse_args()

    device = ("cuda" if torch.cuda.is_available() and gl._C.cuda_lane_support() else "cpu") \
        if args.device == "auto" else args.device
    image = 224 if device == "cuda" else 128
    print(f"gpulanes {gl.__version__} | torch {torch.__version__} | device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else
             f" ({torch.get_num_threads()} intra-op threads)"))

    models = build_models(image)
    print("profiling on a lane ...", flush=True)
    profiles = calibrate(models, device)
    lat1 = {n: p[0]["p50_us"] / 1e3 for n, p in profiles.items()}
    # One lane serves all three models in time, so a request may wait behind a batch of the
    # slowest model: SLO = max(10x own batch-1 latency, 4x the slowest one's), at least 20 ms.
    # Every model gets the same rate, chosen so that batch-1 work would fill `load` of the lane.
    slowest = max(lat1.values())
    slo = {n: max(20.0, round(max(10 * l, 4 * slowest), -1)) for n, l in lat1.items()}
    rate = args.load / (sum(lat1.values()) / 1e3)
    rates = {n: rate for n in models}

    options = {"wait_for_batch": True} if args.wait and args.policy == "deadline" else {}
    rt = gl.Runtime(device=device, policy=args.policy, policy_options=options)
    for name, (module, example) in models.items():
        rt.register(name, module, slo_ms=slo[name], example_inputs=example, max_batch_size=8)
        rt.set_profile(name, profiles[name])
    rt.start()

    arrivals = poisson_schedule(rates, args.seconds)
    samples = {n: ex[0] for n, (_, ex) in models.items()}
    futures = []
    late_ms = []
    t0 = time.monotonic()
    with tqdm(total=len(arrivals), desc="serving", unit="req", ncols=90, mininterval=1.0) as bar:
        for i, (offset, name) in enumerate(arrivals):
            delay = t0 + offset - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                late_ms.append(-delay * 1e3)
            try:
                futures.append(rt.submit(name, samples[name]))
            except gl.GpuLanesError:
                pass  # counted as rejected in stats()
            if time.monotonic() - bar.last_print_t >= 1.0:
                bar.set_postfix(met=sum(s["met"] for s in rt.stats().values()), refresh=False)
                bar.update(i + 1 - bar.n)
        bar.update(len(arrivals) - bar.n)
    for f in futures:
        try:
            f.result(timeout=60)
        except gl.GpuLanesError:
            pass  # dropped or failed: counted in stats()
    wall = time.monotonic() - t0
    stats = rt.stats()
    rt.shutdown()

    header = (f"{'model':<14}{'SLO ms':>8}{'rate/s':>8}{'requests':>10}{'met':>7}{'met %':>7}"
              f"{'late':>6}{'dropped':>8}{'p50 ms':>8}{'p99 ms':>8}{'batch':>7}{'thru/s':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for name, s in stats.items():
        pct = 100.0 * s["met"] / s["submitted"] if s["submitted"] else 0.0
        print(f"{name:<14}{slo[name]:>8.0f}{rates[name]:>8.1f}{s['submitted']:>10}{s['met']:>7}"
              f"{pct:>7.1f}{s['missed']:>6}{s['dropped'] + s['rejected']:>8}"
              f"{s['latency_ms']['p50']:>8.2f}{s['latency_ms']['p99']:>8.2f}"
              f"{s['mean_batch_size']:>7.2f}{s['completed'] / wall:>8.1f}")
    if args.out is not None:
        write_demo_json(args, device, slo, rates, lat1, stats, wall, len(arrivals), options)
    late = f"{statistics.median(late_ms):.2f} ms median when late" if late_ms else "never late"
    print(f"\n{len(arrivals)} Poisson arrivals in {args.seconds:.0f} s on {device}; submitter was "
          f"late for {len(late_ms)} of them ({late}). Batch-1 latency on a lane (p50): "
          + ", ".join(f"{n} {l:.1f} ms" for n, l in lat1.items()))


if __name__ == "__main__":
    main()
