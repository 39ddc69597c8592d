"""The online and offline regressors of the latency predictor, for notebooks and experiments
(the runtime and simulator use the same C++ classes).

>>> rls = gpulanes.predict.RLS(3, forgetting=0.99)
>>> for x, y in samples:
...     rls.update(x, y)
>>> rls.weights, rls.predict(x)

- :class:`RLS`: recursive least squares with a forgetting factor (``forgetting`` < 1 tracks a
  changing relation); the covariance starts at ``delta * I``, is kept symmetric, its
  eigenvalues at most ``max_eigenvalue`` (default ``delta``: no wind-up in directions the data
  never excites), and it is reset if it degenerates.
- :class:`SGD`: normalized least-mean-squares, ``w += lr * error * x / |x|^2``.
- :func:`least_squares`: the minimum-norm least-squares fit (as ``numpy.linalg.lstsq``), the
  ``static`` predictor's offline fit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _C

__all__ = ["RLS", "SGD", "least_squares", "FEATURES"]

# The co-location features of a batch (csrc/gpulanes/predict/colocation.h), in order.
FEATURES = ("intercept", "solo_ms", "share", "solo*overlap", "solo*overlap*l2_self",
            "solo*overlap_l2", "solo*overlap*dram_self", "solo*overlap_dram", "solo*ewma_l2",
            "solo*ewma_dram", "solo*next_l2", "solo*next_dram")


class _Regressor:
    """numpy in, numpy out, around one of the core's regressors."""

    _m: Any

    def update(self, x, y: float) -> None:
        self._m.update(np.asarray(x, dtype=np.float64), float(y))

    def predict(self, x) -> float:
        return self._m.predict(np.asarray(x, dtype=np.float64))

    @property
    def weights(self) -> np.ndarray:
        return np.array(self._m.weights)

    @weights.setter
    def weights(self, w) -> None:
        self._m.weights = np.asarray(w, dtype=np.float64)


class RLS(_Regressor):
    def __init__(self, dim: int, forgetting: float = 0.99, delta: float = 1e3,
                 max_eigenvalue: float = 0.0) -> None:
        self._m = _C.Rls(int(dim), float(forgetting), float(delta), float(max_eigenvalue))

    @property
    def covariance(self) -> np.ndarray:
        return np.array(self._m.covariance)

    @property
    def resets(self) -> int:
        return self._m.resets


class SGD(_Regressor):
    def __init__(self, dim: int, lr: float = 0.05) -> None:
        self._m = _C.Sgd(int(dim), float(lr))


def least_squares(X, y) -> np.ndarray:
    """Minimum-norm solution of ``X w = y``."""
    return np.array(_C.least_squares(np.asarray(X, dtype=np.float64),
                                     np.asarray(y, dtype=np.float64)))
