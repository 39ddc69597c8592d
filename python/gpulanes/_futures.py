"""The futures a Runtime hands out, and how outcomes reach them from the core's threads:
a concurrent.futures.Future for ``submit``, and for ``infer_async`` an asyncio future resolved on
its own event loop (through a native queue the loop watches, or the delivery thread)."""

from __future__ import annotations

import asyncio
import weakref
from concurrent.futures import Future
from typing import Any, Dict, Optional

from . import _C
from .errors import InvalidInput


class _AsyncSink:
    """Resolves an asyncio future from a core thread, on the future's own event loop."""

    __slots__ = ("_loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future) -> None:
        self._loop = loop
        self.future = fut

    def set_result(self, value: Any) -> None:
        self._post(_set_result, value)

    def set_exception(self, exc: BaseException) -> None:
        self._post(_set_exception, exc)

    def _post(self, fn, arg) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, self.future, arg)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class _LoopCompletions:
    """One per asyncio event loop: the outcomes of its ``infer_async`` requests arrive in a
    native queue whose eventfd the loop watches, and are resolved here on the loop's own thread.
    No other thread takes the GIL for them (see csrc/bindings/completion_queue.h)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queue = _C.CompletionQueue()
        self.pending: Dict[int, asyncio.Future] = {}  # token -> the awaiting future
        self.tokens = 0
        loop.add_reader(self.queue.fd, self._drain)

    def _drain(self) -> None:
        for token, ok, value in self.queue.drain():
            fut = self.pending.pop(token, None)
            if fut is None or fut.done():  # the awaiting task was cancelled
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


# Per event loop; None where the loop cannot watch a file descriptor (then infer_async falls
# back to the delivery thread).
_loop_completions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Optional[_LoopCompletions]]" = \
    weakref.WeakKeyDictionary()


def _completions_of(loop: asyncio.AbstractEventLoop) -> Optional[_LoopCompletions]:
    try:
        return _loop_completions[loop]
    except KeyError:
        pass
    try:
        c: Optional[_LoopCompletions] = _LoopCompletions(loop)
    except (NotImplementedError, AttributeError, OSError):  # e.g. a proactor loop
        c = None
    _loop_completions[loop] = c
    return c


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():  # the awaiting task may have been cancelled
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class _Future(Future):
    """A concurrent.futures.Future whose first wait polls briefly, GIL released, before sleeping.

    The lane thread resolves the future and then sets a native flag; a caller that is already
    waiting sees the flag within the polling window and skips a thread wake-up.
    """

    def __init__(self, spin_us: float, owner: int) -> None:
        super().__init__()
        self._spin_us = spin_us
        self._owner = owner  # core_id of the runtime that resolves it
        self._resolved = _C.ResolvedFlag() if spin_us > 0 else None

    def _poll(self) -> None:
        if self.done():
            return
        if _C.serving_runtime_id() == self._owner:
            raise InvalidInput("waiting for a result of this runtime inside one of its done-"
                               "callbacks would block the thread that must produce it; chain "
                               "another add_done_callback instead")
        if self._resolved is not None:
            self._resolved.poll(self._spin_us)

    def result(self, timeout: Optional[float] = None) -> Any:
        self._poll()
        return super().result(timeout)

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        self._poll()
        return super().exception(timeout)
