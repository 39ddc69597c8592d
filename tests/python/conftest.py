"""Shared fixtures and the small TorchScript models the tests serve (random weights, no
downloads)."""

import contextlib
import os
import sys
import threading
import tempfile
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

# Every test run starts with an empty profile cache (tests that study the cache use their own).
os.environ["GPULANES_CACHE_DIR"] = tempfile.mkdtemp(prefix="gpulanes-test-cache-")

import gpulanes as gl  # noqa: E402

class Affine(nn.Module):
    """2x + 1 elementwise: easy to check exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 + 1.0


class Busy(nn.Module):
    """Returns x + 1 after `iters` rounds of `size` x `size` matmul work, so batches take
    measurable time. The work runs where x is: on a GPU lane, on its SMs."""

    def __init__(self, iters: int, size: int = 160) -> None:
        super().__init__()
        self.iters = iters
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.ones(self.size, self.size, device=x.device)
        for _ in range(self.iters):
            a = torch.tanh(a @ a * (1.0 / self.size))
        return x + 1.0 + a.sum() * 0.0


class Spin(nn.Module):
    """Returns x + 1 after n rounds of `size` x `size` matmul work, n the batch's first value:
    a batch of zeros (profiling, warm-up) is quick, a request of n = 200000 keeps its lane busy
    for seconds on any GPU (at least the time to launch its kernels), whatever its speed."""

    def __init__(self, size: int = 1024) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.reshape(-1)[0].item())
        a = torch.ones(self.size, self.size, device=x.device)
        for _ in range(n):
            a = torch.tanh(a @ a * (1.0 / self.size))
        return x + 1.0 + a.sum() * 0.0


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TokenClassifier(nn.Module):
    """int64 token ids in, float logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(dim=1))


class TwoInputsTupleOut(nn.Module):
    """Two inputs of different shapes and dtypes; a tuple of two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x) * mask.to(torch.float32).unsqueeze(-1)
        return y, y.sum(dim=-1)


class ListOut(nn.Module):
    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [x + 1.0, x * x]


class Picky(nn.Module):
    """Raises when any sample of the batch is negative."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x < 0).any()):
            raise RuntimeError("negative input")
        return x + 1.0


@contextlib.contextmanager
def background_load(submit_one, gap_s: float = 0.0005):
    """Calls ``submit_one(i)`` for i = 0, 1, 2, ... from a thread while the body runs, ``gap_s``
    apart; yields the list of what it returned."""
    futures, stop = [], threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            futures.append(submit_one(i))
            i += 1
            stop.wait(gap_s)

    t = threading.Thread(target=load)
    t.start()
    try:
        yield futures
    finally:
        stop.set()
        t.join()


def affine_load(rt, model: str = "affine", gap_s: float = 0.0005):
    """Submits samples i = 0, 1, 2, ... of an Affine model from a thread while the body runs;
    yields the list of (i, future) it fills. Each result must be 2i + 1."""
    return background_load(lambda i: (i, rt.submit(model, torch.full((4,), float(i)))), gap_s)


def two_lanes_at_once(rt, n: int = 30) -> Tuple[float, float]:
    """(seconds for n requests of model "a" alone, seconds for n of "a" and n of "b" together)
    on a started runtime whose lanes serve "a" and "b" apart, after a few to settle: two lanes
    that run at the same time take about as long for both as one takes alone."""
    import time

    def elapsed(models, k):
        t0 = time.monotonic()
        futs = [rt.submit(m, torch.zeros(4)) for _ in range(k) for m in models]
        for f in futs:
            f.result(timeout=120)
        return time.monotonic() - t0

    elapsed(("a", "b"), 3)
    return elapsed(("a",), n), elapsed(("a", "b"), n)


def check_outputs_kept_for_their_reader(**runtime_kwargs) -> None:
    """A GPU output is read on the submitter's stream behind ~100 ms of spinning and dropped at
    once; later batches must not get its memory before that read ran (record_stream), and the
    read must not see the row before it was complete."""
    rt = gl.Runtime(device="cuda", output_device="cuda", profile_cache=False, **runtime_kwargs)
    rt.register("affine", scripted(Affine()), slo_ms=60_000, example_inputs=torch.zeros(1, 4096),
                max_batch_size=1)
    side = torch.cuda.Stream()
    with rt:
        with torch.cuda.stream(side):
            y = rt.infer("affine", torch.ones(4096, device="cuda"))  # 3.0 everywhere
            torch.cuda._sleep(200_000_000)
            z = y * 10
            del y
        for _ in range(5):
            assert rt.infer("affine", torch.full((4096,), 5.0)).eq(11.0).all()
        side.synchronize()
        assert z.eq(30.0).all()


def halves(split) -> int:
    """SMs of each of two equal green lanes that fit a device's split (gl._C.green_sm_split):
    whole groups, so that an odd number of groups still fits (half of the usable SMs would not)."""
    return split["groups"] // 2 * split["group_sms"]


def saved(module: nn.Module) -> bytes:
    """A scripted module as torch.jit.save bytes: what register loads in the core without
    running it first (a ScriptModule object is run once on its examples at register)."""
    import io

    buf = io.BytesIO()
    torch.jit.save(scripted(module), buf)
    return buf.getvalue()


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    return torch.jit.script(module.eval())


HAS_CUDA = torch.cuda.is_available() and gl._C.cuda_lane_support()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    if os.environ.get("GPULANES_REQUIRE_GPU") == "1" and any("gpu" in i.keywords for i in items):
        # The GPU proof sets this: a build without CUDA, or a GPU torch cannot see, must fail
        # there rather than skip every GPU test and look green.
        raise pytest.UsageError(
            "GPULANES_REQUIRE_GPU=1 but the GPU tests cannot run: torch.cuda.is_available()="
            f"{torch.cuda.is_available()}, gpulanes built with CUDA: {gl._C.built_with_cuda}")
    skip = pytest.mark.skip(reason="needs a CUDA GPU and a CUDA build of gpulanes")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def unraisable():
    """Collects exceptions Python could not raise (e.g. from a future resolved twice)."""
    seen = []
    old = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u)
    yield seen
    sys.unraisablehook = old


@pytest.fixture
def affine_rt():
    rt = gl.Runtime(device="cpu")
    rt.register("affine", scripted(Affine()), slo_ms=10_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=16, max_queue=100_000)
    with rt:
        yield rt


def busy_runtime(iters: int, *, max_batch_size: int = 1, max_queue: int = 10_000,
                 device: str = "cpu", **options) -> "gl.Runtime":
    rt = gl.Runtime(device=device, warmup_rounds=1, **options)
    rt.register("busy", scripted(Busy(iters)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=max_batch_size, max_queue=max_queue)
    return rt.start()
