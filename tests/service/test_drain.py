"""Drain against a real `skipvit serve` with clients that keep retrying: after SIGTERM the listening
socket closes at once, what was admitted is answered, retries are refused at connect, and the
process exits promptly (before, each retry restarted a quiet period and the drain ran to its 15 s
bound, then reset what was left). A second signal exits without a traceback."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import pytest

from tests.service.helpers import bar_image, png_bytes
from tests.service.rawhttp import Served, read_response

pytestmark = pytest.mark.slow


def retrying_client(srv: Served, request: bytes, stop: threading.Event, outcomes: Counter) -> None:
    """Send, read, repeat, each on a fresh connection, until told to stop. A request either gets its
    answer, or its connection is refused (or reset before the request was sent: a connection still in
    the listen backlog of a server that exits); anything else (a reset or EOF after the request was
    sent) is a request cut off."""
    while not stop.is_set():
        try:
            s = srv.connect(10)
        except (ConnectionRefusedError, ConnectionResetError):
            outcomes["refused"] += 1
            time.sleep(0.02)
            continue
        with s:
            try:
                s.sendall(request)
                outcomes[read_response(s)[0]] += 1
            except OSError as e:
                outcomes[f"cut off: {type(e).__name__}"] += 1


def drain_under_retries(srv: Served, signals: int) -> tuple[Counter, float, int]:
    request = srv.classify_bytes([png_bytes(bar_image(0))], close=True)
    stop, outcomes = threading.Event(), Counter()
    clients = [
        threading.Thread(target=retrying_client, args=(srv, request, stop, outcomes)) for _ in range(8)
    ]
    for c in clients:
        c.start()
    time.sleep(1.0)
    assert outcomes[200] > 0, outcomes
    t0 = time.monotonic()
    for _ in range(signals):
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    code = srv.proc.wait(20)
    took = time.monotonic() - t0
    time.sleep(0.3)  # the clients now meet a closed port
    stop.set()
    for c in clients:
        c.join(10)
    return outcomes, took, code


def test_a_drain_with_retrying_clients_ends_promptly_and_cuts_nothing_off(tiny_bundle, tmp_path):
    with Served(tiny_bundle, tmp_path, SKIPVIT_DRAIN_TIMEOUT_S=15) as srv:
        outcomes, took, code = drain_under_retries(srv, signals=1)
        text = srv.output()
    assert code == 0, text
    assert took < 5, (took, outcomes)  # far below the 15 s bound, clients retrying all along
    assert outcomes["refused"] > 0, outcomes
    assert not [k for k in outcomes if str(k).startswith("cut off")], outcomes
    assert set(outcomes) <= {200, 503, "refused"}, outcomes
    assert "drained: every admitted request answered" in text
    assert "Traceback" not in text


def test_a_second_signal_exits_at_once_without_a_traceback(tiny_bundle, tmp_path):
    with Served(tiny_bundle, tmp_path, SKIPVIT_DRAIN_TIMEOUT_S=15) as srv:
        _, took, code = drain_under_retries(srv, signals=2)
        text = srv.output()
    assert took < 5 and code in (0, 1), (took, code, text)
    assert "Traceback" not in text and "Exception" not in text, text
