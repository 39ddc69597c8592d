"""How long Python's full garbage collection stalls serving, and what gc.freeze() after start()
changes. Every collection holds the GIL: submits, deliveries and infer_async wake-ups wait.

A CPU runtime serves MobileNetV3-Small (96x96, TorchScript trace, max batch 16) with torch and
torchvision imported. Measured: open-loop Poisson runs at --rate for --seconds, without and with the
freeze: every generation-2 collection the interpreter ran on its own (duration), requests met
and refused, how late the submitting thread fell behind its schedule, and then what one full
collection (gc.collect()) costs.

    python benchmarks/gc_pause.py [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision  # noqa: F401  (loaded, as in a service that uses it: a bigger heap)

import gpulanes as gl
from gpulanes import workloads as wl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, mobilenet_v3_96, write_result  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=UserWarning)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    env = environment("cpu")
    model, example = mobilenet_v3_96()
    collections = []

    def on_gc(phase, info, started=[0.0]):
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] == 2:
            collections.append(round((time.perf_counter() - started[0]) * 1e3, 2))

    results = {"arrivals": f"Poisson {args.rate}/s, open loop", "runs": {}}
    profile = None
    for frozen in (False, True):
        rt = gl.Runtime(device="cpu", profile_cache=False)
        rt.register("m", model, slo_ms=80, example_inputs=example, max_batch_size=16)
        if profile:
            rt.set_profile("m", profile)
        rt.start(progress=False)
        profile = rt.profile("m")
        if frozen:  # what `gpulanes serve` does once started
            gc.collect()
            gc.freeze()
        collections.clear()
        gc.callbacks.append(on_gc)
        out = wl.drive(rt, wl.Poisson({"m": args.rate}, args.seconds, seed=1), {"m": (example[0],)},
                       progress=False)
        gc.callbacks.remove(on_gc)
        t = time.perf_counter()
        gc.collect()  # what one full collection costs now
        full_ms = (time.perf_counter() - t) * 1e3
        rt.shutdown()
        m = out["models"]["m"]
        row = {"full_collection_ms": round(full_ms, 1), "gen2_collections_ms": list(collections),
               "requests": m["requests"], "met": m["met"], "rejected": m["rejected"],
               "dropped": m["dropped"], "late": m["late"],
               "submit_lateness_ms": out["submit_lateness_ms"],
               "objects_tracked": len(gc.get_objects()), "frozen": gc.get_freeze_count()}
        results["runs"]["frozen" if frozen else "default"] = row
        print("frozen" if frozen else "default", row, flush=True)
        gc.unfreeze()
    print("wrote", write_result("gc-pause", env, results))


if __name__ == "__main__":
    main()
