"""ServiceMiddleware without the app: how it counts what it saw, admits from the headers, and times
the body."""

from __future__ import annotations

import asyncio

from skipvit.service.asgi import send_json
from skipvit.service.failures import QUEUE_FULL, Failure
from skipvit.service.metrics import Metrics
from skipvit.service.middleware import Admission, ServiceMiddleware


class Route:
    """A stand-in for ``Classify``: an ASGI app and the admission decision the middleware asks."""

    def __init__(self, app, refusal: Failure | None = None) -> None:
        self.app, self.refused, self.called = app, refusal, 0

    def refusal(self) -> Failure | None:
        return self.refused

    async def __call__(self, scope, receive, send) -> None:
        self.called += 1
        await self.app(scope, receive, send)


def middleware(classify, metrics: Metrics | None = None) -> ServiceMiddleware:
    return ServiceMiddleware(
        None, classify=classify, metrics=metrics or Metrics(), admission=Admission(), max_body_bytes=1024
    )


def counted(classify_app) -> str:
    metrics = Metrics()
    mw = middleware(Route(classify_app), metrics)
    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": [], "query_string": b""}

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    asyncio.run(mw(scope, receive, send))
    return metrics.exposition()[0].decode()


def test_a_client_that_left_is_499_not_an_error():
    async def gone(scope, receive, send):  # what Classify does on ClientGone: no answer
        return None

    text = counted(gone)
    assert 'skipvit_requests_total{route="/classify",status="499"} 1.0' in text
    assert 'status="500"' not in text


def test_an_answer_is_counted_with_its_status():
    async def answers(scope, receive, send):
        await send_json(send, 422, {"detail": "no"})

    assert 'skipvit_requests_total{route="/classify",status="422"} 1.0' in counted(answers)


class Sent:
    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body = b""

    async def __call__(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], dict(message.get("headers", []))
        else:
            self.body += message.get("body", b"")


POST = {"type": "http", "method": "POST", "path": "/classify", "headers": [], "query_string": b""}


def test_a_refused_request_is_answered_from_its_headers_without_reading_its_body():
    """Admission comes before the body: a refusal answers 503 + Retry-After and never calls
    ``receive`` (the body is never read, let alone parsed) nor the route."""
    reads = 0

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 100}

    route = Route(None, Failure(QUEUE_FULL, "the queue is full", retry_after=3))
    sent = Sent()
    asyncio.run(middleware(route)(dict(POST), receive, sent))
    assert sent.status == 503 and sent.headers[b"retry-after"] == b"3"
    assert reads == 0 and route.called == 0
