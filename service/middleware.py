"""One pure-ASGI middleware in front of every route: admission, body limit, request metrics.

It also routes: ``/classify`` goes straight to ``service.classify.Classify`` (a plain ASGI app,
for speed), everything else to the FastAPI app.

- While draining, ``POST /classify`` is refused with 503 before its body is read; requests
  admitted earlier are counted (``Admission.inflight``) so that the drain can wait for them.
- A body larger than ``max_body_bytes`` gets 413: at once when Content-Length says so, or as soon
  as the streamed bytes pass the limit (the rest is never read).
- Every response is counted by route and status, and timed; a request whose client left before
  it was answered counts as status 499 (nginx's "client closed request"), not as an error.
"""

from __future__ import annotations

import asyncio
import time

from skipvit.service.failures import BODY_TOO_LARGE, DRAINING, Failure, send_failure
from skipvit.service.metrics import Metrics, route_label

CLIENT_GONE = 499  # the status label of a request whose client left before its answer (nginx's)


class Admission:
    """Who may come in, and how many admitted requests are still being answered."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.last_arrival = time.monotonic()  # of the last request to /classify
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.inflight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float, quiet: float = 0.0) -> bool:
        """Wait until nothing admitted is in flight and no request has arrived for ``quiet`` s.

        The quiet period matters: a request can sit in a socket buffer, unseen, while the
        in-flight count is zero. Shutting down then would cut it off; answering it 503 does not.
        Only ``/classify`` arrivals count: a probe of ``/readyz`` or a scrape of ``/metrics`` is
        answered at once and loses nothing if cut off, and probes every 0.5 s would otherwise
        stretch every drain to its timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            still = self.last_arrival + quiet - time.monotonic()
            if still <= 0 and self.inflight == 0:
                return True
            if time.monotonic() + max(still, 0.01) > deadline:
                return False
            await asyncio.sleep(max(still, 0.01))


class _BodyTooLarge(Exception):
    pass


async def _discard_body(receive, limit: int) -> None:
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class _Exchange:
    """One request on its way through: the status it was answered with, and the body's size so far."""

    __slots__ = ("limit", "receive", "received", "send", "started", "status", "too_large")

    def __init__(self, receive, send, limit: int) -> None:
        self.receive, self.send, self.limit = receive, send, limit
        self.status = 500
        self.started = False
        self.too_large = False
        self.received = 0

    async def app_send(self, message) -> None:
        if message["type"] == "http.response.start":
            if self.too_large:  # the app gave up on the cut-off body: answer what really happened
                raise _BodyTooLarge
            self.status, self.started = message["status"], True
        await self.send(message)

    async def app_receive(self):
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.too_large = True
                raise _BodyTooLarge
        return message


class ServiceMiddleware:
    def __init__(self, app, *, classify, metrics: Metrics, admission: Admission, max_body_bytes: int) -> None:
        self.app = app
        self.classify = classify  # the ASGI app of /classify
        self.metrics = metrics
        self.admission = admission
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        classify = route == "/classify"
        if classify:
            self.admission.last_arrival = time.monotonic()
        t0 = time.perf_counter()
        exchange = _Exchange(receive, send, self.max_body)
        admitted = False
        self.metrics.inflight.inc()
        try:
            if classify and scope["method"] == "POST":
                if self.admission.draining:
                    await self._refuse_draining(exchange)
                    return
                self.admission.enter()
                admitted = True
            await self._forward(scope, exchange, classify)
        except _BodyTooLarge:
            if exchange.started:
                raise
            exchange.status = 413
            message = (
                f"the request body is larger than {self.max_body} bytes (SKIPVIT_MAX_BODY_BYTES); "
                "Hint: send fewer or smaller images per request"
            )
            await send_failure(send, Failure(BODY_TOO_LARGE, message), self.metrics)
        finally:
            if admitted:
                self.admission.leave()
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route, str(exchange.status)).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)

    async def _refuse_draining(self, exchange: _Exchange) -> None:
        # Read (and drop) the body first: closing a socket with unread bytes sends a reset, and
        # the client would see a broken connection instead of this 503.
        await _discard_body(exchange.receive, self.max_body)
        exchange.status = 503
        await send_failure(exchange.send, Failure(DRAINING), self.metrics)

    async def _forward(self, scope, exchange: _Exchange, classify: bool) -> None:
        """Hand the request to ``/classify`` or to the FastAPI app, under the body limit."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            exchange.too_large = True
            raise _BodyTooLarge
        await (self.classify if classify else self.app)(scope, exchange.app_receive, exchange.app_send)
        if not exchange.started:  # the app gave up without an answer: the client had gone
            exchange.status = CLIENT_GONE
