import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import gpulanes as gl  # noqa: E402
from models import Affine, Busy, scripted  # noqa: E402

HAS_CUDA = torch.cuda.is_available() and gl._C.cuda_lane_support()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
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
                 device: str = "cpu") -> "gl.Runtime":
    rt = gl.Runtime(device=device, warmup_rounds=1)
    rt.register("busy", scripted(Busy(iters)), slo_ms=60_000, example_inputs=torch.zeros(1, 4),
                max_batch_size=max_batch_size, max_queue=max_queue)
    return rt.start()
