"""One engine process: the code that runs in it (``_child``: load, warm up, answer slices; a
heartbeat thread beside it) and the parent's handle on it (``Child``: its pipe, its heartbeat
counter, and a reader thread that resolves one future per slice).

Why a reader thread: the slices of several batches wait in one child's pipe, and a lost child's
slices are sent again to another child, behind slices of other batches. Were each caller to read
its own answer off the pipe, in turn, a caller retrying a slice could wait for its own later answer
to be read first. With a reader per child every slice has a future, resolved exactly once: by the
child's answer, or with ``EngineGone`` once the child is lost (``lose``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import torch

from skipvit.kernels import set_backend
from skipvit.service import sched
from skipvit.service.engine import Engine
from skipvit.service.healing import HealPolicy, Seen


class EngineGone(RuntimeError):
    pass


def _heartbeat(counter, interval: float) -> None:
    while True:
        counter.value += 1
        time.sleep(interval)


def _child(
    conn,
    beat,
    busy,
    interval: float,
    bundle_dir: str,
    device: str,
    top_k: int,
    threads: int | None,
    compact: str,
) -> None:
    sched.normal()  # not the event loop's SCHED_BATCH, inherited from the thread that started it
    # The heartbeat ticks while the main thread loads and computes: torch releases the GIL.
    threading.Thread(target=_heartbeat, args=(beat, interval), name="skipvit-heartbeat", daemon=True).start()
    set_backend(compact)
    if threads:
        torch.set_num_threads(threads)
    try:
        engine = Engine.from_dir(bundle_dir, device, top_k)
        engine.warm_up()
    except Exception as e:  # reported to the parent: a failed start
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", str(engine.device)))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if msg is None:
            return
        images, points = msg
        busy.value = time.monotonic()  # the same clock as the parent's (Linux: system-wide)
        try:
            answer = ("ok", engine.predict(torch.from_numpy(images), points))
        except Exception as e:
            answer = ("error", f"{type(e).__name__}: {e}")
        finally:
            busy.value = 0.0
        conn.send(answer)


class Child:
    """One engine process, its pipe, its heartbeat counter and the thread that reads its answers.

    ``send`` queues a future per slice; the reader resolves them in order (a child answers in the
    order it was sent). ``lose`` fails every future still waiting with ``EngineGone``; a future is
    taken off the queue, under the lock, by exactly one of the two."""

    def __init__(
        self, ctx, name: str, args: tuple, policy: HealPolicy, on_change: Callable[[], None]
    ) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.beat = ctx.RawValue("Q", 0)  # bumped by the child's heartbeat thread
        self.busy = ctx.RawValue("d", 0.0)  # since when the child computes its slice; 0: idle
        self.proc = ctx.Process(
            target=_child,
            args=(child, self.beat, self.busy, policy.beat_interval_s, *args),
            name=name,
            daemon=True,
        )
        self.spawned = time.monotonic()
        self.proc.start()
        child.close()
        self.ready_at: float | None = None
        self.device: str | None = None
        self.start_error: str | None = None
        self.started = threading.Event()  # it reported ready or an error, or it is gone
        self.dead: str | None = None  # why it was lost
        self.dropped = 0  # slices it held when it was lost
        self.announced = False  # the supervisor has seen it ready
        self.sent = 0
        self._on_change = on_change
        self._lock = threading.Lock()
        self._pending: deque[Future] = deque()
        self._count, self._beat_at = 0, None
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    @property
    def serving(self) -> bool:
        return self.ready_at is not None and self.dead is None

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _read(self) -> None:
        try:
            status, payload = self.conn.recv()
            if status == "ready":
                self.device, self.ready_at = payload, time.monotonic()
            else:
                self.start_error = payload
            self.started.set()
            self._on_change()
            while True:
                msg = self.conn.recv()
                with self._lock:
                    future = self._pending.popleft() if self._pending else None
                if future is not None:  # None: lost meanwhile, the future already failed
                    future.set_result(msg)
        except (EOFError, OSError, TypeError):  # exited, or its pipe closed (TypeError: closed handle)
            self.lose("its pipe closed")
        finally:
            self.started.set()

    def send(self, msg) -> Future:
        """Queue ``msg`` (under the engine's send lock, so that futures and pipe agree in order)."""
        future: Future = Future()
        with self._lock:
            if self.dead is not None:
                future.set_exception(EngineGone(f"engine process {self.name} was lost: {self.dead}"))
                return future
            self._pending.append(future)
        self.sent += 1
        try:
            self.conn.send(msg)
        except (OSError, ValueError, TypeError):  # it died (broken pipe), or its pipe was closed meanwhile
            self.lose("a slice could not be sent")
        return future

    def lose(self, why: str) -> int:
        """No slice goes to this child from now on; those it holds hear ``EngineGone``. Returns how
        many it held. The first reason sticks."""
        with self._lock:
            if self.dead is None:
                self.dead = why
            lost, self._pending = list(self._pending), deque()
            self.dropped += len(lost)
        for future in lost:
            future.set_exception(EngineGone(f"engine process {self.name} was lost: {self.dead}"))
        self._on_change()
        return len(lost)

    def seen(self, now: float) -> Seen:
        """What the supervisor sees now (it alone calls this: it moves the heartbeat's clock)."""
        count = self.beat.value
        if count != self._count:
            self._count, self._beat_at = count, now
        busy = self.busy.value or None
        return Seen(self.spawned, self.ready_at, self._beat_at, self.proc.exitcode, self.start_error, busy)

    def end(self, timeout: float = 5.0) -> int | None:
        """Kill (SIGKILL ends a stopped process too), reap, close the pipe once its reader is done.
        Returns the exit code."""
        if self.proc.exitcode is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        self.proc.join(timeout)
        self._reader.join(timeout)  # its recv ends with the process
        if not self._reader.is_alive():
            self.conn.close()
        return self.proc.exitcode
