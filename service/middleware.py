"""One pure-ASGI middleware in front of every route: admission, body limit, request metrics.

It also routes: ``/classify`` goes straight to ``service.classify.Classify`` (a plain ASGI app,
for speed), everything else to the FastAPI app.

- ``POST /classify`` is admitted or refused from its headers alone, before a byte of its body is
  read: while draining, while not ready, when the queue is full or when the expected wait would
  pass the request's deadline (``Classify.refusal``), it gets 503 with Retry-After at once. A
  refused request's body is never parsed: uvicorn drops what still arrives once it is answered.
  The time the headers arrived is the request's arrival: its deadline counts from there.
- Slow clients (headers or body that stop arriving) are timed below the app, by
  ``service.connections``: a timer per request there costs less than a timeout per ``receive``.
- A body larger than ``max_body_bytes`` gets 413: at once when Content-Length says so, or as soon
  as the streamed bytes pass the limit (the rest is never read).
- Every response is counted by route and status, and timed; a request whose client left before
  it was answered counts as status 499 (nginx's "client closed request"), not as an error.
"""

from __future__ import annotations

import time

from skipvit.service.failures import BODY_TOO_LARGE, DRAINING, Failure, send_failure
from skipvit.service.metrics import Metrics, route_label

CLIENT_GONE = 499  # the status label of a request whose client left before its answer (nginx's)
TICKET = "skipvit.ticket"  # the scope key of an admitted /classify request's ``Ticket``


class Ticket:
    """One admitted ``/classify`` request: when it arrived, and whether it still counts as
    arriving (admitted, its images not yet in the batcher's queue)."""

    __slots__ = ("admission", "arrived", "arriving")

    def __init__(self, admission: Admission, arrived: float) -> None:
        self.admission, self.arrived, self.arriving = admission, arrived, True

    def queued(self) -> None:
        """Its images are in the queue now (or it was answered without): no longer arriving."""
        if self.arriving:
            self.arriving = False
            self.admission.arriving -= 1


class Admission:
    """Who may come in, and how many admitted requests are still being answered."""

    def __init__(self) -> None:
        self.draining = False
        self.inflight = 0
        self.arriving = 0  # admitted requests whose images are not queued yet (reading, decoding)

    def enter(self, arrived: float) -> Ticket:
        self.inflight += 1
        self.arriving += 1
        return Ticket(self, arrived)

    def leave(self, ticket: Ticket) -> None:
        ticket.queued()
        self.inflight -= 1


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
    def __init__(
        self,
        app,
        *,
        classify,
        metrics: Metrics,
        admission: Admission,
        max_body_bytes: int,
    ) -> None:
        self.app = app
        self.classify = classify  # the ASGI app of /classify; ``classify.refusal()`` admits
        self.metrics = metrics
        self.admission = admission
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope["path"])
        classify = route == "/classify"
        t0 = time.perf_counter()
        arrived = time.monotonic()
        exchange = _Exchange(receive, send, self.max_body)
        ticket = None
        self.metrics.inflight.inc()
        try:
            if classify and scope["method"] == "POST":
                if self.admission.draining:
                    # Read (and drop) the body first: the connection closes after this answer, and
                    # closing a socket with unread bytes sends a reset that can hide the 503.
                    await _discard_body(receive, self.max_body)
                    refusal = Failure(DRAINING)
                else:
                    refusal = self.classify.refusal()
                if refusal is not None:
                    exchange.status = refusal.kind.status
                    await send_failure(send, refusal, self.metrics)
                    return
                ticket = scope[TICKET] = self.admission.enter(arrived)
            await self._forward(scope, exchange, classify)
        except _BodyTooLarge:
            if exchange.started:
                raise
            exchange.status = 413
            await send_failure(send, self._too_large(), self.metrics)
        finally:
            if ticket is not None:
                self.admission.leave(ticket)
            self.metrics.inflight.dec()
            self.metrics.answered(route, exchange.status, time.perf_counter() - t0)

    def _too_large(self) -> Failure:
        return Failure(
            BODY_TOO_LARGE,
            f"the request body is larger than {self.max_body} bytes (SKIPVIT_MAX_BODY_BYTES); "
            "Hint: send fewer or smaller images per request",
        )

    async def _forward(self, scope, exchange: _Exchange, classify: bool) -> None:
        """Hand the request to ``/classify`` or to the FastAPI app, under the body limit."""
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            exchange.too_large = True
            raise _BodyTooLarge
        await (self.classify if classify else self.app)(scope, exchange.app_receive, exchange.app_send)
        if not exchange.started:  # the app gave up without an answer: the client had gone
            exchange.status = CLIENT_GONE
