"""One answer per kind of failure, the same from the plain-ASGI /classify and from the FastAPI
routes, counted once as a rejection where it is one."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from skipvit.service import failures
from skipvit.service.batcher import DeadlineExceeded, Draining, QueueFull, TooBig
from skipvit.service.decode import DecodeError
from skipvit.service.failures import Failure, Kind, failure_of, send_failure
from skipvit.service.metrics import REASONS, Metrics
from skipvit.service.multipart import MultipartError, TooManyParts
from skipvit.service.worker import EngineGone

KINDS = {name: k for name, k in vars(failures).items() if isinstance(k, Kind)}


def rejections(metrics: Metrics) -> dict[str, float]:
    return {r: metrics.registry.get_sample_value("skipvit_rejections_total", {"reason": r}) for r in REASONS}


def test_every_kind_is_an_error_status_with_a_known_reason():
    assert len(KINDS) >= 15
    for name, kind in KINDS.items():
        assert 400 <= kind.status < 600, name
        assert kind.reason is None or kind.reason in REASONS, name
        assert not kind.retry_after or kind.status == 503, name  # Retry-After goes with 503


@pytest.mark.parametrize(
    ("error", "status", "reason", "headers"),
    [
        (QueueFull("full", retry_after=7), 503, "queue_full", [("retry-after", "7")]),
        (DeadlineExceeded("late"), 504, "deadline", []),
        (Draining("stopping"), 503, "draining", [("retry-after", "1")]),
        (TooBig("too many"), 413, "too_many_files", []),
        (EngineGone("code -9"), 503, "engine_gone", [("retry-after", "1")]),
        (TooManyParts("5 files"), 413, "too_many_files", []),
        (MultipartError("no boundary"), 422, "bad_image", []),
        (DecodeError("a.png: bomb", status=413), 413, "bad_image", []),
        (DecodeError("a.png: truncated"), 422, "bad_image", []),
        (RuntimeError("out of memory"), 500, None, []),
    ],
)
def test_each_error_of_the_parts_has_one_answer(error, status, reason, headers):
    failure = failure_of(error)
    assert (failure.kind.status, failure.kind.reason, failure.headers()) == (status, reason, headers)
    assert str(failure)


def test_the_messages_say_what_to_do():
    assert "restarted" in str(failure_of(EngineGone("code -9")))
    assert "SKIPVIT_MAX_FILES" in str(failure_of(TooManyParts("5 files")))
    assert "out of memory" in str(failure_of(RuntimeError("out of memory")))
    for name in (
        "NOT_READY",
        "ENGINE_GONE",
        "DRAINING",
        "SHUTTING_DOWN",
        "UNAUTHORIZED",
        "METHOD_NOT_ALLOWED",
    ):
        assert "Hint:" in KINDS[name].message, name


def asgi_answer(failure: Failure, metrics: Metrics) -> tuple[int, dict, dict]:
    sent = []

    async def send(message):
        sent.append(message)

    asyncio.run(send_failure(send, failure, metrics))
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], json.loads(body["body"]), headers


def routes_answer(failure: Failure, metrics: Metrics) -> tuple[int, dict, dict]:
    app = FastAPI()
    failures.install(app, metrics)

    @app.get("/fail")
    async def fail():
        raise failure

    r = TestClient(app).get("/fail")
    return r.status_code, r.json(), dict(r.headers)


@pytest.mark.parametrize("kind", ["UNAUTHORIZED", "NOT_READY", "QUEUE_FULL", "BODY_TOO_LARGE", "BAD_CONFIG"])
def test_both_halves_of_the_app_answer_a_failure_alike_and_count_it_once(kind):
    failure = Failure(KINDS[kind], "the detail", retry_after=3)
    answers = []
    for answer in (asgi_answer, routes_answer):
        metrics = Metrics()
        status, body, headers = answer(failure, metrics)
        counted = {r: n for r, n in rejections(metrics).items() if n}
        answers.append((status, body, {k: v for k, v in headers.items() if k != "content-length"}, counted))
    assert answers[0] == answers[1]
    status, body, headers, counted = answers[0]
    assert status == KINDS[kind].status and body == {"detail": "the detail"}
    assert counted == ({KINDS[kind].reason: 1.0} if KINDS[kind].reason else {})
    assert headers["content-type"] == "application/json"
    assert set(headers) - {"content-type"} == {k for k, _ in failure.headers()}
