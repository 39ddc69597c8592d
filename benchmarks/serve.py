"""The front ends' cost: Triton's own load generator, perf_analyzer, against `gpulanes serve`
over HTTP (binary tensors) and gRPC, next to the same load in-process through `submit()` and
against a real Triton server (PyTriton's bundled tritonserver) serving the same models.

Models: "tiny" (y = 2x, FP32 [4]: almost all of its latency is the serving machinery) and
"cnn" (torchvision MobileNetV3-Small, random weights, FP32 [3, 224, 224]). The server runs
the deadline policy on --lanes CPU lanes (SLOs 1 s, so that nothing is dropped while
latency is measured). Loads: closed loop at concurrency 1, 4, 16 and 64 (perf_analyzer
--concurrency-range), and an open-loop Poisson rate (--request-distribution poisson) at half of
what concurrency 16 reached. Every point: throughput and p50/p99 latency as perf_analyzer
reports them (client side, --measurement-interval per window, until 3 windows agree within 25%,
50% for Poisson and for a closed-loop point that did not settle within 25%, marked
"stability_pct": 50; a point that never settles is recorded as an error). In-process:
the same concurrency as threads looping `rt.submit(...).result()` on a runtime with the same
options; the front end's cost per request is server p50 - in-process p50 at concurrency 1.
Triton: nvidia-pytriton 0.7.0 (its tritonserver, Python backend and dynamic batcher with the
same max batch sizes) runs the same TorchScript files with torch in its inference callables
(benchmarks/pytriton_server.py); perf_analyzer drives it with the same commands.

Also gRPC streaming and system shared memory (perf_analyzer --streaming, --shared-memory
system) at concurrency 1 and 16, against gpulanes only.

Targets (issue 15, this 2-core machine): the front end adds <= 300 us at p50 to the tiny model
over HTTP binary and over gRPC; >= 3,000 tiny requests/s at concurrency 16.

perf_analyzer is not installable by name: benchmarks/perf_analyzer.py takes it from the
tritonclient 2.41.0 manylinux wheel (scripts/bootstrap.sh does it once). PyTriton goes
into a virtual environment of its own (~/.cache/gpulanes/pytriton-venv): it pins numpy < 2,
and its Python backend stub links the system's libpython, so the environment is made from the
system's Python (/usr/bin/python3, same minor version as this one, whose torch it borrows).

    python benchmarks/serve.py [--interval-ms 3000] [--lanes 1] [--quick] [--models tiny,cnn]
                               [--no-triton]
    python benchmarks/serve.py --floors     # what the front ends cost without the runtime
"""

from __future__ import annotations

import argparse
import csv
import io
import signal
import site
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from _common import RESULTS, environment, write_result  # noqa: E402
from perf_analyzer import PA_DIR, perf_analyzer  # noqa: E402
from perf_analyzer import environment as pa_environment  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
CONCURRENCY = (1, 4, 16, 64)


# -- perf_analyzer -------------------------------------------------------------------------

def run_pa(model: str, url: str, protocol: str, load: List[str], interval_ms: int,
           shape: str) -> Dict[str, Any]:
    # Open-loop Poisson windows vary more than closed-loop ones: a looser stability bound. A
    # closed-loop point that does not settle within 25% (this VM's speed wanders) is measured
    # again within 50%, and says so.
    if "--request-distribution" in load:
        return _run_pa(model, url, protocol, load, interval_ms, shape, 50)
    r = _run_pa(model, url, protocol, load, interval_ms, shape, 25)
    if "error" in r and "stable measurement" in r["error"]:
        r = {**_run_pa(model, url, protocol, load, interval_ms, shape, 50), "stability_pct": 50}
    return r


def _run_pa(model: str, url: str, protocol: str, load: List[str], interval_ms: int,
            shape: str, stability_pct: int) -> Dict[str, Any]:
    out = Path(tempfile.mkstemp(suffix=".csv")[1])
    stability = str(stability_pct)
    cmd = [str(perf_analyzer()), "-m", model, "-u", url, "-i", protocol, "--shape", shape,
           "--measurement-interval", str(interval_ms), "--max-trials", "8",
           "--stability-percentage", stability, "-f", str(out), *load]
    r = subprocess.run(cmd, capture_output=True, text=True, env=pa_environment(), timeout=600)
    if r.returncode != 0 and not out.stat().st_size:
        return {"error": (r.stdout + r.stderr)[-600:]}
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    out.unlink()
    if not rows:
        return {"error": (r.stdout + r.stderr)[-600:]}
    row = rows[-1]
    return {"throughput": float(row["Inferences/Second"]),
            "p50_us": float(row["p50 latency"]), "p99_us": float(row["p99 latency"]),
            "unstable": r.returncode != 0}


