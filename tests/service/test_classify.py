"""The pieces of POST /classify that need no model: the point query and the disconnect watch."""

from __future__ import annotations

import asyncio

import pytest

import skipvit.service.classify as classify
from skipvit.service.asgi import ClientGone
from skipvit.service.classify import answer_or_gone, point_param
from skipvit.service.connections import LostHook
from skipvit.service.failures import BAD_REQUEST, Failure


def test_point_param():
    assert point_param(b"") is None
    assert point_param(b"other=1") is None
    assert point_param(b"point=rl") == "rl"
    assert point_param(b"point=nsga%2D1") == "nsga-1"
    for query, words in (
        (b"point=", "empty"),
        (b"point=rl&point=static", "2 times"),
        (b"point=&point=", "2 times"),
    ):
        with pytest.raises(Failure, match=words) as e:
            point_param(query)
        assert e.value.kind is BAD_REQUEST and e.value.kind.status == 422 and "Hint" in str(e.value)


def run_watched(monkeypatch, after_s: float, main) -> None:
    """Run ``main()`` with the disconnect watch starting ``after_s`` seconds into a request."""
    monkeypatch.setattr(classify, "WATCH_DISCONNECT_AFTER_S", after_s)
    asyncio.run(main())


def unanswered() -> asyncio.Future:
    """A request's future, not answered yet."""
    return asyncio.get_running_loop().create_future()


def staying_client(on_read=None):
    """A client that stays: its ``receive`` notes each read in ``reads``, calls ``on_read`` and
    then waits for good. Returns (receive, reads)."""
    reads = []

    async def receive():
        reads.append(1)
        if on_read is not None:
            on_read()
        await asyncio.Event().wait()

    return receive, reads


def test_a_request_whose_client_leaves_is_cancelled(monkeypatch):
    async def main():
        future = unanswered()  # the batcher never answers it
        messages = asyncio.Queue()
        watching = asyncio.Event()

        async def receive():
            watching.set()
            return await messages.get()

        waiting = asyncio.create_task(answer_or_gone(future, receive))
        await watching.wait()  # the watch has started reading
        assert not waiting.done()
        messages.put_nowait({"type": "http.disconnect"})
        with pytest.raises(ClientGone):
            await waiting
        assert future.cancelled()  # so the batcher drops it before compute

    run_watched(monkeypatch, 0.01, main)


def test_an_answer_before_the_watch_starts_reads_nothing(monkeypatch):
    async def main():
        future = unanswered()
        receive, reads = staying_client()
        asyncio.get_running_loop().call_soon(future.set_result, "rows")
        assert await answer_or_gone(future, receive) == "rows"
        await asyncio.sleep(0.1)  # about time: past the watch's delay, it has still not started
        assert reads == []

    run_watched(monkeypatch, 0.05, main)


def test_an_answer_after_the_watch_started_stops_it(monkeypatch):
    async def main():
        future = unanswered()
        receive, reads = staying_client(on_read=lambda: future.set_result("rows"))  # while the watch reads
        assert await answer_or_gone(future, receive) == "rows"
        assert reads == [1]
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.sleep(0)
        assert all(t.done() or t.cancelling() for t in tasks)  # the watcher does not outlive the request

    run_watched(monkeypatch, 0.0, main)


def test_a_request_whose_client_leaves_is_cancelled_by_the_protocols_hook():
    """Served by ``GuardedProtocol``: the protocol's ``LostHook`` fires, and no task watches."""

    async def never():
        raise AssertionError("the hook path reads nothing")

    async def main():
        future, lost = unanswered(), LostHook()
        waiting = asyncio.create_task(answer_or_gone(future, never, lost))
        await asyncio.sleep(0.01)
        assert not waiting.done() and lost.callback is not None
        assert len(asyncio.all_tasks()) == 2  # main and the request: nothing watches
        lost.fire()  # connection_lost
        with pytest.raises(ClientGone):
            await waiting
        assert future.cancelled() and lost.callback is None

        future, lost = unanswered(), LostHook()
        lost.fire()  # left before its request was queued
        with pytest.raises(ClientGone):
            await answer_or_gone(future, never, lost)
        assert future.cancelled()

        future, lost = unanswered(), LostHook()
        asyncio.get_running_loop().call_soon(future.set_result, "rows")
        assert await answer_or_gone(future, never, lost) == "rows"
        assert lost.callback is None
        lost.fire()  # a connection closed after its answer: nothing to cancel

    asyncio.run(main())


def test_the_protocol_fires_the_hook_of_an_unanswered_request_when_its_client_leaves():
    """A real uvicorn server with ``GuardedProtocol``: a client that sends a request and closes
    its socket has its request cancelled; an answered one's hook is not fired."""
    import functools
    import socket

    import uvicorn

    from skipvit.service.connections import ON_LOST, ConnectionGuard, GuardedProtocol, GuardSettings

    seen: dict[str, LostHook] = {}
    cancelled = asyncio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        hook = seen[scope["path"]] = scope[ON_LOST]
        if scope["path"] == "/wait":
            future = asyncio.get_running_loop().create_future()
            with pytest.raises(ClientGone):
                await answer_or_gone(future, receive, hook)
            cancelled.set()
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        guard = ConnectionGuard(GuardSettings(100, 5.0, 5.0))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
            http=functools.partial(GuardedProtocol, guard=guard),
        )  # fmt: skip
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        for path in ("/done", "/wait"):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            await loop.sock_sendall(sock, f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
            if path == "/done":
                assert (await loop.sock_recv(sock, 1024)).startswith(b"HTTP/1.1 200")
            else:
                while path not in seen:
                    await asyncio.sleep(0.01)
            sock.close()
        await asyncio.wait_for(cancelled.wait(), 5)
        assert seen["/wait"].gone and not seen["/done"].gone
        server.should_exit = True
        await serving

    asyncio.run(main())


def test_a_refusal_at_the_headers_is_built_once_and_counted_every_time():
    """``refuse_at_headers``: under overload the same few answers repeat, so their bytes are
    reused; every refusal is still counted (requests by status, rejections by reason)."""
    import dataclasses
    import types

    from skipvit.service.classify import refuse_at_headers
    from skipvit.service.knobs import Knobs
    from skipvit.service.metrics import Metrics
    from skipvit.service.middleware import Admission

    class FullQueue:
        queued_images, knobs, timeout_s = 8, Knobs(max_queue=8), 10.0

        def retry_after(self) -> int:
            return 2

    metrics = Metrics()
    state = types.SimpleNamespace(
        ready=True, load_error=None, batcher=FullQueue(), admission=Admission(), pilot=None, metrics=metrics,
        settings=None,
    )  # fmt: skip
    refuse = refuse_at_headers(state)
    first, kept = refuse(True)
    again, _ = refuse(True)
    assert kept and again is first  # the same bytes, built once
    assert (
        first.startswith(b"HTTP/1.1 503") and b"retry-after: 2" in first and b"connection: close" not in first
    )
    closing, kept = refuse(False)  # an HTTP/1.0 client, or Connection: close
    assert not kept and b"connection: close" in closing
    state.batcher.knobs = dataclasses.replace(state.batcher.knobs, max_queue=4)
    assert b"(4 images" in refuse(True)[0]  # new words, new bytes
    requests = metrics.registry.get_sample_value(
        "skipvit_requests_total", {"route": "/classify", "status": "503"}
    )
    rejected = metrics.registry.get_sample_value("skipvit_rejections_total", {"reason": "queue_full"})
    assert requests == rejected == 4
    state.admission.draining = True
    assert refuse(True) is None  # a drain answers through the app
