"""Slow and idle clients against a real `skipvit serve`: header and body timeouts, and the connection
bound at a 1,024 file-descriptor limit (1,000 slowloris sockets)."""

from __future__ import annotations

import contextlib
import socket
import statistics
import time

import pytest

from skipvit.service.connections import ConnectionGuard, GuardSettings
from tests.service.helpers import bar_image, png_bytes
from tests.service.rawhttp import Served, head_only, read_response

pytestmark = pytest.mark.slow


def test_headers_that_stop_arriving_get_408_and_a_close(tiny_bundle, tmp_path):
    with Served(tiny_bundle, tmp_path, SKIPVIT_HEADER_TIMEOUT_S=0.5) as srv, srv.connect(10) as s:
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and nothing more
        t0 = time.monotonic()
        status, headers, body = read_response(s)
        assert status == 408 and headers["connection"] == "close", body
        assert time.monotonic() - t0 < 5
        assert s.recv(1) == b""  # closed


def test_a_body_that_stops_arriving_gets_408_and_a_close(tiny_bundle, tmp_path):
    with Served(tiny_bundle, tmp_path, SKIPVIT_BODY_TIMEOUT_S=0.5) as srv, srv.connect(10) as s:
        s.sendall(head_only(srv.port, 1000) + b"x" * 10)
        t0 = time.monotonic()
        status, headers, body = read_response(s)
        assert status == 408 and headers["connection"] == "close" and b"SKIPVIT_BODY_TIMEOUT_S" in body
        assert time.monotonic() - t0 < 5
        assert s.recv(1) == b""
        assert 'reason="slow_client"' in _metrics(srv)


