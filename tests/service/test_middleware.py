"""ServiceMiddleware without the app: how it counts what it saw."""

from __future__ import annotations

import asyncio

from service.asgi import send_json
from service.metrics import Metrics
from service.middleware import Admission, ServiceMiddleware


def counted(classify_app) -> str:
    metrics = Metrics()
    mw = ServiceMiddleware(
        None, classify=classify_app, metrics=metrics, admission=Admission(), max_body_bytes=1024
    )
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
