"""Bounds on what an HTTP client may hold of the server: connections, header bytes, and the time
to send headers and a body.

uvicorn bounds neither (a connection that never sends a byte stays open forever, one header
line every few seconds keeps a request alive, header bytes are read without limit), so that a
thousand idle sockets, needing no token, would exhaust the process's file descriptors and
starve HTTP and gRPC alike. :class:`GuardedHttpProtocol` is uvicorn's httptools protocol with
those bounds added at the points where httptools reports a request's progress:

- a request's headers must arrive within ``header_timeout_s`` of its first byte (or of the
  connection's start) and within ``max_header_bytes``: else 408 / 431 and the connection closes;
- its body must arrive within ``body_timeout_s`` of its headers: else the connection closes
  (the handler reading the body sees the client gone);
- at most ``max_connections`` are open. A new connection over the cap closes one without a
  request in progress: the longest-waiting of those that never completed a request (idle or
  dribbling sockets), or when there is none of those, the longest-idle keep-alive connection of
  a client that has been served, so that a flood of slow or idle sockets can lock out neither
  health checks nor real clients; when every connection has a request in progress, the new
  one gets 503. (A new client's connection is itself "never served" until its headers are
  read: a flood that opens more than ``max_connections`` sockets in that moment can close it.
  Closing only older sockets instead refused real clients more often in the soak.)

Everything here runs on the server's event loop thread (uvicorn calls the protocol there).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Optional

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import HttpLimits
from .protocol import client_message


class ConnectionGuard:
    """The open connections of one server, in the order they began to wait. Owned by the server
    (one per uvicorn server); called on its event loop only."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits                           # what each client is allowed
        self.open = 0                                  # connections made and not yet lost
        # no request in progress, longest-waiting first: never served yet / served before
        self.fresh: "OrderedDict[GuardedHttpProtocol, None]" = OrderedDict()
        self.kept: "OrderedDict[GuardedHttpProtocol, None]" = OrderedDict()
        self.refused = 0                               # connections turned away at the cap
        self.evicted = 0                               # waiting connections closed for new ones
        self.timed_out = 0                             # closed for slow headers or body
        self.oversized = 0                             # closed for headers over the limit

    def admit(self, conn: "GuardedHttpProtocol") -> bool:
        """Whether ``conn`` may stay; at the cap, closes a waiting connection to make room (one
        never served before one kept alive after a response; longest-waiting first)."""
        if self.open >= self.limits.max_connections:
            # A served client's connection goes only when no other kind waits; each dict is in
            # the order the waits began.
            waiting = self.fresh or self.kept
            if not waiting:
                self.refused += 1
                return False
            victim, _ = waiting.popitem(last=False)
            self.evicted += 1
            victim.close_quietly()
        self.open += 1
        return True


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`ConnectionGuard`'s bounds. A subclass per server
    carries its guard (``guarded_protocol``)."""

    guard: ConnectionGuard  # set on the per-server subclass

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._admitted = self.guard.admit(self)
        self._head_bytes = 0                     # bytes of the current request's head so far
        self._in_head = True                     # no complete request line and headers yet
        self._timer = None                       # header or body deadline
        if not self._admitted:
            self._reply_and_close(503, "the server has too many connections; retry later")
            return
        self._wait(self.guard.fresh)
        self._arm(self.guard.limits.header_timeout_s, 408, "request headers took too long")

    def connection_lost(self, exc) -> None:
        if getattr(self, "_admitted", False):
            self.guard.open -= 1
            self._admitted = False
        self._busy()
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return  # refused or timed out: nothing more is parsed
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Still in the head after this chunk: what has come so far is all head, and over the
        # limit it is refused before more is taken in. (A head that ended within the chunk is
        # measured in on_headers_complete.)
        if self._in_head and self._head_bytes > self.guard.limits.max_header_bytes:
            self._oversized()

    def _oversized(self) -> None:
        self.guard.oversized += 1
        limit = self.guard.limits.max_header_bytes
        self._reply_and_close(431, f"request headers over {limit} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._timer is None:  # a keep-alive connection's next request: its first byte
            self._arm(self.guard.limits.header_timeout_s, 408, "request headers took too long")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        # The head as parsed (request line, names, values, separators): what a chunk that also
        # carried the end of the head did not let data_received measure.
        size = len(self.url) + 16 + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.guard.limits.max_header_bytes:
            self._oversized()
            return
        self._busy()  # a request is in progress: never evicted
        self._arm(self.guard.limits.body_timeout_s, None, "request body took too long")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._wait(self.guard.kept)  # idle until the next request (uvicorn's keep-alive timer)

    def shutdown(self) -> None:
        # The server stops. An idle TLS connection is dropped at once: closing it politely waits
        # for the client's TLS close (up to 30 s, asyncio's bound), which a pooled keep-alive
        # client never sends, and the drain would wait for it. Plain TCP closes at once anyway.
        if (self.scheme == "https" and (self.cycle is None or self.cycle.response_complete)
                and self.transport.get_write_buffer_size() == 0):
            self.transport.abort()
        else:
            super().shutdown()

    # -- helpers -----------------------------------------------------------------------------

    def _wait(self, where: "OrderedDict") -> None:
        where[self] = None
        where.move_to_end(self)  # the order stays that of the waits' starts

    def _busy(self) -> None:
        self.guard.fresh.pop(self, None)
        self.guard.kept.pop(self, None)

    def _arm(self, seconds: float, status: Optional[int], why: str) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expired, status, why)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, status: Optional[int], why: str) -> None:
        self._timer = None
        self.guard.timed_out += 1
        if status is None:  # mid-body: the handler owns the response; it sees the client gone
            self.close_quietly()
        else:
            self._reply_and_close(status, why)

    def _reply_and_close(self, status: int, message: str) -> None:
        """A short protocol error before any response of this connection's current request."""
        if self.transport.is_closing():
            return
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large",
                  503: b"Service Unavailable"}[status]
        body = json.dumps({"error": client_message(message)}).encode()
        head = [b"HTTP/1.1 %d %s" % (status, reason), b"content-type: application/json",
                b"content-length: %d" % len(body), b"connection: close"]
        if status == 503:
            head.append(b"retry-after: 1")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.close_quietly()

    def close_quietly(self) -> None:
        self._disarm()
        self._in_head = False
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(limits: HttpLimits):
    """The protocol class for ``uvicorn.Config(http=...)`` of one server, with a guard of its
    own (``.guard``)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": ConnectionGuard(limits)})