# -- a real Triton server: PyTriton ---------------------------------------------------------

PYTRITON = "nvidia-pytriton==0.7.0"


def pytriton_python() -> Path:
    """The interpreter of PyTriton's own environment, made once. Its Python backend stub loads
    the system's libpython3.X.so, so a venv of another build of 3.X (pyenv's, here) fails in the
    stub with a standard library that does not match; the system interpreter's venv works."""
    venv = PA_DIR.parent / "pytriton-venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    system = Path("/usr/bin/python3")
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    probe = subprocess.run([str(system), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True) if system.exists() else None
    if probe is None or probe.stdout.strip() != minor:
        raise RuntimeError(f"PyTriton needs the system's Python {minor} (/usr/bin/python3) to "
                           "share this environment's torch")
    subprocess.run([str(system), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PYTRITON], check=True)
    # torch (and what it imports) from this environment, after PyTriton's own packages: its
    # numpy 1.x comes first, which torch accepts.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "zz_gpulanes_torch.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PyTritonProcess:
    """benchmarks/pytriton_server.py in a child process; `http` and `grpc` are host:port."""

    def __init__(self, models: Path, timeout_s: float = 300) -> None:
        ports = [_free_port() for _ in range(3)]
        self.http, self.grpc = (f"127.0.0.1:{p}" for p in ports[:2])
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [str(pytriton_python()), str(Path(__file__).with_name("pytriton_server.py")),
             str(models), *map(str, ports)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready = threading.Event()

        def watch() -> None:
            for line in self.proc.stdout:
                if line.startswith("pytriton ready"):
                    ready.set()
            ready.set()  # exited: the waiter looks at poll()

        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(timeout_s) or self.proc.poll() is not None:
            self.terminate()
            self.log.seek(0)
            raise RuntimeError("PyTriton did not start:\n" + self.log.read()[-3000:])

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


def pytriton_version() -> str:
    return subprocess.run([str(pytriton_python()), "-c",
                           "from importlib.metadata import version as v; "
                           "print(v('nvidia-pytriton'), v('tritonclient'))"],
                          capture_output=True, text=True).stdout.strip()


# -- the server and the in-process baseline ------------------------------------------------

def write_models(root: Path, lanes: int) -> Path:
    import torchvision

    class Tiny(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2.0

    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(Tiny().eval()), str(root / "tiny.pt"))
    cnn = torchvision.models.mobilenet_v3_small(weights=None).eval()
    torch.jit.save(torch.jit.trace(cnn, torch.zeros(1, 3, 224, 224)), str(root / "cnn.pt"))
    cfg = root / "serve.toml"
    cfg.write_text(f"""
[server]
http_port = 0
grpc_port = 0
max_rows = 64

[runtime]
device = "cpu"
cpu_lanes = {lanes}
profile_cache = false

[models.tiny]
file = "tiny.pt"
slo_ms = 1000
max_batch_size = 32
max_queue = 100000
inputs = [{{ name = "INPUT__0", datatype = "FP32", shape = [4] }}]

[models.cnn]
file = "cnn.pt"
slo_ms = 1000
max_batch_size = 16
max_queue = 100000
inputs = [{{ name = "INPUT__0", datatype = "FP32", shape = [3, 224, 224] }}]
""")
    return cfg


def in_process(cfg_path: Path, model: str, concurrency: int, seconds: float) -> Dict[str, Any]:
    from gpulanes.serve import load_config

    cfg = load_config(cfg_path)
    rt = cfg.build_runtime()
    cfg.start_runtime(rt)
    sample = [torch.zeros(s, dtype=torch.float32) for s in
              [tuple(t["shape"]) for t in next(m for m in cfg.models if m.name == model).inputs]]
    latencies: List[List[float]] = [[] for _ in range(concurrency)]
    stop = time.monotonic() + seconds
    warm = time.monotonic() + min(1.0, seconds / 4)

    def loop(k: int) -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            rt.submit(model, *sample).result()
            if time.monotonic() > warm:
                latencies[k].append((time.perf_counter() - t0) * 1e6)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rt.shutdown()
    lat = np.concatenate([np.array(x) for x in latencies])
    return {"throughput": len(lat) / (seconds - min(1.0, seconds / 4)),
            "p50_us": float(np.percentile(lat, 50)), "p99_us": float(np.percentile(lat, 99))}


# Triton's extensions that change how tensors travel, measured at concurrency 1 and 16 beside
# plain binary tensors: gRPC streaming, and system shared memory for inputs and outputs.
EXTENSIONS = {"grpc streaming": ("grpc", ["--streaming"]),
              "http shared memory": ("http", ["--shared-memory", "system",
                                              "--output-shared-memory-size", "65536"]),
              "grpc shared memory": ("grpc", ["--shared-memory", "system",
                                              "--output-shared-memory-size", "65536"])}


def extension_points(server: str, http: str, grpc: str, models: Dict[str, str], concurrency,
                     interval_ms: int) -> List[Dict[str, Any]]:
    """perf_analyzer's closed-loop points with each of EXTENSIONS."""
    points = []
    for model, shape in models.items():
        for variant, (protocol, extra) in EXTENSIONS.items():
            for c in concurrency:
                r = run_pa(model, http if protocol == "http" else grpc, protocol,
                           ["--concurrency-range", str(c), *extra], interval_ms, shape)
                points.append({"model": model, "front_end": f"{server} {variant}",
                               "load": f"concurrency {c}", **r})
                print(points[-1], flush=True)
    return points


def perf_points(server: str, http: str, grpc: str, models: Dict[str, str],
                concurrency, interval_ms: int) -> List[Dict[str, Any]]:
    """perf_analyzer's closed-loop points, then a Poisson rate at half of concurrency 16's."""
    points = []
    for model, shape in models.items():
        for protocol, url in (("http", http), ("grpc", grpc)):
            label = f"{server} {protocol}"
            reached = {}
            for c in concurrency:
                r = run_pa(model, url, protocol, ["--concurrency-range", str(c)], interval_ms, shape)
                reached[c] = r.get("throughput", 0)
                points.append({"model": model, "front_end": label, "load": f"concurrency {c}", **r})
                print(points[-1], flush=True)
            rate = max(1, int(reached.get(16, 0) / 2))
            r = run_pa(model, url, protocol, ["--request-rate-range", str(rate),
                                              "--request-distribution", "poisson"],
                       interval_ms, shape)
            points.append({"model": model, "front_end": label, "load": f"poisson {rate}/s", **r})
            print(points[-1], flush=True)
    return points


# -- the front ends' floor ------------------------------------------------------------------

FLOORS = {
    # What the front ends cost without the runtime: requests parsed, checked and answered
    # (outputs = 2 x inputs) by gpulanes' own HTTP and gRPC code, no Runtime call.
    "no runtime": "gpulanes serve, answering without the runtime",
    # What grpcio costs alone: ModelInfer answered with a reply made once, nothing parsed.
    "grpcio alone": "grpcio's asyncio server, a fixed reply",
}


def floor_child(kind: str, config: str) -> int:
    """`gpulanes serve CONFIG` with its answers made as FLOORS[kind] says (run in a child)."""
    import importlib

    from gpulanes.serve import protocol, server

    # The module, not the function of the same name gpulanes.serve exports.
    grpc_module = importlib.import_module("gpulanes.serve.grpc_server")

    async def no_runtime(self, model, batch, deadline_ms, priority):
        return [t * 2.0 for t in batch]

    protocol.Endpoint.run = no_runtime
    if kind == "grpcio alone":
        replies: Dict[str, Any] = {}

        async def fixed_reply(self, request, context):
            if request.model_name not in replies:
                replies[request.model_name] = await original(self, request, context)
            return replies[request.model_name]

        original = grpc_module.InferenceService.model_infer
        grpc_module.InferenceService.model_infer = fixed_reply
    return server.main([config])


def floors(cfg: Path, interval_ms: int) -> List[Dict[str, Any]]:
    from serve_helpers import ServerProcess

    points = []
    for kind in FLOORS:
        srv = ServerProcess(cfg, command=[sys.executable, __file__, "--floor-child", kind])
        try:
            for protocol, url in (("http", srv.http), ("grpc", srv.grpc)):
                if kind == "grpcio alone" and protocol == "http":
                    continue
                for c in (1, 16):
                    r = run_pa("tiny", url, protocol, ["--concurrency-range", str(c)],
                               interval_ms, "INPUT__0:4")
                    points.append({"model": "tiny", "front_end": f"floor: {kind} {protocol}",
                                   "what": FLOORS[kind], "load": f"concurrency {c}", **r})
                    print(points[-1], flush=True)
        finally:
            srv.terminate()
    return points


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--interval-ms", type=int, default=3000)
    p.add_argument("--lanes", type=int, default=1)
    p.add_argument("--quick", action="store_true",
                   help="concurrency 1 and 16 only, tiny only (unless --models says)")
    p.add_argument("--models", default=None,
                   help="comma-separated: which of tiny, cnn (default: both; tiny with --quick)")
    p.add_argument("--no-triton", action="store_true", help="leave out the PyTriton server")
    p.add_argument("--floors", action="store_true",
                   help="only the front ends' floors (tiny model; written as serve-floors-*.json)")
    p.add_argument("--floor-child", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.floor_child:
        sys.exit(floor_child(*args.floor_child))
    from serve_helpers import ServerProcess

    perf_analyzer()
    env = environment("cpu")
    import grpc
    import uvicorn

    from gpulanes import _C

    env["versions"].update(uvicorn=uvicorn.__version__, grpcio=grpc.__version__,
                           perf_analyzer="tritonclient 2.41.0 wheel")
    # `gpulanes serve` answers gRPC with the core's front end (grpc++) where it was built
    env["grpc_frontend"] = (f"core, grpc++ {_C.GRPC_VERSION}" if _C.HAS_GRPC_FRONTEND
                            else f"python, grpcio {grpc.__version__}")
    results: Dict[str, Any] = {"lanes": args.lanes, "interval_ms": args.interval_ms, "points": []}
    models = {"tiny": "INPUT__0:4", "cnn": "INPUT__0:3,224,224"}
    chosen = (args.models or ("tiny" if args.quick else "tiny,cnn")).split(",")
    if any(m not in models for m in chosen):
        p.error(f"--models takes {sorted(models)}, got {args.models!r}")
    models = {m: models[m] for m in chosen}
    concurrency = (1, 16) if args.quick else CONCURRENCY
    with tempfile.TemporaryDirectory() as tmp:
        cfg = write_models(Path(tmp), args.lanes)
        if args.floors:
            results["points"] = [{"model": "tiny", "front_end": "in-process submit()",
                                  "load": f"concurrency {c}",
                                  **in_process(cfg, "tiny", c, args.interval_ms / 1000 * 3)}
                                 for c in (1, 16)]
            results["points"] += floors(cfg, args.interval_ms)
            print(f"wrote {write_result('serve-floors', env, results, args.out)}")
            return
        for model, shape in models.items():
            for c in concurrency:
                row = {"model": model, "front_end": "in-process submit()", "load": f"concurrency {c}",
                       **in_process(cfg, model, c, args.interval_ms / 1000 * 3)}
                print(row, flush=True)
                results["points"].append(row)
        srv = ServerProcess(cfg)
        try:
            results["points"] += perf_points("gpulanes", srv.http, srv.grpc, models, concurrency,
                                             args.interval_ms)
            results["points"] += extension_points("gpulanes", srv.http, srv.grpc, models,
                                                  (1, 16), args.interval_ms)
        finally:
            srv.terminate()
        if not args.no_triton:
            try:
                triton = PyTritonProcess(Path(tmp))
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                results["triton_error"] = str(e)[-2000:]
                print(f"no Triton peer: {e}", flush=True)
            else:
                env["versions"]["nvidia_pytriton"] = pytriton_version()
                try:
                    results["points"] += perf_points("triton (PyTriton)", triton.http, triton.grpc,
                                                     models, concurrency, args.interval_ms)
                finally:
                    triton.terminate()
    base = {(p["model"], p["load"]): p for p in results["points"]
            if p["front_end"].startswith("in-process")}
    for p in results["points"]:
        b = base.get((p["model"], p["load"]))
        if b and "p50_us" in p and p is not b:
            p["added_p50_us"] = p["p50_us"] - b["p50_us"]
    # a chosen subset of the models is a result of its own (a full run is not overwritten)
    path = write_result("serve" if args.models is None else "serve-" + "-".join(models), env,
                        results, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
