"""MPS pre-check (the GPU proof's call 1, 20 s): a runtime with one MPS lane on half the GPU's
SMs starts its private MPS daemon (or uses the one running), its worker process connects as an
MPS client and serves a request, and the daemon is gone after shutdown. When the MPS tests of
call 2 would fail for a broken MPS setup, this says so first, with the daemon's log.

    python scripts/mps_check.py [--device cuda|cpu]

With --device cpu (the proof's dry run) the same steps run on a CPU process lane: the worker
start and the request path, without MPS.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import gpulanes as gl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args()
    t0 = time.monotonic()
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 4).eval()
    module = torch.jit.trace(net, torch.randn(1, 16))
    # A stuck MPS client fails the worker's start after start_timeout_s, not the watchdog's 60 s.
    worker = {"start_timeout_s": 10.0, "max_restarts": 0}
    if args.device == "cuda":
        if not gl._C.cuda_lane_support():
            print("no usable GPU for MPS lanes")
            return 1
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        rt = gl.Runtime(device="cuda", partitioning="mps", profile_cache=False, warmup_rounds=1,
                        worker_options=worker)
        layout = [{"device": 0, "sms": sms // 2, "models": ["m"]}]
    else:
        rt = gl.Runtime(device="cpu", isolation="process", profile_cache=False, warmup_rounds=1,
                        worker_options=worker)
        layout = [{"device": "cpu", "models": ["m"]}]
    rt.register("m", module, slo_ms=10_000, example_inputs=torch.randn(1, 16), max_batch_size=2)
    rt.set_lanes(layout)
    try:
        rt.start(progress=False)
    except gl.GpuLanesError as e:
        print(f"the MPS lane did not start: {e}")
        return 1
    lane = rt.lanes()[0]
    x = torch.randn(16)
    y = rt.infer("m", x)
    ok = torch.allclose(y, net(x.unsqueeze(0))[0], atol=1e-5)
    pipe = lane.get("mps_pipe_dir", "")
    rt.shutdown()
    print(f"lane {lane['kind']}: worker pid {lane.get('worker_pid')}, MPS thread percentage "
          f"{lane.get('mps_thread_percentage')}, daemon {pipe or '(none)'}; result "
          f"{'right' if ok else 'WRONG'}; {time.monotonic() - t0:.1f} s")
    left = pipe and Path(pipe).parent.name.startswith("gpulanes-mps-") and Path(pipe).exists()
    if left:
        print(f"the private MPS daemon outlived its runtime: {pipe}")
    return 0 if ok and not left else 1


if __name__ == "__main__":
    sys.exit(main())
