"""Dynamic batching, ignorant of HTTP and of the model (no FastAPI here).

Requests wait in one bounded queue. ``plan`` is the whole decision, a pure function of the queue,
the clock and the knobs, so it is tested without a server or a model:

- a request without an explicit point takes the *active* point when its batch is planned, so a
  switch (``set_active``) lands between batches and every batch runs the points it was planned
  with;
- only requests whose points share a batch key (``Engine.batch_key``) go into one batch; a key of
  ``None`` means the request runs in a forward of its own, at once (nothing may join it);
- a group closes when it holds ``max_batch_size`` images, or ``max_wait_ms`` after its oldest
  request arrived, or at once while flushing (draining); the ready group whose oldest request is
  oldest goes first;
- a multi-image request is never split: it joins a batch whole (alone if it is bigger than
  ``max_batch_size``) and its rows come back in order;
- a request past its deadline is answered with ``DeadlineExceeded`` before any compute;
- while the engine computes a batch, the next group closes no earlier than shortly before the
  engine is expected to be free (``hold_until``), unless it is full.

``Batcher`` owns the queue and a task on the event loop that follows the plan. It hands the engine
up to ``depth`` batches at once, each from a worker thread, so the loop keeps accepting requests
while a batch computes. With the default depth of 2 the next batch is already waiting when the
engine finishes one; otherwise, as a trace on the 2-core machine showed, the engine sits idle while
its answer travels back and the next batch is planned and sent (every thread waking on busy
cores). The engine itself runs one batch at a time. Every request's future is
resolved exactly once: with its rows, or with one of the ``Rejected`` errors, or with the
engine's exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from skipvit.service.knobs import PIPELINE_DEPTH, REQUEST_TIMEOUT_S, Knobs

HAND_OVER_LEAD = 0.25  # hand the next batch over this fraction of a batch's compute before the engine is free


class Rejected(Exception):
    """A request answered without compute (``service.failures`` says how, over HTTP)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(Rejected):
    """The queue holds ``max_queue`` images already; ``retry_after``: seconds until it has likely drained."""


class DeadlineExceeded(Rejected):
    """Not started within the request timeout."""


class Draining(Rejected):
    """The batcher is stopping (or was never started)."""


class TooBig(Rejected):
    """More images in one request than the queue holds."""


@dataclass(eq=False)
class Pending:
    images: torch.Tensor  # (n, C, H, W) uint8
    point: str | None  # the request's own point; None: the active point at planning time
    arrived: float
    deadline: float
    future: asyncio.Future | None = None
    n: int = field(init=False)  # images; read on every plan, so computed once

    def __post_init__(self) -> None:
        self.n = int(self.images.shape[0])


@dataclass
class Plan:
    expired: list[Pending] = field(default_factory=list)
    batch: list[Pending] = field(default_factory=list)  # empty: nothing to run yet
    points: list[str] = field(default_factory=list)  # served point of each request in ``batch``
    wake_at: float | None = None  # plan again then, if nothing arrives before


def plan(
    queue: Sequence[Pending],
    now: float,
    knobs: Knobs,
    active: str,
    key: Callable[[str], Hashable | None],
    flush: bool = False,
    hold_until: float | None = None,
) -> Plan:
    """Decide what to do with ``queue`` (oldest first) at time ``now``. Pure: mutates nothing.

    ``hold_until``: while the engine is busy, a batch that is not full closes no earlier than this
    (shortly before the engine is expected to be free), so it keeps gathering company."""
    out = Plan()
    groups: dict[Hashable, list[tuple[Pending, str]]] = {}
    keys: dict[str, Hashable | None] = {}  # a point's batch key, looked up once per plan
    for req in queue:
        if now >= req.deadline:
            out.expired.append(req)
            continue
        point = req.point or active
        k = keys[point] if point in keys else keys.setdefault(point, key(point))
        groups.setdefault(("alone", id(req)) if k is None else ("key", k), []).append((req, point))
    wait = knobs.max_wait_ms / 1000.0
    chosen: list[tuple[Pending, str]] | None = None
    wake: list[float] = []
    for group, members in groups.items():  # dicts keep insertion order: oldest group first
        oldest = members[0][0]
        rows = sum(r.n for r, _ in members)
        alone = group[0] == "alone"  # no company can come, so there is nothing to wait for
        due = oldest.arrived + wait if hold_until is None else max(oldest.arrived + wait, hold_until)
        if flush or alone or rows >= knobs.max_batch_size or now >= due:
            chosen = members
            break
        wake.append(due)
    if chosen is not None:
        total = 0
        for req, point in chosen:
            if out.batch and total + req.n > knobs.max_batch_size:
                break
            out.batch.append(req)
            out.points.append(point)
            total += req.n
    taken = {id(r) for r in out.expired} | {id(r) for r in out.batch}
    wake += [r.deadline for r in queue if id(r) not in taken]
    out.wake_at = min(wake) if wake else None
    return out


