"""The HTTP connections themselves, below the ASGI app: how many may be open, and how long a client
may take to send its request's headers.

uvicorn bounds neither: a client that opens a connection and sends nothing, or sends its headers a
byte at a time (slowloris), holds a socket and a file descriptor for as long as it likes, and once
the process runs out of descriptors every ``accept`` fails, normal clients' included.

``ConnectionGuard`` keeps the count and the connections still waiting for their headers (oldest
first). ``GuardedProtocol`` is uvicorn's httptools protocol with the guard around it:

- a connection beyond ``limit`` first evicts the oldest connection that has waited more than
  ``EVICT_AFTER_S`` for its headers (a slow client makes room for a new one); if none has, the new
  connection is answered a canned 503 with Retry-After and closed, without parsing anything;
- a request whose headers are not complete ``header_timeout_s`` after its first byte (or after the
  connection opened) is answered 408 and closed. A kept-alive connection that stays silent is
  closed by uvicorn's keep-alive timeout as before;
- a request whose body is not complete ``body_timeout_s`` after its headers is answered 408 (if
  nothing was answered yet; the app, waiting for the body, hears that the client is gone) and
  closed.

Both are one timer per request, armed and cancelled by the parser's callbacks: cheaper than a
timeout around every ``receive`` in the app.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections import OrderedDict
from dataclasses import dataclass

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FD_RESERVE = 64  # descriptors kept for everything but client sockets (engine pipes, files, logs)
EVICT_AFTER_S = 0.5  # a connection waiting this long for its headers may be evicted for a new one


def canned(status: int, reason: str, detail: str, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, built once."""
    body = json.dumps({"detail": detail}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        *([f"retry-after: {retry_after}"] if retry_after is not None else []),
        "connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


TOO_MANY = canned(
    503,
    "Service Unavailable",
    "too many open connections; Hint: reuse a kept-alive connection, or retry after Retry-After",
    retry_after=1,
)
HEADER_TIMEOUT = canned(
    408, "Request Timeout", "the request's headers did not arrive in time; Hint: send the request at once"
)
BODY_TIMEOUT = canned(
    408,
    "Request Timeout",
    "the request's body did not arrive in time (SKIPVIT_BODY_TIMEOUT_S); Hint: send the body at once, or "
    "fewer images per request",
)


def connection_limit(wanted: int | None, reserve: int = FD_RESERVE) -> int:
    """The most client connections: ``wanted`` (None: as many as the descriptor limit allows),
    never more than the soft ``RLIMIT_NOFILE`` less ``reserve``, at least 1."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    room = max(1, soft - reserve) if soft != resource.RLIM_INFINITY else wanted or 65536
    return max(1, min(wanted, room) if wanted is not None else room)


@dataclass(frozen=True)
class GuardSettings:
    limit: int  # client connections open at once
    header_timeout_s: float  # from a request's first byte (or the connection's start) to its last header
    body_timeout_s: float  # from a request's last header to the end of its body


class ConnectionGuard:
    """Counts the open connections and keeps those waiting for headers in arrival order. One per
    server; touched only on the event loop. ``on_refuse(reason)`` counts what it turns away."""

    def __init__(self, settings: GuardSettings, on_refuse=None) -> None:
        self.settings = settings
        self.open = 0
        self.waiting: OrderedDict[GuardedProtocol, float] = OrderedDict()
        self.on_refuse = on_refuse or (lambda reason: None)

    def admit(self, conn: GuardedProtocol, now: float) -> bool:
        """Whether ``conn`` (just opened) may stay; makes room by evicting a slow one if it can."""
        if self.open >= self.settings.limit and not self._evict_one(now):
            self.on_refuse("too_many_connections")
            return False
        self.open += 1
        return True

    def _evict_one(self, now: float) -> bool:
        for conn, since in self.waiting.items():  # oldest first
            if now - since < EVICT_AFTER_S:
                return False
            self.on_refuse("slow_client")
            conn.evict()  # leaves ``waiting`` and ``open`` at once
            return True
        return False

    def waiting_for_headers(self, conn: GuardedProtocol, now: float) -> None:
        self.waiting[conn] = now

    def headers_done(self, conn: GuardedProtocol) -> None:
        self.waiting.pop(conn, None)

    def closed(self, conn: GuardedProtocol) -> None:
        self.waiting.pop(conn, None)
        self.open -= 1


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, counted and timed by a ``ConnectionGuard`` (``guard``: give it
    with ``functools.partial`` as uvicorn's ``http`` protocol class)."""

    def __init__(self, *args, guard: ConnectionGuard, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.counted = False
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self, time.monotonic()):
            transport.write(TOO_MANY)
            transport.close()
            return
        self.counted = True
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if (
            self.header_timer is None
            and self.counted
            and (self.cycle is None or self.cycle.response_complete)
        ):
            self._await_headers()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        super().on_headers_complete()
        self._body_arrived()  # a pipelined request's timer replaces the one before
        self.body_timer = self.loop.call_later(self.guard.settings.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._body_arrived()
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._headers_arrived()
        self._body_arrived()
        if self.counted:
            self.counted = False
            self.guard.closed(self)
        super().connection_lost(exc)

    def evict(self) -> None:
        """Close a connection that has been slow to send its headers (to make room)."""
        self._headers_arrived()
        if self.counted:
            self.counted = False
            self.guard.closed(self)
        self._answer_and_close(HEADER_TIMEOUT)

    def _await_headers(self) -> None:
        self.guard.waiting_for_headers(self, time.monotonic())
        self.header_timer = self.loop.call_later(self.guard.settings.header_timeout_s, self._header_timeout)

    def _headers_arrived(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        self.guard.headers_done(self)

    def _body_arrived(self) -> None:
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None

    def _body_timeout(self) -> None:
        """The body stopped arriving. An app still waiting for it hears that the client is gone
        (``connection_lost``) and answers nothing; the client reads the 408 written here."""
        self.body_timer = None
        self.guard.on_refuse("slow_client")
        if self.cycle is not None and self.cycle.response_started:  # answering already: just close
            self.transport.close()
        else:
            self._answer_and_close(BODY_TIMEOUT)

    def _header_timeout(self) -> None:
        self.header_timer = None
        self.guard.headers_done(self)
        self.guard.on_refuse("slow_client")
        self._answer_and_close(HEADER_TIMEOUT)

    def _answer_and_close(self, answer: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(answer)
            self.transport.close()
