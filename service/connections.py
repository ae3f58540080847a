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

A client that leaves while its request waits is told to the app by ``LostHook`` (in the scope),
fired from ``connection_lost``: the app drops the request without a task per request watching
``receive`` for the disconnect.

At shutdown (a drain), uvicorn closes every connection between two requests at once. A client may
be sending its next request on it right then, or have just connected to send its first: closing
a socket with unread data resets it, and the client sees its request cut off. Such a connection
is given ``SHUTDOWN_GRACE_S`` instead: a request that starts meanwhile is read and answered (503,
draining) with ``Connection: close``; a connection still silent after it is closed.
``stop_handshakes`` does the same for the listening socket: the kernel completes no new handshake,
so what is closed with it is only connections not yet made (the client is refused), never one
whose request is already sent.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import resource
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

FD_RESERVE = 64  # descriptors kept for everything but client sockets (engine pipes, files, logs)
EVICT_AFTER_S = 0.5  # a connection waiting this long for its headers may be evicted for a new one
SHUTDOWN_GRACE_S = 0.5  # at shutdown, a connection between requests may start one within this
SO_ATTACH_FILTER = 26  # Linux


def http_response(status: int, body: dict, headers=(), close: bool = True) -> bytes:
    """A complete HTTP/1.1 answer with a JSON body, as bytes to write (``close``: and the
    connection closes after it)."""
    data = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(data)}",
        *(f"{k}: {v}" for k, v in headers if k != "connection"),
        *(["connection: close"] if close else []),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


def canned(status: int, detail: str, retry_after: int | None = None) -> bytes:
    """An answer that closes the connection, built once."""
    return http_response(
        status, {"detail": detail}, [("retry-after", str(retry_after))] if retry_after is not None else []
    )


TOO_MANY = canned(
    503,
    "too many open connections; Hint: reuse a kept-alive connection, or retry after Retry-After",
    retry_after=1,
)
HEADER_TIMEOUT = canned(408, "the request's headers did not arrive in time; Hint: send the request at once")
BODY_TIMEOUT = canned(
    408,
    "the request's body did not arrive in time (SKIPVIT_BODY_TIMEOUT_S); Hint: send the body at once, or "
    "fewer images per request",
)


ON_LOST = "skipvit.on_lost"  # scope key: the request's ``LostHook``, set by ``GuardedProtocol``


class LostHook:
    """Tells a request's app that its client has gone, with no task of its own: the protocol
    calls ``fire`` from ``connection_lost`` while the request is unanswered. The app sets
    ``callback`` while it waits (``service.classify.answer_or_gone``)."""

    __slots__ = ("callback", "gone")

    def __init__(self) -> None:
        self.callback: Callable[[], object] | None = None
        self.gone = False

    def fire(self) -> None:
        self.gone = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()


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

    def __init__(
        self,
        settings: GuardSettings,
        on_refuse=None,
        refuse_classify: Callable[[bool], tuple[bytes, bool] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.open = 0
        self.waiting: OrderedDict[GuardedProtocol, float] = OrderedDict()
        self.on_refuse = on_refuse or (lambda reason: None)
        # A POST /classify at its headers (given whether the client keeps the connection alive):
        # the answer that refuses it and whether the connection stays open after, or None to let
        # it through to the app.
        self.refuse_classify = refuse_classify

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
        self.closing_timer: asyncio.TimerHandle | None = None  # the shutdown's grace
        self.refusing: bool | None = None  # a request refused at its headers: whether to keep alive

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
            and b"\r\n\r\n" not in data  # else its headers end in this chunk: nothing to wait for
        ):
            self._await_headers()  # the first byte of the next request on a kept-alive connection
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._headers_arrived()
        if self._refused_here():
            return
        super().on_headers_complete()
        self.scope[ON_LOST] = LostHook()  # the dict the request's app gets; its task has not run yet
        if self.closing_timer is not None:  # a request within the shutdown's grace: its answer ends it
            self.closing_timer.cancel()
            self.closing_timer = None
            self.cycle.keep_alive = False
        self._body_arrived()  # a pipelined request's timer replaces the one before
        self.body_timer = self.loop.call_later(self.guard.settings.body_timeout_s, self._body_timeout)

    def on_body(self, body: bytes) -> None:
        if self.refusing is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_arrived()
        if self.refusing is not None:  # the refused request's body is read: on to the next request
            keep_alive, self.refusing = self.refusing, None
            if keep_alive:
                self.on_response_complete()  # uvicorn's keep-alive timer, as after any answer
            else:
                self.transport.close()
            return
        super().on_message_complete()

    def _refused_here(self) -> bool:
        """Refuse a ``POST /classify`` right at its headers, when the app would (``refuse_classify``):
        the answer is written at once, the body read and dropped as it comes, and no ASGI task
        is made. Only between requests (a pipelined one goes through the app, to keep answers in
        order)."""
        refuse = self.guard.refuse_classify
        if (
            refuse is None
            or (self.cycle is not None and not self.cycle.response_complete)
            or self.parser.get_method() != b"POST"
            or self.url.partition(b"?")[0] != b"/classify"
        ):
            return False
        keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
        refused = refuse(keep_alive)
        if refused is None:
            return False
        answer, self.refusing = refused
        self.transport.write(answer)
        return True

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown, with ``SHUTDOWN_GRACE_S`` for a connection between requests
        instead of closing it at once (see the module's docstring)."""
        if self.transport.is_closing() or self.closing_timer is not None:
            return
        if self.cycle is None or self.cycle.response_complete:
            self.closing_timer = self.loop.call_later(SHUTDOWN_GRACE_S, self._grace_over)
        else:
            self.cycle.keep_alive = False

    def _grace_over(self) -> None:
        self.closing_timer = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()
        else:  # pragma: no cover - headers arriving cancel the timer
            self.cycle.keep_alive = False

    def connection_lost(self, exc) -> None:
        if self.closing_timer is not None:
            self.closing_timer.cancel()
            self.closing_timer = None
        self._headers_arrived()
        self._body_arrived()
        if self.counted:
            self.counted = False
            self.guard.closed(self)
        if self.cycle is not None and not self.cycle.response_complete and ON_LOST in self.cycle.scope:
            self.cycle.scope[ON_LOST].fire()
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
        if self.refusing is not None or (self.cycle is not None and self.cycle.response_started):
            self.transport.close()  # answered already: just close
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


def stop_handshakes(sock) -> bool:
    """Make the kernel drop every new SYN to the listening ``sock`` (a one-instruction socket
    filter that drops every packet), so that no connection completes its handshake from now on.
    Those already made wait in the accept queue and are accepted as before; closing the socket
    after that resets nothing a client has sent, and a client's retried SYN is then refused. False
    where this is not Linux (the socket then just closes, as uvicorn does)."""
    drop_all = struct.pack("HBBI", 0x06, 0, 0, 0)  # BPF_RET | BPF_K, return 0 bytes: drop
    program = ctypes.create_string_buffer(drop_all)
    fprog = struct.pack("HP", 1, ctypes.addressof(program))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError:
        return False
    return True
