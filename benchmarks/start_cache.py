"""How long Runtime.start() takes with an empty profile cache (warm-up and profiling of every
batch size) and again with the profiles cached (warm-up only). Two torchvision models with random
weights; each start runs in a fresh process so nothing else is shared between the two.

    python benchmarks/start_cache.py [--device cpu] [--max-batch 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time, warnings
import torch, torchvision
warnings.filterwarnings("ignore")
import gpulanes as gl
device, max_batch, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rt = gl.Runtime(device=device, profile_cache=cache)
for name, size in (("resnet18", 128), ("mobilenet_v3_small", 128)):
    torch.manual_seed(0)  # the same weights in both processes: the same bytes, the same key
    net = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    rt.register(name, torch.jit.trace(net, x, check_trace=False), slo_ms=1000,
                example_inputs=x, max_batch_size=max_batch)
t = time.perf_counter()
rt.start(progress=False)
took = time.perf_counter() - t
print(json.dumps({"start_s": took, "sources": {m: rt.profile_source(m) for m in rt.models}}))
rt.shutdown()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from _common import RESULTS, environment, write_result

    env = environment(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for run in ("empty cache", "cached"):
            res = subprocess.run([sys.executable, "-c", CHILD, args.device, str(args.max_batch),
                                  cache], capture_output=True, text=True, check=True)
            row = {"run": run, **json.loads(res.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{run:<12} start() {row['start_s']:6.2f} s  profiles: {row['sources']}",
                  flush=True)
    path = write_result("start-cache", env, {"max_batch_size": args.max_batch, "runs": rows},
                        args.out or RESULTS)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
