"""The batcher without a server or a model: the pure plan, then the loop with a fake engine."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
import torch

from skipvit.service.batcher import (
    Answer,
    Batcher,
    DeadlineExceeded,
    Draining,
    Knobs,
    Pending,
    QueueFull,
    TooBig,
    plan,
)

GATES = {"rl", "rl-b", "nsga-1"}  # points that share one forward


def key(point: str):
    return "gates" if point in GATES else ("alone" if point == "lac-batch" else point)


def keyed(point: str):
    return None if point == "lac-batch" else key(point)


def req(n: int = 1, point: str | None = None, arrived: float = 0.0, deadline: float = 100.0) -> Pending:
    return Pending(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), point, arrived, deadline)


def knobs(batch: int = 4, wait_ms: float = 10.0) -> Knobs:
    return Knobs(max_batch_size=batch, max_wait_ms=wait_ms, max_queue=1000)


# -- plan --------------------------------------------------------------------------------------


def test_waits_for_company_until_max_wait_after_the_oldest():
    q = [req(arrived=0.0), req(arrived=0.004)]
    p = plan(q, now=0.005, knobs=knobs(wait_ms=10), active="static", key=keyed)
    assert p.batch == [] and p.wake_at == pytest.approx(0.010)
    p = plan(q, now=0.010, knobs=knobs(wait_ms=10), active="static", key=keyed)
    assert p.batch == q and p.points == ["static", "static"]


def test_closes_at_max_batch_size_without_waiting():
    q = [req(2, arrived=0.0), req(2, arrived=0.001), req(1, arrived=0.002)]
    p = plan(q, now=0.002, knobs=knobs(batch=4), active="static", key=keyed)
    assert p.batch == q[:2]  # 4 images; the third request waits for the next batch


def test_multi_image_requests_are_never_split():
    q = [req(3), req(3)]
    p = plan(q, now=1.0, knobs=knobs(batch=4), active="static", key=keyed)
    assert p.batch == q[:1]
    big = [req(10), req(1)]
    p = plan(big, now=0.0, knobs=knobs(batch=4), active="static", key=keyed)
    assert p.batch == big[:1]  # bigger than a batch: it runs alone, whole


def test_default_point_is_the_active_one_at_planning_time():
    q = [req(point=None), req(point="rl")]
    p = plan(q, now=1.0, knobs=knobs(), active="rl-b", key=keyed)
    assert p.batch == q and p.points == ["rl-b", "rl"]  # both gate points: one forward
    p = plan(q, now=1.0, knobs=knobs(), active="static", key=keyed)
    assert p.batch == q[:1] and p.points == ["static"]


def test_groups_never_mix_and_the_oldest_ready_group_goes_first():
    q = [req(point="static", arrived=0.0), req(point="rl", arrived=0.001), req(point="nsga-1", arrived=0.002)]
    p = plan(q, now=1.0, knobs=knobs(), active="static", key=keyed)
    assert p.batch == q[:1]
    p = plan(q[1:], now=1.0, knobs=knobs(), active="static", key=keyed)
    assert p.batch == q[1:] and p.points == ["rl", "nsga-1"]
    # A full group runs before an older group that is still waiting for company.
    q = [req(point="static", arrived=0.0), req(4, point="rl", arrived=0.001)]
    p = plan(q, now=0.002, knobs=knobs(batch=4, wait_ms=10), active="static", key=keyed)
    assert p.batch == q[1:]


def test_a_key_of_none_runs_each_request_alone():
    q = [req(point="lac-batch"), req(point="lac-batch")]
    p = plan(q, now=1.0, knobs=knobs(), active="static", key=keyed)
    assert p.batch == q[:1]


def test_expired_requests_are_dropped_before_compute():
    q = [req(arrived=0.0, deadline=0.5), req(arrived=0.4, deadline=1.4)]
    p = plan(q, now=1.0, knobs=knobs(), active="static", key=keyed)
    assert p.expired == q[:1] and p.batch == q[1:]


def test_flush_runs_at_once():
    q = [req(arrived=0.0)]
    assert plan(q, now=0.0, knobs=knobs(wait_ms=1000), active="s", key=keyed).batch == []
    assert plan(q, now=0.0, knobs=knobs(wait_ms=1000), active="s", key=keyed, flush=True).batch == q


def test_while_the_engine_is_busy_a_batch_keeps_gathering_until_the_hold():
    q = [req(arrived=0.0), req(arrived=0.001)]
    p = plan(q, now=0.020, knobs=knobs(wait_ms=10), active="static", key=keyed, hold_until=0.030)
    assert p.batch == [] and p.wake_at == pytest.approx(0.030)  # max_wait has passed, the hold not
    p = plan(q, now=0.030, knobs=knobs(wait_ms=10), active="static", key=keyed, hold_until=0.030)
    assert p.batch == q
    full = [req(2, arrived=0.0), req(2, arrived=0.001)]  # a full batch never waits
    assert (
        plan(full, now=0.002, knobs=knobs(batch=4), active="static", key=keyed, hold_until=9.0).batch == full
    )
    p = plan(q, now=0.002, knobs=knobs(wait_ms=10), active="static", key=keyed, hold_until=0.001)
    assert p.batch == [] and p.wake_at == pytest.approx(0.010)  # the hold never shortens max_wait
    assert plan(q, now=0.0, knobs=knobs(), active="static", key=keyed, flush=True, hold_until=9.0).batch == q


def test_knobs_validate_and_update():
    with pytest.raises(ValueError):
        Knobs(max_batch_size=0)
    k = Knobs().update(max_batch_size=8, max_wait_ms=None)
    assert k.max_batch_size == 8 and k.max_wait_ms == Knobs().max_wait_ms


# -- the loop, with a fake engine ----------------------------------------------------------------


class FakeEngine:
    """Answers each row with (point, the row's first pixel); records every batch it ran.

    ``started`` counts the batches that entered the engine (``await engine.entered()`` waits for
    the next); each batch then waits for ``release`` (set from the start unless ``stuck``)."""

    def __init__(self, delay: float = 0.0, fail_on: str | None = None, stuck: bool = False) -> None:
        self.delay = delay
        self.fail_on = fail_on
        self.batches: list[tuple[int, list[str]]] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        if not stuck:
            self.release.set()

    def __call__(self, images: torch.Tensor, points: list[str]) -> list:
        self.started.release()
        self.release.wait(10)
        time.sleep(self.delay)  # about time: the batch's compute
        self.batches.append((images.shape[0], list(points)))
        if self.fail_on in points:
            raise RuntimeError("engine failure")
        return [(p, int(img.flatten()[0])) for p, img in zip(points, images, strict=True)]

    async def entered(self, batches: int = 1) -> None:
        """Wait until ``batches`` more batches have entered the engine (planned and handed over)."""
        for _ in range(batches):
            assert await asyncio.to_thread(self.started.acquire, True, 10), "no batch entered the engine"


class QueueWatch:
    """A batcher observer: ``empty`` is set whenever the queue is reported empty."""

    def __init__(self) -> None:
        self.empty = asyncio.Event()

    def queued(self, images: int) -> None:
        if images == 0:
            self.empty.set()

    def batch(self, images: int, waits: list[float]) -> None:
        pass


def images(ids: list[int]) -> torch.Tensor:
    t = torch.zeros(len(ids), 1, 2, 2, dtype=torch.uint8)
    t[:, 0, 0, 0] = torch.tensor(ids, dtype=torch.uint8)
    return t


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def stuck_batcher(knobs: Knobs, **kwargs) -> tuple[FakeEngine, Batcher]:
    """A started batcher (one batch handed over at a time) whose engine holds every batch until
    ``engine.release`` is set."""
    engine = FakeEngine(stuck=True)
    b = Batcher(engine, active="static", key=keyed, knobs=knobs, depth=1, **kwargs)
    b.start()
    return engine, b


async def holding_one(batch: int = 1, **kwargs) -> tuple[FakeEngine, Batcher, asyncio.Future]:
    """A ``stuck_batcher`` (batches of up to ``batch`` images, no wait) whose engine holds the first
    request (one image, 1), and that request's future."""
    engine, b = stuck_batcher(Knobs(batch, 0.0, 100), **kwargs)
    running = b.submit(images([1]), None)
    await engine.entered()
    return engine, b, running


def test_every_request_is_answered_once_with_its_rows_in_order():
    async def main():
        engine = FakeEngine(delay=0.001)  # a batch takes time, so requests queue up meanwhile
        b = Batcher(engine, active="static", key=keyed, knobs=Knobs(8, 2.0, 10_000))
        b.start()
        rng = random.Random(0)
        reqs = []
        for i in range(200):
            ids = [rng.randrange(256) for _ in range(rng.randint(1, 5))]
            point = rng.choice([None, "rl", "nsga-1", "static"])
            reqs.append((ids, point, b.submit(images(ids), point)))
            if i % 7 == 0:  # about time: arrivals spread out, so batches close by max_wait as well as by size
                await asyncio.sleep(0.001)
        answers = await asyncio.gather(*(f for _, _, f in reqs))
        await b.stop()
        for (ids, point, _), ans in zip(reqs, answers, strict=True):
            assert isinstance(ans, Answer)
            assert ans.point == (point or "static")
            assert ans.rows == [(ans.point, i) for i in ids]
        assert sum(n for n, _ in engine.batches) == sum(len(ids) for ids, _, _ in reqs)
        for n, pts in engine.batches:
            assert len({key(p) for p in pts}) == 1  # never two groups in one forward
            assert n <= 8 or len(set(pts)) == 1

    run(main())


def test_queue_full_is_refused_at_once_with_a_retry_hint():
    async def main():
        engine, b = stuck_batcher(Knobs(4, 0.0, max_queue=6))
        first = b.submit(images([1, 2, 3, 4]), None)
        await engine.entered()  # taken into the (stuck) batch
        queued = [b.submit(images([5, 6, 7]), None), b.submit(images([8, 9, 10]), None)]
        with pytest.raises(QueueFull) as e:
            b.submit(images([11]), None)
        assert e.value.retry_after >= 1
        with pytest.raises(TooBig):  # could never fit: a clear 413, not a retry
            b.submit(images(list(range(7))), None)
        assert b.queued_images == 6
        engine.release.set()
        assert (await first).rows == [("static", i) for i in (1, 2, 3, 4)]
        assert [len((await f).rows) for f in queued] == [3, 3]
        await b.stop()

    run(main())


def test_requests_past_their_deadline_are_refused_and_never_reach_the_engine():
    async def main():
        engine, b, first = await holding_one(timeout_s=0.05)
        late = b.submit(images([2]), None)
        await asyncio.sleep(0.1)  # about time: its deadline (0.05 s) passes while the engine is busy
        engine.release.set()
        assert (await first).rows == [("static", 1)]
        with pytest.raises(DeadlineExceeded):
            await late
        await b.stop()
        assert [pts for _, pts in engine.batches] == [["static"]]

    run(main())


def test_a_switch_lands_between_batches():
    async def main():
        engine, b, running = await holding_one(batch=4)  # planned with 'static', now computing
        waiting = b.submit(images([2]), None)
        b.set_active("rl")
        engine.release.set()
        assert (await running).point == "static"
        assert (await waiting).point == "rl"
        await b.stop()

    run(main())


def test_an_engine_error_fails_its_batch_once_and_the_loop_goes_on():
    async def main():
        engine = FakeEngine(fail_on="rl")
        b = Batcher(engine, active="static", key=keyed, knobs=Knobs(4, 0.0, 100))
        b.start()
        bad = b.submit(images([1]), "rl")
        with pytest.raises(RuntimeError, match="engine failure"):
            await bad
        assert (await b.submit(images([2]), "static")).rows == [("static", 2)]
        await b.stop()

    run(main())


def test_a_cancelled_request_is_dropped_before_compute():
    async def main():
        watch = QueueWatch()
        engine, b, first = await holding_one(observer=watch)
        gone = b.submit(images([2]), None)
        watch.empty.clear()
        gone.cancel()  # its client went away
        engine.release.set()
        await first
        await watch.empty.wait()  # the loop has taken it off the queue: dropped, or (wrongly) planned
        await b.stop()
        assert [n for n, _ in engine.batches] == [1]

    run(main())


def test_stop_answers_what_is_still_queued_and_refuses_new_work():
    async def main():
        engine, b, running = await holding_one()
        queued = b.submit(images([2]), None)
        stopping = asyncio.create_task(b.stop())
        with pytest.raises(Draining):  # at once, while the engine still holds the running batch
            await queued
        assert not stopping.done()
        engine.release.set()
        await stopping
        assert (await running).rows == [("static", 1)]
        with pytest.raises(Draining):
            b.submit(images([3]), None)

    run(main())


def test_stop_with_a_timeout_gives_up_on_a_hung_engine_and_still_answers_everyone():
    async def main():
        engine, b, running = await holding_one()  # the engine never returns it
        queued = b.submit(images([2]), None)
        (inside,) = b._in_engine  # the worker thread's call of the engine
        t0 = time.monotonic()
        assert await b.stop(timeout=0.1) is False
        assert time.monotonic() - t0 < 1.0
        for future in (running, queued):
            with pytest.raises(Draining):
                await future
        assert b.computing  # the worker thread is still inside the engine
        engine.release.set()  # it comes back later: nobody is answered twice
        await asyncio.wrap_future(inside)
        assert engine.batches == [(1, ["static"])] and not b.computing

    run(main())


def test_stop_with_a_timeout_is_true_when_the_engine_returns_in_time():
    async def main():
        watch = QueueWatch()
        engine, b, running = await holding_one(observer=watch)
        watch.empty.clear()
        stopping = asyncio.create_task(b.stop(timeout=5.0))
        await watch.empty.wait()  # stop has begun (it empties the queue) and waits for the engine
        engine.release.set()
        assert await stopping is True
        assert (await running).rows == [("static", 1)]

    run(main())


def test_depth_two_hands_over_the_next_batch_while_one_computes():
    async def main():
        engine = FakeEngine(stuck=True)  # batches handed over wait until it is released
        entered = []
        real = engine.__call__

        def run_batch(images, points):
            entered.append(int(images[0].flatten()[0]))
            return real(images, points)

        b = Batcher(run_batch, active="static", key=keyed, knobs=Knobs(1, 0.0, 100), depth=2)
        b.start()
        futures = [b.submit(images([i]), None) for i in (1, 2, 3)]
        await engine.entered(2)
        # two handed over at once (on two threads, so in either order), the third waits in the queue
        assert sorted(entered) == [1, 2]
        assert b.queued_images == 1
        engine.release.set()
        answers = await asyncio.gather(*futures)
        assert [a.rows for a in answers] == [[("static", i)] for i in (1, 2, 3)]
        assert sorted(entered[:2]) == [1, 2] and entered[2] == 3
        await b.stop()
        with pytest.raises(ValueError, match="depth must be >= 1"):
            Batcher(run_batch, active="static", key=keyed, depth=0)

    run(main())


def test_stop_waits_for_every_batch_handed_over():
    async def main():
        engine = FakeEngine(stuck=True)
        b = Batcher(engine, active="static", key=keyed, knobs=Knobs(1, 0.0, 100), depth=2)
        b.start()
        futures = [b.submit(images([i]), None) for i in range(4)]
        await engine.entered(2)  # two handed over, two queued
        stopping = asyncio.create_task(b.stop())
        for queued in futures[2:]:
            with pytest.raises(Draining):
                await queued
        engine.release.set()
        await stopping
        assert [(await f).rows for f in futures[:2]] == [[("static", 0)], [("static", 1)]]
        assert len(engine.batches) == 2  # both handed-over batches were answered

    run(main())


def test_a_deadline_passing_while_the_engine_is_stuck_is_answered_at_once():
    async def main():
        engine, b, first = await holding_one(timeout_s=0.05)  # the engine never returns it meanwhile
        late = b.submit(images([2]), None)
        with pytest.raises(DeadlineExceeded):  # about time: not after the engine comes back, at its deadline
            await asyncio.wait_for(late, 1.0)
        assert not first.done() and b.queued_images == 0
        engine.release.set()
        assert (await first).rows == [("static", 1)]
        await b.stop()
        assert [pts for _, pts in engine.batches] == [["static"]]

    run(main())


def test_reject_queued_answers_the_queue_and_leaves_the_running_batch():
    async def main():
        engine, b, running = await holding_one()
        queued = [b.submit(images([i]), None) for i in (2, 3)]
        assert b.reject_queued() == 2 and b.queued_images == 0
        for f in queued:
            with pytest.raises(Draining):
                await f
        engine.release.set()
        assert (await running).rows == [("static", 1)]
        await b.stop()
        assert [n for n, _ in engine.batches] == [1]

    run(main())


def test_a_batcher_takes_only_knobs_in_their_bounds():
    with pytest.raises(ValueError, match="max_batch_size must be >= 1 and <= 4096"):
        Knobs(max_batch_size=4097)
    with pytest.raises(ValueError, match="max_queue"):
        Knobs().update(max_queue=0)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        Batcher(FakeEngine(), active="static", key=keyed, timeout_s=0)
