"""GPU partitions on a real GPU (H100/H200): proof that green lanes own disjoint SMs, and what
SM counts buy.

1. probe: for several green-context layouts that fit this chip (built from its split into
   minimum-size groups, `gl._C.green_sm_split`), the SMs each lane's kernels ran on (%smid
   probe): lanes must be disjoint and no larger than what rt.lanes() reports.
2. sm_curve: a compute-bound model (ResNet-50, fp16, batch 32) profiled on one green lane of
   each of `--sms` SM counts (`full`: the whole device on a plain stream): throughput against SMs.
3. colocation: pairs of models (`--pairs a:b ...`, default every pair of four) on two lanes of
   half the split each, both saturated; each batch's time against the model's solo time on the
   same lane size: the measured slow-down matrix.
4. profiles: the sm_curve profiles in the simulator's schema (gpulanes.profiles) to
   $OUT/<device>-profiles.json (commit it under benchmarks/profiles/).

The results file is rewritten after every part, so a run cut short keeps what it reached.

    python benchmarks/gpu_partitions.py [--out DIR] [--parts probe sm_curve colocation]
        [--sms 16 32 64 full] [--pairs resnet50:vgg16] [--seconds 3] [--name gpu-partitions]
    python benchmarks/gpu_partitions.py --device cpu   # the same parts on CPU lanes, tiny models

Needs a CUDA GPU whose driver supports green contexts; prints why not and exits 2 otherwise.
On the CPU (a dry run of the script) lanes have no SMs: the probe only checks the layouts it
would use against a Hopper-like split, and the curve and pairs run small models on CPU lanes.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
warnings.filterwarnings("ignore")

NAMES = ["resnet50", "mobilenet_v2", "vgg16", "bert"]
# A Hopper-like split for the CPU dry run: 132 SMs, 16 groups of 8.
CPU_SPLIT = {"device_sms": 132, "group_sms": 8, "groups": 16, "usable_sms": 128}


def models(names, device: str = "cuda"):
    """name -> (TorchScript module, one example sample batch on the CPU): fp16 on a GPU, small
    fp32 stand-ins on the CPU. Built, cast and traced on `device`: fp16 tracing on a CPU
    without AVX512-FP16 takes tens of seconds a model, on the GPU well under one."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    dtype = torch.float16 if device == "cuda" else torch.float32
    out = {}
    for name in names:
        if name == "bert":
            width, layers = (768, 12) if device == "cuda" else (64, 1)
            layer = nn.TransformerEncoderLayer(width, max(1, width // 64), 4 * width, batch_first=True)
            net = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            x = torch.randn(1, 128 if device == "cuda" else 16, width)
        elif device == "cuda":
            net = getattr(torchvision.models, name)(weights=None)
            x = torch.randn(1, 3, 224, 224)
        else:
            net = torchvision.models.squeezenet1_0(weights=None)
            x = torch.randn(1, 3, 32, 32)
        net = net.eval().to(device=device, dtype=dtype)
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad():
            out[name] = (torch.jit.trace(net, x, check_trace=False), x.cpu())
    return out


def probe_layouts(split: Dict[str, int]) -> List[List[int]]:
    """SM counts of lanes that fit the split: halves, a quarter and the rest, three lanes, and
    as many one-group lanes as there are groups (up to 8)."""
    g, n = split["group_sms"], split["groups"]
    in_groups = [[n // 2, n - n // 2], [n // 4, n - n // 4], [n // 4, n // 4, n - 2 * (n // 4)],
                 [1] * min(8, n)]
    return [[k * g for k in layout if k > 0] for layout in in_groups]


def runtime(zoo, layout, device: str, **kw):
    import gpulanes as gl

    extra = {"partitioning": "green"} if device == "cuda" else {}
    rt = gl.Runtime(device=device, profile_cache=False, profile_reps=20, **extra, **kw)
    for name, (module, x) in zoo.items():
        rt.register(name, module, slo_ms=10_000, example_inputs=x, max_batch_size=32)
    rt.set_lanes(layout)
    return rt.start(progress=False)


def probe(split: Dict[str, int], device: str) -> List[Dict[str, Any]]:
    import torch

    import gpulanes as gl
    from conftest import Mlp, scripted

    rows = []
    for sms in probe_layouts(split):
        groups = gl._C.green_groups_for(split["group_sms"], split["groups"], split["device_sms"], sms)
        row: Dict[str, Any] = {"asked": sms, "groups": groups, "total_sms": split["device_sms"]}
        if device != "cuda":
            rows.append({**row, "skipped": "no SMs on the CPU: layout checked against the split only"})
            print(f"probe layout {sms}: fits in groups {groups} (CPU: not run)", flush=True)
            continue
        import sm_probe

        rt = gl.Runtime(device="cuda", partitioning="green", profile_cache=False)
        names = [f"m{i}" for i in range(len(sms))]
        for n in names:
            rt.register(n, scripted(Mlp()), slo_ms=10_000, example_inputs=torch.randn(1, 16))
        rt.set_lanes([{"device": 0, "sms": s, "models": [n]} for s, n in zip(sms, names)])
        with rt:
            lanes = rt.lanes()
            seen = [sorted(sm_probe.sm_ids(rt._core.lane_stream(i))) for i in range(len(lanes))]
        disjoint = all(set(a).isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1:])
        within = all(len(s) <= l["sms"] for s, l in zip(seen, lanes))
        rows.append({**row, "granted": [l["sms"] for l in lanes], "sm_ids": seen,
                     "disjoint": disjoint, "within_granted": within})
        print(f"probe asked {sms} granted {[l['sms'] for l in lanes]} seen "
              f"{[len(s) for s in seen]} disjoint={disjoint} within={within}", flush=True)
    return rows


def sm_curve(split: Dict[str, int], device: str, counts: Sequence[str]) -> Dict[str, Any]:
    zoo = models(["resnet50"], device)
    rows, profiles = [], {}
    for c in counts:
        if device == "cuda":
            sms = split["device_sms"] if c == "full" else int(c)
            layout = [{"device": 0, "sms": sms, "models": ["resnet50"]}]
        else:
            sms, layout = 0, [{"device": "cpu", "models": ["resnet50"]}]
        rt = runtime(zoo, layout, device)
        granted = rt.lanes()[0]["sms"]
        prof = rt.profile("resnet50")
        rt.shutdown()
        p32 = next(p for p in prof if p["batch_size"] == 32)
        rows.append({"asked": c, "granted": granted, "batch32_p50_ms": p32["p50_us"] / 1e3,
                     "batch32_device_ms": p32.get("device_p50_us", 0) / 1e3,
                     "images_per_s": 32 / (p32["p50_us"] / 1e6)})
        profiles[granted] = prof
        print(f"resnet50 on {granted} SMs: batch 32 {rows[-1]['batch32_p50_ms']:.2f} ms, "
              f"{rows[-1]['images_per_s']:.0f} images/s", flush=True)
        if device != "cuda":
            break  # CPU lanes have one size
    return {"rows": rows, "profiles": profiles}


def colocation(split: Dict[str, int], device: str, pairs: Sequence[Sequence[str]],
               seconds: float) -> Dict[str, Any]:
    names = sorted({n for p in pairs for n in p})
    zoo = models(names, device)
    half = split["group_sms"] * (split["groups"] // 2)
    solo, matrix = {}, {}
    for a, b in pairs:
        lane = {"device": 0, "sms": half} if device == "cuda" else {"device": "cpu"}
        rt = runtime({a: zoo[a], **({b: zoo[b]} if b != a else {})},
                     [{**lane, "models": [a]}, {**lane, "models": [b]}], device)
        if a not in solo:
            solo[a] = {p["batch_size"]: p["p50_us"] for p in rt.profile(a, lane=0)}
        stop = time.monotonic() + seconds
        inputs = {m: zoo[m][1][0] for m in (a, b)}

        def client(model):
            while time.monotonic() < stop:
                futs = [rt.submit(model, inputs[model]) for _ in range(8)]
                for f in futs:
                    f.result()

        threads = [threading.Thread(target=client, args=(m,)) for m in (a, b) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = rt.stats()
        rt.shutdown()
        size = round(stats[a]["mean_batch_size"])
        slow = stats[a]["exec_ms"]["p50"] * 1e3 / solo[a][min(solo[a], key=lambda s: abs(s - size))]
        matrix.setdefault(a, {})[b] = slow
        print(f"{a} beside {b} ({half} SMs each): batch ~{size}, slow-down {slow:.2f}x", flush=True)
    return {"sms_per_lane": half, "slowdown": matrix, "solo_us": solo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parts", nargs="+", default=["probe", "sm_curve", "colocation"],
                    choices=["probe", "sm_curve", "colocation"])
    ap.add_argument("--sms", nargs="+", default=["8", "16", "32", "48", "64", "96", "full"],
                    help="SM counts of the sm_curve lanes ('full': the whole device)")
    ap.add_argument("--pairs", nargs="+", default=None, help="co-location pairs a:b (default: all)")
    ap.add_argument("--seconds", type=float, default=3.0, help="per co-location pair")
    ap.add_argument("--name", default="gpu-partitions", help="results file name prefix")
    args = ap.parse_args()
    import torch

    import gpulanes as gl
    from gpulanes import profiles as schema
    from _common import RESULTS, device_tag, environment, write_result

    if args.device == "cuda":
        if not torch.cuda.is_available() or gl._C.green_context_support(0):
            print(f"needs a GPU with green contexts: {gl._C.green_context_support(0)}")
            sys.exit(2)
        split = gl._C.green_sm_split(0)
    else:
        split = dict(CPU_SPLIT)
    pairs = ([p.split(":") for p in args.pairs] if args.pairs
             else [(a, b) for a in NAMES for b in NAMES])
    out_dir = args.out or RESULTS
    env = environment(args.device)
    results: Dict[str, Any] = {"split": split}
    path = write_result(args.name, env, results, out_dir)
    for part in args.parts:
        if part == "probe":
            results["probe"] = probe(split, args.device)
        elif part == "sm_curve":
            results["sm_curve"] = sm_curve(split, args.device, args.sms)
        else:
            results["colocation"] = colocation(split, args.device, pairs, args.seconds)
        path = write_result(args.name, env, results, out_dir)
    if "sm_curve" in results and args.device == "cuda":
        name = torch.cuda.get_device_name(0)
        entries = [schema.make_entry("resnet50", pts, model_hash=None, device=name,
                                     lane_kind="cuda-green" if sms < split["device_sms"] else "cuda-stream",
                                     max_batch_size=32, sm_share=min(1.0, sms / split["device_sms"]),
                                     sms=sms)
                   for sms, pts in results["sm_curve"]["profiles"].items()]
        schema.save(out_dir / f"{device_tag(env)}-profiles.json", entries, source="measured",
                    note="benchmarks/gpu_partitions.py: ResNet-50 fp16 per green-lane SM count")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
