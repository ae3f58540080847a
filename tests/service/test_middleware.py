"""ServiceMiddleware without the app: how it counts what it saw."""

from __future__ import annotations

import asyncio

from skipvit.service.asgi import send_json
from skipvit.service.metrics import Metrics
from skipvit.service.middleware import Admission, ServiceMiddleware


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


def test_only_classify_requests_hold_the_drain_open():
    """Probes and scrapes during a drain do not restart its quiet period; a /classify does."""

    async def fastapi_app(scope, receive, send):
        await send_json(send, 200, {"ok": True})

    async def main():
        admission = Admission()
        mw = ServiceMiddleware(
            fastapi_app, classify=fastapi_app, metrics=Metrics(), admission=admission, max_body_bytes=1024
        )

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            pass

        def request(path, method="GET"):
            return mw(
                {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""},
                receive,
                send,
            )

        admission.last_arrival -= 10  # the last /classify came long ago
        for path in ("/readyz", "/livez", "/metrics", "/pareto"):
            await request(path)
        assert await admission.wait_idle(timeout=0.2, quiet=0.5)  # at once: no /classify in 0.5 s

        admission.draining = True
        await request("/classify", "POST")  # answered 503, but a client is still sending
        assert not await admission.wait_idle(timeout=0.2, quiet=0.5)
        assert await admission.wait_idle(timeout=1.0, quiet=0.5)

    asyncio.run(main())
