"""Runs `python -m gpulanes serve CONFIG` as a child process for the server tests: writes the
models and the config, waits for readiness, reads the ports the server bound."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn


class Affine(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


class Pair(nn.Module):
    """Two inputs of different dtypes, two outputs."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return a + b.to(torch.float32), b * 2


class Half(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class Slow(nn.Module):
    """x + 1 after `iters` rounds of matmul work: batches that take a while."""

    def __init__(self, iters: int) -> None:
        super().__init__()
        self.iters = iters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(192, 192)
        for _ in range(self.iters):
            a = torch.tanh(a @ a * (1.0 / 192))
        return x + 1.0 + a.sum() * 0.0


class RowSum(nn.Module):
    """A model without a batch dimension: sums a [3, 4] input over its rows (twice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"takes a [3, 4] matrix, got {list(x.shape)}")
        return x.sum(0) * 2.0


class Shout(nn.Module):
    """Strings in, strings out (BYTES both ways): each text upper-cased with a "!"."""

    def forward(self, texts: List[str]) -> List[str]:
        return [t.upper() + "!" for t in texts]


class WordCount(nn.Module):
    """A string input and a tensor input, a tensor output: words per text times a weight."""

    def forward(self, texts: List[str], weight: torch.Tensor) -> torch.Tensor:
        counts = torch.tensor([float(len(t.split())) for t in texts])
        return counts.unsqueeze(1) * weight


class Reverse(nn.Module):
    """A model without a batch dimension over strings: its whole List[str], reversed."""

    def forward(self, texts: List[str]) -> List[str]:
        return texts[::-1]


MODELS = {
    "affine": (Affine(), '[{ name = "INPUT__0", datatype = "FP32", shape = [4] }]', ""),
    "pair": (Pair(), '[{ name = "a", datatype = "FP32", shape = [3] }, '
                     '{ name = "b", datatype = "INT64", shape = [3] }]', '["sum", "twice"]'),
    "half": (Half(), '[{ name = "INPUT__0", datatype = "FP16", shape = [4] }]', ""),
    "slow": (Slow(40), '[{ name = "INPUT__0", datatype = "FP32", shape = [4] }]', ""),
    "slower": (Slow(400), '[{ name = "INPUT__0", datatype = "FP32", shape = [4] }]', ""),
    "rowsum": (RowSum(), '[{ name = "INPUT__0", datatype = "FP32", shape = [3, 4] }]', ""),
    "shout": (Shout(), '[{ name = "TEXT", datatype = "BYTES", shape = [1] }]', '["LOUD"]'),
    "wordcount": (WordCount(), '[{ name = "TEXT", datatype = "BYTES", shape = [1] }, '
                               '{ name = "WEIGHT", datatype = "FP32", shape = [1] }]', ""),
    "reverse": (Reverse(), '[{ name = "TEXTS", datatype = "BYTES", shape = [-1] }]', ""),
}


def write_config(root: Path, models: List[str], server: str = "", slo_ms: float = 60_000,
                 max_batch_size: int = 8, max_queue: Union[int, Dict[str, int]] = 256,
                 later: Dict[str, str] = None) -> Path:
    """``max_queue``: for every model, or per model (256 for those not named). ``later``:
    models (name -> one of MODELS) the config declares with ``load = false``."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["[server]", "http_port = 0", "grpc_port = 0", server, "",
             "[runtime]", 'device = "cpu"', "cpu_lanes = 2", "warmup_rounds = 1",
             "profile_reps = 3", "profile_cache = false", ""]
    for name in list(models) + list(later or {}):
        module, inputs, outputs = MODELS[(later or {}).get(name, name)]
        torch.jit.save(torch.jit.script(module.eval()), str(root / f"{name}.pt"))
        if name in (later or {}):
            lines.append(f"[models.{name}]\nload = false")
        else:
            lines.append(f"[models.{name}]")
        lines += [f'file = "{name}.pt"', f"slo_ms = {slo_ms}",
                  f"max_batch_size = {max_batch_size}",
                  f"max_queue = {max_queue if isinstance(max_queue, int) else max_queue.get(name, 256)}",
                  f"inputs = {inputs}"]
        if outputs:
            lines.append(f"outputs = {outputs}")
        lines.append("")
    path = root / "serve.toml"
    path.write_text("\n".join(lines))
    return path


class ServerProcess:
    """`python -m gpulanes serve` in a child process; `http` and `grpc` are host:port."""

    def __init__(self, config: Path, env: Optional[Dict[str, str]] = None,
                 timeout_s: float = 240, command: Optional[List[str]] = None) -> None:
        """``command``: what to run instead of `python -m gpulanes serve` (CONFIG follows)."""
        self.proc = subprocess.Popen(
            (command or [sys.executable, "-m", "gpulanes", "serve"]) + [str(config)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, **(env or {})})
        self.lines: List[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(timeout_s) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("server did not become ready:\n" + "".join(self.lines))
        ports = dict(re.findall(r"(http|grpc)=(\S+)", self._ready_line))
        self.http, self.grpc = ports.get("http"), ports.get("grpc")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("gpulanes serve: ready"):
                self._ready_line = line
                self._ready.set()
        self._ready.set()  # exited: the waiter looks at poll()

    def terminate(self, timeout_s: float = 120) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def wait_until(self, predicate, timeout_s: float = 30) -> bool:
        return wait_until(predicate, timeout_s)


def wait_until(predicate, timeout_s: float = 30, poll_s: float = 0.01) -> bool:
    """Whether ``predicate()`` turned true within ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(poll_s)
    return False


def open_fds(pid: int) -> int:
    """Files process ``pid`` has open (Linux)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid``, KiB (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


class InProcessServer:
    """A grpc.aio server on its own event loop thread."""

    def __init__(self, runtime, token=None, frontend="auto"):
        import asyncio

        from gpulanes.serve import Endpoint, grpc_server

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start():
            server, port = grpc_server(Endpoint(runtime, max_rows=16), "127.0.0.1:0", token=token,
                                       frontend=frontend)
            await server.start()
            return server, port
        self.server, port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        self.address = f"127.0.0.1:{port}"

    def close(self):
        import asyncio

        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def perf_analyzer_run(model: str, url: str, protocol: str, out: Path, *extra: str,
                      concurrency: int = 2, per_window: int = 100) -> Tuple[int, str, Dict]:
    """Triton's perf_analyzer against ``url`` as its users run it, with a count of requests per
    window and a stability bound it always meets (so that this machine's speed cannot fail a
    test): (exit status, its output, the last row of its CSV or {})."""
    import csv
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from perf_analyzer import environment, perf_analyzer

    r = subprocess.run(
        [str(perf_analyzer(fetch=False)),  # scripts/bootstrap.sh fetched it: missing fails
         "-m", model, "-u", url, "-i", protocol, "--concurrency-range", str(concurrency),
         "--measurement-mode", "count_windows", "--measurement-request-count", str(per_window),
         "--stability-percentage", "1000", "--max-trials", "3", "-f", str(out), *extra],
        capture_output=True, text=True, env=environment(), timeout=300)
    rows = list(csv.DictReader(out.open())) if out.exists() else []
    return r.returncode, r.stdout[-2000:] + r.stderr[-2000:], rows[-1] if rows else {}