class Observer(Protocol):
    """Metric hooks (service.metrics implements them); every method is optional to act on."""

    def queued(self, images: int) -> None: ...
    def batch(self, images: int, waits: list[float]) -> None: ...


class _NullObserver:
    def queued(self, images: int) -> None:
        pass

    def batch(self, images: int, waits: list[float]) -> None:
        pass


@dataclass
class Answer:
    point: str  # the point that served the request
    rows: list[Any]  # one result per image, in order


class Batcher:
    """The queue, the planning loop and the worker thread. Start and stop it on one event loop."""

    def __init__(
        self,
        run: Callable[[torch.Tensor, list[str]], list[Any]],
        *,
        active: str,
        key: Callable[[str], Hashable | None],
        knobs: Knobs | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S.default,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        depth: int = PIPELINE_DEPTH.default,
    ) -> None:
        REQUEST_TIMEOUT_S.check("timeout_s", timeout_s)
        PIPELINE_DEPTH.check("depth", depth)
        self._run = run  # (images (B, C, H, W), one point id per row) -> B results, in order
        # A ``run`` that takes ``deadline`` (``BatchRunner``: a batch retried after its engine
        # process was lost) is told the earliest deadline of the batch's requests, on ``clock``.
        self._run_takes_deadline = "deadline" in inspect.signature(run).parameters
        self.active = active
        self.key = key
        self.knobs = knobs or Knobs()
        self.timeout_s = timeout_s
        self.observer = observer or _NullObserver()
        self.clock = clock
        self._queue: list[Pending] = []
        self._queued_images = 0
        self._earliest_deadline = math.inf  # no queued request's deadline is earlier
        self._cancelled = False  # a queued request's client went away since the last sweep
        self._flush = False
        self._closed = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.depth = depth  # batches handed to the engine at once (``run`` is called from as many threads)
        self._running: set[asyncio.Task] = set()  # batches handed over and not yet answered
        self._in_engine: set[Future] = set()  # the worker threads' calls of ``run`` not yet returned
        self._compute_s = 0.0  # moving average of one batch's compute time (Retry-After, hand-over)
        self._free_at = 0.0  # clock time the engine is expected to finish what it was handed
        self._last_done = 0.0  # clock time the last batch came back
        self._timer: asyncio.TimerHandle | None = (
            None  # wakes the loop at a deadline while the engine is busy
        )
        # hooks for the autopilot (``service.pilot``), called on the event loop: images queued by
        # a request; (the point of a batch's first request, its images, seconds it computed)
        self.on_submitted: Callable[[int], None] | None = None
        self.on_computed: Callable[[str, int, float], None] | None = None

    # -- control -------------------------------------------------------------------------------
    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="skipvit-engine")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="skipvit-batcher")

    def set_active(self, point: str) -> None:
        """Requests planned from now on without an explicit point run at ``point``."""
        self.active = point

    def set_knobs(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self._poke()

    def flush(self) -> None:
        """Stop waiting for company: run whatever is queued as soon as possible (draining)."""
        self._flush = True
        self._poke()

    def reject_queued(self) -> int:
        """Answer every request still waiting with ``Draining`` (503), at once; return how many.
        Batches already handed to the engine are not touched."""
        queued = self._queue
        self._queue, self._queued_images, self._earliest_deadline = [], 0, math.inf
        self.observer.queued(0)
        for req in queued:
            self._settle(req, exc=Draining("the server is shutting down; Hint: retry on another replica"))
        self._poke()
        return len(queued)

    async def stop(self, timeout: float | None = None) -> bool:
        """Answer everything still queued (``Draining``), let the batches handed over finish, end
        the loop. True if they did; False if one still computed after ``timeout`` seconds (a hung
        engine): its requests are then answered ``Draining`` (503) and its worker thread left
        behind, so the caller decides what to do with an engine that may never return."""
        self._closed = True
        self.reject_queued()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                for task in list(self._running):
                    task.cancel()
                await asyncio.wait({self._task})  # it ends once the cancelled batches have
        hung = self.computing
        if self._executor is not None:
            self._executor.shutdown(wait=not hung, cancel_futures=True)
        return not hung

    @property
    def queued_images(self) -> int:
        return self._queued_images

    @property
    def computing(self) -> bool:
        """Whether a worker thread is inside the engine now (its batch may have been given up)."""
        return any(not f.done() for f in list(self._in_engine))

    # -- admission -----------------------------------------------------------------------------
    def submit(
        self, images: torch.Tensor, point: str | None = None, arrived: float | None = None
    ) -> asyncio.Future:
        """Queue one request; its future resolves to an ``Answer`` or raises. May raise
        ``QueueFull`` or ``Draining`` at once (then nothing was queued). ``arrived``: when the
        request arrived, on this batcher's clock (default now); its deadline counts from there."""
        if self._closed or self._task is None:
            raise Draining("the server is not accepting requests; Hint: retry shortly")
        n = int(images.shape[0])
        if n > self.knobs.max_queue:
            raise TooBig(
                f"{n} images in one request, more than the queue holds ({self.knobs.max_queue}); "
                "Hint: split the images over several requests"
            )
        if self._queued_images + n > self.knobs.max_queue:
            raise QueueFull(
                f"the queue is full ({self._queued_images} images waiting, limit {self.knobs.max_queue}); "
                "Hint: retry after the Retry-After delay",
                retry_after=self.retry_after(),
            )
        now = self.clock()
        arrived = now if arrived is None else min(arrived, now)
        req = Pending(
            images, point, now, arrived + self.timeout_s, asyncio.get_running_loop().create_future()
        )
        req.future.add_done_callback(self._on_settled)
        self._queue.append(req)
        self._queued_images += n
        self._earliest_deadline = min(self._earliest_deadline, req.deadline)
        self.observer.queued(self._queued_images)
        if self.on_submitted is not None:
            self.on_submitted(n)
        self._poke()
        return req.future

    def expected_wait(self, arriving: int = 0) -> float:
        """Seconds a request arriving now would likely wait before its batch starts: the engine's
        work in hand, then one batch's compute per full batch ahead of it (``arriving``: images
        admitted but not queued yet)."""
        ahead = math.floor((self._queued_images + arriving) / max(self.knobs.max_batch_size, 1))
        return max(0.0, self._free_at - self.clock()) + ahead * self._compute_s

    def expected_answer(self, arriving: int = 0) -> float:
        """Seconds until a request arriving now would likely have its answer: its wait, then its
        own batch's compute."""
        return self.expected_wait(arriving) + self._compute_s

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained: batches ahead times one batch's compute."""
        batches = math.ceil(self._queued_images / max(self.knobs.max_batch_size, 1))
        return max(1, min(60, math.ceil(batches * self._compute_s)))

    # -- the loop ------------------------------------------------------------------------------
    def _poke(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _settle(self, req: Pending, result: Any = None, exc: BaseException | None = None) -> None:
        if req.future is None or req.future.done():  # cancelled: its client went away
            return
        if exc is not None:
            req.future.set_exception(exc)
        else:
            req.future.set_result(result)

    def _on_settled(self, future: asyncio.Future) -> None:
        if future.cancelled():
            self._cancelled = True

    def _remove(self, reqs: Sequence[Pending]) -> None:
        """Take ``reqs`` out of the queue: one pass over it, so at most once per batch or sweep
        (under overload the queue holds a thousand requests, and arrivals come far more often)."""
        if not reqs:
            return
        gone = set(map(id, reqs))
        self._queue = [r for r in self._queue if id(r) not in gone]
        self._queued_images -= sum(r.n for r in reqs)
        if any(r.deadline <= self._earliest_deadline for r in reqs):
            self._earliest_deadline = min((r.deadline for r in self._queue), default=math.inf)
        self.observer.queued(self._queued_images)

    async def _loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while not (self._closed and not self._queue):
            # A request whose client went away is dropped before compute.
            if self._cancelled:
                self._cancelled = False
                self._remove([r for r in self._queue if r.future is not None and r.future.done()])
            if len(self._running) >= self.depth:  # the engine has enough: plan when a batch is back
                # ...but a request whose deadline passes meanwhile is answered then (504), even if
                # the engine never comes back.
                now = self.clock()
                if now >= self._earliest_deadline:
                    self._expire([r for r in self._queue if now >= r.deadline])
                if self._queue:
                    self._poke_in(loop, self._earliest_deadline - now)
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = self.clock()
            # While a batch computes, the next one keeps gathering company until shortly before
            # the engine is expected to be free, then waits in the engine's pipe.
            hold = self._free_at - HAND_OVER_LEAD * self._compute_s if self._running else None
            p = plan(self._queue, now, self.knobs, self.active, self.key, flush=self._flush, hold_until=hold)
            if p.expired:
                self._expire(p.expired)
            if p.batch:
                self._remove(p.batch)
                self._free_at = max(now, self._free_at) + self._compute_s
                task = loop.create_task(self._compute(p.batch, p.points, now))
                self._running.add(task)
                task.add_done_callback(self._finished)
                continue
            self._wakeup.clear()
            timeout = None if p.wake_at is None else max(0.0, p.wake_at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)
        if self._timer is not None:
            self._timer.cancel()
        if self._running:
            await asyncio.gather(*self._running)

    def _poke_in(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        """Wake the loop ``delay`` seconds from now, unless a wake-up is already set for no later.
        One timer at a time: a plain handle, cheaper on the hot path than a ``wait_for``."""
        when = loop.time() + max(0.0, delay)
        if self._timer is not None and self._timer.when() <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._poke()

    def _expire(self, reqs: list[Pending]) -> None:
        self._remove(reqs)
        for req in reqs:
            self._settle(
                req,
                exc=DeadlineExceeded(
                    f"not started within {self.timeout_s:g} s (SKIPVIT_REQUEST_TIMEOUT_S); "
                    "Hint: the server is overloaded, retry later"
                ),
            )

    def _finished(self, task: asyncio.Task) -> None:
        self._running.discard(task)
        self._poke()

    async def _compute(self, batch: list[Pending], points: list[str], now: float) -> None:
        images = torch.cat([r.images for r in batch]) if len(batch) > 1 else batch[0].images
        row_points = [pt for r, pt in zip(batch, points, strict=True) for _ in range(r.n)]
        self.observer.batch(images.shape[0], [now - r.arrived for r in batch])
        try:
            if self._run_takes_deadline:
                deadline = min(r.deadline for r in batch)
                call = self._executor.submit(self._run, images, row_points, deadline=deadline)
            else:
                call = self._executor.submit(self._run, images, row_points)
            self._in_engine.add(call)
            call.add_done_callback(self._in_engine.discard)  # in the worker thread; set ops are atomic
            rows = await asyncio.wrap_future(call)
            if len(rows) != images.shape[0]:
                raise RuntimeError(f"the engine answered {len(rows)} rows for {images.shape[0]} images")
        except asyncio.CancelledError:  # ``stop`` gave up on the engine: still one answer each
            for req in batch:
                self._settle(
                    req,
                    exc=Draining(
                        "the server shut down before the engine finished this request's batch; "
                        "Hint: retry on another replica"
                    ),
                )
            raise
        except Exception as e:  # every request of the batch gets the error, exactly once
            for req in batch:
                self._settle(req, exc=e)
            return
        finally:
            done = self.clock()
            took = done - max(now, self._last_done)  # from when the engine could start it
            self._last_done = done
            self._compute_s = took if self._compute_s == 0 else 0.8 * self._compute_s + 0.2 * took
            if len(self._running) <= 1:  # this was the last batch handed over: the engine is free
                self._free_at = done
        if self.on_computed is not None:
            self.on_computed(points[0], int(images.shape[0]), took)
        start = 0
        for req, point in zip(batch, points, strict=True):
            self._settle(req, Answer(point, rows[start : start + req.n]))
            start += req.n
