"""The pieces of POST /classify that need no model: the point query and the disconnect watch."""

from __future__ import annotations

import asyncio

import pytest

import skipvit.service.classify as classify
from skipvit.service.asgi import ClientGone
from skipvit.service.classify import answer_or_gone, point_param
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
