"""Cheap shedding, against a real `skipvit serve`: a /classify that cannot be served in time is
refused from its headers (before its body is read), and its deadline counts from its arrival.
Goodput under 1x-6x open-loop load is `skipvit bench overload`'s (docs/benchmarks.md)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.service.helpers import bar_image, png_bytes
from tests.service.rawhttp import SLOW_ENGINE, Served, head_only, read_response

pytestmark = pytest.mark.slow

# One image a batch, one batch at a time, each taking 1 s (``SLOW_ENGINE``): a queue that fills.
ONE_SECOND_BATCHES = dict(
    SLOW_ENGINE_S=1.0,
    SKIPVIT_ENGINE="thread",
    SKIPVIT_MAX_BATCH_SIZE=1,
    SKIPVIT_PIPELINE_DEPTH=1,
    SKIPVIT_MAX_WAIT_MS=0,
)


def test_a_full_queue_refuses_from_the_headers_without_waiting_for_the_body(tiny_bundle, tmp_path):
    """One batch computes (1 s), two requests fill the queue (max 2 images): a third that sends
    only its headers (its 100 KB body never comes) hears 503 + Retry-After at once."""
    env = dict(ONE_SECOND_BATCHES, SKIPVIT_MAX_QUEUE=2)
    with Served(tiny_bundle, tmp_path, SLOW_ENGINE, **env) as srv:
        png = png_bytes(bar_image(1))
        answers: list[int] = []

        def one() -> None:
            with srv.connect(30) as s:
                s.sendall(srv.classify_bytes([png]))
                answers.append(read_response(s)[0])

        clients = [threading.Thread(target=one) for _ in range(3)]
        for c in clients:  # one computes, two wait
            c.start()
            time.sleep(0.15)
        with srv.connect(5) as s:
            s.sendall(head_only(srv.port, 100_000))
            t0 = time.monotonic()
            status, headers, body = read_response(s)
            took = time.monotonic() - t0
        for c in clients:
            c.join(30)
    assert status == 503 and "retry-after" in headers, (status, body)
    assert b"queue is full" in body and took < 1.0, (took, body)
    assert sorted(answers) == [200, 200, 200], answers


def test_a_refusal_at_the_headers_keeps_the_connection_and_drops_the_body(tiny_bundle, tmp_path):
    """A whole request refused (queue full) on a kept-alive connection: the 503 comes at once, its
    body is read and dropped, and the next request on the same connection is served. Refusals are
    counted like any other."""
    env = dict(ONE_SECOND_BATCHES, SKIPVIT_MAX_QUEUE=1)
    with Served(tiny_bundle, tmp_path, SLOW_ENGINE, **env) as srv:
        request = srv.classify_bytes([png_bytes(bar_image(1))])
        answers: list[int] = []

        def one() -> None:
            with srv.connect(30) as s:
                s.sendall(request)
                answers.append(read_response(s)[0])

        clients = [threading.Thread(target=one) for _ in range(2)]
        for c in clients:  # one computes, one waits: the queue is full
            c.start()
            time.sleep(0.15)
        with srv.connect(10) as s:
            s.sendall(request)
            status, headers, body = read_response(s)
            assert status == 503 and b"queue is full" in body, (status, body)
            assert "retry-after" in headers and headers.get("connection") != "close", headers
            for c in clients:
                c.join(30)
            s.sendall(request)  # the same connection, the queue empty again
            status, _, body = read_response(s)
            assert status == 200, body
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
            metrics = read_response(s)[2].decode()
    assert sorted(answers) == [200, 200], answers
    assert 'skipvit_rejections_total{reason="queue_full"} 1.0' in metrics, metrics
    assert 'skipvit_requests_total{route="/classify",status="503"} 1.0' in metrics, metrics


def test_the_deadline_counts_from_arrival_not_from_the_queue(tiny_bundle, tmp_path):
    """The request timeout is 1 s and the body takes 1.5 s to arrive: the request is answered 504
    without compute (before, the clock started only when it was queued, and it was served late)."""
    with Served(tiny_bundle, tmp_path, SKIPVIT_REQUEST_TIMEOUT_S=1, SKIPVIT_MAX_WAIT_MS=0) as srv:
        request = srv.classify_bytes([png_bytes(bar_image(2))])
        head, _, body = request.partition(b"\r\n\r\n")
        with srv.connect(10) as s:
            s.sendall(head + b"\r\n\r\n")
            time.sleep(1.5)
            s.sendall(body)
            status, _, detail = read_response(s)
        assert status == 504, detail
        with srv.connect(10) as s:  # an ordinary request is still served
            s.sendall(request)
            assert read_response(s)[0] == 200


def test_a_request_whose_answer_would_come_past_the_timeout_is_refused_at_its_headers(tiny_bundle, tmp_path):
    """Each batch takes 1 s and the timeout is 3 s. Once the server has timed a batch, requests
    sent 0.15 s apart: the first two can be answered in time and are; by the fourth, the work ahead
    plus its own batch passes 3 s, and it is refused at once (503 overloaded), not left to time out."""
    env = dict(ONE_SECOND_BATCHES, SKIPVIT_REQUEST_TIMEOUT_S=3)
    with Served(tiny_bundle, tmp_path, SLOW_ENGINE, **env) as srv:
        request = srv.classify_bytes([png_bytes(bar_image(1))], close=True)
        with srv.connect(10) as s:  # the server learns what a batch takes
            s.sendall(request)
            assert read_response(s)[0] == 200
        answers: dict[int, tuple[int, bytes, float]] = {}

        def one(i: int) -> None:
            t0 = time.monotonic()
            with srv.connect(30) as s:
                s.sendall(request)
                status, _, body = read_response(s)
            answers[i] = (status, body, time.monotonic() - t0)

        clients = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for c in clients:
            c.start()
            time.sleep(0.15)
        for c in clients:
            c.join(30)
    assert [answers[i][0] for i in (0, 1)] == [200, 200], answers
    status, body, took = answers[3]
    assert status == 503 and b"expected wait" in body and took < 0.5, answers
    assert all(code in (200, 503) for code, _, _ in answers.values()), answers
