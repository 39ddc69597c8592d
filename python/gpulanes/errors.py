"""Typed errors raised by gpulanes.

Errors detectable when a request is submitted (bad input, unknown model, a deadline already
past, a full queue, a closed runtime) are raised by ``submit`` itself. Errors that happen later
(the deadline passes while queued, the model raises, ``shutdown(drain=False)``) are set on the
request's future.
"""

__all__ = [
    "GpuLanesError",
    "DeadlineExceeded",
    "QueueFull",
    "Overloaded",
    "InvalidInput",
    "UnknownModel",
    "ModelError",
    "RuntimeClosed",
    "UnmeetableSlo",
]


class GpuLanesError(Exception):
    """Base class of every gpulanes error."""


class DeadlineExceeded(GpuLanesError):
    """The request's deadline passed, or could not be met, before it ran."""


class QueueFull(GpuLanesError):
    """The model's queue holds ``max_queue`` requests already."""


class Overloaded(QueueFull):
    """Shed by admission control: the lane plan cannot serve the model's whole request rate, so
    the excess is refused at submit rather than queued to miss its deadline."""


class InvalidInput(GpuLanesError, ValueError):
    """Wrong number, shape or dtype of inputs, or an invalid argument."""


class UnknownModel(GpuLanesError, KeyError):
    """No model is registered under that name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelError(GpuLanesError, RuntimeError):
    """The model could not be loaded, or its forward pass raised."""


class RuntimeClosed(GpuLanesError, RuntimeError):
    """The runtime is not started or has been shut down; or the request was queued when its
    model was unregistered with ``drain=False``."""


class UnmeetableSlo(UserWarning):
    """Warned at :meth:`Runtime.start`: a model's SLO is below its batch-1 latency on every lane
    that serves it, so requests with that deadline will be refused."""
