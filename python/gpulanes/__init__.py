"""gpulanes: serve many PyTorch models on shared GPUs with a deadline for every request.

>>> import gpulanes as gl
>>> rt = gl.Runtime(device="auto")
>>> rt.register("net", module, slo_ms=50, example_inputs=(torch.randn(1, 16),))
>>> with rt:
...     y = rt.infer("net", torch.randn(16))
"""

import torch  # noqa: F401  (must be imported before the extension: it loads libtorch)

from ._build_info import check_torch as _check_torch

_check_torch(torch.__version__)  # a build for another torch fails here in one line, not in _C
from . import _C  # noqa: F401,E402
from .errors import (
    DeadlineExceeded,
    GpuLanesError,
    InvalidInput,
    ModelError,
    Overloaded,
    QueueFull,
    RuntimeClosed,
    UnknownModel,
    UnmeetableSlo,
)
from . import evaluation, formats, plot, predict, profiles, workloads
from .runtime import Runtime
from . import sim  # noqa: E402  (uses Runtime's helpers)

__version__ = "0.1.0"

__all__ = [
    "Runtime",
    "evaluation",
    "formats",
    "plot",
    "predict",
    "profiles",
    "sim",
    "workloads",
    "GpuLanesError",
    "DeadlineExceeded",
    "Overloaded",
    "QueueFull",
    "InvalidInput",
    "UnknownModel",
    "UnmeetableSlo",
    "ModelError",
    "RuntimeClosed",
]