def _metrics(srv: Served) -> str:
    with srv.connect(10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_response(s)[2].decode()


def _one_request(srv: Served, request: bytes) -> float:
    """A request on a connection of its own, as a client that does not keep connections alive
    does: its latency in seconds (connect included); raises unless answered 200."""
    t0 = time.monotonic()
    with srv.connect(10) as s:
        s.sendall(request)
        status, _, body = read_response(s)
    assert status == 200, body
    return time.monotonic() - t0


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_a_thousand_slowloris_sockets_at_a_1024_fd_limit_leave_normal_clients_served(tiny_bundle, tmp_path):
    """The server may hold 1,024 descriptors; 1,000 sockets send half a header and wait. Before, the
    server ran out of descriptors and new clients' connections failed. Now the connection bound
    (the limit less a reserve) turns the excess away and a new client evicts a slow one: every
    normal request is answered, and their p95 stays within 2x of the baseline (30 ms floor for
    scheduling noise on a shared machine)."""
    with Served(tiny_bundle, tmp_path, fd_limit=1024) as srv:
        request = srv.classify_bytes([png_bytes(bar_image(3))], close=True)
        baseline = [_one_request(srv, request) for _ in range(60)]
        slow: list[socket.socket] = []
        try:
            for _ in range(1000):
                try:
                    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                    s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    slow.append(s)
                except OSError:  # refused or reset: the bound at work
                    pass
            time.sleep(0.6)  # the slow ones are now old enough to be evicted
            attacked = [_one_request(srv, request) for _ in range(60)]
        finally:
            for s in slow:
                s.close()
        assert srv.proc.poll() is None, srv.output()
        assert "Too many open files" not in srv.output()
    assert len(slow) >= 900  # the attack really held about the whole limit
    assert _p95(attacked) <= max(2 * _p95(baseline), 0.03), (_p95(baseline), _p95(attacked))


def test_silent_sockets_past_the_fd_limit_leave_normal_clients_served(tiny_bundle, tmp_path):
    """300 sockets that connect and send nothing, at a descriptor limit of 256: before, the server
    ran out of descriptors and every normal request failed (reset). Now each new client evicts a
    silent one (or the excess is turned away at once), and every normal request is answered."""
    with Served(tiny_bundle, tmp_path, fd_limit=256) as srv:
        request = srv.classify_bytes([png_bytes(bar_image(4))], close=True)
        silent: list[socket.socket] = []
        try:
            for _ in range(300):
                with contextlib.suppress(OSError):
                    silent.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
            time.sleep(0.6)  # old enough to be evicted
            latencies = [_one_request(srv, request) for _ in range(20)]
        finally:
            for s in silent:
                s.close()
        assert srv.proc.poll() is None, srv.output()
        assert "Too many open files" not in srv.output()
    assert len(latencies) == 20


class Conn:
    """A stand-in for a ``GuardedProtocol``: eviction closes it, as the protocol does."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard, self.evicted = guard, False

    def evict(self) -> None:
        self.evicted = True
        self.guard.closed(self)


def test_the_guard_evicts_the_oldest_slow_connection_and_else_refuses():
    refused: list[str] = []
    guard = ConnectionGuard(GuardSettings(limit=2, header_timeout_s=10, body_timeout_s=30), refused.append)
    a, b, c, d = (Conn(guard) for _ in range(4))
    assert guard.admit(a, now=0.0) and guard.admit(b, now=0.1)
    guard.waiting_for_headers(a, 0.0)
    guard.waiting_for_headers(b, 0.1)
    assert not guard.admit(c, now=0.3)  # at the limit, and nobody has waited 0.5 s yet
    assert refused == ["too_many_connections"]
    assert guard.admit(d, now=0.55)  # a waited 0.55 s: evicted for d
    assert a.evicted and not b.evicted and refused[-1] == "slow_client"
    guard.headers_done(b)  # b sent its headers: never evicted
    assert not guard.admit(Conn(guard), now=5.0)
    assert guard.open == 2


class FakeTransport:
    """What a ``GuardedProtocol`` writes, without a socket."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default=None):
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_request_whose_headers_come_in_one_chunk_arms_no_header_timer():
    """On a kept-alive connection, a request whose headers end in the chunk that starts it has
    nothing to wait for (no timer, not among the connections waiting for headers: a refusal at the
    headers costs less); one whose headers are cut is timed, and evicted or answered 408 as before."""
    import asyncio
    import functools

    import uvicorn
    from uvicorn.server import ServerState

    from skipvit.service.connections import GuardedProtocol

    refusal = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
    request = b"POST /classify HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nbody"

    async def app(scope, receive, send):  # pragma: no cover - every request is refused at its headers
        raise AssertionError

    async def main():
        config = uvicorn.Config(app, log_level="warning")
        config.load()
        guard = ConnectionGuard(GuardSettings(10, 10.0, 30.0), refuse_classify=lambda keep: (refusal, keep))
        timed: list[float] = []  # each time a request's headers are awaited (a timer armed)
        guard.waiting_for_headers = lambda conn, now: (
            timed.append(now) or ConnectionGuard.waiting_for_headers(guard, conn, now)
        )
        loop = asyncio.get_running_loop()
        protocol = functools.partial(GuardedProtocol, guard=guard)(
            config=config, server_state=ServerState(), app_state={}, _loop=loop
        )
        transport = FakeTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)  # the first request: timed from the connection's start
        assert transport.written == [refusal] and protocol.header_timer is None and not guard.waiting
        for _ in range(3):  # the next ones, whole in one chunk each
            protocol.data_received(request)
            assert protocol.header_timer is None and not guard.waiting
        assert transport.written == [refusal] * 4 and not transport.closed
        assert len(timed) == 1  # only the connection's start
        protocol.data_received(request[:20])  # headers cut: timed, and among those waiting
        assert protocol.header_timer is not None and protocol in guard.waiting and len(timed) == 2
        protocol.data_received(request[20:])
        assert protocol.header_timer is None and not guard.waiting and len(transport.written) == 5
        protocol.connection_lost(None)
        assert guard.open == 0

    asyncio.run(main())
