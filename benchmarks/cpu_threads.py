"""Plain torch (no gpulanes): how a TorchScript forward's CPU time depends on torch's intra-op
thread count and on which thread runs it (the process's main thread, which traced the model, or
a new thread, as a serving lane is). Each configuration runs in a fresh process.

    python benchmarks/cpu_threads.py [--reps 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import io, json, statistics, sys, threading, time, warnings
import torch, torchvision
warnings.filterwarnings("ignore")
model, size, threads, where, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
net = getattr(torchvision.models, model)(weights=None).eval()
m = torch.jit.trace(net, torch.randn(1, 3, size, size), check_trace=False)
x = torch.randn(1, 3, size, size)
out = {}
def run():
    ts = []
    with torch.inference_mode():
        for _ in range(reps):
            t = time.perf_counter(); m(x); ts.append((time.perf_counter() - t) * 1e3)
    out["p50_ms"] = statistics.median(ts[5:])
if where == "main":
    run()
else:
    t = threading.Thread(target=run); t.start(); t.join()
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from _common import RESULTS, environment, write_result

    env = environment("cpu")
    rows = []
    for model, size in (("mobilenet_v3_small", 128), ("resnet18", 128)):
        for threads in (1, 2):
            for where in ("main", "new_thread"):
                res = subprocess.run([sys.executable, "-c", CHILD, model, str(size), str(threads),
                                      where, str(args.reps)], capture_output=True, text=True,
                                     check=True)
                p50 = json.loads(res.stdout.strip().splitlines()[-1])["p50_ms"]
                rows.append({"model": model, "image": size, "torch_threads": threads,
                             "thread": where, "p50_ms": round(p50, 2)})
                print(f"{model:<20} {size}px threads={threads} {where:<10} {p50:7.2f} ms",
                      flush=True)
    path = write_result("cpu-threads", env, {"batch_size": 1, "reps": args.reps, "rows": rows},
                        args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
