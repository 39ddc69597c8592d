"""Model formats side by side: TorchScript (torch.jit.trace) and an AOTInductor package that
gpulanes exports and compiles from the same nn.Module, served by the same runtime.

Models: on the CPU MobileNetV3-Small at 96x96 and a small Transformer encoder (those of
`policies.py`); on CUDA ResNet-50 and MobileNetV2 at 224x224, fp32. Max batch 16. Per model and
format:

- load: what `register()` + `start()` cost, cold (empty package cache and empty inductor
  cache: export + C++/CUDA compile) and cached (the second time: export, then the package from
  the cache), and TorchScript's trace + load for comparison;
- latency: the runtime's measured profile, p50 at batch 1 and at batch 16;
- peak rate: the highest Poisson (open-loop) rate at which >= 99% of requests meet the SLO, one
  lane serving the model alone under the deadline policy, by peak search over --seconds runs.
  SLO: 20 x TorchScript's batch-1 latency (at least 20 ms), the same for both formats. Each
  run freezes what exists after start() out of the garbage collector's sight (gc.freeze(), as
  `gpulanes serve` does): otherwise a full collection (210 ms with torch and torchvision
  loaded) lands in some runs and not others, whichever format is served.

On the CPU torch gets one intra-op thread (--threads), so the lane and the load driver each have
a core.

    python benchmarks/formats.py [--device cpu|cuda] [--seconds 3] [--steps 4]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Dict

import torch
import torchvision

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, peak_search, write_result  # noqa: E402
from policies import TextEncoder  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)
MAX_BATCH = 16


def models(device: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    if device == "cuda":
        return {"resnet50": (torchvision.models.resnet50(weights=None), torch.randn(1, 3, 224, 224)),
                "mobilenet_v2": (torchvision.models.mobilenet_v2(weights=None),
                                 torch.randn(1, 3, 224, 224))}
    return {"mobilenet_v3": (torchvision.models.mobilenet_v3_small(weights=None),
                             torch.randn(1, 3, 96, 96)),
            "transformer": (TextEncoder(), torch.randint(0, 1000, (1, 32)))}


def as_format(fmt: str, module: torch.nn.Module, example: torch.Tensor):
    """What register() is given for `fmt`: a TorchScript trace, or the module itself."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.trace(module.eval(), example, check_trace=False)
    return module.eval()


def timed_start(device: str, name: str, model: Any, example: torch.Tensor) -> Dict[str, Any]:
    """register() + start() of one model on one lane: seconds each, and its measured profile."""
    rt = gl.Runtime(device=device, profile_cache=False)
    t0 = time.perf_counter()
    rt.register(name, model, slo_ms=60_000, example_inputs=example, max_batch_size=MAX_BATCH,
                progress=False)
    t1 = time.perf_counter()
    rt.start(progress=False)
    t2 = time.perf_counter()
    profile = rt.profile(name)
    rt.shutdown()
    return {"register_s": round(t1 - t0, 2), "start_s": round(t2 - t1, 2), "profile": profile}


def serve(device: str, name: str, model: Any, example, profile, slo_ms: float, rate: float,
          seconds: float) -> Dict[str, Any]:
    rt = gl.Runtime(device=device, profile_cache=False)
    rt.register(name, model, slo_ms=slo_ms, example_inputs=example, max_batch_size=MAX_BATCH,
                progress=False)
    rt.set_profile(name, profile)
    rt.start(progress=False)
    gc.collect()
    gc.freeze()  # as `gpulanes serve` does: no 200 ms full collection in the middle of a run
    work = wl.Poisson({name: rate}, seconds, seed=int(rate * 1000) % 100_000)
    out = wl.drive(rt, work, {name: (example[0],)}, warmup_s=1.0, progress=False)
    rt.shutdown()
    m = out["models"][name]
    n = m["requests"]
    return {"rate": round(rate, 1), "requests": n, "attainment": m["met"] / n if n else 1.0,
            "p99_ms": m["p99_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=4, help="bisection steps of the peak search")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (CPU)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    # Cold means cold: this run's own package cache and inductor cache, empty at first.
    caches = [tempfile.mkdtemp(prefix="gpulanes-formats-"), tempfile.mkdtemp(prefix="inductor-")]
    os.environ["GPULANES_CACHE_DIR"], os.environ["TORCHINDUCTOR_CACHE_DIR"] = caches
    try:
        run(args)
    finally:
        for d in caches:
            shutil.rmtree(d, ignore_errors=True)


def run(args: argparse.Namespace) -> None:
    env = environment(args.device)
    env["command"] = "python benchmarks/formats.py " + " ".join(sys.argv[1:])
    results: Dict[str, Any] = {"max_batch": MAX_BATCH, "arrivals": "Poisson, open loop",
                               "models": {}}
    for name, (module, example) in models(args.device).items():
        rows: Dict[str, Any] = {}
        for fmt in ("torchscript", "aoti"):
            t = time.perf_counter()
            model = as_format(fmt, module, example)
            prepare_s = time.perf_counter() - t  # the trace (TorchScript); nothing for a module
            cold = timed_start(args.device, name, model, example)
            cached = timed_start(args.device, name, model, example)
            points = {p["batch_size"]: p for p in cold["profile"]}
            rows[fmt] = {
                "load_cold_s": round(prepare_s + cold["register_s"] + cold["start_s"], 2),
                "load_cached_s": round(cached["register_s"] + cached["start_s"], 2),
                "register_cold_s": cold["register_s"], "register_cached_s": cached["register_s"],
                "batch1_p50_ms": points[1]["p50_us"] / 1e3,
                "batch_max_p50_ms": points[MAX_BATCH]["p50_us"] / 1e3,
                "profile": cold["profile"],
                # What the peak search registers: the cached package itself, not re-exported.
                "model": model if fmt == "torchscript" else gl.formats.compile_package(
                    module, example, max_batch_size=MAX_BATCH, device=args.device, name=name,
                    progress=False)}
            print(f"{name:13s} {fmt:11s} load cold {rows[fmt]['load_cold_s']:6.1f} s, cached "
                  f"{rows[fmt]['load_cached_s']:5.1f} s; batch 1 {rows[fmt]['batch1_p50_ms']:6.2f} "
                  f"ms, batch {MAX_BATCH} {rows[fmt]['batch_max_p50_ms']:7.2f} ms", flush=True)
        slo_ms = max(20.0, 20 * rows["torchscript"]["batch1_p50_ms"])
        for fmt, row in rows.items():
            model, profile = row.pop("model"), row["profile"]
            start = 0.25 * MAX_BATCH / (row["batch_max_p50_ms"] / 1e3)  # of full-batch rate
            found = peak_search(
                lambda r: serve(args.device, name, model, example, profile, slo_ms, r,
                                args.seconds),
                lambda row_: row_["attainment"] >= 0.99, start=start, steps=args.steps,
                grow_limit=8.0)
            row["slo_ms"] = round(slo_ms, 2)
            row["peak_rate_99"] = round(found["max_load"], 1)
            row["peak_search"] = found["tried"]
            print(f"{name:13s} {fmt:11s} peak rate at 99% of a {slo_ms:.0f} ms SLO: "
                  f"{row['peak_rate_99']:.0f}/s", flush=True)
        results["models"][name] = rows
    path = write_result("formats", env, results, **({"out_dir": args.out} if args.out else {}))
    print("wrote", path)


if __name__ == "__main__":
    main()
