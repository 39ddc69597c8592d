"""GPU partitions on a real GPU (H100): the proof and the measurements issue 6 asks for.

1. probe: for several green-context layouts, the SMs each lane's kernels ran on (%smid probe):
   lanes must be disjoint and no larger than what rt.lanes() reports.
2. sm_curve: a compute-bound model (ResNet-50, fp16, batch 32) profiled on one green lane of
   8..all SMs: throughput against SM count.
3. colocation: pairs of models on two 50/50 lanes, both saturated; each batch's time against the
   model's solo time on the same lane size: the measured slow-down matrix.
4. profiles: every model's profile per SM share, written in the simulator's schema
   (gpulanes.profiles) to $OUT/h100-profiles.json (commit it under benchmarks/profiles/).

    python benchmarks/gpu_partitions.py [--out DIR] [--parts probe sm_curve colocation]

Needs a CUDA GPU whose driver supports green contexts; prints why not and exits 2 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
warnings.filterwarnings("ignore")

SM_COUNTS = (8, 16, 32, 48, 64, 96, 132)


def models(names):
    """name -> (TorchScript module in fp16 on CPU, one example sample batch)."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    out = {}
    for name in names:
        if name == "bert":
            layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True)
            net = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)
            x = torch.randn(1, 128, 768)
        else:
            net = getattr(torchvision.models, name)(weights=None)
            x = torch.randn(1, 3, 224, 224)
        net = net.eval().half()
        with torch.no_grad():
            out[name] = (torch.jit.trace(net, x.half(), check_trace=False), x.half())
    return out


def runtime(zoo, layout, **kw):
    import gpulanes as gl

    rt = gl.Runtime(device="cuda", partitioning="green", profile_cache=False, profile_reps=20, **kw)
    for name, (module, x) in zoo.items():
        rt.register(name, module, slo_ms=10_000, example_inputs=x, max_batch_size=32)
    rt.set_lanes(layout)
    return rt.start(progress=False)


def probe(total: int) -> List[Dict[str, Any]]:
    import torch

    import gpulanes as gl
    import sm_probe
    from conftest import Mlp, scripted

    rows = []
    for sms in ((66, 66), (32, 96), (48, 48, 32), (16,) * 8):
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
        rows.append({"asked": list(sms), "granted": [l["sms"] for l in lanes], "sm_ids": seen,
                     "disjoint": disjoint, "within_granted": within, "total_sms": total})
        print(f"probe asked {sms} granted {[l['sms'] for l in lanes]} seen "
              f"{[len(s) for s in seen]} disjoint={disjoint} within={within}", flush=True)
    return rows


def sm_curve(total: int) -> Dict[str, Any]:
    zoo = models(["resnet50"])
    rows, profiles = [], {}
    for sms in [s for s in SM_COUNTS if s <= total]:
        rt = runtime(zoo, [{"device": 0, "sms": sms, "models": ["resnet50"]}])
        granted = rt.lanes()[0]["sms"]
        prof = rt.profile("resnet50")
        rt.shutdown()
        p32 = next(p for p in prof if p["batch_size"] == 32)
        rows.append({"asked": sms, "granted": granted, "batch32_p50_ms": p32["p50_us"] / 1e3,
                     "batch32_device_ms": p32.get("device_p50_us", 0) / 1e3,
                     "images_per_s": 32 / (p32["p50_us"] / 1e6)})
        profiles[granted] = prof
        print(f"resnet50 fp16 on {granted} SMs: batch 32 {rows[-1]['batch32_p50_ms']:.2f} ms, "
              f"{rows[-1]['images_per_s']:.0f} images/s", flush=True)
    return {"rows": rows, "profiles": profiles}


def colocation(total: int, seconds: float) -> Dict[str, Any]:
    names = ["resnet50", "mobilenet_v2", "vgg16", "bert"]
    zoo = models(names)
    half = total // 2
    solo, matrix = {}, {}
    for a in names:
        for b in names:
            rt = runtime({a: zoo[a], **({b: zoo[b]} if b != a else {})},
                         [{"device": 0, "sms": half, "models": [a]},
                          {"device": 0, "sms": half, "models": [b]}])
            if a not in solo:
                solo[a] = {p["batch_size"]: p["p50_us"] for p in rt.profile(a)}
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
            print(f"{a} beside {b} (50/50): batch ~{size}, slow-down {slow:.2f}x", flush=True)
    return {"sms_per_lane": half, "slowdown": matrix, "solo_us": solo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--parts", nargs="+", default=["probe", "sm_curve", "colocation"])
    ap.add_argument("--seconds", type=float, default=3.0, help="per co-location pair")
    args = ap.parse_args()
    import torch

    import gpulanes as gl
    from gpulanes import profiles as schema
    from _common import RESULTS, environment, write_result

    if not torch.cuda.is_available() or gl._C.green_context_support(0):
        print(f"needs a GPU with green contexts: {gl._C.green_context_support(0)}")
        sys.exit(2)
    total = torch.cuda.get_device_properties(0).multi_processor_count
    out_dir = args.out or RESULTS
    results: Dict[str, Any] = {}
    if "probe" in args.parts:
        results["probe"] = probe(total)
    if "sm_curve" in args.parts:
        results["sm_curve"] = sm_curve(total)
    if "colocation" in args.parts:
        results["colocation"] = colocation(total, args.seconds)
    path = write_result("gpu-partitions", environment("cuda"), results, out_dir)
    if "sm_curve" in results:
        name = torch.cuda.get_device_name(0)
        entries = [schema.make_entry("resnet50", pts, model_hash=None, device=name,
                                     lane_kind="cuda-green", max_batch_size=32,
                                     sm_share=min(1.0, sms / total), sms=sms)
                   for sms, pts in results["sm_curve"]["profiles"].items()]
        schema.save(out_dir / "h100-profiles.json", entries, source="measured",
                    note="benchmarks/gpu_partitions.py: ResNet-50 fp16 per green-lane SM count")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
